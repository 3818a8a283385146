//! Who is calling: the API key in `Authorization: Bearer …`, resolved to its project and role.

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use std::future::{ready, Ready};

use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::revocation::Revoked;
use crate::store::{hash_secret, KeyRole};

/// The authenticated caller. Every read and write is scoped to `project_id`.
#[derive(Debug, Clone)]
pub struct Principal {
    pub project_id: String,
    pub key_id: String,
    pub role: KeyRole,
    /// The SHA-256 of the secret used, `None` for `SWITCHYARD_ADMIN_KEY` (which cannot be
    /// revoked): streams compare it with the stored key to notice a rotation that raced them.
    pub key_hash: Option<String>,
    /// A `test` key: its executions run in testing mode only.
    pub test_only: bool,
}

/// The project of `SWITCHYARD_ADMIN_KEY` and of the bootstrap key.
pub const DEFAULT_PROJECT: &str = "default";

impl Principal {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            KeyRole::Admin => Ok(()),
            KeyRole::Member => Err(ApiError::new(
                ErrorCode::Forbidden,
                "this action needs an admin key",
            )),
        }
    }

    /// Resolves when this caller's key is revoked or rotated: open streams select on it.
    pub fn revocation(&self, state: &AppState) -> Revoked {
        watch_key(state, &self.key_id, self.key_hash.as_deref())
    }

    /// Resolves a secret to a principal (also used by the WebSocket endpoint).
    pub fn from_secret(state: &AppState, secret: &str) -> Result<Principal, ApiError> {
        if state.env_admin_key_hash.as_deref() == Some(hash_secret(secret).as_str()) {
            return Ok(Principal {
                project_id: DEFAULT_PROJECT.to_string(),
                key_id: "key_env_admin".to_string(),
                role: KeyRole::Admin,
                key_hash: None,
                test_only: false,
            });
        }
        match state.store.key_by_secret(secret)? {
            Some(key) => Ok(Principal {
                project_id: key.project_id,
                key_id: key.id,
                role: key.role,
                test_only: !key.mode.is_live(),
                key_hash: Some(key.hash),
            }),
            None => Err(ApiError::new(ErrorCode::Unauthorized, "invalid api key")),
        }
    }
}

/// Watches the key `key_id` whose secret hashed to `key_hash` when the stream was authorised;
/// already fired when the key has been revoked or rotated since. `None`: never fires.
pub fn watch_key(state: &AppState, key_id: &str, key_hash: Option<&str>) -> Revoked {
    let Some(hash) = key_hash else {
        return Revoked::never();
    };
    // Subscribe first, then check: a revocation in between is seen by one or the other.
    let revoked = state.revocations.watch(key_id);
    match state.store.key_by_id(key_id) {
        Ok(Some(key)) if key.revoked_at_ms.is_none() && key.hash == hash => revoked,
        Ok(_) => Revoked::already(),
        // A failed read proves nothing about the key; the broadcast still covers it.
        Err(_) => revoked,
    }
}

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::new(
            ErrorCode::Unauthorized,
            "missing api key: send `Authorization: Bearer <key>`",
        )
    };
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Principal, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req
            .app_data::<web::Data<AppState>>()
            .expect("AppState is registered");
        ready(bearer(req).and_then(|secret| Principal::from_secret(state, secret)))
    }
}
