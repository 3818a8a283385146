//! The HTTP surface: one file per resource; [`configure`] lists every route.

mod analytics;
mod auth;
mod balance;
mod body;
mod catalog;
mod chat_completions;
mod connections;
pub mod cors;
mod debug_log;
mod design;
mod embeddings;
mod events;
mod executions;
mod finished;
mod following;
mod health;
mod keys;
mod me;
mod messages;
mod models;
mod openai_error;
mod paging;
mod project_limits;
mod rate_limits;
mod responses;
mod routing_status;
mod shared;
mod static_files;
mod webhook_deliveries;
mod webhook_secret;
mod ws;

pub use auth::{Principal, DEFAULT_PROJECT};
pub use connections::{refuse_over_cap, ConnectionLimiter};
pub use health::metrics_listener;
pub use rate_limits::rate_limit_headers;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;

use crate::actors::Registry;
use crate::channels::ProjectFeed;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::revocation::Revocations;
use crate::routing::HealthBoard;
use crate::settings::Settings;
use crate::store::Store;

/// Shared by every handler (one instance per process, cloned into each worker).
pub struct AppState {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub providers: Arc<Providers>,
    pub health: Arc<HealthBoard>,
    /// Upstream quotas per route (admission, routing status, headroom gauges).
    pub quota: Arc<crate::routing::QuotaBoard>,
    pub registry: Addr<Registry>,
    /// Starts fresh executions on the worker that accepted them.
    pub launcher: crate::actors::Launcher,
    pub metrics: Arc<Metrics>,
    pub project_feed: Arc<ProjectFeed>,
    /// Tells open streams that their key was revoked or rotated.
    pub revocations: Arc<Revocations>,
    /// Webhook egress rules and per-project signing secrets.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// SHA-256 of `SWITCHYARD_ADMIN_KEY`, when set.
    pub env_admin_key_hash: Option<String>,
    /// Client rate limits and executions in flight per key.
    pub limits: Arc<crate::limits::RateLimits>,
    /// Balances, holds and keys' monthly spend.
    pub ledger: Arc<crate::ledger::Ledger>,
    /// Cluster mode's shared state (`[cluster]`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AppState {
    /// Waits until what this request wrote is durable: the local group commit, and in a
    /// cluster the shared writes it queued (keys, limits, catalog, …) acknowledged by KV.
    pub async fn durable(&self) -> Result<(), ApiError> {
        self.store.commit.sync().await?;
        if let Some(cluster) = &self.cluster {
            let queued = self.store.replication.queued();
            cluster
                .shared_barrier(queued)
                .await
                .map_err(ApiError::cluster_unavailable)?;
        }
        Ok(())
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default().error_handler(|err, _| {
            ApiError::invalid(format!("invalid query string: {err}")).into()
        }),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _| ApiError::invalid(format!("invalid path: {err}")).into()),
    )
    .route("/", web::get().to(static_files::index))
    .route("/static/{name}", web::get().to(static_files::file))
    .route("/healthz", web::get().to(health::healthz))
    .route("/metrics", web::get().to(health::metrics))
    .route("/v1/ws", web::get().to(ws::connect))
    .route("/readyz", web::get().to(health::readyz))
    .route("/v1/executions", web::post().to(executions::submit))
    .route("/v1/executions", web::get().to(executions::list))
    .route("/v1/executions/{id}", web::get().to(executions::get))
    .route(
        "/v1/executions/{id}/cancel",
        web::post().to(executions::cancel),
    )
    .route("/v1/executions/{id}/events", web::get().to(events::stream))
    .route("/v1/executions/{id}/log", web::get().to(debug_log::get))
    .route(
        "/v1/chat/completions",
        web::post().to(chat_completions::create),
    )
    .route("/v1/responses", web::post().to(responses::create))
    .route("/v1/responses/{id}", web::get().to(responses::retrieve))
    .route("/v1/responses/{id}", web::delete().to(responses::delete))
    .route(
        "/v1/responses/{id}/cancel",
        web::post().to(responses::cancel),
    )
    .route(
        "/v1/responses/{id}/input_items",
        web::get().to(responses::input_items),
    )
    .route("/v1/messages", web::post().to(messages::create))
    .route(
        "/v1/messages/count_tokens",
        web::post().to(messages::count_tokens),
    )
    .route("/v1/models", web::get().to(models::list))
    .route("/v1/models/{model}", web::get().to(models::retrieve))
    .route("/v1/embeddings", web::post().to(embeddings::create))
    .route("/v1/routing/status", web::get().to(routing_status::get))
    .route("/v1/analytics", web::get().to(analytics::get))
    .route("/v1/me", web::get().to(me::get))
    .route("/v1/webhooks/secret", web::get().to(webhook_secret::get))
    .route(
        "/v1/webhooks/secret/rotate",
        web::post().to(webhook_secret::rotate),
    )
    .route(
        "/v1/webhooks/deliveries",
        web::get().to(webhook_deliveries::list),
    )
    .route(
        "/v1/webhooks/deliveries/{id}/retry",
        web::post().to(webhook_deliveries::retry),
    )
    .route(
        "/v1/projects/{project_id}/balance",
        web::post().to(balance::top_up),
    )
    .route(
        "/v1/projects/{project_id}/limits",
        web::get().to(project_limits::get),
    )
    .route(
        "/v1/projects/{project_id}/limits",
        web::patch().to(project_limits::update),
    )
    .route("/v1/balance", web::get().to(balance::get))
    .route("/v1/ledger", web::get().to(balance::ledger))
    .route(
        "/v1/structures",
        web::post().to(catalog::create::<{ catalog::STRUCTURES }>),
    )
    .route(
        "/v1/structures",
        web::get().to(catalog::list_all::<{ catalog::STRUCTURES }>),
    )
    .route(
        "/v1/structures/{name}",
        web::get().to(catalog::get::<{ catalog::STRUCTURES }>),
    )
    .route(
        "/v1/structures/{name}",
        web::put().to(catalog::replace::<{ catalog::STRUCTURES }>),
    )
    .route(
        "/v1/workflows",
        web::post().to(catalog::create::<{ catalog::WORKFLOWS }>),
    )
    .route(
        "/v1/workflows",
        web::get().to(catalog::list_all::<{ catalog::WORKFLOWS }>),
    )
    .route(
        "/v1/workflows/{name}",
        web::get().to(catalog::get::<{ catalog::WORKFLOWS }>),
    )
    .route(
        "/v1/workflows/{name}",
        web::put().to(catalog::replace::<{ catalog::WORKFLOWS }>),
    )
    .route("/v1/keys", web::post().to(keys::create))
    .route("/v1/keys", web::get().to(keys::list))
    .route("/v1/keys/{id}", web::delete().to(keys::revoke))
    .route("/v1/keys/{id}", web::patch().to(keys::update))
    .route("/v1/keys/{id}/rotate", web::post().to(keys::rotate))
    .default_service(web::to(no_route));
}

/// Counts and times every request by its route pattern (bounded labels, never raw paths).
pub async fn observe(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let started = std::time::Instant::now();
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        let status = res.status().as_u16().to_string();
        m.http_requests
            .with_label_values(&[&route, &method, &status])
            .inc();
        m.http_duration
            .with_label_values(&[&route, &method])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}

async fn no_route(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}
