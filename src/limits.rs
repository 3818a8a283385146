//! Client rate limits (`[limits]`): requests per minute per client address; requests and
//! tokens per minute and executions in flight per API key and per project (defaults in the
//! config, overrides per key and per project through the admin API). One
//! [`RateLimits::admit`] per submit decides, and describes the outcome for the
//! `x-ratelimit-*` headers.
//!
//! Tokens are counted at admission by estimate (prompt + `max_tokens`) and corrected by the
//! real usage when the execution ends: the difference is carried into the next admission of
//! the same key or project (an over-estimate lowers what the next request is counted for, an
//! under-estimate raises it), since a GCRA limiter cannot be refunded.
//!
//! The request and token limits are GCRA limiters from `governor`: one atomic compare-and-swap
//! per check, no lock of ours, no timer. Keyed limiters (address, project) keep their state in
//! governor's sharded map; per-key state lives in a sharded map too, built from the `[limits]`
//! defaults and the key's overrides, which are cached here (read from sled once at start and
//! replaced on `PATCH /v1/keys/{id}`), so no request reads sled for its limits.

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, NotUntil, Quota};
use ipnet::IpNet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::settings::Limits;
use crate::store::KeyLimits;

/// Upper bounds for configured and per-key limits: anything larger is a typo, not a plan.
pub const MAX_REQUESTS_PER_MINUTE: u64 = 1_000_000;
/// governor counts a burst in a `u32`.
pub const MAX_TOKENS_PER_MINUTE: u64 = 1_000_000_000;
pub const MAX_CONCURRENT_EXECUTIONS: u64 = 1_000_000;
/// Completion tokens counted for a submit without `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u64 = 1_024;

/// The tokens a chat request is counted for at admission: its characters / 4 (the same rough
/// measure routing uses for context windows) plus `max_tokens`.
pub fn estimate_tokens(prompt_chars: usize, max_tokens: Option<u32>) -> u64 {
    (prompt_chars / 4) as u64 + max_tokens.map_or(DEFAULT_COMPLETION_ESTIMATE, u64::from)
}

type Direct = DefaultDirectRateLimiter<StateInformationMiddleware>;
type Keyed<K> = DefaultKeyedRateLimiter<K, StateInformationMiddleware>;
type Instant = <DefaultClock as Clock>::Instant;

/// Parses `trusted_proxies`; the error names the entry (`trusted_proxies[1]: …`).
pub fn parse_trusted_proxies(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("trusted_proxies[{i}]: `{e}` is not an IP address or CIDR range")
                })
        })
        .collect()
}

/// One limit's state as OpenAI's headers describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the allowance is whole again.
    pub reset: Duration,
}

/// What the `x-ratelimit-*` headers of an answer say: the tightest request limit that
/// applied, and the key's token limit when it has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl RateHeaders {
    fn tighten_requests(&mut self, w: Window) {
        if self
            .requests
            .is_none_or(|r| (w.remaining, w.limit) < (r.remaining, r.limit))
        {
            self.requests = Some(w);
        }
    }
}

/// Which limit refused a request (the `scope` label of `switchyard_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ip,
    Key,
    Project,
    Tokens,
    Concurrency,
    ProjectTokens,
    ProjectConcurrency,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Key => "key",
            Scope::Project => "project",
            Scope::Tokens => "tokens",
            Scope::Concurrency => "concurrency",
            Scope::ProjectTokens => "project_tokens",
            Scope::ProjectConcurrency => "project_concurrency",
        }
    }
}

#[derive(Debug)]
pub enum Refusal {
    /// Over a limit: retry after `retry_after`.
    Limited {
        scope: Scope,
        retry_after: Duration,
        headers: RateHeaders,
    },
    /// The request alone needs more tokens than the key may use in a minute: never admitted.
    TooLarge { tokens: u64, limit: u64 },
}

/// What an admitted execution holds until it ends: its places among the key's and the
/// project's executions in flight (given back when dropped), and the token counts to correct
/// by its real usage.
#[derive(Debug, Default)]
pub struct Permit {
    in_flight: Vec<Arc<AtomicU64>>,
    /// Each token limit's carried difference, and what this request was counted for there.
    tokens: Vec<(Arc<AtomicI64>, u64)>,
}

impl Permit {
    /// The request used `actual` tokens in all: the difference from its estimate is carried
    /// into the next admission of the same key and project.
    pub fn correct(&self, actual: u64) {
        for (debt, counted) in &self.tokens {
            let diff = i64::try_from(actual).unwrap_or(i64::MAX)
                - i64::try_from(*counted).unwrap_or(i64::MAX);
            debt.fetch_add(diff, Ordering::AcqRel);
        }
    }

    fn is_empty(&self) -> bool {
        self.in_flight.is_empty() && self.tokens.is_empty()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        for n in &self.in_flight {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An admitted request: its headers, and its place in flight when the key counts them.
#[derive(Debug, Default)]
pub struct Admission {
    pub headers: RateHeaders,
    pub permit: Option<Permit>,
}

/// The limits of one API key or project, built from the defaults and its overrides.
struct ScopeState {
    requests: Option<Direct>,
    tokens: Option<Direct>,
    max_in_flight: u64,
    /// Shared with the state that replaces this one on an override change, so executions
    /// admitted before it are still counted (and given back).
    in_flight: Arc<AtomicU64>,
    /// Real usage minus estimates of ended executions, not yet carried into an admission.
    token_debt: Arc<AtomicI64>,
}

/// The tokens a request is counted for once the carried difference is applied: at least 1;
/// a credit larger than the request is kept for the next one.
fn with_debt(debt: &AtomicI64, tokens: u64) -> u64 {
    let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
    let mut applied = 0;
    let _ = debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
        applied = d.max(1 - tokens);
        Some(d - applied)
    });
    (tokens + applied).max(1) as u64
}

/// Overrides, defaults and live state of one kind of scope (keys or projects).
struct Scopes {
    defaults: KeyLimits,
    overrides: DashMap<String, KeyLimits>,
    states: DashMap<String, Arc<ScopeState>>,
    /// One clock for every limiter: a fresh `quanta` clock calibrates itself (millions of
    /// instructions), which a key's first request would otherwise pay.
    clock: DefaultClock,
}

impl Scopes {
    fn new(
        defaults: KeyLimits,
        overrides: Vec<(String, KeyLimits)>,
        clock: DefaultClock,
    ) -> Scopes {
        Scopes {
            defaults,
            overrides: overrides.into_iter().collect(),
            states: DashMap::new(),
            clock,
        }
    }

    fn build(&self, id: &str, in_flight: Arc<AtomicU64>, debt: Arc<AtomicI64>) -> Arc<ScopeState> {
        let own = self.overrides.get(id).map(|o| *o).unwrap_or_default();
        let d = &self.defaults;
        let pick = |o: Option<u64>, d: Option<u64>| o.or(d).unwrap_or(0);
        let direct = |n| {
            quota(n).map(|q| {
                governor::RateLimiter::direct_with_clock(q, self.clock.clone()).with_middleware()
            })
        };
        Arc::new(ScopeState {
            requests: direct(pick(own.requests_per_minute, d.requests_per_minute)),
            tokens: direct(pick(own.tokens_per_minute, d.tokens_per_minute)),
            max_in_flight: pick(own.concurrent_executions, d.concurrent_executions),
            in_flight,
            token_debt: debt,
        })
    }

    fn get(&self, id: &str) -> Arc<ScopeState> {
        if let Some(state) = self.states.get(id) {
            return state.clone();
        }
        self.states
            .entry(id.to_string())
            .or_insert_with(|| self.build(id, Arc::default(), Arc::default()))
            .clone()
    }

    fn set(&self, id: &str, limits: KeyLimits) {
        if limits.is_empty() {
            self.overrides.remove(id);
        } else {
            self.overrides.insert(id.to_string(), limits);
        }
        let old = self.states.get(id).map(|k| k.clone());
        let state = match old {
            Some(old) => self.build(id, old.in_flight.clone(), old.token_debt.clone()),
            None => self.build(id, Arc::default(), Arc::default()),
        };
        self.states.insert(id.to_string(), state);
    }
}

fn quota(per_minute: u64) -> Option<Quota> {
    let n = NonZeroU32::new(u32::try_from(per_minute).unwrap_or(u32::MAX))?;
    Some(Quota::per_minute(n).allow_burst(n))
}

fn keyed<K: Clone + std::hash::Hash + Eq>(
    per_minute: u64,
    clock: &DefaultClock,
) -> Option<Keyed<K>> {
    quota(per_minute)
        .map(|q| governor::RateLimiter::dashmap_with_clock(q, clock.clone()).with_middleware())
}

fn window(snapshot: &StateSnapshot) -> Window {
    let q = snapshot.quota();
    let limit = u64::from(q.burst_size().get());
    let remaining = u64::from(snapshot.remaining_burst_capacity());
    let used = u32::try_from(limit - remaining.min(limit)).unwrap_or(u32::MAX);
    Window {
        limit,
        remaining,
        reset: q.replenish_interval() * used,
    }
}

/// A refusal's wait, and its headers' window (nothing left, whole again after a full refill).
fn refused(not_until: &NotUntil<Instant>, now: Instant) -> (Duration, Window) {
    let wait = not_until.wait_time_from(now);
    let q = not_until.quota();
    let limit = u64::from(q.burst_size().get());
    let full = q.replenish_interval() * q.burst_size().get();
    (
        wait,
        Window {
            limit,
            remaining: 0,
            reset: full.max(wait),
        },
    )
}

pub struct RateLimits {
    ip: Option<Keyed<IpAddr>>,
    trusted: Vec<IpNet>,
    keys: Scopes,
    projects: Scopes,
    clock: DefaultClock,
}

impl RateLimits {
    /// From validated settings and the stored overrides of keys and projects.
    pub fn new(
        limits: &Limits,
        key_overrides: Vec<(String, KeyLimits)>,
        project_overrides: Vec<(String, KeyLimits)>,
    ) -> RateLimits {
        let keys = KeyLimits {
            requests_per_minute: Some(limits.key_requests_per_minute),
            tokens_per_minute: Some(limits.key_tokens_per_minute),
            concurrent_executions: Some(limits.key_concurrent_executions),
            monthly_spend_cap_micros: None,
        };
        let projects = KeyLimits {
            requests_per_minute: Some(limits.project_requests_per_minute),
            ..KeyLimits::default()
        };
        let clock = DefaultClock::default();
        RateLimits {
            ip: keyed(limits.ip_requests_per_minute, &clock),
            trusted: parse_trusted_proxies(&limits.trusted_proxies).unwrap_or_default(),
            keys: Scopes::new(keys, key_overrides, clock.clone()),
            projects: Scopes::new(projects, project_overrides, clock.clone()),
            clock,
        }
    }

    /// Applies a key's new overrides at once (its request and token allowances start whole).
    pub fn set_key_limits(&self, key_id: &str, limits: KeyLimits) {
        self.keys.set(key_id, limits);
    }

    /// Applies a project's new overrides at once.
    pub fn set_project_limits(&self, project: &str, limits: KeyLimits) {
        self.projects.set(project, limits);
    }

    /// How many executions the key and the project may have in flight (0: no limit), for the
    /// cluster's shared count.
    pub fn max_in_flight(&self, key_id: &str, project: &str) -> (u64, u64) {
        (
            self.keys.get(key_id).max_in_flight,
            self.projects.get(project).max_in_flight,
        )
    }

    /// The key's monthly spend cap in micro-dollars (`None` or 0: none).
    pub fn monthly_spend_cap(&self, key_id: &str) -> Option<u64> {
        self.keys
            .overrides
            .get(key_id)?
            .monthly_spend_cap_micros
            .filter(|&c| c > 0)
    }

    /// Drops a revoked key's state (its executions still give their places back).
    pub fn forget_key(&self, key_id: &str) {
        self.keys.overrides.remove(key_id);
        self.keys.states.remove(key_id);
    }

    /// The client's address: the socket peer, or, when the peer is a trusted proxy, the
    /// right-most address of `Forwarded` / `X-Forwarded-For` that is not a trusted proxy
    /// (addresses further left were written by the client and could be anything).
    pub fn client_ip(&self, peer: IpAddr, forwarded: Option<&str>, xff: Option<&str>) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let chain: Vec<IpAddr> = match (forwarded, xff) {
            (Some(f), _) => parse_forwarded(f),
            (None, Some(x)) => x.split(',').filter_map(parse_addr).collect(),
            (None, None) => return peer,
        };
        chain
            .iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .or(chain.first())
            .copied()
            .unwrap_or(peer)
    }

    /// Whether `ip` is one of `trusted_proxies`.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        if self.trusted.is_empty() {
            return false;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Checks every limit that applies to a request of `tokens` (estimated) from `ip` with
    /// key `key_id` of `project`. The places in flight are taken first since they alone can be
    /// given back; a request refused by a later limit has still used the earlier allowances.
    pub fn admit(
        &self,
        ip: IpAddr,
        key_id: &str,
        project: &str,
        tokens: u64,
    ) -> Result<Admission, Refusal> {
        let key = self.keys.get(key_id);
        let proj = self.projects.get(project);
        let mut headers = RateHeaders::default();
        let mut permit = Permit::default();
        for (state, scope) in [
            (&key, Scope::Concurrency),
            (&proj, Scope::ProjectConcurrency),
        ] {
            if state.max_in_flight == 0 {
                continue;
            }
            let before = state.in_flight.fetch_add(1, Ordering::AcqRel);
            permit.in_flight.push(state.in_flight.clone());
            if before >= state.max_in_flight {
                return Err(Refusal::Limited {
                    scope,
                    // An execution's end cannot be foreseen: a second is the usual poll.
                    retry_after: Duration::from_secs(1),
                    headers,
                });
            }
        }
        let limited = |scope, n: NotUntil<Instant>, mut headers: RateHeaders| {
            let (retry_after, w) = refused(&n, self.clock.now());
            if matches!(scope, Scope::Tokens | Scope::ProjectTokens) {
                headers.tokens = Some(w);
            } else {
                headers.requests = Some(w);
            }
            Refusal::Limited {
                scope,
                retry_after,
                headers,
            }
        };
        if let Some(l) = &self.ip {
            match l.check_key(&ip) {
                Ok(s) => headers.tighten_requests(window(&s)),
                Err(n) => return Err(limited(Scope::Ip, n, headers)),
            }
        }
        for (state, scope) in [(&key, Scope::Key), (&proj, Scope::Project)] {
            if let Some(l) = &state.requests {
                match l.check() {
                    Ok(s) => headers.tighten_requests(window(&s)),
                    Err(n) => return Err(limited(scope, n, headers)),
                }
            }
        }
        for (state, scope) in [(&key, Scope::Tokens), (&proj, Scope::ProjectTokens)] {
            let Some(l) = &state.tokens else { continue };
            let counted = with_debt(&state.token_debt, tokens);
            let n =
                NonZeroU32::new(u32::try_from(counted).unwrap_or(u32::MAX)).expect("at least 1");
            match l.check_n(n) {
                Ok(Ok(s)) => {
                    // The key's window is the one an SDK paces by; the project's when alone.
                    if scope == Scope::Tokens || headers.tokens.is_none() {
                        headers.tokens = Some(window(&s));
                    }
                    permit.tokens.push((state.token_debt.clone(), tokens));
                }
                Ok(Err(n)) => {
                    state
                        .token_debt
                        .fetch_add(counted as i64 - tokens as i64, Ordering::AcqRel);
                    return Err(limited(scope, n, headers));
                }
                Err(capacity) => {
                    state
                        .token_debt
                        .fetch_add(counted as i64 - tokens as i64, Ordering::AcqRel);
                    return Err(Refusal::TooLarge {
                        tokens,
                        limit: u64::from(capacity.0),
                    });
                }
            }
        }
        let permit = (!permit.is_empty()).then_some(permit);
        Ok(Admission { headers, permit })
    }

    /// Forgets addresses and projects idle for longer than their refill (called now and then,
    /// so the keyed maps do not grow with every address ever seen).
    pub fn shrink(&self) {
        if let Some(l) = &self.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`, `::1`, `"[::1]"` (quotes and spaces trimmed).
fn parse_addr(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    t.parse::<IpAddr>()
        .ok()
        .or_else(|| t.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            t.strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .and_then(|r| r.parse().ok())
        })
}

/// The `for=` addresses of an RFC 7239 `Forwarded` header, in order; obfuscated or unknown
/// nodes are left out.
fn parse_forwarded(value: &str) -> Vec<IpAddr> {
    value
        .split(',')
        .flat_map(|element| element.split(';'))
        .filter_map(|pair| {
            let (name, v) = pair.split_once('=')?;
            name.trim().eq_ignore_ascii_case("for").then_some(v)
        })
        .filter_map(parse_addr)
        .collect()
}

/// `x-ratelimit-reset-*` as OpenAI writes it: `120ms`, `7s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs() + u64::from(d.subsec_millis() > 0);
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut Limits)) -> RateLimits {
        let mut l = Limits::default();
        f(&mut l);
        RateLimits::new(&l, Vec::new(), Vec::new())
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let r = limits(|l| l.trusted_proxies = vec!["10.0.0.0/8".into(), "::1".into()]);
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        let xff = Some("1.1.1.1, 203.0.113.7, 10.9.9.9");
        assert_eq!(r.client_ip(proxy, None, xff), client);
        assert_eq!(r.client_ip(stranger, None, xff), stranger);
        assert_eq!(r.client_ip(proxy, None, None), proxy);
        let fwd = Some("for=1.1.1.1, for=\"[2001:db8::1]:4711\";proto=https");
        assert_eq!(
            r.client_ip("::1".parse().unwrap(), fwd, xff),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            r.client_ip(proxy, None, Some("10.0.0.5")),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_key_is_refused_past_its_burst_and_headers_count_down() {
        let r = limits(|l| l.key_requests_per_minute = 2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = r.admit(ip, "k", "p", 1).unwrap();
        assert_eq!(a.headers.requests.unwrap().remaining, 1);
        assert_eq!(a.headers.requests.unwrap().limit, 2);
        assert!(r.admit(ip, "k", "p", 1).is_ok());
        match r.admit(ip, "k", "p", 1) {
            Err(Refusal::Limited {
                scope,
                retry_after,
                headers,
            }) => {
                assert_eq!(scope, Scope::Key);
                assert!(retry_after > Duration::ZERO);
                assert_eq!(headers.requests.unwrap().remaining, 0);
            }
            other => panic!("{other:?}"),
        }
        assert!(r.admit(ip, "other", "p", 1).is_ok());
    }

    #[test]
    fn permits_are_given_back_and_overrides_apply_at_once() {
        let r = limits(|l| l.key_concurrent_executions = 1);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = r.admit(ip, "k", "p", 1).unwrap();
        assert!(r.admit(ip, "k", "p", 1).is_err());
        drop(first);
        let again = r.admit(ip, "k", "p", 1).unwrap();
        r.set_key_limits(
            "k",
            KeyLimits {
                concurrent_executions: Some(2),
                ..Default::default()
            },
        );
        assert!(r.admit(ip, "k", "p", 1).is_ok());
        drop(again);
    }

    #[test]
    fn token_requests_larger_than_the_minute_are_too_large() {
        let r = limits(|l| l.key_tokens_per_minute = 100);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(
            r.admit(ip, "k", "p", 101),
            Err(Refusal::TooLarge { .. })
        ));
        let a = r.admit(ip, "k", "p", 60).unwrap();
        assert_eq!(a.headers.tokens.unwrap().remaining, 40);
        assert!(matches!(
            r.admit(ip, "k", "p", 60),
            Err(Refusal::Limited {
                scope: Scope::Tokens,
                ..
            })
        ));
    }

    #[test]
    fn real_usage_corrects_the_next_count() {
        let r = limits(|l| l.key_tokens_per_minute = 1_000);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = r.admit(ip, "k", "p", 600).unwrap();
        assert_eq!(a.headers.tokens.unwrap().remaining, 400);
        // It used 100: the next request is counted 500 less (at least 1).
        a.permit.as_ref().unwrap().correct(100);
        let b = r.admit(ip, "k", "p", 300).unwrap();
        assert_eq!(b.headers.tokens.unwrap().remaining, 399);
        // 201 of credit left, then an answer 450 over its estimate: +249 on the next.
        b.permit.as_ref().unwrap().correct(750);
        let c = r.admit(ip, "k", "p", 100).unwrap();
        assert_eq!(c.headers.tokens.unwrap().remaining, 50);
    }

    #[test]
    fn project_overrides_limit_every_key_of_the_project() {
        let r = limits(|_| {});
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        r.set_project_limits(
            "p",
            KeyLimits {
                concurrent_executions: Some(1),
                tokens_per_minute: Some(50),
                ..Default::default()
            },
        );
        let held = r.admit(ip, "k1", "p", 10).unwrap();
        assert!(matches!(
            r.admit(ip, "k2", "p", 10),
            Err(Refusal::Limited {
                scope: Scope::ProjectConcurrency,
                ..
            })
        ));
        assert!(r.admit(ip, "k2", "other", 10).is_ok());
        drop(held);
        assert!(matches!(
            r.admit(ip, "k2", "p", 45),
            Err(Refusal::Limited {
                scope: Scope::ProjectTokens,
                ..
            })
        ));
        r.set_project_limits("p", KeyLimits::default());
        assert!(r.admit(ip, "k2", "p", 45).is_ok());
    }

    #[test]
    fn resets_read_like_openais() {
        assert_eq!(format_reset(Duration::from_millis(120)), "120ms");
        assert_eq!(format_reset(Duration::from_millis(6500)), "7s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
