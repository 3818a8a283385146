//! Route health: a circuit breaker per route — (provider, upstream model) — with EWMA latency
//! and time to first chunk and in-flight counts, so two models of one provider fail
//! independently: one model's outage does not cool the other down, and the other's successes
//! do not close its breaker. Faults that are the provider's as a whole (connection refused or
//! reset, rejected credentials) count against every route of that provider. A per-provider
//! aggregate of all its attempts is kept for operators; it decides nothing. State transitions
//! take the clock as an argument, so they are tested with paused time.
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
                    tracing::info!("breaker closed");
                }
            }
            Outcome::Failure => self.fault(now),
            Outcome::Neutral => {
                if self.state == BreakerState::HalfOpen {
                    self.probe_in_flight = false;
                }
            }
        }
    }

    /// Counts a fault: from this route's own attempt, or one that was its provider's as a
    /// whole (then no attempt of this route was in flight).
    pub fn fault(&mut self, now: Instant) {
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

    /// (state, cooldown left) as gauges read them.
    fn gauge(&self, now: Instant) -> (BreakerState, Duration) {
        let left = match (self.state, self.open_until) {
            (BreakerState::Open, Some(until)) => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        };
        (self.state(now), left)
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

/// A route's name in the board: provider and upstream model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteKey<'a> {
    pub provider: &'a str,
    pub model: &'a str,
}

/// Every route's health (and each provider's aggregate), shared by all executions.
pub struct HealthBoard {
    inner: Mutex<Board>,
}

struct Board {
    /// The breaker settings of each provider, for routes first seen at run time.
    settings: HashMap<String, (u32, Duration)>,
    /// provider → upstream model → health: looked up by `&str`, no allocation per attempt.
    routes: HashMap<String, HashMap<String, ProviderHealth>>,
    providers: HashMap<String, ProviderHealth>,
}

impl Board {
    fn route(&mut self, key: RouteKey<'_>) -> Option<&mut ProviderHealth> {
        let &(failures, cooldown) = self.settings.get(key.provider)?;
        let known = self
            .routes
            .get(key.provider)
            .is_some_and(|models| models.contains_key(key.model));
        if !known {
            // A route first seen at run time (an embeddings model): allocate once.
            self.routes
                .entry(key.provider.to_string())
                .or_default()
                .insert(
                    key.model.to_string(),
                    ProviderHealth::new(failures, cooldown),
                );
        }
        self.routes.get_mut(key.provider)?.get_mut(key.model)
    }
}

impl HealthBoard {
    pub fn new(settings: &Settings) -> HealthBoard {
        let breaker: HashMap<String, (u32, Duration)> = settings
            .providers
            .iter()
            .map(|p| {
                let cooldown = Duration::from_millis(p.breaker_cooldown_ms);
                (p.name.clone(), (p.breaker_failures, cooldown))
            })
            .collect();
        let fresh = |name: &str| {
            let (failures, cooldown) = breaker[name];
            ProviderHealth::new(failures, cooldown)
        };
        let providers = breaker.keys().map(|n| (n.clone(), fresh(n))).collect();
        let mut routes: HashMap<String, HashMap<String, ProviderHealth>> = HashMap::new();
        for r in settings.models.iter().flat_map(|m| &m.routes) {
            if breaker.contains_key(&r.provider) {
                routes
                    .entry(r.provider.clone())
                    .or_default()
                    .insert(r.model.clone(), fresh(&r.provider));
            }
        }
        HealthBoard {
            inner: Mutex::new(Board {
                settings: breaker,
                routes,
                providers,
            }),
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<R>(&self, key: RouteKey<'_>, f: impl FnOnce(&mut ProviderHealth) -> R) -> Option<R> {
        self.board().route(key).map(f)
    }

    pub fn admits(&self, key: RouteKey<'_>, now: Instant) -> bool {
        self.with(key, |h| h.admits(now)).unwrap_or(true)
    }

    /// Time left before a route's open breaker admits its probe.
    pub fn cooldown(&self, key: RouteKey<'_>, now: Instant) -> Duration {
        self.with(key, |h| h.gauge(now).1).unwrap_or_default()
    }

    pub fn last_failure(&self, key: RouteKey<'_>) -> Option<Instant> {
        self.with(key, |h| h.last_failure()).flatten()
    }

    pub fn in_flight(&self, key: RouteKey<'_>) -> u32 {
        self.with(key, |h| h.in_flight).unwrap_or(0)
    }

    pub fn begin(&self, key: RouteKey<'_>, now: Instant) {
        let mut board = self.board();
        Self::begin_on(&mut board, key, now);
    }

    /// [`Self::begin`] if the route's breaker admits an attempt, checked under the same lock:
    /// of two executions starting on different threads, only one gets a half-open probe.
    pub fn begin_admitted(&self, key: RouteKey<'_>, now: Instant) -> bool {
        let mut board = self.board();
        let admitted = board.route(key).is_none_or(|h| h.admits(now));
        if admitted {
            Self::begin_on(&mut board, key, now);
        }
        admitted
    }

    fn begin_on(board: &mut Board, key: RouteKey<'_>, now: Instant) {
        if let Some(h) = board.route(key) {
            h.begin(now);
        }
        if let Some(h) = board.providers.get_mut(key.provider) {
            h.begin(now);
        }
    }

    /// Ends an attempt on `key`. A failure that is the provider's as a whole
    /// (`provider_wide`) also counts against every other route of that provider.
    pub fn end(&self, key: RouteKey<'_>, now: Instant, outcome: Outcome, provider_wide: bool) {
        let mut board = self.board();
        if let Some(h) = board.route(key) {
            h.end(now, outcome);
        }
        if let Some(h) = board.providers.get_mut(key.provider) {
            h.end(now, outcome);
        }
        if provider_wide && outcome == Outcome::Failure {
            if let Some(models) = board.routes.get_mut(key.provider) {
                for (_, h) in models.iter_mut().filter(|(m, _)| *m != key.model) {
                    h.fault(now);
                }
            }
        }
    }

    /// A provider's aggregate (state, cooldown left) for the metrics scrape.
    pub fn state(&self, provider: &str, now: Instant) -> Option<(BreakerState, Duration)> {
        self.board().providers.get(provider).map(|h| h.gauge(now))
    }

    /// Every route's (provider, model, state, cooldown left), for the metrics scrape.
    pub fn route_states(&self, now: Instant) -> Vec<(String, String, BreakerState, Duration)> {
        let board = self.board();
        let routes = board
            .routes
            .iter()
            .flat_map(|(p, models)| models.iter().map(move |(m, h)| (p, m, h)));
        routes
            .map(|(p, m, h)| {
                let (state, left) = h.gauge(now);
                (p.clone(), m.clone(), state, left)
            })
            .collect()
    }

    /// A provider's aggregate over all its routes: what operators read; it admits nothing.
    pub fn snapshot(&self, provider: &str, now: Instant) -> Value {
        self.board()
            .providers
            .get(provider)
            .map_or(Value::Null, |h| h.snapshot(now))
    }

    pub fn route_snapshot(&self, key: RouteKey<'_>, now: Instant) -> Value {
        self.with(key, |h| h.snapshot(now)).unwrap_or(Value::Null)
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

    fn board(providers: &str, routes: &str) -> HealthBoard {
        let toml = format!("listen = \"127.0.0.1:0\"\ndata_dir = \"x\"\n{providers}\n{routes}");
        HealthBoard::new(&Settings::parse(&toml).unwrap())
    }

    /// Executions start on several threads: of two racing for a half-open route, exactly one
    /// gets the probe, however the threads interleave.
    #[tokio::test(start_paused = true)]
    async fn only_one_of_many_threads_claims_a_half_open_probe() {
        let b = std::sync::Arc::new(board(
            "[[providers]]\nname = \"p\"\nkind = \"mock\"\nbreaker_failures = 1\nbreaker_cooldown_ms = 1000",
            "[[models]]\nslug = \"a\"\nroutes = [{ provider = \"p\", model = \"m\" }]",
        ));
        let key = RouteKey {
            provider: "p",
            model: "m",
        };
        b.begin(key, Instant::now());
        b.end(key, Instant::now(), Outcome::Failure, false);
        assert!(!b.begin_admitted(key, Instant::now()), "open");
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let claims: Vec<bool> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || b.begin_admitted(key, now))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(claims.iter().filter(|&&c| c).count(), 1, "{claims:?}");
        assert_eq!(b.in_flight(key), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_wide_fault_counts_against_every_route_of_the_provider() {
        let b = board(
            "[[providers]]\nname = \"p\"\nkind = \"mock\"\nbreaker_failures = 1\n\
             [[providers]]\nname = \"q\"\nkind = \"mock\"\nbreaker_failures = 1",
            "[[models]]\nslug = \"a\"\nroutes = [{ provider = \"p\", model = \"m1\" }, { provider = \"q\", model = \"m1\" }]\n\
             [[models]]\nslug = \"b\"\nroutes = [{ provider = \"p\", model = \"m2\" }]",
        );
        let key = |provider, model| RouteKey { provider, model };
        let now = Instant::now();
        // A model's own fault: only its route.
        b.begin(key("p", "m1"), now);
        b.end(key("p", "m1"), now, Outcome::Failure, false);
        assert!(!b.admits(key("p", "m1"), now));
        assert!(b.admits(key("p", "m2"), now));
        assert!(b.admits(key("q", "m1"), now));
        // The provider's as a whole (refused connection, bad key): every route of it.
        tokio::time::advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        b.begin(key("p", "m1"), now);
        b.end(key("p", "m1"), now, Outcome::Failure, true);
        assert!(!b.admits(key("p", "m1"), now));
        assert!(!b.admits(key("p", "m2"), now));
        assert!(
            b.admits(key("q", "m1"), now),
            "another provider is not touched"
        );
        assert_eq!(b.in_flight(key("p", "m2")), 0);
    }
}
