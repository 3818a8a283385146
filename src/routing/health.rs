//! Provider health: a circuit breaker per provider, EWMA latency and time to first chunk, and
//! in-flight counts. State transitions take the clock as an argument, so they are tested with
//! paused time.
//!
//! Closed → Open after `breaker_failures` consecutive failures, or when at least half of the
//! last 20 attempts (with 10 or more) failed. Open → (cooldown) → one half-open probe → Closed on
//! success, Open again on failure. Only faults of the provider count (unavailable, timeouts,
//! cuts, rate limits, rejected credentials); a request the provider rightly refused (context
//! length, content filter) does not.

use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use crate::settings::Settings;

const WINDOW: usize = 20;
const MIN_WINDOW: usize = 10;
const MAX_ERROR_RATE: f64 = 0.5;
/// Weight of the newest sample in the moving averages.
const EWMA_ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// How an attempt ended, from the provider's point of view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Success {
        latency: Duration,
        first_chunk: Option<Duration>,
    },
    /// A fault of the provider.
    Failure,
    /// Neither: cancelled, superseded, or a request-specific refusal.
    Neutral,
}

#[derive(Debug)]
pub struct ProviderHealth {
    failure_threshold: u32,
    cooldown: Duration,
    state: BreakerState,
    open_until: Option<Instant>,
    probe_in_flight: bool,
    consecutive_failures: u32,
    window: VecDeque<bool>,
    last_failure: Option<Instant>,
    latency_ms: Option<f64>,
    first_chunk_ms: Option<f64>,
    in_flight: u32,
    attempts: u64,
    failures: u64,
}

fn ewma(old: Option<f64>, sample: f64) -> Option<f64> {
    Some(match old {
        Some(o) => o + EWMA_ALPHA * (sample - o),
        None => sample,
    })
}

impl ProviderHealth {
    pub fn new(failure_threshold: u32, cooldown: Duration) -> ProviderHealth {
        ProviderHealth {
            failure_threshold,
            cooldown,
            state: BreakerState::Closed,
            open_until: None,
            probe_in_flight: false,
            consecutive_failures: 0,
            window: VecDeque::with_capacity(WINDOW),
            last_failure: None,
            latency_ms: None,
            first_chunk_ms: None,
            in_flight: 0,
            attempts: 0,
            failures: 0,
        }
    }

    fn cooled(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    /// Whether a new attempt may go to this provider now.
    pub fn admits(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => self.cooled(now) && !self.probe_in_flight,
            BreakerState::HalfOpen => !self.probe_in_flight,
        }
    }

    /// The state as an operator should read it (an open breaker past its cooldown is ready
    /// for its probe).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open if self.cooled(now) => BreakerState::HalfOpen,
            s => s,
        }
    }

    pub fn begin(&mut self, now: Instant) {
        self.in_flight += 1;
        self.attempts += 1;
        if self.state == BreakerState::Open && self.cooled(now) {
            self.state = BreakerState::HalfOpen;
        }
        if self.state == BreakerState::HalfOpen {
            self.probe_in_flight = true;
        }
    }

    pub fn end(&mut self, now: Instant, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Success {
                latency,
                first_chunk,
            } => {
                self.record(true);
                self.consecutive_failures = 0;
                self.latency_ms = ewma(self.latency_ms, latency.as_secs_f64() * 1e3);
                if let Some(fc) = first_chunk {
                    self.first_chunk_ms = ewma(self.first_chunk_ms, fc.as_secs_f64() * 1e3);
                }
                if self.state != BreakerState::Closed {
                    self.state = BreakerState::Closed;
                    self.open_until = None;
                    self.probe_in_flight = false;
                    tracing::info!("provider breaker closed");
                }
            }
            Outcome::Failure => {
                self.record(false);
                self.failures += 1;
                self.consecutive_failures += 1;
                self.last_failure = Some(now);
                let failing = self.state == BreakerState::HalfOpen
                    || self.consecutive_failures >= self.failure_threshold
                    || (self.window.len() >= MIN_WINDOW && self.error_rate() >= MAX_ERROR_RATE);
                if failing {
                    self.state = BreakerState::Open;
                    self.open_until = Some(now + self.cooldown);
                    self.probe_in_flight = false;
                }
            }
            Outcome::Neutral => {
                if self.state == BreakerState::HalfOpen {
                    self.probe_in_flight = false;
                }
            }
        }
    }

    fn record(&mut self, ok: bool) {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(ok);
    }

    /// Failed share of the recent attempts.
    pub fn error_rate(&self) -> f64 {
        if self.window.is_empty() {
            return 0.0;
        }
        self.window.iter().filter(|ok| !**ok).count() as f64 / self.window.len() as f64
    }

    pub fn last_failure(&self) -> Option<Instant> {
        self.last_failure
    }

    pub fn snapshot(&self, now: Instant) -> Value {
        let cooldown_ms = match (self.state, self.open_until) {
            (BreakerState::Open, Some(until)) => {
                until.saturating_duration_since(now).as_millis() as u64
            }
            _ => 0,
        };
        json!({
            "state": self.state(now),
            "cooldown_remaining_ms": cooldown_ms,
            "consecutive_failures": self.consecutive_failures,
            "error_rate": self.error_rate(),
            "in_flight": self.in_flight,
            "attempts": self.attempts,
            "failures": self.failures,
            "latency_ms_ewma": self.latency_ms,
            "first_chunk_ms_ewma": self.first_chunk_ms,
        })
    }
}

/// Every provider's health, shared by all executions.
pub struct HealthBoard {
    providers: Mutex<HashMap<String, ProviderHealth>>,
}

impl HealthBoard {
    pub fn new(settings: &Settings) -> HealthBoard {
        let providers = settings
            .providers
            .iter()
            .map(|p| {
                let health = ProviderHealth::new(
                    p.breaker_failures,
                    Duration::from_millis(p.breaker_cooldown_ms),
                );
                (p.name.clone(), health)
            })
            .collect();
        HealthBoard {
            providers: Mutex::new(providers),
        }
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut ProviderHealth) -> R) -> Option<R> {
        let mut map = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        map.get_mut(name).map(f)
    }

    pub fn admits(&self, name: &str, now: Instant) -> bool {
        self.with(name, |h| h.admits(now)).unwrap_or(true)
    }

    pub fn last_failure(&self, name: &str) -> Option<Instant> {
        self.with(name, |h| h.last_failure()).flatten()
    }

    pub fn in_flight(&self, name: &str) -> u32 {
        self.with(name, |h| h.in_flight).unwrap_or(0)
    }

    pub fn begin(&self, name: &str, now: Instant) {
        self.with(name, |h| h.begin(now));
    }

    pub fn end(&self, name: &str, now: Instant, outcome: Outcome) {
        self.with(name, |h| h.end(now, outcome));
    }

    /// (state, cooldown left) for the metrics scrape.
    pub fn state(&self, name: &str, now: Instant) -> Option<(BreakerState, Duration)> {
        self.with(name, |h| {
            let left = match (h.state, h.open_until) {
                (BreakerState::Open, Some(until)) => until.saturating_duration_since(now),
                _ => Duration::ZERO,
            };
            (h.state(now), left)
        })
    }

    pub fn snapshot(&self, name: &str, now: Instant) -> Value {
        self.with(name, |h| h.snapshot(now)).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Outcome {
        Outcome::Success {
            latency: Duration::from_millis(100),
            first_chunk: Some(Duration::from_millis(20)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_the_breaker_until_the_cooldown() {
        let mut h = ProviderHealth::new(3, Duration::from_secs(5));
        for _ in 0..3 {
            h.begin(Instant::now());
            h.end(Instant::now(), Outcome::Failure);
        }
        assert_eq!(h.state(Instant::now()), BreakerState::Open);
        assert!(!h.admits(Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(h.admits(Instant::now()));
        assert_eq!(h.state(Instant::now()), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn one_half_open_probe_closes_on_success_and_reopens_on_failure() {
        let mut h = ProviderHealth::new(1, Duration::from_secs(2));
        h.begin(Instant::now());
        h.end(Instant::now(), Outcome::Failure);
        tokio::time::advance(Duration::from_secs(2)).await;
        h.begin(Instant::now());
        assert!(!h.admits(Instant::now()), "only one probe at a time");
        h.end(Instant::now(), Outcome::Failure);
        assert_eq!(h.state(Instant::now()), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(2)).await;
        h.begin(Instant::now());
        h.end(Instant::now(), ok());
        assert_eq!(h.state(Instant::now()), BreakerState::Closed);
        assert!(h.admits(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_error_rate_opens_it_without_a_streak() {
        let mut h = ProviderHealth::new(100, Duration::from_secs(1));
        for i in 0..11 {
            h.begin(Instant::now());
            h.end(
                Instant::now(),
                if i % 2 == 0 { Outcome::Failure } else { ok() },
            );
        }
        assert_eq!(h.state(Instant::now()), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_outcomes_neither_count_nor_block_probes() {
        let mut h = ProviderHealth::new(1, Duration::from_secs(1));
        h.begin(Instant::now());
        h.end(Instant::now(), Outcome::Neutral);
        assert_eq!(h.state(Instant::now()), BreakerState::Closed);
        h.begin(Instant::now());
        h.end(Instant::now(), Outcome::Failure);
        tokio::time::advance(Duration::from_secs(1)).await;
        h.begin(Instant::now());
        h.end(Instant::now(), Outcome::Neutral);
        assert!(h.admits(Instant::now()), "a cancelled probe frees the slot");
    }

    #[test]
    fn averages_move_towards_new_samples() {
        let mut h = ProviderHealth::new(5, Duration::from_secs(1));
        let now = Instant::now();
        h.begin(now);
        h.end(now, ok());
        h.begin(now);
        h.end(
            now,
            Outcome::Success {
                latency: Duration::from_millis(200),
                first_chunk: None,
            },
        );
        let snap = h.snapshot(now);
        assert_eq!(snap["latency_ms_ewma"].as_f64().unwrap().round(), 120.0);
        assert_eq!(snap["first_chunk_ms_ewma"].as_f64().unwrap().round(), 20.0);
        assert_eq!(snap["in_flight"], 0);
    }
}
