//! CORS for pages on other origins (`[cors] allowed_origins`). Keys travel in headers, never in
//! cookies, so no credentials mode; the browser enforces the policy, so a request from an
//! origin not listed is served without CORS headers rather than refused (the dashboard, served
//! from the gateway's own origin, sends an `Origin` too).

use actix_cors::Cors;
use actix_web::http::Method;

use crate::settings::CorsSettings;

/// Response headers a cross-origin page may read: the execution id of a compat answer, the
/// backoff hint and the rate-limit budget the SDKs' retry logic reads.
const EXPOSED: [&str; 10] = [
    "x-switchyard-execution-id",
    "x-switchyard-error-code",
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

pub fn middleware(settings: &CorsSettings) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        // Authorization, Content-Type, Idempotency-Key, Last-Event-ID, x-api-key,
        // anthropic-version, and whatever telemetry headers an SDK adds in a browser.
        .allow_any_header()
        .expose_headers(EXPOSED)
        .max_age(3600)
        .block_on_origin_mismatch(false);
    for origin in &settings.allowed_origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}
