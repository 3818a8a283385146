//! `GET` / `PATCH /v1/projects/{project_id}/limits`: a project's own rate limits (requests and
//! tokens per minute, executions in flight) over the `[limits]` defaults, for admins of that
//! project or of `default`; `PATCH` takes `{"limits": {…}}` like `PATCH /v1/keys/{id}`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{
    balance::project_of,
    keys::{patched_limits, read_limits_patch},
    AppState, Principal,
};
use crate::error::ApiError;
use crate::store::KeyLimits;

fn view(project: &str, limits: &KeyLimits) -> serde_json::Value {
    json!({"object": "project_limits", "project_id": project, "limits": limits})
}

pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let project = project_of(&principal, Some(&path))?;
    principal.require_admin()?;
    let limits = state.store.project_limits(&project)?;
    Ok(HttpResponse::Ok().json(view(&project, &limits)))
}

pub async fn update(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let project = project_of(&principal, Some(&path))?;
    principal.require_admin()?;
    let changes = read_limits_patch(&req, payload).await?;
    let limits = patched_limits(state.store.project_limits(&project)?, &changes)?;
    if limits.monthly_spend_cap_micros.is_some() {
        return Err(ApiError::invalid(
            "limits.monthly_spend_cap_micros: a key's limit; a project's spending is bounded by its balance",
        ));
    }
    state.store.put_project_limits(&project, &limits)?;
    state.durable().await?;
    // Durable first, then in force.
    state.limits.set_project_limits(&project, limits);
    tracing::info!(project = %project, by = %principal.key_id, "project limits changed");
    Ok(HttpResponse::Ok().json(view(&project, &limits)))
}
