//! The HTTP side of client rate limits: which address is calling, the check at admission,
//! and OpenAI's `x-ratelimit-*` headers on every answer of a limited endpoint (success or
//! refusal), so SDKs can pace themselves.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::{AppState, Principal};
use crate::error::{ApiError, ErrorCode};
use crate::limits::{format_reset, Permit, RateHeaders, Refusal, Window};

/// What a refused request's answer adds to the `x-ratelimit-*` headers.
#[derive(Clone, Copy)]
struct RetryAfter(Duration);

/// Checks the caller's limits for a request of about `tokens` tokens. Admitted: the place in
/// flight to hold (when the key counts them). The headers are left in the request's
/// extensions for [`rate_limit_headers`].
pub(super) fn admit(
    state: &AppState,
    req: &HttpRequest,
    principal: &Principal,
    tokens: u64,
) -> Result<Option<Permit>, ApiError> {
    let ip = client_ip(state, req);
    match state
        .limits
        .admit(ip, &principal.key_id, &principal.project_id, tokens)
    {
        Ok(admission) => {
            req.extensions_mut().insert(admission.headers);
            Ok(admission.permit)
        }
        Err(Refusal::Limited {
            scope,
            retry_after,
            headers,
        }) => {
            state
                .metrics
                .rate_limited
                .with_label_values(&[scope.as_str()])
                .inc();
            tracing::debug!(scope = scope.as_str(), key_id = %principal.key_id, client = %ip, "rate limited");
            req.extensions_mut().insert(headers);
            req.extensions_mut().insert(RetryAfter(retry_after));
            // Whole seconds, rounded up: retrying at the truncated second would be refused.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let mut err = ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "rate limit exceeded ({} limit); retry after {secs}s",
                    describe(scope)
                ),
            );
            err.retry_after = Some(Duration::from_secs(secs.max(1)));
            Err(err)
        }
        Err(Refusal::TooLarge { tokens, limit }) => Err(ApiError::invalid(format!(
            "max_tokens: the request needs about {tokens} tokens (prompt estimate + max_tokens), more than this key may use in a minute ({limit})"
        ))),
    }
}

fn describe(scope: crate::limits::Scope) -> &'static str {
    use crate::limits::Scope;
    match scope {
        Scope::Ip => "per-address requests per minute",
        Scope::Key => "per-key requests per minute",
        Scope::Project => "per-project requests per minute",
        Scope::Tokens => "per-key tokens per minute",
        Scope::Concurrency => "per-key concurrent executions",
        Scope::ProjectTokens => "per-project tokens per minute",
        Scope::ProjectConcurrency => "per-project concurrent executions",
    }
}

/// The socket peer, or the address a trusted proxy forwarded for.
fn client_ip(state: &AppState, req: &HttpRequest) -> IpAddr {
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if !state.limits.trusts(peer) {
        return peer;
    }
    let joined = |name: &str| {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    state.limits.client_ip(
        peer,
        joined("forwarded").as_deref(),
        joined("x-forwarded-for").as_deref(),
    )
}

/// Writes the headers an admission check left on the request into its answer.
pub async fn rate_limit_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    let (headers, retry) = {
        let ext = res.request().extensions();
        (
            ext.get::<RateHeaders>().copied(),
            ext.get::<RetryAfter>().copied(),
        )
    };
    if let Some(h) = headers {
        let map = res.headers_mut();
        write(map, &REQUESTS, h.requests);
        write(map, &TOKENS, h.tokens);
    }
    if let Some(RetryAfter(after)) = retry {
        // The OpenAI SDKs read this before `Retry-After`, to the millisecond.
        insert(
            res.headers_mut(),
            "retry-after-ms",
            after.as_millis().max(1).to_string(),
        );
    }
    Ok(res)
}

/// The `x-ratelimit-*` names of one kind of limit: built once, not per answer.
struct Names {
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
}

static REQUESTS: Names = Names {
    limit: HeaderName::from_static("x-ratelimit-limit-requests"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-requests"),
    reset: HeaderName::from_static("x-ratelimit-reset-requests"),
};

static TOKENS: Names = Names {
    limit: HeaderName::from_static("x-ratelimit-limit-tokens"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-tokens"),
    reset: HeaderName::from_static("x-ratelimit-reset-tokens"),
};

fn write(map: &mut HeaderMap, names: &Names, window: Option<Window>) {
    let Some(w) = window else { return };
    map.insert(names.limit.clone(), HeaderValue::from(w.limit));
    map.insert(names.remaining.clone(), HeaderValue::from(w.remaining));
    if let Ok(reset) = HeaderValue::try_from(format_reset(w.reset)) {
        map.insert(names.reset.clone(), reset);
    }
}

fn insert(map: &mut HeaderMap, name: &str, value: String) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::try_from(name),
        HeaderValue::try_from(value.as_str()),
    ) {
        map.insert(name, value);
    }
}
