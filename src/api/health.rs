//! Liveness, readiness and the metrics scrape.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::routing::health::BreakerState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the store takes writes (not failed, free disk above the floor) and at least
/// one provider can be called.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let refusal = state.store.health.admit().err();
    let store = refusal.is_none() && state.store.is_writable();
    let providers = state.providers.any_usable();
    let mut body = json!({
        "status": if store && providers { "ready" } else { "not_ready" },
        "checks": {"store": store, "providers": providers},
    });
    if let Some(refusal) = refusal {
        body["checks"]["store_reason"] = json!(refusal.to_string());
    }
    if store && providers {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text exposition.
/// Gauges that are cheaper to read at scrape time than to keep current are set here.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.metrics;
    let now = tokio::time::Instant::now();
    for p in &state.settings.providers {
        if let Some((breaker, cooldown)) = state.health.state(&p.name, now) {
            let value = match breaker {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            m.breaker_state.with_label_values(&[&p.name]).set(value);
            m.breaker_cooldown
                .with_label_values(&[&p.name])
                .set(cooldown.as_secs_f64());
        }
    }
    m.store_size.set(state.store.size_on_disk() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
