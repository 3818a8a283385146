//! `/v1/keys`: admin keys create, list, rotate and revoke their project's keys. Admins of the
//! `default` project administer every project: they create keys in any project, list one with
//! `?project=`, and rotate or revoke any key by id. Other admins see only their own project
//! (a foreign key id answers 404, a foreign `project` 403, as creating there does).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{auth::DEFAULT_PROJECT, body::read_json, AppState, Principal};
use crate::domain::rfc3339;
use crate::error::ApiError;
use crate::limits::{MAX_CONCURRENT_EXECUTIONS, MAX_REQUESTS_PER_MINUTE, MAX_TOKENS_PER_MINUTE};
use crate::store::{KeyLimits, KeyMode, KeyRecord, KeyRole};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    role: Option<KeyRole>,
    #[serde(default)]
    project_id: Option<String>,
    /// `test`: the key runs only testing-mode executions.
    #[serde(default)]
    mode: KeyMode,
}

fn view(key: &KeyRecord, secret: Option<&str>) -> serde_json::Value {
    let mut v = json!({
        "id": key.id,
        "object": "api_key",
        "project_id": key.project_id,
        "name": key.name,
        "role": key.role,
        "prefix": key.prefix,
        "created_at": rfc3339(key.created_at_ms),
        "rotated_at": key.rotated_at_ms.map(rfc3339),
        "revoked_at": key.revoked_at_ms.map(rfc3339),
        "limits": key.limits,
        "mode": key.mode,
    });
    if let Some(secret) = secret {
        v["key"] = json!(secret);
    }
    v
}

pub(super) fn valid_project_id(p: &str) -> bool {
    crate::domain::ids::valid_name(p)
}

pub async fn create(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let body: CreateKey = read_json(&req, payload, 64 * 1024).await?;
    let project = body
        .project_id
        .unwrap_or_else(|| principal.project_id.clone());
    if !valid_project_id(&project) {
        return Err(ApiError::invalid(
            "project_id: 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    if project != principal.project_id && principal.project_id != DEFAULT_PROJECT {
        return Err(ApiError::new(
            crate::error::ErrorCode::Forbidden,
            "only admin keys of the default project create keys for other projects",
        ));
    }
    if body.name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::invalid("name: at most 200 characters"));
    }
    let (key, secret) = state.store.create_key(
        &project,
        body.role.unwrap_or(KeyRole::Member),
        body.name,
        body.mode,
    )?;
    state.durable().await?;
    tracing::info!(key_id = %key.id, project_id = %key.project_id, by = %principal.key_id, "api key created");
    Ok(HttpResponse::Created().json(view(&key, Some(&secret))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    project: Option<String>,
}

/// Whether the caller administers every project (an admin key of `default`).
fn operator(principal: &Principal) -> bool {
    principal.role == KeyRole::Admin && principal.project_id == DEFAULT_PROJECT
}

pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let project = query
        .into_inner()
        .project
        .unwrap_or_else(|| principal.project_id.clone());
    if project != principal.project_id && !operator(&principal) {
        return Err(ApiError::new(
            crate::error::ErrorCode::Forbidden,
            "only admin keys of the default project list other projects' keys",
        ));
    }
    let keys = state.store.list_keys(&project)?;
    let data: Vec<_> = keys.iter().map(|k| view(k, None)).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// The live key `id` if the caller administers its project; anything else looks unknown.
fn owned_key(state: &AppState, principal: &Principal, id: &str) -> Result<KeyRecord, ApiError> {
    principal.require_admin()?;
    state
        .store
        .key_by_id(id)?
        .filter(|k| operator(principal) || k.project_id == principal.project_id)
        .filter(|k| k.revoked_at_ms.is_none())
        .ok_or_else(|| ApiError::not_found("api key", id))
}

pub async fn revoke(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = owned_key(&state, &principal, &id)?;
    let key = state.store.revoke_key(key)?;
    state.durable().await?;
    // After the write: a stream starting now checks the store and finds the key revoked.
    state.revocations.revoke(&key.id);
    state.limits.forget_key(&key.id);
    tracing::info!(key_id = %key.id, project_id = %key.project_id, by = %principal.key_id, "api key revoked");
    Ok(HttpResponse::Ok().json(view(&key, None)))
}

pub async fn rotate(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = owned_key(&state, &principal, &id)?;
    let (key, secret) = state.store.rotate_key(key)?;
    state.durable().await?;
    // Streams opened with the old secret end; the new secret opens new ones.
    state.revocations.revoke(&key.id);
    tracing::info!(key_id = %key.id, project_id = %key.project_id, by = %principal.key_id, "api key rotated");
    Ok(HttpResponse::Ok().json(view(&key, Some(&secret))))
}

/// `PATCH /v1/keys/{id}` with `{"limits": {…}}`: each field given replaces the key's own
/// limit (`null` returns it to the `[limits]` default, 0 is no limit); fields left out stay.
pub async fn update(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let key = owned_key(&state, &principal, &id)?;
    let changes = read_limits_patch(&req, payload).await?;
    let limits = patched_limits(key.limits, &changes)?;
    let key = state.store.set_key_limits(key, limits)?;
    state.durable().await?;
    // Durable first, then in force: what the caller is told is what a restart keeps.
    state.limits.set_key_limits(&key.id, key.limits);
    let capped = key.limits.monthly_spend_cap_micros.is_some_and(|c| c > 0);
    state.ledger.set_capped(&key.id, capped);
    tracing::info!(key_id = %key.id, project_id = %key.project_id, by = %principal.key_id, "api key limits changed");
    Ok(HttpResponse::Ok().json(view(&key, None)))
}

/// The body of a limits `PATCH`: `{"limits": {…}}` and nothing else; returns the object.
pub(super) async fn read_limits_patch(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<serde_json::Value, ApiError> {
    let mut body: serde_json::Map<String, serde_json::Value> =
        read_json(req, payload, 64 * 1024).await?;
    if let Some(field) = body.keys().find(|k| *k != "limits") {
        return Err(ApiError::invalid(format!(
            "{field}: unknown field, expected `limits`"
        )));
    }
    body.remove("limits")
        .ok_or_else(|| ApiError::invalid("limits: required"))
}

pub(super) fn patched_limits(
    mut limits: KeyLimits,
    changes: &serde_json::Value,
) -> Result<KeyLimits, ApiError> {
    let Some(changes) = changes.as_object() else {
        return Err(ApiError::invalid("limits: must be an object"));
    };
    for (field, value) in changes {
        let (slot, max) = match field.as_str() {
            "requests_per_minute" => (&mut limits.requests_per_minute, MAX_REQUESTS_PER_MINUTE),
            "tokens_per_minute" => (&mut limits.tokens_per_minute, MAX_TOKENS_PER_MINUTE),
            "concurrent_executions" => (
                &mut limits.concurrent_executions,
                MAX_CONCURRENT_EXECUTIONS,
            ),
            "monthly_spend_cap_micros" => (&mut limits.monthly_spend_cap_micros, i64::MAX as u64),
            other => {
                return Err(ApiError::invalid(format!(
                    "limits.{other}: unknown field, expected requests_per_minute, tokens_per_minute, concurrent_executions or monthly_spend_cap_micros"
                )))
            }
        };
        *slot = match value {
            serde_json::Value::Null => None,
            v => match v.as_u64().filter(|n| *n <= max) {
                Some(n) => Some(n),
                None => {
                    return Err(ApiError::invalid(format!(
                        "limits.{field}: must be an integer between 0 (no limit) and {max}, or null for the default"
                    )))
                }
            },
        };
    }
    Ok(limits)
}
