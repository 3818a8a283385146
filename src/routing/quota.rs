//! Upstream quotas per route — (provider, upstream model) — beside the health board: what this
//! gateway sent in the current minute and the current UTC day against the route's configured
//! caps, and the headroom the provider itself reported (rate-limit headers, 429 cooldowns).
//! A route without headroom is skipped like an open breaker, but unlike a breaker it is never
//! tried before its reset: the provider has already said no.
//!
//! Windows are fixed, not sliding: the calendar minute and the calendar day in UTC, which is
//! how free and paid tiers count daily caps. Every function takes the wall clock (ms since the
//! epoch) as an argument so rollover is tested without waiting. A request counts its estimated
//! tokens when its attempt starts and is corrected to the provider's usage when it ends (kept
//! at the estimate when the provider reported none); admission compares what is used with the
//! cap, so one request may overshoot a token cap by its own size.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::health::RouteKey;
use crate::domain::rfc3339;
use crate::error::ErrorCode;
use crate::providers::{Headroom, ProviderError};
use crate::settings::{RouteSettings, Settings};
use crate::store::RouteDay;

pub const MINUTE_MS: u64 = 60_000;
pub const DAY_MS: u64 = 86_400_000;

/// A route's configured caps; 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
    pub requests_per_day: u64,
    pub tokens_per_day: u64,
}

impl Limits {
    fn of(r: &RouteSettings) -> Limits {
        Limits {
            requests_per_minute: r.requests_per_minute,
            tokens_per_minute: r.tokens_per_minute,
            requests_per_day: r.requests_per_day,
            tokens_per_day: r.tokens_per_day,
        }
    }

    /// The stricter of two declarations of one route (it may serve several model slugs).
    fn merge(self, other: Limits) -> Limits {
        let strict = |a: u64, b: u64| match (a, b) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        Limits {
            requests_per_minute: strict(self.requests_per_minute, other.requests_per_minute),
            tokens_per_minute: strict(self.tokens_per_minute, other.tokens_per_minute),
            requests_per_day: strict(self.requests_per_day, other.requests_per_day),
            tokens_per_day: strict(self.tokens_per_day, other.tokens_per_day),
        }
    }
}

/// Use within one fixed window; `index` is the window's number since the epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub index: u64,
    pub requests: u64,
    pub tokens: u64,
}

impl Window {
    /// This window as of window `index`: empty once it rolled over.
    fn at(self, index: u64) -> Window {
        if self.index == index {
            self
        } else {
            Window {
                index,
                ..Window::default()
            }
        }
    }
}

/// Why a route has no headroom now; `not_admitted_reason` in routing status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    QuotaRequestsPerMinute,
    QuotaTokensPerMinute,
    QuotaRequestsPerDay,
    QuotaTokensPerDay,
    /// The provider's headers said no requests remain until a reset.
    ProviderRequestsExhausted,
    /// The provider's headers said no tokens remain until a reset.
    ProviderTokensExhausted,
    /// The provider answered 429: cooling down.
    ProviderRateLimited,
    /// In a cluster: this node is taking more of a day cap from the shared count (a moment;
    /// a submit is not refused for it, an attempt waits).
    QuotaRefilling,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::QuotaRequestsPerMinute => "quota_requests_per_minute",
            Reason::QuotaTokensPerMinute => "quota_tokens_per_minute",
            Reason::QuotaRequestsPerDay => "quota_requests_per_day",
            Reason::QuotaTokensPerDay => "quota_tokens_per_day",
            Reason::ProviderRequestsExhausted => "provider_requests_exhausted",
            Reason::ProviderTokensExhausted => "provider_tokens_exhausted",
            Reason::ProviderRateLimited => "provider_rate_limited",
            Reason::QuotaRefilling => "quota_refilling",
        }
    }
}

/// A route out of headroom: why, and when it has some again (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    pub reason: Reason,
    pub until_ms: u64,
}

impl Exhausted {
    /// The `503 provider_unavailable` a submit gets, with `Retry-After` at `until_ms`.
    pub fn api_error(&self, what: &str, now_ms: u64) -> crate::error::ApiError {
        let mut err = crate::error::ApiError::new(
            ErrorCode::ProviderUnavailable,
            format!(
                "{what}: no route has upstream quota left ({}) until {}",
                self.reason.as_str(),
                rfc3339(self.until_ms)
            ),
        );
        let wait_ms = self.until_ms.saturating_sub(now_ms);
        err.retry_after = Some(Duration::from_secs(wait_ms.div_ceil(1000).max(1)));
        err
    }
}

/// What an attempt was counted for, so its end corrects the same windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charge {
    minute: u64,
    day: u64,
    tokens: u64,
}

/// In a cluster, the part of a route's day caps this node took from the cluster's shared
/// count (`cluster::quota`): the day caps hold across nodes because a node starts an attempt
/// only out of what it took. Minute windows stay per node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    day: u64,
    requests: u64,
    /// Corrections to real usage may take it below zero.
    tokens: i64,
    /// The shared count has nothing left today.
    spent: bool,
}

/// How long an attempt waits for this node to take more of a day cap.
const REFILL_WAIT_MS: u64 = 200;

/// What a node takes of a day cap at a time: a sixteenth of it (at least 1), so a node holds
/// at most that much it may not use.
fn block(cap: u64) -> u64 {
    (cap / 16).max(1)
}

/// A route whose day allowance is low: what to take from the shared count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub provider: String,
    pub model: String,
    pub day: u64,
    pub limits: Limits,
    /// How much to ask for (0: enough left of that kind).
    pub requests: u64,
    pub tokens: u64,
}

#[derive(Debug, Default)]
struct RouteQuota {
    limits: Limits,
    minute: Window,
    day: Window,
    /// `Some` in a cluster, for a route with a day cap.
    allowance: Option<Allowance>,
    /// The provider's last word on remaining requests and tokens, with their resets.
    reported: Headroom,
    cooldown_until_ms: u64,
}

impl RouteQuota {
    /// `Err` with the binding constraint (the one that lifts last) when any is exhausted.
    fn check(&self, now: u64) -> Result<(), Exhausted> {
        let (minute, day) = (self.minute.at(now / MINUTE_MS), self.day.at(now / DAY_MS));
        let minute_end = (now / MINUTE_MS + 1) * MINUTE_MS;
        let day_end = (now / DAY_MS + 1) * DAY_MS;
        let over = |limit: u64, used: u64| limit > 0 && used >= limit;
        let reported = |remaining: Option<u64>, reset: Option<u64>| match (remaining, reset) {
            (Some(0), Some(reset)) if reset > now => Some(reset),
            _ => None,
        };
        let l = &self.limits;
        let r = &self.reported;
        let blocks = [
            (
                over(l.requests_per_day, day.requests),
                Reason::QuotaRequestsPerDay,
                day_end,
            ),
            (
                over(l.tokens_per_day, day.tokens),
                Reason::QuotaTokensPerDay,
                day_end,
            ),
            (
                over(l.requests_per_minute, minute.requests),
                Reason::QuotaRequestsPerMinute,
                minute_end,
            ),
            (
                over(l.tokens_per_minute, minute.tokens),
                Reason::QuotaTokensPerMinute,
                minute_end,
            ),
        ];
        let provider = [
            (
                reported(r.requests_remaining, r.requests_reset_ms),
                Reason::ProviderRequestsExhausted,
            ),
            (
                reported(r.tokens_remaining, r.tokens_reset_ms),
                Reason::ProviderTokensExhausted,
            ),
            (
                (self.cooldown_until_ms > now).then_some(self.cooldown_until_ms),
                Reason::ProviderRateLimited,
            ),
        ];
        let day_index = now / DAY_MS;
        let allowance = self.allowance.and_then(|a| {
            let empty = a.day != day_index
                || (l.requests_per_day > 0 && a.requests == 0)
                || (l.tokens_per_day > 0 && a.tokens <= 0);
            let (reason, until_ms) = match (
                a.spent && a.day == day_index,
                l.requests_per_day > 0 && a.requests == 0,
            ) {
                (true, true) => (Reason::QuotaRequestsPerDay, day_end),
                (true, false) => (Reason::QuotaTokensPerDay, day_end),
                (false, _) => (Reason::QuotaRefilling, now + REFILL_WAIT_MS),
            };
            empty.then_some(Exhausted { reason, until_ms })
        });
        let all =
            blocks
                .into_iter()
                .filter(|(blocked, _, _)| *blocked)
                .map(|(_, reason, until_ms)| Exhausted { reason, until_ms })
                .chain(provider.into_iter().filter_map(|(until, reason)| {
                    until.map(|until_ms| Exhausted { reason, until_ms })
                }))
                .chain(allowance);
        match all.max_by_key(|e| e.until_ms) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn begin(&mut self, tokens: u64, now: u64) -> Charge {
        self.minute = self.minute.at(now / MINUTE_MS);
        self.day = self.day.at(now / DAY_MS);
        for w in [&mut self.minute, &mut self.day] {
            w.requests += 1;
            w.tokens += tokens;
        }
        if let Some(a) = self.allowance.as_mut().filter(|a| a.day == self.day.index) {
            a.requests = a.requests.saturating_sub(1);
            a.tokens -= i64::try_from(tokens).unwrap_or(i64::MAX);
        }
        // Until the provider's next answer, what it said shrinks by what we send it.
        let r = &mut self.reported;
        r.requests_remaining = r.requests_remaining.map(|n| n.saturating_sub(1));
        r.tokens_remaining = r.tokens_remaining.map(|n| n.saturating_sub(tokens));
        Charge {
            minute: self.minute.index,
            day: self.day.index,
            tokens,
        }
    }

    fn settle(&mut self, charge: Charge, actual: u64) {
        let correct = |w: &mut Window, index: u64| {
            if w.index == index {
                w.tokens = w.tokens.saturating_sub(charge.tokens) + actual;
            }
        };
        correct(&mut self.minute, charge.minute);
        correct(&mut self.day, charge.day);
        if let Some(a) = self.allowance.as_mut().filter(|a| a.day == charge.day) {
            let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            a.tokens -= signed(actual) - signed(charge.tokens);
        }
    }

    /// What this node should take of the route's day caps now, if anything.
    fn want(&mut self, now: u64) -> Option<(u64, u64)> {
        let a = self.allowance.as_mut()?;
        let today = now / DAY_MS;
        if a.day != today {
            *a = Allowance {
                day: today,
                ..Allowance::default()
            };
        }
        if a.spent {
            return None;
        }
        let l = &self.limits;
        // Taken again at half a block left (when a block is one, once it is used).
        let low = |cap: u64, left: i64| cap > 0 && left < (block(cap) as i64 / 2).max(1);
        let requests = match low(l.requests_per_day, a.requests as i64) {
            true => block(l.requests_per_day),
            false => 0,
        };
        let tokens = match low(l.tokens_per_day, a.tokens) {
            true => block(l.tokens_per_day),
            false => 0,
        };
        (requests > 0 || tokens > 0).then_some((requests, tokens))
    }

    fn observe(&mut self, h: &Headroom) {
        let r = &mut self.reported;
        if h.requests_remaining.is_some() {
            (r.requests_remaining, r.requests_reset_ms) =
                (h.requests_remaining, h.requests_reset_ms);
        }
        if h.tokens_remaining.is_some() {
            (r.tokens_remaining, r.tokens_reset_ms) = (h.tokens_remaining, h.tokens_reset_ms);
        }
    }

    /// A 429: cool down until the provider's `retry-after` (or Gemini's `retryDelay`), else the
    /// reset of the budget it reported empty. A 429 that says nothing about when to come back
    /// cools nothing here: the usual backoff retries it and the breaker counts it.
    fn rate_limited(&mut self, retry_after: Option<Duration>, now: u64) {
        let r = &self.reported;
        let exhausted_reset = [
            (r.requests_remaining, r.requests_reset_ms),
            (r.tokens_remaining, r.tokens_reset_ms),
        ]
        .into_iter()
        .filter_map(|(n, reset)| (n == Some(0)).then_some(reset).flatten())
        .max();
        let until = retry_after
            .map(|d| now + d.as_millis() as u64)
            .or(r.retry_at_ms)
            .or(exhausted_reset)
            .unwrap_or(0);
        self.cooldown_until_ms = self.cooldown_until_ms.max(until);
    }

    fn window_view(&self, w: Window, len: u64, req_limit: u64, tok_limit: u64, now: u64) -> Value {
        let w = w.at(now / len);
        let left = |limit: u64, used: u64| (limit > 0).then(|| limit.saturating_sub(used));
        let resets = (now / len + 1) * len;
        json!({
            "requests_used": w.requests,
            "tokens_used": w.tokens,
            "requests_remaining": left(req_limit, w.requests),
            "tokens_remaining": left(tok_limit, w.tokens),
            "resets_at": rfc3339(resets),
            "resets_in_ms": resets - now,
        })
    }

    fn snapshot(&self, now: u64) -> Value {
        let l = &self.limits;
        let r = &self.reported;
        // A reported budget whose reset has passed says nothing any more.
        let live = |n: Option<u64>, reset: Option<u64>| match reset {
            Some(t) if t <= now => (None, None),
            _ => (n, reset.map(rfc3339)),
        };
        let (req, req_reset) = live(r.requests_remaining, r.requests_reset_ms);
        let (tok, tok_reset) = live(r.tokens_remaining, r.tokens_reset_ms);
        json!({
            "limits": l,
            "minute": self.window_view(self.minute, MINUTE_MS, l.requests_per_minute, l.tokens_per_minute, now),
            "day": self.window_view(self.day, DAY_MS, l.requests_per_day, l.tokens_per_day, now),
            "provider": {
                "requests_remaining": req,
                "requests_reset_at": req_reset,
                "tokens_remaining": tok,
                "tokens_reset_at": tok_reset,
            },
            "cooldown_remaining_ms": self.cooldown_until_ms.saturating_sub(now),
        })
    }
}

/// Headroom left per window, for the gauges: `(window, requests, tokens)` where a window
/// without a cap (or a provider that reported nothing) has `None`.
pub type HeadroomGauge = (&'static str, Option<u64>, Option<u64>);

/// Every route's quota, shared by all executions and the embeddings path.
pub struct QuotaBoard {
    /// provider → upstream model → quota: looked up by `&str`, no allocation per attempt.
    inner: Mutex<HashMap<String, HashMap<String, RouteQuota>>>,
    /// Day counters changed since the last save (see [`QuotaBoard::take_dirty_days`]).
    dirty: AtomicBool,
}

impl QuotaBoard {
    pub fn new(settings: &Settings) -> QuotaBoard {
        let mut routes: HashMap<String, HashMap<String, RouteQuota>> = HashMap::new();
        for r in settings.models.iter().flat_map(|m| &m.routes) {
            let q = routes
                .entry(r.provider.clone())
                .or_default()
                .entry(r.model.clone())
                .or_default();
            q.limits = if q.limits == Limits::default() {
                Limits::of(r)
            } else {
                q.limits.merge(Limits::of(r))
            };
        }
        QuotaBoard {
            inner: Mutex::new(routes),
            dirty: AtomicBool::new(false),
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, RouteQuota>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<R>(&self, key: RouteKey<'_>, f: impl FnOnce(&mut RouteQuota) -> R) -> R {
        let mut board = self.board();
        let known = board
            .get(key.provider)
            .is_some_and(|m| m.contains_key(key.model));
        if !known {
            // A route first seen at run time (an embeddings model): no caps, allocated once.
            board
                .entry(key.provider.to_string())
                .or_default()
                .insert(key.model.to_string(), RouteQuota::default());
        }
        let q = board
            .get_mut(key.provider)
            .and_then(|m| m.get_mut(key.model))
            .expect("inserted above");
        f(q)
    }

    /// `Ok` when the route has headroom at `now_ms`.
    pub fn check(&self, key: RouteKey<'_>, now_ms: u64) -> Result<(), Exhausted> {
        let board = self.board();
        match board.get(key.provider).and_then(|m| m.get(key.model)) {
            Some(q) => q.check(now_ms),
            None => Ok(()),
        }
    }

    pub fn admits(&self, key: RouteKey<'_>, now_ms: u64) -> bool {
        self.check(key, now_ms).is_ok()
    }

    /// Counts an attempt starting on the route with its estimated tokens.
    pub fn begin(&self, key: RouteKey<'_>, tokens: u64, now_ms: u64) -> Charge {
        self.dirty.store(true, Ordering::Relaxed);
        self.with(key, |q| q.begin(tokens, now_ms))
    }

    /// Corrects an attempt's tokens to what the provider reported using.
    pub fn settle(&self, key: RouteKey<'_>, charge: Charge, actual_tokens: u64) {
        self.dirty.store(true, Ordering::Relaxed);
        self.with(key, |q| q.settle(charge, actual_tokens));
    }

    /// What a response's rate-limit headers said.
    pub fn observe(&self, key: RouteKey<'_>, headroom: &Headroom) {
        self.with(key, |q| q.observe(headroom));
    }

    /// A failed attempt: learn from its headers, and cool the route down on a 429.
    pub fn failed(&self, key: RouteKey<'_>, err: &ProviderError, now_ms: u64) {
        self.with(key, |q| {
            if let Some(h) = &err.headroom {
                q.observe(h);
                q.reported.retry_at_ms = h.retry_at_ms;
            }
            if err.code == ErrorCode::RateLimited {
                q.rate_limited(err.retry_after, now_ms);
            }
            q.reported.retry_at_ms = None;
        });
    }

    pub fn snapshot(&self, key: RouteKey<'_>, now_ms: u64) -> Value {
        let board = self.board();
        board
            .get(key.provider)
            .and_then(|m| m.get(key.model))
            .map_or(Value::Null, |q| q.snapshot(now_ms))
    }

    /// Every route's headroom per window (`minute`, `day`, `provider`), for the gauges.
    pub fn gauges(&self, now_ms: u64) -> Vec<(String, String, Vec<HeadroomGauge>)> {
        let board = self.board();
        let left = |limit: u64, used: u64| (limit > 0).then(|| limit.saturating_sub(used));
        board
            .iter()
            .flat_map(|(p, models)| models.iter().map(move |(m, q)| (p, m, q)))
            .map(|(p, m, q)| {
                let (l, r) = (&q.limits, &q.reported);
                let minute = q.minute.at(now_ms / MINUTE_MS);
                let day = q.day.at(now_ms / DAY_MS);
                let live = |n: Option<u64>, reset: Option<u64>| {
                    n.filter(|_| reset.is_none_or(|t| t > now_ms))
                };
                let windows = vec![
                    (
                        "minute",
                        left(l.requests_per_minute, minute.requests),
                        left(l.tokens_per_minute, minute.tokens),
                    ),
                    (
                        "day",
                        left(l.requests_per_day, day.requests),
                        left(l.tokens_per_day, day.tokens),
                    ),
                    (
                        "provider",
                        live(r.requests_remaining, r.requests_reset_ms),
                        live(r.tokens_remaining, r.tokens_reset_ms),
                    ),
                ];
                (p.clone(), m.clone(), windows)
            })
            .collect()
    }

    /// In a cluster: day caps are taken from the shared count (see [`Allowance`]).
    pub fn share_days(&self) {
        for q in self.board().values_mut().flat_map(|m| m.values_mut()) {
            if q.limits.requests_per_day > 0 || q.limits.tokens_per_day > 0 {
                q.allowance = Some(Allowance::default());
            }
        }
    }

    /// The routes whose day allowance runs low, with what to take.
    pub fn wants(&self, now_ms: u64) -> Vec<Want> {
        let mut board = self.board();
        let mut out = Vec::new();
        for (provider, models) in board.iter_mut() {
            for (model, q) in models.iter_mut() {
                if let Some((requests, tokens)) = q.want(now_ms) {
                    out.push(Want {
                        provider: provider.clone(),
                        model: model.clone(),
                        day: now_ms / DAY_MS,
                        limits: q.limits,
                        requests,
                        tokens,
                    });
                }
            }
        }
        out
    }

    /// What this node took of a route's day caps; `spent`: the shared count has no more today.
    pub fn grant(&self, want: &Want, requests: u64, tokens: u64, spent: bool) {
        let key = RouteKey {
            provider: &want.provider,
            model: &want.model,
        };
        self.with(key, |q| {
            if let Some(a) = q.allowance.as_mut().filter(|a| a.day == want.day) {
                a.requests += requests;
                a.tokens += i64::try_from(tokens).unwrap_or(i64::MAX);
                a.spent |= spent;
            }
        });
    }

    /// Every route's day counters when any changed since the last call (for the periodic
    /// save); `None` when nothing changed.
    pub fn take_dirty_days(&self) -> Option<Vec<RouteDay>> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return None;
        }
        let board = self.board();
        let days = board
            .iter()
            .flat_map(|(p, models)| models.iter().map(move |(m, q)| (p, m, q)))
            .filter(|(_, _, q)| q.day != Window::default())
            .map(|(p, m, q)| RouteDay {
                provider: p.clone(),
                model: m.clone(),
                day: q.day.index,
                requests: q.day.requests,
                tokens: q.day.tokens,
            })
            .collect();
        Some(days)
    }

    /// Puts back day counters saved by an earlier process (a past day's are harmless: the
    /// window rolls over on its next use).
    pub fn restore(&self, days: Vec<RouteDay>) {
        for d in days {
            let key = RouteKey {
                provider: &d.provider,
                model: &d.model,
            };
            let window = Window {
                index: d.day,
                requests: d.requests,
                tokens: d.tokens,
            };
            self.with(key, |q| q.day = window);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2023-11-14T22:13:20Z.
    const NOW: u64 = 1_700_000_000_000;

    fn limited(l: Limits) -> RouteQuota {
        RouteQuota {
            limits: l,
            ..RouteQuota::default()
        }
    }

    #[test]
    fn in_a_cluster_attempts_start_only_out_of_what_the_node_took() {
        let mut q = limited(Limits {
            requests_per_day: 32,
            ..Limits::default()
        });
        q.allowance = Some(Allowance::default());
        // Nothing taken yet: a short wait, not a refusal until tomorrow.
        assert_eq!(q.check(NOW).unwrap_err().reason, Reason::QuotaRefilling);
        let (requests, _) = q.want(NOW).expect("wants a block");
        assert_eq!(requests, 2, "a sixteenth of the cap");
        q.allowance.as_mut().unwrap().requests += requests;
        assert!(q.check(NOW).is_ok());
        q.begin(10, NOW);
        assert!(q.want(NOW).is_none(), "half a block left: enough");
        q.begin(10, NOW);
        assert!(q.want(NOW).is_some(), "less than half a block: taken again");
        assert_eq!(q.check(NOW).unwrap_err().reason, Reason::QuotaRefilling);
        // The shared count has nothing left: refused until the day rolls over.
        q.allowance.as_mut().unwrap().spent = true;
        let e = q.check(NOW).unwrap_err();
        assert_eq!(e.reason, Reason::QuotaRequestsPerDay);
        assert_eq!(e.until_ms, (NOW / DAY_MS + 1) * DAY_MS);
        assert!(q.want(NOW).is_none());
        // A new day starts empty and wants again.
        assert!(q.want(NOW + DAY_MS).is_some());
    }

    #[test]
    fn a_daily_request_cap_blocks_until_the_utc_day_rolls_over() {
        let mut q = limited(Limits {
            requests_per_day: 2,
            ..Limits::default()
        });
        q.begin(10, NOW);
        assert!(q.check(NOW).is_ok());
        q.begin(10, NOW + 1);
        let e = q.check(NOW + 2).unwrap_err();
        assert_eq!(e.reason, Reason::QuotaRequestsPerDay);
        let midnight = (NOW / DAY_MS + 1) * DAY_MS;
        assert_eq!(e.until_ms, midnight);
        assert!(q.check(midnight - 1).is_err());
        assert!(q.check(midnight).is_ok(), "a new UTC day starts empty");
    }

    #[test]
    fn minute_windows_roll_over_on_the_minute() {
        let mut q = limited(Limits {
            tokens_per_minute: 100,
            ..Limits::default()
        });
        let start = (NOW / MINUTE_MS) * MINUTE_MS;
        q.begin(150, start + 59_000);
        let e = q.check(start + 59_500).unwrap_err();
        assert_eq!(e.reason, Reason::QuotaTokensPerMinute);
        assert_eq!(e.until_ms, start + MINUTE_MS);
        assert!(q.check(start + MINUTE_MS).is_ok());
        // The day window still counts it.
        assert_eq!(q.day.at(NOW / DAY_MS).tokens, 150);
    }

    #[test]
    fn usage_corrects_the_estimate_in_the_windows_it_was_charged_to() {
        let mut q = limited(Limits {
            tokens_per_day: 1_000,
            ..Limits::default()
        });
        let c = q.begin(900, NOW);
        q.settle(c, 40);
        assert_eq!(q.day.tokens, 40);
        assert_eq!(q.minute.tokens, 40);
        // A minute that rolled over meanwhile is not corrected.
        let c = q.begin(100, NOW);
        q.begin(5, NOW + MINUTE_MS);
        q.settle(c, 10);
        assert_eq!(q.minute.tokens, 5);
        assert_eq!(q.day.tokens, 40 + 10 + 5);
    }

    #[test]
    fn the_binding_constraint_is_the_one_that_lifts_last() {
        let mut q = limited(Limits {
            requests_per_minute: 1,
            requests_per_day: 1,
            ..Limits::default()
        });
        q.begin(1, NOW);
        assert_eq!(
            q.check(NOW).unwrap_err().reason,
            Reason::QuotaRequestsPerDay
        );
    }

    #[test]
    fn provider_reported_exhaustion_blocks_until_its_reset() {
        let mut q = RouteQuota::default();
        q.observe(&Headroom {
            requests_remaining: Some(1),
            requests_reset_ms: Some(NOW + 5_000),
            ..Headroom::default()
        });
        assert!(q.check(NOW).is_ok());
        q.begin(10, NOW);
        let e = q.check(NOW).unwrap_err();
        assert_eq!(e.reason, Reason::ProviderRequestsExhausted);
        assert_eq!(e.until_ms, NOW + 5_000);
        assert!(q.check(NOW + 5_000).is_ok());
        // Exhausted without a reset: not blocked on a guess.
        q.observe(&Headroom {
            tokens_remaining: Some(0),
            ..Headroom::default()
        });
        assert!(q.check(NOW + 6_000).is_ok());
    }

    #[test]
    fn a_429_cools_down_for_its_retry_after_or_the_reset_and_without_a_hint_not_at_all() {
        let mut q = RouteQuota::default();
        q.rate_limited(Some(Duration::from_secs(7)), NOW);
        let e = q.check(NOW).unwrap_err();
        assert_eq!(
            (e.reason, e.until_ms),
            (Reason::ProviderRateLimited, NOW + 7_000)
        );
        let mut q = RouteQuota::default();
        q.observe(&Headroom {
            tokens_remaining: Some(0),
            tokens_reset_ms: Some(NOW + 20_000),
            ..Headroom::default()
        });
        q.rate_limited(None, NOW);
        assert_eq!(q.cooldown_until_ms, NOW + 20_000);
        let mut q = RouteQuota::default();
        q.rate_limited(None, NOW);
        assert!(q.check(NOW).is_ok());
    }

    #[test]
    fn the_stricter_declaration_of_a_shared_route_wins() {
        let a = Limits {
            requests_per_day: 10,
            tokens_per_minute: 0,
            ..Limits::default()
        };
        let b = Limits {
            requests_per_day: 5,
            tokens_per_minute: 100,
            ..Limits::default()
        };
        let m = a.merge(b);
        assert_eq!((m.requests_per_day, m.tokens_per_minute), (5, 100));
    }

    #[test]
    fn day_counters_are_saved_only_when_changed_and_restored() {
        let settings = Settings::parse(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"x\"\n[[providers]]\nname = \"p\"\nkind = \"mock\"\n\
             [[models]]\nslug = \"a\"\nroutes = [{ provider = \"p\", model = \"m\", requests_per_day = 1 }]",
        )
        .unwrap();
        let board = QuotaBoard::new(&settings);
        let key = RouteKey {
            provider: "p",
            model: "m",
        };
        assert_eq!(board.take_dirty_days(), None);
        board.begin(key, 3, NOW);
        let days = board.take_dirty_days().unwrap();
        assert_eq!(days.len(), 1);
        assert_eq!(board.take_dirty_days(), None);
        let fresh = QuotaBoard::new(&settings);
        assert!(fresh.admits(key, NOW));
        fresh.restore(days);
        assert!(!fresh.admits(key, NOW));
        assert!(fresh.admits(key, NOW + DAY_MS));
    }
}
