//! Per-minute aggregates of finished executions, kept up to date as each one ends, so
//! `GET /v1/analytics` reads a few hundred small entries instead of scanning the event log.
//!
//! Tree `analytics`: `project ‖ 0 ‖ dimension ‖ minute start (u64 BE seconds) ‖ group key` →
//! an [`Aggregate`] (a compact binary form, see [`Aggregate::encode`]; JSON before layout 4).
//! The minute precedes the group key so that one time range of one dimension is one contiguous
//! scan. Only minutes are stored: an hour is folded from its minutes at query time, which keeps
//! the write path at one entry per dimension per execution (most of a dashboard's queries span
//! an hour or a day: at most 1,440 minutes per group).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{joined, Store};
use crate::domain::{AttemptOutcome, ExecutionRecord, Status};

/// The finest bucket, in seconds.
pub const MINUTE: u64 = 60;

/// What an execution is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// The model slug it was submitted to.
    Model,
    /// The provider of its last attempt (`none` when it never reached one); a failover counts
    /// for the provider it left.
    Provider,
}

impl Dimension {
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Model => "model",
            Dimension::Provider => "provider",
        }
    }

    pub fn parse(s: &str) -> Option<Dimension> {
        [Dimension::Model, Dimension::Provider]
            .into_iter()
            .find(|d| d.as_str() == s)
    }

    fn tag(self) -> u8 {
        match self {
            Dimension::Model => 1,
            Dimension::Provider => 2,
        }
    }
}

/// Log-spaced millisecond buckets: bucket `i` holds values in (2^((i-1)/8), 2^(i/8)], bucket 0
/// holds [0, 1], the last one everything above 2^20 ms (17.5 min). Eight buckets per doubling
/// make each bucket under 9.1% wide, so any estimate inside the right bucket is within ±10%;
/// a sparse map keeps an entry small.
const HISTOGRAM_BUCKETS: u8 = 162;
const STEPS_PER_DOUBLING: f64 = 8.0;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram(BTreeMap<u8, u64>);

impl Histogram {
    fn bucket_of(ms: u64) -> u8 {
        if ms <= 1 {
            return 0;
        }
        let i = ((ms as f64).log2() * STEPS_PER_DOUBLING).ceil() as u64;
        let i = i.min(HISTOGRAM_BUCKETS as u64 - 1) as u8;
        // Float rounding can land an exact power on the next bucket; bounds are inclusive.
        if i > 0 && Self::upper(i - 1) >= ms as f64 {
            i - 1
        } else {
            i
        }
    }

    fn upper(i: u8) -> f64 {
        2f64.powf(i as f64 / STEPS_PER_DOUBLING)
    }

    fn lower(i: u8) -> f64 {
        if i == 0 {
            0.0
        } else {
            Self::upper(i - 1)
        }
    }

    pub fn observe(&mut self, ms: u64) {
        *self.0.entry(Self::bucket_of(ms)).or_default() += 1;
    }

    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (i, n) in &other.0 {
            *self.0.entry(*i).or_default() += n;
        }
    }

    /// The `q` quantile (0..=1) in ms, interpolated linearly inside its bucket the way
    /// Prometheus' `histogram_quantile` does; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (&i, &n) in &self.0 {
            if (below + n) as f64 >= rank {
                if i == HISTOGRAM_BUCKETS - 1 {
                    return Some(Self::lower(i).round() as u64);
                }
                let within = (rank - below as f64) / n as f64;
                let (lo, hi) = (Self::lower(i), Self::upper(i));
                return Some((lo + (hi - lo) * within).round() as u64);
            }
            below += n;
        }
        self.0.keys().last().map(|&i| Self::upper(i).round() as u64)
    }
}

/// Everything counted for one group in one minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Executions that reached a terminal status.
    #[serde(default)]
    pub requests: u64,
    /// By normalized error code; a cancellation counts as `cancelled`.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    #[serde(default)]
    pub failovers: u64,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// What completed executions cost at the routes' prices (`ExecutionRecord::cost`).
    #[serde(default)]
    pub spend_micros: u64,
    /// Submit → terminal status.
    #[serde(default)]
    pub latency_ms: Histogram,
    /// Submit → first chunk, for executions that emitted one.
    #[serde(default)]
    pub first_chunk_ms: Histogram,
}

impl Aggregate {
    pub fn merge(&mut self, other: &Aggregate) {
        self.requests += other.requests;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        self.failovers += other.failovers;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.spend_micros += other.spend_micros;
        self.latency_ms.merge(&other.latency_ms);
        self.first_chunk_ms.merge(&other.first_chunk_ms);
    }

    /// Reads an entry in either form: [`Aggregate::encode`]'s, or the JSON object entries
    /// were written as before it (layout 3 and older), which starts with `{`.
    fn decode(bytes: &[u8]) -> Aggregate {
        let decoded = match bytes.first() {
            Some(&BINARY_FORM) => binary::decode(&bytes[1..]).ok_or("truncated or malformed"),
            _ => serde_json::from_slice(bytes).map_err(|_| "not an aggregate"),
        };
        decoded.unwrap_or_else(|why| {
            tracing::error!(error = why, "corrupt analytics entry, counting from zero");
            Aggregate::default()
        })
    }

    /// The stored form: a tag byte, then varints. Every commit decodes, merges and re-encodes
    /// each entry it touches right before its flush (on the commit's critical path); as JSON
    /// that was ~90,000 instructions per request at concurrency 1 (callgrind), mostly parsing
    /// the histograms' string keys back into maps.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(BINARY_FORM);
        binary::encode(self, &mut out);
        out
    }
}

/// First byte of an entry in the binary form (a JSON entry starts with `{`).
const BINARY_FORM: u8 = 1;

/// The binary form: `requests`, `failovers`, `prompt_tokens`, `completion_tokens`,
/// `spend_micros` as LEB128 varints; the error counts as a count then (length, code bytes,
/// count) each; each histogram as a count then (bucket byte, count) each.
mod binary {
    use super::{Aggregate, Histogram};
    use std::collections::BTreeMap;

    pub fn encode(agg: &Aggregate, out: &mut Vec<u8>) {
        for n in [
            agg.requests,
            agg.failovers,
            agg.prompt_tokens,
            agg.completion_tokens,
            agg.spend_micros,
        ] {
            put(out, n);
        }
        put(out, agg.errors.len() as u64);
        for (code, n) in &agg.errors {
            put(out, code.len() as u64);
            out.extend_from_slice(code.as_bytes());
            put(out, *n);
        }
        for histogram in [&agg.latency_ms, &agg.first_chunk_ms] {
            put(out, histogram.0.len() as u64);
            for (bucket, n) in &histogram.0 {
                out.push(*bucket);
                put(out, *n);
            }
        }
    }

    pub fn decode(mut input: &[u8]) -> Option<Aggregate> {
        let input = &mut input;
        let mut agg = Aggregate {
            requests: take(input)?,
            failovers: take(input)?,
            prompt_tokens: take(input)?,
            completion_tokens: take(input)?,
            spend_micros: take(input)?,
            ..Aggregate::default()
        };
        for _ in 0..take(input)? {
            let len = usize::try_from(take(input)?).ok()?;
            let code = input.get(..len)?;
            let code = std::str::from_utf8(code).ok()?.to_string();
            *input = &input[len..];
            agg.errors.insert(code, take(input)?);
        }
        for histogram in [&mut agg.latency_ms, &mut agg.first_chunk_ms] {
            let mut buckets = BTreeMap::new();
            for _ in 0..take(input)? {
                let (&bucket, rest) = input.split_first()?;
                *input = rest;
                buckets.insert(bucket, take(input)?);
            }
            *histogram = Histogram(buckets);
        }
        input.is_empty().then_some(agg)
    }

    fn put(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// A varint, or `None` when the input ends first or it does not fit in 64 bits.
    fn take(input: &mut &[u8]) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = input.split_first()?;
            *input = rest;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return None;
            }
            n |= bits << shift;
            if byte < 0x80 {
                return Some(n);
            }
        }
        None
    }
}

/// What one finished execution adds, per dimension and group key.
fn contributions(record: &ExecutionRecord) -> Vec<(Dimension, String, Aggregate)> {
    let mut whole = Aggregate {
        requests: 1,
        ..Aggregate::default()
    };
    let code = match (&record.error, record.status) {
        (Some(error), _) => Some(error.code.as_str()),
        (None, Status::Cancelled) => Some("cancelled"),
        _ => None,
    };
    if let Some(code) = code {
        whole.errors.insert(code.to_string(), 1);
    }
    // Every upstream try's usage: a failed-over execution consumed tokens on each route.
    let attempt_usage = record.attempts.iter().filter_map(|a| a.usage);
    for usage in attempt_usage.clone() {
        whole.prompt_tokens += usage.prompt_tokens;
        whole.completion_tokens += usage.completion_tokens;
    }
    if attempt_usage.count() == 0 {
        if let Some(usage) = record.usage {
            whole.prompt_tokens = usage.prompt_tokens;
            whole.completion_tokens = usage.completion_tokens;
        }
    }
    whole.spend_micros = record.cost.and_then(|c| c.settled_micros).unwrap_or(0);
    if let Some(ms) = record.duration_ms() {
        whole.latency_ms.observe(ms);
    }
    let first_chunk = record.attempts.iter().find_map(|a| {
        a.first_chunk_ms
            .map(|ttfc| a.started_at_ms.saturating_sub(record.created_at_ms) + ttfc)
    });
    if let Some(ms) = first_chunk {
        whole.first_chunk_ms.observe(ms);
    }
    let failovers = failovers(record);
    whole.failovers = failovers.len() as u64;

    let last_provider = record
        .attempts
        .last()
        .map_or("none", |a| a.provider.as_str());
    // Testing executions are counted apart from live traffic: `slug:testing` (their provider
    // group is the built-in `testing` / `testing-fallback`).
    let model = match record.design.mode.is_live() {
        true => record.model.clone(),
        false => format!("{}:testing", record.model),
    };
    let mut out = vec![
        (Dimension::Model, model, whole.clone()),
        (
            Dimension::Provider,
            last_provider.to_string(),
            Aggregate {
                failovers: 0,
                ..whole
            },
        ),
    ];
    for from in failovers {
        match out
            .iter_mut()
            .find(|(d, key, _)| *d == Dimension::Provider && key == from)
        {
            Some((_, _, agg)) => agg.failovers += 1,
            None => out.push((
                Dimension::Provider,
                from.to_string(),
                Aggregate {
                    failovers: 1,
                    ..Aggregate::default()
                },
            )),
        }
    }
    out
}

/// The provider each failover left, read from the attempts the same way the execution actor
/// announces them: a change of route, or a failed try that had already delivered text (or was
/// interrupted by a restart and then continued).
fn failovers(record: &ExecutionRecord) -> Vec<&str> {
    record
        .attempts
        .windows(2)
        .filter(|pair| {
            let (a, b) = (&pair[0], &pair[1]);
            a.provider != b.provider
                || a.chunks_delivered > 0
                || (a.outcome == AttemptOutcome::Interrupted && b.strategy != "initial")
        })
        .map(|pair| pair[0].provider.as_str())
        .collect()
}

fn key_prefix(project: &str, dimension: Dimension) -> Vec<u8> {
    joined(project, &[dimension.tag()])
}

fn entry_key(project: &str, dimension: Dimension, minute: u64, group: &str) -> Vec<u8> {
    let mut key = key_prefix(project, dimension);
    key.extend_from_slice(&minute.to_be_bytes());
    key.extend_from_slice(group.as_bytes());
    key
}

/// One group's buckets, by bucket start (seconds), oldest first.
pub type Series = BTreeMap<u64, Aggregate>;

/// Finished executions' counts held for the next group commit, merged per entry: under load
/// the executions a commit covers mostly share their minute's entries, so each entry is
/// read and written once per commit instead of once per execution. Written right before the
/// flush, so a count is durable exactly when the terminal event it goes with is.
pub struct AnalyticsStage {
    analytics: sled::Tree,
    pending: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Aggregate>>,
}

impl AnalyticsStage {
    pub fn new(analytics: sled::Tree) -> AnalyticsStage {
        AnalyticsStage {
            analytics,
            pending: Default::default(),
        }
    }

    /// Adds `add` to what the next commit merges into entry `key`.
    fn add(&self, key: Vec<u8>, add: &Aggregate) {
        let mut pending = self.pending.lock().expect("analytics stage lock");
        pending.entry(key).or_default().merge(add);
    }
}

impl super::commit::Staged for AnalyticsStage {
    /// Merges each staged entry into the stored one; a compare-and-swap merge, so a count is
    /// never lost to a concurrent writer of the same entry.
    fn write(&self) -> sled::Result<()> {
        let staged = std::mem::take(&mut *self.pending.lock().expect("analytics stage lock"));
        for (key, add) in staged {
            self.analytics.update_and_fetch(key, |old| {
                let mut agg = old.map(Aggregate::decode).unwrap_or_default();
                agg.merge(&add);
                Some(agg.encode())
            })?;
        }
        Ok(())
    }
}

impl Store {
    /// Adds a finished execution to its minute's aggregates, durable with the writer's next
    /// group commit: counts are staged (see [`AnalyticsStage`]) and written by that commit.
    pub fn count_in_analytics(&self, record: &ExecutionRecord) {
        let ended_ms = record.completed_at_ms.unwrap_or(record.created_at_ms);
        let minute = ended_ms / 1000 / MINUTE * MINUTE;
        for (dimension, group, add) in contributions(record) {
            let key = entry_key(&record.project_id, dimension, minute, &group);
            self.analytics_stage.add(key, &add);
        }
        // A commit comes within the deferral limit even if the writer takes no ticket of its
        // own (the cluster mirror); the execution actor's terminal event takes one anyway.
        self.commit.deferred_ticket();
    }

    /// The project's aggregates for buckets starting in `[from, to)` seconds, folded into
    /// buckets of `bucket_seconds` (a multiple of a minute; `from` is aligned down to it),
    /// by group key.
    pub fn analytics(
        &self,
        project: &str,
        dimension: Dimension,
        from: u64,
        to: u64,
        bucket_seconds: u64,
    ) -> sled::Result<BTreeMap<String, Series>> {
        let from = from / bucket_seconds * bucket_seconds;
        let prefix = key_prefix(project, dimension);
        let mut start = prefix.clone();
        start.extend_from_slice(&from.to_be_bytes());
        // Keys of a minute `m < to` sort before `prefix ‖ to`; those of `m ≥ to` after it.
        let mut end = prefix.clone();
        end.extend_from_slice(&to.to_be_bytes());
        let mut out: BTreeMap<String, Series> = BTreeMap::new();
        for item in self.analytics.range(start..end) {
            let (key, value) = item?;
            let rest = &key[prefix.len()..];
            let minute = u64::from_be_bytes(rest[..8].try_into().expect("8-byte minute"));
            let group = String::from_utf8_lossy(&rest[8..]).into_owned();
            let bucket = minute / bucket_seconds * bucket_seconds;
            out.entry(group)
                .or_default()
                .entry(bucket)
                .or_default()
                .merge(&Aggregate::decode(&value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Attempt, Usage};
    use crate::error::{ErrorBody, ErrorCode};

    #[test]
    fn buckets_are_log_spaced_with_inclusive_upper_bounds() {
        assert_eq!(Histogram::bucket_of(0), 0);
        assert_eq!(Histogram::bucket_of(1), 0);
        assert_eq!(Histogram::bucket_of(2), 8);
        assert_eq!(Histogram::bucket_of(3), 13); // 2^(12/8) = 2.83 < 3 ≤ 2^(13/8) = 3.08
        assert_eq!(Histogram::bucket_of(1024), 80);
        assert_eq!(Histogram::bucket_of(1025), 81);
        assert_eq!(Histogram::bucket_of(u64::MAX), HISTOGRAM_BUCKETS - 1);
        for ms in [1u64, 5, 17, 100, 999, 12_345, 600_000] {
            let i = Histogram::bucket_of(ms);
            assert!(Histogram::lower(i) < ms as f64 || ms <= 1, "{ms}");
            assert!(ms as f64 <= Histogram::upper(i), "{ms}");
        }
    }

    #[test]
    fn quantiles_land_within_ten_percent() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=1000u64 {
            h.observe(ms);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p95 = h.quantile(0.95).unwrap() as f64;
        assert!((p50 - 500.0).abs() <= 50.0, "{p50}");
        assert!((p95 - 950.0).abs() <= 95.0, "{p95}");
        let mut one = Histogram::default();
        one.observe(200);
        let p = one.quantile(0.5).unwrap() as f64;
        assert!((p - 200.0).abs() <= 20.0, "{p}");
        assert_eq!(
            one.quantile(1.0),
            Some(Histogram::upper(Histogram::bucket_of(200)).round() as u64)
        );
    }

    fn attempt(provider: &str, outcome: AttemptOutcome, chunks: u64, strategy: &str) -> Attempt {
        Attempt {
            provider: provider.into(),
            model: "m".into(),
            strategy: strategy.into(),
            outcome,
            chunks_delivered: chunks,
            error_code: None,
            error_message: None,
            usage: None,
            cost_micros: None,
            started_at_ms: 1_000,
            first_chunk_ms: None,
            ended_at_ms: Some(2_000),
        }
    }

    fn record(status: Status, attempts: Vec<Attempt>) -> ExecutionRecord {
        ExecutionRecord {
            id: "exec_1".into(),
            project_id: "p".into(),
            status,
            model: "chat".into(),
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            metadata: Default::default(),
            webhook_url: None,
            channel_id: "ch_1".into(),
            output_text: None,
            output_tool_calls: Vec::new(),
            error: None,
            finish_reason: None,
            usage: None,
            attempts,
            key_id: None,
            cost: None,
            created_at_ms: 900,
            started_at_ms: Some(950),
            completed_at_ms: Some(3_000),
            design: Default::default(),
        }
    }

    #[test]
    fn a_failover_counts_for_the_model_and_the_provider_it_left() {
        let mut first = attempt("a", AttemptOutcome::Failed, 3, "initial");
        first.first_chunk_ms = Some(40);
        let mut second = attempt("b", AttemptOutcome::Succeeded, 5, "instruction");
        second.usage = Some(Usage {
            prompt_tokens: 7,
            completion_tokens: 5,
            total_tokens: 12,
        });
        let r = record(Status::Completed, vec![first, second]);
        let c = contributions(&r);
        assert_eq!(c.len(), 3);
        let (_, model, by_model) = &c[0];
        assert_eq!(model, "chat");
        assert_eq!(by_model.failovers, 1);
        assert_eq!((by_model.prompt_tokens, by_model.completion_tokens), (7, 5));
        assert!(by_model.errors.is_empty());
        // created 900, attempt started 1000, first chunk 40 ms later.
        assert_eq!(by_model.first_chunk_ms.count(), 1);
        assert_eq!(by_model.first_chunk_ms, {
            let mut h = Histogram::default();
            h.observe(140);
            h
        });
        assert_eq!(c[1].1, "b");
        assert_eq!((c[1].2.requests, c[1].2.failovers), (1, 0));
        assert_eq!(c[2].1, "a");
        assert_eq!((c[2].2.requests, c[2].2.failovers), (0, 1));
    }

    fn full_aggregate() -> Aggregate {
        let mut agg = Aggregate {
            requests: 3,
            failovers: 1,
            // Ten varint bytes, and still room to merge twice.
            prompt_tokens: u64::MAX / 4,
            completion_tokens: 127,
            spend_micros: 128,
            ..Aggregate::default()
        };
        agg.errors.insert("provider_timeout".into(), 2);
        agg.errors.insert("cancelled".into(), 300);
        for ms in [0, 1, 2, 900, 1_000_000_000] {
            agg.latency_ms.observe(ms);
        }
        agg.first_chunk_ms.observe(40);
        agg
    }

    #[test]
    fn the_binary_form_reads_back_exactly() {
        for agg in [Aggregate::default(), full_aggregate()] {
            let bytes = agg.encode();
            assert_eq!(bytes[0], BINARY_FORM);
            assert_eq!(Aggregate::decode(&bytes), agg);
        }
    }

    #[test]
    fn entries_written_as_json_still_read() {
        let agg = full_aggregate();
        let json = serde_json::to_vec(&agg).unwrap();
        assert_eq!(Aggregate::decode(&json), agg);
        // And merge on: the next commit rewrites the entry in the binary form.
        let mut merged = Aggregate::decode(&json);
        merged.merge(&agg);
        assert_eq!(merged.requests, 6);
        assert_eq!(Aggregate::decode(&merged.encode()), merged);
    }

    #[test]
    fn a_damaged_entry_counts_from_zero() {
        let bytes = full_aggregate().encode();
        for cut in 1..bytes.len() {
            assert_eq!(
                Aggregate::decode(&bytes[..cut]),
                Aggregate::default(),
                "{cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Aggregate::decode(&longer), Aggregate::default());
        assert_eq!(Aggregate::decode(b"not json"), Aggregate::default());
        // Varints that never end, or end past 64 bits.
        for tail in [vec![0xff; 12], [vec![0xff; 9], vec![0x02]].concat()] {
            let wide = [vec![BINARY_FORM], tail].concat();
            assert_eq!(Aggregate::decode(&wide), Aggregate::default());
        }
        // While 64 bits exactly read back.
        let max = Aggregate {
            requests: u64::MAX,
            ..Aggregate::default()
        };
        let bytes = max.encode();
        assert_eq!(bytes[1..11], [[0xff; 9].as_slice(), &[0x01]].concat());
        assert_eq!(Aggregate::decode(&bytes), max);
    }

    #[test]
    fn a_quiet_retry_is_no_failover_and_errors_are_counted_by_code() {
        let mut r = record(
            Status::Failed,
            vec![
                attempt("a", AttemptOutcome::Failed, 0, "initial"),
                attempt("a", AttemptOutcome::Failed, 0, "initial"),
            ],
        );
        r.error = Some(ErrorBody::new(ErrorCode::ProviderTimeout, "slow"));
        let c = contributions(&r);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].2.failovers, 0);
        assert_eq!(c[0].2.errors.get("provider_timeout"), Some(&1));
        let cancelled = contributions(&record(Status::Cancelled, Vec::new()));
        assert_eq!(cancelled[1].1, "none");
        assert_eq!(cancelled[1].2.errors.get("cancelled"), Some(&1));
    }
}
