//! `GET /v1/webhooks/secret` and `POST /v1/webhooks/secret/rotate`: the caller's project's
//! webhook signing secret, for that project's admins; admins of `default` reach any project's
//! with `?project=`, as they do its keys.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{body::read_json, keys::valid_project_id, AppState, Principal, DEFAULT_PROJECT};
use crate::domain::{now_ms, rfc3339};
use crate::error::{ApiError, ErrorCode};
use crate::store::SigningSecrets;

/// The longest a replaced secret keeps signing.
const MAX_GRACE_MS: u64 = 7 * 24 * 60 * 60 * 1000;

fn view(project: &str, s: &SigningSecrets) -> serde_json::Value {
    let grace = s
        .previous_expires_at_ms
        .filter(|at| *at > now_ms() && s.previous.is_some());
    json!({
        "object": "webhook_secret",
        "project_id": project,
        "secret": s.current,
        "created_at": rfc3339(s.created_at_ms),
        "previous_secret_expires_at": grace.map(rfc3339),
        "signature_header": "switchyard-signature",
        "scheme": "t=<unix seconds>,v1=<hex hmac-sha256(secret, \"<t>.<raw body>\")>; one v1 per active secret, the current one first",
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectQuery {
    project: Option<String>,
}

/// The project meant: the caller's own, or (admins of `default` only) the one in `?project=`.
fn target(principal: &Principal, query: ProjectQuery) -> Result<String, ApiError> {
    principal.require_admin()?;
    let project = query
        .project
        .unwrap_or_else(|| principal.project_id.clone());
    if project != principal.project_id && principal.project_id != DEFAULT_PROJECT {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only admin keys of the default project manage other projects' webhook secrets",
        ));
    }
    if !valid_project_id(&project) {
        return Err(ApiError::invalid(
            "project: 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    Ok(project)
}

pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ProjectQuery>,
) -> Result<HttpResponse, ApiError> {
    let project = target(&principal, query.into_inner())?;
    let secrets = match &state.cluster {
        Some(cluster) => state
            .webhooks
            .secrets_in(&state.store, Some(cluster), &project)
            .await
            .map_err(ApiError::cluster_unavailable)?,
        None => state.webhooks.secrets(&state.store, &project)?,
    };
    // Shown only once durable: a crash cannot replace a secret someone already holds.
    state.durable().await?;
    Ok(HttpResponse::Ok().json(view(&project, &secrets)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the replaced secret keeps signing too (as a second `v1`); 0 ends it now.
    #[serde(default)]
    grace_period_ms: u64,
}

pub async fn rotate(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ProjectQuery>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let project = target(&principal, query.into_inner())?;
    let has_body = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0");
    let body: RotateBody = if has_body {
        read_json(&req, payload, 64 * 1024).await?
    } else {
        RotateBody::default()
    };
    if body.grace_period_ms > MAX_GRACE_MS {
        return Err(ApiError::invalid(format!(
            "grace_period_ms: must be at most {MAX_GRACE_MS} (7 days)"
        )));
    }
    let secrets = state
        .webhooks
        .rotate(&state.store, &project, body.grace_period_ms)?;
    state.durable().await?;
    tracing::info!(project_id = %project, by = %principal.key_id, grace_ms = body.grace_period_ms, "webhook secret rotated");
    Ok(HttpResponse::Ok().json(view(&project, &secrets)))
}
