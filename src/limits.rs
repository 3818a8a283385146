//! Client rate limits (`[limits]`): requests per minute per client address, per API key and
//! per project; tokens per minute and executions in flight per key. One [`RateLimits::admit`]
//! per submit decides, and describes the outcome for the `x-ratelimit-*` headers.
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
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Key => "key",
            Scope::Project => "project",
            Scope::Tokens => "tokens",
            Scope::Concurrency => "concurrency",
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

/// A place among the key's executions in flight; given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicU64>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted request: its headers, and its place in flight when the key counts them.
#[derive(Debug, Default)]
pub struct Admission {
    pub headers: RateHeaders,
    pub permit: Option<Permit>,
}

/// The limits of one API key, built from the defaults and its overrides.
struct KeyState {
    requests: Option<Direct>,
    tokens: Option<Direct>,
    max_in_flight: u64,
    /// Shared with the state that replaces this one on an override change, so executions
    /// admitted before it are still counted (and given back).
    in_flight: Arc<AtomicU64>,
}

fn quota(per_minute: u64) -> Option<Quota> {
    let n = NonZeroU32::new(u32::try_from(per_minute).unwrap_or(u32::MAX))?;
    Some(Quota::per_minute(n).allow_burst(n))
}

fn keyed<K: Clone + std::hash::Hash + Eq>(per_minute: u64) -> Option<Keyed<K>> {
    quota(per_minute).map(|q| governor::RateLimiter::keyed(q).with_middleware())
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
    defaults: KeyLimits,
    ip: Option<Keyed<IpAddr>>,
    project: Option<Keyed<String>>,
    trusted: Vec<IpNet>,
    /// Keys with their own limits (absent: the defaults).
    overrides: DashMap<String, KeyLimits>,
    keys: DashMap<String, Arc<KeyState>>,
    clock: DefaultClock,
}

impl RateLimits {
    /// From validated settings and the stored overrides.
    pub fn new(limits: &Limits, overrides: Vec<(String, KeyLimits)>) -> RateLimits {
        RateLimits {
            defaults: KeyLimits {
                requests_per_minute: Some(limits.key_requests_per_minute),
                tokens_per_minute: Some(limits.key_tokens_per_minute),
                concurrent_executions: Some(limits.key_concurrent_executions),
                monthly_spend_cap_micros: None,
            },
            ip: keyed(limits.ip_requests_per_minute),
            project: keyed(limits.project_requests_per_minute),
            trusted: parse_trusted_proxies(&limits.trusted_proxies).unwrap_or_default(),
            overrides: overrides.into_iter().collect(),
            keys: DashMap::new(),
            clock: DefaultClock::default(),
        }
    }

    /// Applies a key's new overrides at once (its request and token allowances start whole).
    pub fn set_key_limits(&self, key_id: &str, limits: KeyLimits) {
        if limits.is_empty() {
            self.overrides.remove(key_id);
        } else {
            self.overrides.insert(key_id.to_string(), limits);
        }
        let in_flight = self.keys.get(key_id).map(|k| k.in_flight.clone());
        let state = self.build(key_id, in_flight.unwrap_or_default());
        self.keys.insert(key_id.to_string(), state);
    }

    /// The key's monthly spend cap in micro-dollars (`None` or 0: none).
    pub fn monthly_spend_cap(&self, key_id: &str) -> Option<u64> {
        self.overrides
            .get(key_id)?
            .monthly_spend_cap_micros
            .filter(|&c| c > 0)
    }

    /// Drops a revoked key's state (its executions still give their places back).
    pub fn forget_key(&self, key_id: &str) {
        self.overrides.remove(key_id);
        self.keys.remove(key_id);
    }

    fn build(&self, key_id: &str, in_flight: Arc<AtomicU64>) -> Arc<KeyState> {
        let own = self.overrides.get(key_id).map(|o| *o).unwrap_or_default();
        let d = &self.defaults;
        let pick = |o: Option<u64>, d: Option<u64>| o.or(d).unwrap_or(0);
        let direct = |n| quota(n).map(|q| governor::RateLimiter::direct(q).with_middleware());
        Arc::new(KeyState {
            requests: direct(pick(own.requests_per_minute, d.requests_per_minute)),
            tokens: direct(pick(own.tokens_per_minute, d.tokens_per_minute)),
            max_in_flight: pick(own.concurrent_executions, d.concurrent_executions),
            in_flight,
        })
    }

    fn key(&self, key_id: &str) -> Arc<KeyState> {
        if let Some(state) = self.keys.get(key_id) {
            return state.clone();
        }
        self.keys
            .entry(key_id.to_string())
            .or_insert_with(|| self.build(key_id, Arc::default()))
            .clone()
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
    /// key `key_id` of `project`. The place in flight is taken first since it alone can be
    /// given back; a request refused by a later limit has still used the earlier allowances.
    pub fn admit(
        &self,
        ip: IpAddr,
        key_id: &str,
        project: &str,
        tokens: u64,
    ) -> Result<Admission, Refusal> {
        let key = self.key(key_id);
        let mut headers = RateHeaders::default();
        let permit = if key.max_in_flight > 0 {
            let before = key.in_flight.fetch_add(1, Ordering::AcqRel);
            let permit = Permit(key.in_flight.clone());
            if before >= key.max_in_flight {
                drop(permit);
                return Err(Refusal::Limited {
                    scope: Scope::Concurrency,
                    // An execution's end cannot be foreseen: a second is the usual poll.
                    retry_after: Duration::from_secs(1),
                    headers,
                });
            }
            Some(permit)
        } else {
            None
        };
        let limited = |scope, n: NotUntil<Instant>, mut headers: RateHeaders| {
            let (retry_after, w) = refused(&n, self.clock.now());
            if scope == Scope::Tokens {
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
        if let Some(l) = &key.requests {
            match l.check() {
                Ok(s) => headers.tighten_requests(window(&s)),
                Err(n) => return Err(limited(Scope::Key, n, headers)),
            }
        }
        if let Some(l) = &self.project {
            // Allocates only when the project limit is on.
            match l.check_key(&project.to_string()) {
                Ok(s) => headers.tighten_requests(window(&s)),
                Err(n) => return Err(limited(Scope::Project, n, headers)),
            }
        }
        if let Some(l) = &key.tokens {
            let n = NonZeroU32::new(u32::try_from(tokens.max(1)).unwrap_or(u32::MAX))
                .expect("at least 1");
            match l.check_n(n) {
                Ok(Ok(s)) => headers.tokens = Some(window(&s)),
                Ok(Err(n)) => return Err(limited(Scope::Tokens, n, headers)),
                Err(capacity) => {
                    return Err(Refusal::TooLarge {
                        tokens,
                        limit: u64::from(capacity.0),
                    })
                }
            }
        }
        Ok(Admission { headers, permit })
    }

    /// Forgets addresses and projects idle for longer than their refill (called now and then,
    /// so the keyed maps do not grow with every address ever seen).
    pub fn shrink(&self) {
        if let Some(l) = &self.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.project {
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
        RateLimits::new(&l, Vec::new())
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
    fn resets_read_like_openais() {
        assert_eq!(format_reset(Duration::from_millis(120)), "120ms");
        assert_eq!(format_reset(Duration::from_millis(6500)), "7s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
