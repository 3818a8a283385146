//! `GET /v1/webhooks/deliveries`: the caller's project's webhook deliveries, newest first:
//! pending ones with their next try, delivered ones, and dead ones until retention removes them;
//! `POST /v1/webhooks/deliveries/{id}/retry`: deliver a delivered or dead one again.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, Principal};
use crate::domain::rfc3339;
use crate::error::{ApiError, ErrorCode};
use crate::store::{DeliveryStatus, WebhookJob};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    /// Text, so that a non-number gets an error naming `limit`.
    limit: Option<String>,
    cursor: Option<String>,
}

fn view(job: &WebhookJob) -> serde_json::Value {
    let status = job.status();
    json!({
        "object": "webhook_delivery",
        "id": format!("evt_{}", job.execution_id.trim_start_matches("exec_")),
        "execution_id": job.execution_id,
        "type": job.event_type,
        "url": job.url,
        "status": status.as_str(),
        "attempts": job.attempts,
        "last_error": job.last_error,
        "next_attempt_at": (status == DeliveryStatus::Pending).then(|| rfc3339(job.next_at_ms)),
        "last_attempt_at": job.last_attempt_at_ms.map(rfc3339),
        "delivered_at": job.delivered_at_ms.map(rfc3339),
        "created_at": rfc3339(job.created_at_ms),
    })
}

pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "status: must be one of pending, delivered, dead; got `{s}`"
            ))
        })?),
    };
    let limit = super::paging::limit(query.limit.as_deref())?;
    if query
        .cursor
        .as_deref()
        .is_some_and(|c| !c.starts_with("exec_"))
    {
        return Err(ApiError::invalid(
            "cursor: not a cursor from a previous page",
        ));
    }
    let page = state.store.list_webhooks(
        &principal.project_id,
        status,
        limit,
        query.cursor.as_deref(),
    )?;
    let data: Vec<_> = page.jobs.iter().map(view).collect();
    Ok(super::paging::list(&data, page.next_cursor.as_deref()))
}

/// Queues a delivered or dead delivery again, due now, with a fresh attempt budget (after the
/// receiver or its DNS was fixed); `409` while it is still pending.
pub async fn retry(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let execution_id = id
        .strip_prefix("evt_")
        .map(|rest| format!("exec_{rest}"))
        .unwrap_or_default();
    let job = state
        .store
        .webhook(&execution_id)?
        .filter(|job| job.project_id == principal.project_id)
        .ok_or_else(|| ApiError::not_found("webhook delivery", &id))?;
    if job.status() == DeliveryStatus::Pending {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "delivery is still pending; it is retried on its own",
        ));
    }
    let job = state.store.requeue_webhook(&job, crate::domain::now_ms())?;
    if let Some(cluster) = &state.cluster {
        cluster.share_webhook(&job);
    }
    state.durable().await?;
    state.webhooks.wake.notify_one();
    tracing::info!(execution_id = %job.execution_id, by = %principal.key_id, "webhook delivery queued again");
    Ok(HttpResponse::Ok().json(view(&job)))
}
