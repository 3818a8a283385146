//! The per-attempt debug record behind `GET /v1/executions/{id}/log`: what was sent upstream
//! (secrets redacted), what came back, each raw chunk with its arrival time, and errors.
//!
//! Entries are collected in memory per attempt and written to sled in batches: one insert when
//! the attempt ends, and one whenever [`BATCH_BYTES`] have collected in between, instead of one
//! insert per raw chunk. Readers see the batches in sled plus the part still in memory, so a
//! running attempt shows everything it recorded. The last batch is written right after the
//! actor has asked for the commit that ends the attempt, so it rides on the flush after that
//! one, within `DEFER_LIMIT` (5 ms). A crash loses the part still in memory and a last batch
//! not yet flushed: the debug record is diagnostic, not acknowledged data.
//!
//! Keys: `execution id ‖ 0 ‖ attempt (u32 BE) ‖ first entry (u32 BE)` → a JSON array of
//! entries (a JSON object: one entry, as written before batching), so one execution's record is
//! contiguous and ordered. A logged request body refers to the execution's request for the
//! prompt instead of copying it per attempt (see `request_refs`).

use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{request_refs, Store};
use crate::domain::{now_ms, ChatRequest};

/// Collected entries are written out once they reach this size, even mid-attempt: it bounds
/// both the memory of a long stream and what a crash can lose of its record.
const BATCH_BYTES: usize = 32 * 1024;

/// What an attempt's batch buffer starts with: most of a short answer's record (one growth to
/// hold all of it, instead of about ten from empty).
const INITIAL_BATCH_BYTES: usize = 4 * 1024;

/// One thing that happened during an attempt.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEntry<'a> {
    Request {
        url: &'a str,
        headers: Vec<(String, String)>,
        /// The body that was sent; the prompt in it is stored as a reference to the request.
        body: &'a Value,
    },
    Response {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// The provider event's raw payload, as received.
    Chunk {
        data: &'a str,
    },
    /// An event that could not be understood and was skipped.
    Skipped {
        data: &'a str,
        reason: &'a str,
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
    /// How a continuation's head was joined to the text already emitted (`exact`, `trimmed`
    /// or `diverged`): every trim is on record where it acted.
    Reconciled {
        strategy: &'a str,
        join: &'a str,
        emitted_bytes: usize,
        /// Bytes of the continuation's head dropped as a reproduction of the emitted text.
        trimmed_bytes: usize,
    },
}

/// Writes one attempt's entries; cheap to clone into the task that drives the attempt. The
/// collected rest is written when the last clone is dropped.
#[derive(Clone)]
pub struct AttemptLog {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: a log that records nothing.
    target: Option<(Store, Arc<Batch>)>,
    /// The execution's request, whose pieces a logged body refers to.
    request: Option<Arc<ChatRequest>>,
    started: Instant,
}

/// The entries of one attempt not yet in sled; shared with readers through [`LiveLogs`].
struct Batch {
    execution_id: String,
    attempt: u32,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// Index of the first entry in `json`.
    first: u32,
    /// Entries in `json`.
    count: u32,
    /// The entries as the elements of a JSON array, without its brackets.
    json: Vec<u8>,
}

/// The batches of attempts still running, by execution id, for readers.
#[derive(Default)]
pub(super) struct LiveLogs(Mutex<HashMap<String, Vec<Arc<Batch>>>>);

#[derive(Serialize)]
struct Stamped<E> {
    at_ms: u64,
    elapsed_ms: f64,
    #[serde(flatten)]
    entry: E,
}

/// How a [`LogEntry::Request`] is stored: its body with references to the request.
#[derive(Serialize)]
#[serde(tag = "type", rename = "request")]
struct StoredRequest<'a> {
    url: &'a str,
    headers: Vec<(String, String)>,
    body: request_refs::Referencing<'a>,
}

/// Header names whose values never reach the log.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
];

/// Header pairs with secret values replaced.
pub fn redacted_headers<'h>(
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
) -> Vec<(String, String)> {
    headers
        .map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            let value = if SECRET_HEADERS.contains(&lower.as_str()) {
                "[redacted]".to_string()
            } else {
                String::from_utf8_lossy(value).into_owned()
            };
            (lower, value)
        })
        .collect()
}

impl AttemptLog {
    /// The log of attempt `attempt` of the execution submitted with `request`.
    pub fn new(
        store: Store,
        execution_id: &str,
        attempt: u32,
        request: Arc<ChatRequest>,
    ) -> AttemptLog {
        let batch = Arc::new(Batch {
            execution_id: execution_id.to_string(),
            attempt,
            pending: Mutex::default(),
        });
        store.live_logs.add(&batch);
        AttemptLog {
            inner: Arc::new(Inner {
                target: Some((store, batch)),
                request: Some(request),
                started: Instant::now(),
            }),
        }
    }

    /// A log that records nothing (benchmarks and unit tests of providers).
    pub fn disabled() -> AttemptLog {
        AttemptLog {
            inner: Arc::new(Inner {
                target: None,
                request: None,
                started: Instant::now(),
            }),
        }
    }

    pub fn record(&self, entry: LogEntry<'_>) {
        let Some((store, batch)) = &self.inner.target else {
            return;
        };
        let at_ms = now_ms();
        let elapsed_ms = (self.inner.started.elapsed().as_micros() as f64) / 1000.0;
        let mut pending = batch.lock();
        if pending.count > 0 {
            pending.json.push(b',');
        } else if pending.json.capacity() == 0 {
            // One request's entries are a few KB: grown from empty, the buffer was
            // reallocated and copied about ten times per attempt.
            pending.json.reserve(INITIAL_BATCH_BYTES);
        }
        let written = match entry {
            LogEntry::Request { url, headers, body } => {
                let pieces = self
                    .inner
                    .request
                    .as_deref()
                    .map(request_refs::pieces)
                    .unwrap_or_default();
                let entry = StoredRequest {
                    url,
                    headers,
                    body: request_refs::Referencing {
                        value: body,
                        pieces: &pieces,
                    },
                };
                let stamped = Stamped {
                    at_ms,
                    elapsed_ms,
                    entry,
                };
                serde_json::to_writer(&mut pending.json, &stamped)
            }
            entry => {
                let stamped = Stamped {
                    at_ms,
                    elapsed_ms,
                    entry,
                };
                serde_json::to_writer(&mut pending.json, &stamped)
            }
        };
        written.expect("log entries serialize");
        pending.count += 1;
        if pending.json.len() >= BATCH_BYTES {
            batch.write_out(store, &mut pending);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some((store, batch)) = &self.target {
            if batch.write_out(store, &mut batch.lock()) {
                // The attempt's last batch may follow its execution's terminal commit, after
                // which nothing else of the execution asks for one: a deferred ticket makes it
                // durable within `DEFER_LIMIT` anyway, without a flush of its own when others
                // run.
                store.commit.deferred_ticket();
            }
            store.live_logs.remove(batch);
        }
    }
}

impl Batch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One sled insert for every collected entry (memory only until the next group commit):
    /// whether there was any.
    fn write_out(&self, store: &Store, pending: &mut Pending) -> bool {
        if pending.count == 0 {
            return false;
        }
        let mut json = Vec::with_capacity(pending.json.len() + 2);
        json.push(b'[');
        json.extend_from_slice(&pending.json);
        json.push(b']');
        let value = compress(&json);
        let key = Store::attempt_log_key(&self.execution_id, self.attempt, pending.first);
        if let Err(err) = store.attempt_log.insert(key, value) {
            tracing::warn!(execution_id = %self.execution_id, error = %err, "debug log write failed");
        }
        pending.first += pending.count;
        pending.count = 0;
        pending.json.clear();
        true
    }
}

impl LiveLogs {
    fn add(&self, batch: &Arc<Batch>) {
        let mut logs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let list = logs.entry(batch.execution_id.clone()).or_default();
        list.push(batch.clone());
    }

    fn remove(&self, batch: &Arc<Batch>) {
        let mut logs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = logs.get_mut(&batch.execution_id) {
            list.retain(|b| !Arc::ptr_eq(b, batch));
            if list.is_empty() {
                logs.remove(&batch.execution_id);
            }
        }
    }

    /// For each running attempt of the execution: (attempt, index of the first entry not in
    /// sled, those entries).
    fn snapshot(&self, id: &str) -> Vec<(u32, u32, Vec<Value>)> {
        let batches = {
            let logs = self.0.lock().unwrap_or_else(|e| e.into_inner());
            logs.get(id).cloned().unwrap_or_default()
        };
        batches
            .iter()
            .map(|batch| {
                let pending = batch.lock();
                let mut json = Vec::with_capacity(pending.json.len() + 2);
                json.push(b'[');
                json.extend_from_slice(&pending.json);
                json.push(b']');
                (batch.attempt, pending.first, entries(&json))
            })
            .collect()
    }
}

/// zstd's frame magic number, as it starts a compressed value (little-endian 0xFD2FB528); a
/// plain JSON value starts with `[` or `{`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A batch as stored: compressed (a zstd frame), because a batch is mostly raw provider events
/// that repeat the same fields, and sled copies a whole leaf on every insert into it and
/// rewrites it whole on every tenth.
fn compress(json: &[u8]) -> Vec<u8> {
    thread_local! {
        /// One compression context per thread, reused: a fresh one per batch is an allocation
        /// of its tables (about 100 KB at level 1 for a batch this size) every time.
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = zstd::bulk::Compressor::new(1).ok();
            }
            cell.as_mut()?.compress(json).ok()
        })
        .unwrap_or_else(|| json.to_vec())
}

/// The entries of one stored value: a batch (JSON array, compressed or not) or a single entry
/// (JSON object).
fn entries(value: &[u8]) -> Vec<Value> {
    let inflated;
    let value = if value.starts_with(&ZSTD_MAGIC) {
        match zstd::stream::decode_all(value) {
            Ok(json) => {
                inflated = json;
                &inflated[..]
            }
            Err(_) => return Vec::new(),
        }
    } else {
        value
    };
    match serde_json::from_slice(value) {
        Ok(Value::Array(entries)) => entries,
        Ok(entry @ Value::Object(_)) => vec![entry],
        _ => Vec::new(),
    }
}

impl Store {
    fn attempt_log_key(id: &str, attempt: u32, entry: u32) -> Vec<u8> {
        let mut rest = attempt.to_be_bytes().to_vec();
        rest.extend_from_slice(&entry.to_be_bytes());
        super::joined(id, &rest)
    }

    /// Every entry of the execution's debug record as (attempt index, entry JSON), in order.
    pub fn attempt_log(&self, id: &str) -> sled::Result<Vec<(u32, Value)>> {
        // The in-memory part first: whatever a running attempt writes out after this snapshot
        // is in sled at or past the snapshot's first index, and skipped there.
        let live = self.live_logs.snapshot(id);
        let prefix = super::joined(id, &[]);
        let mut out = Vec::new();
        for item in self.attempt_log.scan_prefix(&prefix) {
            let (key, value) = item?;
            let rest = &key[prefix.len()..];
            if rest.len() != 8 {
                continue;
            }
            let attempt = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
            let first = u32::from_be_bytes(rest[4..].try_into().expect("4 bytes"));
            let in_snapshot = live
                .iter()
                .any(|(a, from, _)| *a == attempt && first >= *from);
            if !in_snapshot {
                out.extend(entries(&value).into_iter().map(|e| (attempt, e)));
            }
        }
        for (attempt, _, entries) in live {
            out.extend(entries.into_iter().map(|e| (attempt, e)));
        }
        if out.iter().any(|(_, e)| request_refs::has_refs(e)) {
            if let Some(request) = self.get_request(id)? {
                let pieces = request_refs::pieces(&request);
                for (_, entry) in &mut out {
                    request_refs::resolve(entry, &pieces);
                }
            }
        }
        // Stable: each attempt's entries stay in the order recorded.
        out.sort_by_key(|(attempt, _)| *attempt);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::executions::tests::request;

    fn chunks(store: &Store, id: &str) -> Vec<(u32, String)> {
        store
            .attempt_log(id)
            .unwrap()
            .into_iter()
            .map(|(a, e)| (a, e["data"].as_str().unwrap_or_default().to_string()))
            .collect()
    }

    /// The last batch is written after the execution's terminal commit was asked for: with no
    /// other writer afterwards, its own deferred ticket still makes it durable.
    #[tokio::test]
    async fn the_last_batch_becomes_durable_without_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let durable = store.commit.sync().await.unwrap();
        let log = AttemptLog::new(store.clone(), "exec_l", 0, Arc::new(request()));
        log.record(LogEntry::Chunk { data: "last" });
        drop(log);
        // Resolves only once a flush covers the ticket the drop took: nothing else asks for one.
        let wait = store.commit.wait(durable + 1);
        tokio::time::timeout(std::time::Duration::from_secs(30), wait)
            .await
            .expect("the deferred flush ran")
            .unwrap();
        assert_eq!(chunks(&store, "exec_l"), vec![(0, "last".to_string())]);
    }

    #[tokio::test]
    async fn a_running_attempt_shows_everything_and_a_finished_one_reads_back_from_sled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let request = Arc::new(crate::store::executions::tests::request());
        let first = AttemptLog::new(store.clone(), "exec_a", 0, request.clone());
        first.record(LogEntry::Chunk { data: "a0" });
        drop(first);
        let second = AttemptLog::new(store.clone(), "exec_a", 1, request);
        let big = "x".repeat(BATCH_BYTES);
        second.record(LogEntry::Chunk { data: "b0" });
        second.record(LogEntry::Chunk { data: &big });
        second.record(LogEntry::Chunk { data: "b2" });
        let expected = vec![
            (0, "a0".to_string()),
            (1, "b0".to_string()),
            (1, big.clone()),
            (1, "b2".to_string()),
        ];
        assert_eq!(chunks(&store, "exec_a"), expected, "while running");
        drop(second);
        assert_eq!(chunks(&store, "exec_a"), expected, "once written");
        assert!(store.live_logs.snapshot("exec_a").is_empty());
        assert!(chunks(&store, "exec_ab").is_empty());
    }

    #[tokio::test]
    async fn entries_written_one_per_key_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (i, data) in ["c0", "c1"].into_iter().enumerate() {
            let value = serde_json::json!({"type": "chunk", "data": data});
            store
                .attempt_log
                .insert(
                    Store::attempt_log_key("exec_old", 0, i as u32),
                    serde_json::to_vec(&value).unwrap(),
                )
                .unwrap();
        }
        assert_eq!(
            chunks(&store, "exec_old"),
            vec![(0, "c0".to_string()), (0, "c1".to_string())]
        );
        // A batch as written before batches were compressed.
        let batch = br#"[{"type":"chunk","data":"d0"},{"type":"chunk","data":"d1"}]"#;
        store
            .attempt_log
            .insert(Store::attempt_log_key("exec_plain", 0, 0), &batch[..])
            .unwrap();
        assert_eq!(
            chunks(&store, "exec_plain"),
            vec![(0, "d0".to_string()), (0, "d1".to_string())]
        );
    }

    #[tokio::test]
    async fn a_batch_is_stored_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = AttemptLog::new(store.clone(), "exec_z", 0, Arc::new(request()));
        let raw = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"delta":{"content":"word "}}]}"#;
        for _ in 0..20 {
            log.record(LogEntry::Chunk { data: raw });
        }
        drop(log);
        let (_, value) = store.attempt_log.iter().next().unwrap().unwrap();
        assert!(value.starts_with(&ZSTD_MAGIC));
        assert!(value.len() < 20 * raw.len() / 4, "{} bytes", value.len());
        assert_eq!(chunks(&store, "exec_z").len(), 20);
    }
}
