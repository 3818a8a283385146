//! Liveness, readiness and the metrics scrape.

use actix_web::{http::header, web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::routing::health::BreakerState;
use crate::store::hash_secret;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the store takes writes (not failed, free disk above the floor) and at least
/// one provider can be called.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let refusal = state.store.health.admit().err();
    let store = refusal.is_none() && state.store.is_writable();
    let providers = state.providers.any_usable();
    let cluster = state.cluster.as_ref().map(|c| c.ready());
    let shared = cluster.as_ref().is_none_or(|c| c.is_ok());
    let ready = store && providers && shared;
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"store": store, "providers": providers},
    });
    if let Some(refusal) = refusal {
        body["checks"]["store_reason"] = json!(refusal.to_string());
    }
    if let (Some(result), Some(c)) = (&cluster, &state.cluster) {
        body["node"] = json!(c.node);
        body["checks"]["cluster"] = json!(result.is_ok());
        if let Err(reason) = result {
            body["checks"]["cluster_reason"] = json!(reason);
        }
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics` on the main listener: absent when `[metrics] listen` moves it elsewhere.
pub async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if state.settings.metrics.listen.is_some() {
        return ApiError::new(
            ErrorCode::NotFound,
            format!("no route for {} {}", req.method(), req.path()),
        )
        .error_response();
    }
    scrape(&state, &req)
}

/// `GET /metrics` on the `[metrics] listen` address.
pub async fn metrics_listener(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    scrape(&state, &req)
}

/// Whether the request carries the scrape token (always, when none is configured). Compares
/// hashes, so the time taken says nothing about how much of the token matched.
fn authorized(state: &AppState, req: &HttpRequest) -> bool {
    let Some(token) = &state.settings.metrics.bearer_token else {
        return true;
    };
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    sent.is_some_and(|sent| hash_secret(sent) == hash_secret(token))
}

/// Prometheus text exposition.
/// Gauges that are cheaper to read at scrape time than to keep current are set here.
fn scrape(state: &AppState, req: &HttpRequest) -> HttpResponse {
    if !authorized(state, req) {
        let mut res = ApiError::new(
            ErrorCode::Unauthorized,
            "metrics need `Authorization: Bearer <metrics token>`",
        )
        .error_response();
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return res;
    }
    let m = &state.metrics;
    let now = tokio::time::Instant::now();
    for p in &state.settings.providers {
        if let Some((breaker, cooldown)) = state.health.state(&p.name, now) {
            m.breaker_state
                .with_label_values(&[&p.name])
                .set(breaker_value(breaker));
            m.breaker_cooldown
                .with_label_values(&[&p.name])
                .set(cooldown.as_secs_f64());
        }
    }
    for (provider, model, breaker, _) in state.health.route_states(now) {
        m.route_breaker_state
            .with_label_values(&[&provider, &model])
            .set(breaker_value(breaker));
    }
    for (provider, model, windows) in state.quota.gauges(crate::domain::now_ms()) {
        for (window, requests, tokens) in windows {
            let labels = [provider.as_str(), model.as_str(), window];
            for (gauge, value) in [
                (&m.route_headroom_requests, requests),
                (&m.route_headroom_tokens, tokens),
            ] {
                match value {
                    Some(v) => gauge.with_label_values(&labels).set(v as i64),
                    // A budget that lapsed (or was never reported) is not shown as stale.
                    None => {
                        let _ = gauge.remove_label_values(&labels);
                    }
                }
            }
        }
    }
    m.store_size.set(state.store.size_on_disk() as i64);
    m.held.set(state.ledger.held_micros() as i64);
    if let Some(cluster) = &state.cluster {
        m.cluster_node.with_label_values(&[&cluster.node]).set(1);
        m.cluster_leases.set(cluster.leases.len() as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

fn breaker_value(state: BreakerState) -> i64 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    }
}
