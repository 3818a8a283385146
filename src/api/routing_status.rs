//! `GET /v1/routing/status`: every provider's breaker, cooldown, latency, error rate and
//! in-flight count, and each model's routes with whether they are in rotation now.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::{AppState, Principal};
use crate::error::ApiError;

pub async fn get(state: web::Data<AppState>, _: Principal) -> Result<HttpResponse, ApiError> {
    let now = tokio::time::Instant::now();
    let providers: Vec<Value> = state
        .settings
        .providers
        .iter()
        .map(|p| {
            let mut v = state.health.snapshot(&p.name, now);
            v["name"] = json!(p.name);
            v["kind"] = json!(format!("{:?}", p.kind).to_lowercase());
            v["usable"] = json!(state.providers.get(&p.name).is_some_and(|p| p.usable()));
            v
        })
        .collect();
    let models: Vec<Value> = state
        .settings
        .models
        .iter()
        .map(|m| {
            let routes: Vec<Value> = m
                .routes
                .iter()
                .map(|r| json!({"provider": r.provider, "model": r.model, "admitted": state.health.admits(&r.provider, now)}))
                .collect();
            json!({"slug": m.slug, "routes": routes})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "routing_status",
        "providers": providers,
        "models": models,
    })))
}
