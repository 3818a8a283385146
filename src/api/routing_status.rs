//! `GET /v1/routing/status`: each model's routes with their own breaker, cooldown, latency,
//! error rate and in-flight count and whether they are in rotation now, and every provider's
//! aggregate over its routes (informational: admission is per route). Each route also shows its
//! upstream quota (caps, use and headroom per minute and UTC day, what the provider reported,
//! any 429 cooldown) and, when it is out of rotation, why (`not_admitted_reason`).

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::{AppState, Principal};
use crate::error::ApiError;
use crate::routing::health::RouteKey;

pub async fn get(state: web::Data<AppState>, _: Principal) -> Result<HttpResponse, ApiError> {
    let now = tokio::time::Instant::now();
    let now_ms = crate::domain::now_ms();
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
                .map(|r| {
                    let key = RouteKey {
                        provider: &r.provider,
                        model: &r.model,
                    };
                    // Quota first: a route out of quota is skipped even when its breaker is closed.
                    let reason = match state.quota.check(key, now_ms) {
                        Err(e) => Some(e.reason.as_str()),
                        Ok(()) if !state.health.admits(key, now) => Some("breaker_open"),
                        Ok(()) => None,
                    };
                    let mut v = json!({"provider": r.provider, "model": r.model,
                                       "admitted": reason.is_none(),
                                       "not_admitted_reason": reason});
                    v["health"] = state.health.route_snapshot(key, now);
                    v["quota"] = state.quota.snapshot(key, now_ms);
                    v["price"] = json!({"input_per_mtok": r.input_per_mtok,
                                        "output_per_mtok": r.output_per_mtok});
                    v
                })
                .collect();
            json!({"slug": m.slug, "routes": routes})
        })
        .collect();
    // Route health is each node's own: a cluster node says which one answered.
    let node = state.cluster.as_ref().map(|c| c.node.as_str());
    Ok(HttpResponse::Ok().json(json!({
        "object": "routing_status",
        "node": node,
        "providers": providers,
        "models": models,
    })))
}
