//! Route plans and failover decisions as pure functions: which route next (healthy and with
//! upstream quota left), and the request a continuation sends. The execution actor asks;
//! nothing here does I/O.

mod continuation;
pub mod health;
pub mod quota;

pub use continuation::{
    continuation_messages, continued_turn, Diverged, Join, Reconciler, Trim, CONTINUE_INSTRUCTION,
    MIN_RESTART_EVIDENCE,
};
pub use health::{HealthBoard, Outcome};
pub use quota::{Exhausted, QuotaBoard};

use std::sync::Arc;

use crate::domain::ChatRequest;
use crate::error::ErrorCode;
use crate::providers::{Provider, ProviderError, Providers};
use crate::settings::{ContinuationStrategy, Settings, StructuredMode};

/// One way to answer a model slug: a provider and its upstream model name.
#[derive(Clone)]
pub struct Route {
    pub provider: Arc<Provider>,
    pub model: String,
    pub context_window: Option<u32>,
    pub json_mode: bool,
    pub tools: bool,
    pub vision: bool,
    /// How a `response_format` is asked of this route's provider.
    pub structured: StructuredMode,
    pub price: crate::ledger::pricing::Price,
}

impl Route {
    /// This route's name in the health board.
    pub fn key(&self) -> health::RouteKey<'_> {
        health::RouteKey {
            provider: self.provider.name(),
            model: &self.model,
        }
    }
}

/// What a request asks of a route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    pub json_mode: bool,
    /// Tools offered, or tool turns in the conversation.
    pub tools: bool,
    /// Images in the conversation.
    pub vision: bool,
    /// A rough prompt size (characters / 4): only a prompt clearly over a window skips it.
    pub approx_prompt_tokens: u64,
}

impl Needs {
    pub fn of(request: &ChatRequest) -> Needs {
        let json_mode = request
            .params
            .response_format
            .as_ref()
            .and_then(|f| f.get("type"))
            .is_some_and(|t| t != "text");
        let chars: usize = request.messages.iter().map(|m| m.content.len()).sum();
        let tool_turns = request
            .messages
            .iter()
            .any(|m| !m.tool_calls.is_empty() || m.tool_call_id.is_some());
        Needs {
            json_mode,
            tools: request.params.uses_tools() || tool_turns,
            vision: request.messages.iter().any(|m| !m.images.is_empty()),
            approx_prompt_tokens: (chars / 4) as u64,
        }
    }

    /// Why `route` cannot serve this request, if it cannot.
    pub fn unmet_by(&self, route: &Route) -> Option<String> {
        if self.json_mode && !route.json_mode {
            return Some("json_mode".into());
        }
        if self.tools && !route.tools {
            return Some("tools".into());
        }
        if self.vision && !route.vision {
            return Some("vision (image input)".into());
        }
        match route.context_window {
            Some(window) if self.approx_prompt_tokens > window as u64 => Some(format!(
                "a context window over {window} tokens (the prompt is about {} tokens)",
                self.approx_prompt_tokens
            )),
            _ => None,
        }
    }
}

/// The routes that can serve the request, in order.
pub fn capable(routes: Vec<Route>, needs: &Needs) -> Vec<Route> {
    routes
        .into_iter()
        .filter(|r| needs.unmet_by(r).is_none())
        .collect()
}

/// The ordered routes of a model slug.
pub fn plan(settings: &Settings, providers: &Providers, slug: &str) -> Option<Vec<Route>> {
    let model = settings.model(slug)?;
    Some(
        model
            .routes
            .iter()
            .filter_map(|r| {
                Some(Route {
                    provider: providers.get(&r.provider)?.clone(),
                    model: r.model.clone(),
                    context_window: r.context_window,
                    json_mode: r.json_mode,
                    tools: r.tools,
                    vision: r.vision,
                    structured: r.structured_output,
                    price: crate::ledger::pricing::Price::of(r),
                })
            })
            .collect(),
    )
}

/// The routes of a testing-mode execution: the built-in testing answerer, then its fallback
/// (so a simulated fault fails over for real). Free, and capable of everything.
pub fn testing_routes(providers: &Providers) -> Vec<Route> {
    providers
        .testing()
        .iter()
        .map(|provider| Route {
            provider: provider.clone(),
            model: "testing".into(),
            context_window: None,
            json_mode: true,
            tools: true,
            vision: true,
            price: crate::ledger::pricing::Price::default(),
            structured: Default::default(),
        })
        .collect()
}

/// The first route at or after `from` with upstream headroom whose breaker admits an attempt;
/// when every route with headroom has its breaker open, the one of them that failed longest
/// ago (rather than failing at once). A route out of quota is never picked before its reset:
/// when no route has headroom, `Err` says which frees up first.
pub fn pick_route(
    routes: &[Route],
    from: usize,
    health: &HealthBoard,
    quota: &QuotaBoard,
    now: tokio::time::Instant,
    now_ms: u64,
) -> Result<usize, Exhausted> {
    let mut earliest: Option<Exhausted> = None;
    let mut open = Vec::new();
    for (i, route) in routes.iter().enumerate().skip(from) {
        match quota.check(route.key(), now_ms) {
            Err(e) => {
                if earliest.is_none_or(|x| e.until_ms < x.until_ms) {
                    earliest = Some(e);
                }
            }
            Ok(()) if health.admits(route.key(), now) => return Ok(i),
            Ok(()) => open.push(i),
        }
    }
    open.into_iter()
        .min_by_key(|&i| health.last_failure(routes[i].key()))
        .ok_or_else(|| {
            earliest.unwrap_or(Exhausted {
                reason: quota::Reason::ProviderRateLimited,
                until_ms: now_ms,
            })
        })
}

/// Whether a submit for these routes should be accepted: `Err` (a `503` with the earliest time
/// one of them is ready) when no route has headroom, or when the ones that do all have open
/// breakers. Routes that are merely down, with quota left everywhere, keep the old answer:
/// accepted, and the longest-failed one is tried.
pub fn submit_headroom(
    routes: &[Route],
    health: &HealthBoard,
    quota: &QuotaBoard,
    now: tokio::time::Instant,
    now_ms: u64,
) -> Result<(), Exhausted> {
    let mut ready: Option<Exhausted> = None;
    let mut any_exhausted = false;
    for r in routes {
        let cooldown = health.cooldown(r.key(), now).as_millis() as u64;
        let down = (!health.admits(r.key(), now)).then(|| Exhausted {
            reason: quota::Reason::ProviderRateLimited,
            until_ms: now_ms + cooldown.max(1),
        });
        let candidate = match (quota.check(r.key(), now_ms), down) {
            (Ok(()), None) => return Ok(()),
            // The node is taking more of the day cap: the attempt waits a moment for it.
            (Err(e), None) if e.reason == quota::Reason::QuotaRefilling => return Ok(()),
            (Err(e), None) => {
                any_exhausted = true;
                e
            }
            (Ok(()), Some(d)) => d,
            (Err(e), Some(d)) => {
                any_exhausted = true;
                Exhausted {
                    until_ms: e.until_ms.max(d.until_ms),
                    ..e
                }
            }
        };
        if ready.is_none_or(|x| candidate.until_ms < x.until_ms) {
            ready = Some(candidate);
        }
    }
    match ready {
        Some(e) if any_exhausted => Err(e),
        _ => Ok(()),
    }
}

/// Where an execution stands when an attempt fails.
#[derive(Debug, Clone)]
pub struct FailureContext {
    pub route_index: usize,
    pub route_count: usize,
    /// Tries already made on this route (including the failed one).
    pub tries_on_route: u32,
    pub max_tries_on_route: u32,
    /// Whether any chunk has been emitted to subscribers.
    pub emitted_any: bool,
    /// Whether the failed try itself delivered chunks: a fault in the middle of its stream.
    pub attempt_delivered: bool,
    /// Mid-stream switches made so far, and the cap.
    pub switches: u32,
    pub max_switches: u32,
    /// The strategy the failed try used (`None` for an initial request).
    pub strategy: Option<ContinuationStrategy>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Try the same route again after `delay`, with `strategy` if continuing.
    Retry {
        delay: std::time::Duration,
        strategy: Option<ContinuationStrategy>,
    },
    /// Move on to route `index`.
    Next { index: usize },
    /// Give up with this error.
    Fail,
}

const BACKOFF_BASE_MS: u64 = 100;
const BACKOFF_CAP_MS: u64 = 2_000;
const RETRY_AFTER_CAP_MS: u64 = 10_000;

/// Capped exponential backoff for try `n` (1-based), honouring a provider's Retry-After.
pub fn backoff(n: u32, retry_after: Option<std::time::Duration>) -> std::time::Duration {
    let exp = BACKOFF_BASE_MS.saturating_mul(1 << n.saturating_sub(1).min(10));
    let ms = exp.min(BACKOFF_CAP_MS);
    match retry_after {
        Some(ra) => ra.min(std::time::Duration::from_millis(RETRY_AFTER_CAP_MS)),
        None => std::time::Duration::from_millis(ms),
    }
}

/// Spreads retries of many executions over `[delay/2, delay]` so they do not arrive together.
pub fn jitter(delay: std::time::Duration) -> std::time::Duration {
    use rand::Rng;
    let half = delay / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

/// What to do after `err` ended a try.
pub fn decide(ctx: &FailureContext, err: &ProviderError) -> Decision {
    // A content-filter rejection is the answer: no other route should be asked to get around it.
    if err.code == ErrorCode::ContentFiltered || err.code == ErrorCode::Cancelled {
        return Decision::Fail;
    }
    if ctx.emitted_any && ctx.switches >= ctx.max_switches {
        return Decision::Fail;
    }
    // The route refused the continuation's form: same route, next strategy.
    if ctx.emitted_any && err.rejects_message_form() {
        if let Some(next) = ctx.strategy.and_then(next_strategy) {
            return Decision::Retry {
                delay: std::time::Duration::ZERO,
                strategy: Some(next),
            };
        }
    }
    // A silent provider is not asked again; other transient faults are, a bounded number of
    // times. A stream that broke in the middle continues elsewhere when it can.
    let silent = err.code == ErrorCode::ProviderTimeout;
    if err.is_retryable()
        && !silent
        && !ctx.attempt_delivered
        && ctx.tries_on_route < ctx.max_tries_on_route
    {
        return Decision::Retry {
            delay: backoff(ctx.tries_on_route, err.retry_after),
            strategy: ctx.strategy,
        };
    }
    if ctx.route_index + 1 < ctx.route_count {
        return Decision::Next {
            index: ctx.route_index + 1,
        };
    }
    // The only route left, mid-stream, transient: continue on it.
    if ctx.attempt_delivered && err.is_retryable() && ctx.tries_on_route <= ctx.max_tries_on_route {
        return Decision::Retry {
            delay: backoff(ctx.tries_on_route, err.retry_after),
            strategy: ctx.strategy,
        };
    }
    Decision::Fail
}

/// The fallback order when a route rejects a continuation form.
pub fn next_strategy(s: ContinuationStrategy) -> Option<ContinuationStrategy> {
    match s {
        ContinuationStrategy::Prefill => Some(ContinuationStrategy::Instruction),
        ContinuationStrategy::Instruction => Some(ContinuationStrategy::Restart),
        ContinuationStrategy::Restart => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ctx() -> FailureContext {
        FailureContext {
            route_index: 0,
            route_count: 2,
            tries_on_route: 1,
            max_tries_on_route: 2,
            emitted_any: false,
            attempt_delivered: false,
            switches: 0,
            max_switches: 3,
            strategy: None,
        }
    }

    #[test]
    fn transient_errors_retry_the_route_then_move_on() {
        let e = ProviderError::from_status(503, None, "{}");
        assert!(matches!(decide(&ctx(), &e), Decision::Retry { .. }));
        let exhausted = FailureContext {
            tries_on_route: 2,
            ..ctx()
        };
        assert_eq!(decide(&exhausted, &e), Decision::Next { index: 1 });
    }

    #[test]
    fn silent_providers_are_not_retried() {
        let e = ProviderError::no_response(Duration::from_secs(1));
        assert_eq!(decide(&ctx(), &e), Decision::Next { index: 1 });
    }

    #[test]
    fn content_filter_fails_at_once() {
        let e = ProviderError::from_status(400, None, r#"{"error":{"code":"content_filter"}}"#);
        assert_eq!(decide(&ctx(), &e), Decision::Fail);
    }

    #[test]
    fn context_length_moves_to_the_next_route() {
        let e = ProviderError::from_status(
            400,
            None,
            r#"{"error":{"code":"context_length_exceeded"}}"#,
        );
        assert_eq!(decide(&ctx(), &e), Decision::Next { index: 1 });
        let last = FailureContext {
            route_index: 1,
            ..ctx()
        };
        assert_eq!(decide(&last, &e), Decision::Fail);
    }

    #[test]
    fn a_rejected_prefill_retries_with_the_instruction_form() {
        let e = ProviderError::from_status(
            400,
            None,
            r#"{"error":{"message":"assistant prefill is not supported"}}"#,
        );
        let c = FailureContext {
            emitted_any: true,
            strategy: Some(ContinuationStrategy::Prefill),
            ..ctx()
        };
        assert_eq!(
            decide(&c, &e),
            Decision::Retry {
                delay: Duration::ZERO,
                strategy: Some(ContinuationStrategy::Instruction)
            }
        );
    }

    #[test]
    fn a_stream_broken_mid_way_moves_to_the_next_route_before_retrying() {
        let e = ProviderError::cut("reset");
        let mid = FailureContext {
            emitted_any: true,
            attempt_delivered: true,
            ..ctx()
        };
        assert_eq!(decide(&mid, &e), Decision::Next { index: 1 });
        let last = FailureContext {
            route_index: 1,
            ..mid.clone()
        };
        assert!(matches!(decide(&last, &e), Decision::Retry { .. }));
        // A continuation that failed before delivering anything is retried like a first try.
        let quiet = FailureContext {
            emitted_any: true,
            ..ctx()
        };
        let e503 = ProviderError::from_status(503, None, "{}");
        assert!(matches!(decide(&quiet, &e503), Decision::Retry { .. }));
    }

    #[test]
    fn mid_stream_switches_are_capped() {
        let e = ProviderError::cut("reset");
        let c = FailureContext {
            emitted_any: true,
            switches: 3,
            ..ctx()
        };
        assert_eq!(decide(&c, &e), Decision::Fail);
    }

    /// Routes a (capped at one request a day), b, c of one mock provider whose breaker opens
    /// on the first fault.
    fn quota_fixture() -> (Vec<Route>, HealthBoard, QuotaBoard) {
        let settings = Settings::parse(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"x\"\n\
             [[providers]]\nname = \"p\"\nkind = \"mock\"\nbreaker_failures = 1\n\
             [[models]]\nslug = \"s\"\nroutes = [{ provider = \"p\", model = \"a\", requests_per_day = 1 }, \
             { provider = \"p\", model = \"b\" }, { provider = \"p\", model = \"c\", requests_per_minute = 1 }]",
        )
        .unwrap();
        let providers = Providers::from_settings(&settings).unwrap();
        let routes = plan(&settings, &providers, "s").unwrap();
        (
            routes,
            HealthBoard::new(&settings),
            QuotaBoard::new(&settings),
        )
    }

    const NOW_MS: u64 = 1_700_000_000_000;

    #[tokio::test(start_paused = true)]
    async fn routes_out_of_quota_are_skipped_and_never_picked_as_a_last_resort() {
        let (routes, health, quota) = quota_fixture();
        let now = tokio::time::Instant::now();
        let pick = |from| pick_route(&routes, from, &health, &quota, now, NOW_MS);
        assert_eq!(pick(0), Ok(0));
        quota.begin(routes[0].key(), 1, NOW_MS);
        assert_eq!(pick(0), Ok(1), "a is out of quota");
        // b's breaker opens: c is next; once c is out of quota too, b (open, but with quota)
        // is still the last resort, a never is.
        health.begin(routes[1].key(), now);
        health.end(routes[1].key(), now, Outcome::Failure, false);
        assert_eq!(pick(0), Ok(2));
        quota.begin(routes[2].key(), 1, NOW_MS);
        assert_eq!(pick(0), Ok(1));
        assert!(submit_headroom(&routes, &health, &quota, now, NOW_MS).is_err());
        // Nothing with quota after `from`: the earliest reset (c's minute, before a's day).
        let e = pick(2).unwrap_err();
        assert_eq!(e.reason, quota::Reason::QuotaRequestsPerMinute);
        assert_eq!(e.until_ms, (NOW_MS / 60_000 + 1) * 60_000);
    }

    #[tokio::test(start_paused = true)]
    async fn routes_only_down_with_quota_left_are_still_accepted() {
        let (routes, health, quota) = quota_fixture();
        let now = tokio::time::Instant::now();
        for r in &routes {
            health.begin(r.key(), now);
            health.end(r.key(), now, Outcome::Failure, false);
        }
        assert_eq!(
            submit_headroom(&routes, &health, &quota, now, NOW_MS),
            Ok(())
        );
        assert!(pick_route(&routes, 0, &health, &quota, now, NOW_MS).is_ok());
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        assert_eq!(backoff(1, None), Duration::from_millis(100));
        assert_eq!(backoff(2, None), Duration::from_millis(200));
        assert_eq!(backoff(20, None), Duration::from_millis(2_000));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            backoff(1, Some(Duration::from_secs(60))),
            Duration::from_secs(10)
        );
    }
}
