//! `GET /v1/webhooks/secret` and `POST /v1/webhooks/secret/rotate`: the caller's project's
//! webhook signing secret, for that project's admins.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{body::read_json, AppState, Principal};
use crate::domain::{now_ms, rfc3339};
use crate::error::ApiError;
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

pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let secrets = state
        .webhooks
        .secrets(&state.store, &principal.project_id)?;
    state.store.commit.sync().await?;
    Ok(HttpResponse::Ok().json(view(&principal.project_id, &secrets)))
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
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
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
    let secrets =
        state
            .webhooks
            .rotate(&state.store, &principal.project_id, body.grace_period_ms)?;
    state.store.commit.sync().await?;
    tracing::info!(project_id = %principal.project_id, by = %principal.key_id, grace_ms = body.grace_period_ms, "webhook secret rotated");
    Ok(HttpResponse::Ok().json(view(&principal.project_id, &secrets)))
}
