//! Liveness, readiness and the metrics scrape.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the store answers and at least one provider can be called.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.is_open();
    let providers = state.providers.any_usable();
    let body = json!({
        "status": if store && providers { "ready" } else { "not_ready" },
        "checks": {"store": store, "providers": providers},
    });
    if store && providers {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text exposition.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
