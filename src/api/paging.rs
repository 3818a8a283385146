//! What every paginated listing shares: the `limit` parameter and the list envelope.

use actix_web::HttpResponse;
use serde::Serialize;
use serde_json::json;

use crate::error::ApiError;

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;

/// `?limit=` as text (so a non-number gets an error naming it): 20 when absent, 1–100.
pub fn limit(text: Option<&str>) -> Result<usize, ApiError> {
    let limit = match text {
        None => DEFAULT_PAGE,
        Some(text) => text.parse::<usize>().unwrap_or(0),
    };
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit: must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(limit)
}

/// `{"object": "list", "data", "has_more", "next_cursor"}`.
pub fn list<T: Serialize>(data: &[T], next_cursor: Option<&str>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "has_more": next_cursor.is_some(),
        "next_cursor": next_cursor,
    }))
}
