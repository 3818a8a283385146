//! `GET /v1/executions/{id}/log`: the debug record of every attempt.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::{executions::owned, AppState, Principal};
use crate::error::ApiError;

pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = owned(&state, &principal, &id).await?;
    let mut entries: Vec<Vec<Value>> = vec![Vec::new(); record.attempts.len()];
    for (attempt, entry) in state.store.attempt_log(&record.id)? {
        if let Some(list) = entries.get_mut(attempt as usize) {
            list.push(entry);
        }
    }
    let attempts: Vec<Value> = record
        .attempts
        .iter()
        .zip(entries)
        .enumerate()
        .map(|(i, (a, entries))| {
            json!({
                "attempt": i + 1,
                "provider": a.provider,
                "model": a.model,
                "strategy": a.strategy,
                "outcome": a.outcome,
                "error_code": a.error_code,
                "error_message": a.error_message,
                "chunks_delivered": a.chunks_delivered,
                "time_to_first_chunk_ms": a.first_chunk_ms,
                "entries": entries,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "execution_log",
        "execution_id": record.id,
        "status": record.status,
        "attempts": attempts,
    })))
}
