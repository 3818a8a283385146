//! `GET /v1/webhooks/secret`: the webhook signing secret, for admins of the default project.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{AppState, Principal, DEFAULT_PROJECT};
use crate::error::{ApiError, ErrorCode};

pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    if principal.project_id != DEFAULT_PROJECT {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only admins of the default project see the webhook secret",
        ));
    }
    Ok(HttpResponse::Ok().json(json!({
        "object": "webhook_secret",
        "secret": state.webhook_secret,
        "signature_header": "switchyard-signature",
        "scheme": "t=<unix seconds>,v1=<hex hmac-sha256(secret, \"<t>.<raw body>\")>",
    })))
}
