//! `GET /v1/me`: who the API key is (its project, id and role), so a client such as the
//! dashboard can name the project's channels without being told.

use actix_web::HttpResponse;
use serde_json::json;

use super::Principal;

pub async fn get(principal: Principal) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "object": "principal",
        "project_id": principal.project_id,
        "key_id": principal.key_id,
        "role": principal.role,
    }))
}
