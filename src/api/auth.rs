//! Who is calling: the API key in `Authorization: Bearer …`, resolved to its project and role.

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use std::future::{ready, Ready};

use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::store::{hash_secret, KeyRole};

/// The authenticated caller. Every read and write is scoped to `project_id`.
#[derive(Debug, Clone)]
pub struct Principal {
    pub project_id: String,
    pub key_id: String,
    pub role: KeyRole,
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

    /// Resolves a secret to a principal (also used by the WebSocket endpoint).
    pub fn from_secret(state: &AppState, secret: &str) -> Result<Principal, ApiError> {
        if state.env_admin_key_hash.as_deref() == Some(hash_secret(secret).as_str()) {
            return Ok(Principal {
                project_id: DEFAULT_PROJECT.to_string(),
                key_id: "key_env_admin".to_string(),
                role: KeyRole::Admin,
            });
        }
        match state.store.key_by_secret(secret)? {
            Some(key) => Ok(Principal {
                project_id: key.project_id,
                key_id: key.id,
                role: key.role,
            }),
            None => Err(ApiError::new(ErrorCode::Unauthorized, "invalid api key")),
        }
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
