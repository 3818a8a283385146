//! `GET /v1/models`: the configured model slugs, in OpenAI's list shape.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{openai_error::OpenAiError, AppState, Principal};
use crate::error::ApiError;

fn model(slug: &str) -> serde_json::Value {
    json!({"id": slug, "object": "model", "created": 0, "owned_by": "switchyard"})
}

/// `GET /v1/models/{model}`.
pub async fn retrieve(
    state: web::Data<AppState>,
    principal: Result<Principal, ApiError>,
    slug: web::Path<String>,
) -> Result<HttpResponse, OpenAiError> {
    principal?;
    if slug.as_str() != "auto" && state.settings.model(&slug).is_none() {
        return Err(ApiError::not_found("model", &slug).into());
    }
    Ok(HttpResponse::Ok().json(model(&slug)))
}

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
        .map(model)
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}
