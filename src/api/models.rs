//! `GET /v1/models`: the configured model slugs, in OpenAI's list shape.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{openai_error::OpenAiError, AppState, Principal};
use crate::error::ApiError;

pub async fn list(
    state: web::Data<AppState>,
    principal: Result<Principal, ApiError>,
) -> Result<HttpResponse, OpenAiError> {
    principal?;
    let data: Vec<_> = state
        .settings
        .models
        .iter()
        .map(|m| m.slug.as_str())
        .chain(["auto"])
        .map(|slug| json!({"id": slug, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}
