//! What an answer in another protocol's shape needs while it follows an execution to its end
//! (OpenAI chat completions and Responses, Anthropic messages): its idempotency key, the steps
//! of its stream, cancelling it if the client goes away, waiting for `done`, and telling a
//! store failure from a bug when the log ends without one.

use actix::Addr;
use actix_web::HttpRequest;
use bytes::Bytes;

use super::AppState;
use crate::actors::{CancelExecution, Registry};
use crate::cursor::Cursor;
use crate::domain::{EventKind, SharedEvent};
use crate::error::{ApiError, ErrorCode};

/// Cancels the execution if the client goes away before the end (`[compat]
/// cancel_on_disconnect`).
pub struct DisconnectGuard {
    registry: Addr<Registry>,
    id: String,
    armed: bool,
}

impl DisconnectGuard {
    pub fn new(state: &AppState, execution_id: &str) -> DisconnectGuard {
        DisconnectGuard {
            registry: state.registry.clone(),
            id: execution_id.to_string(),
            armed: state.settings.compat.cancel_on_disconnect,
        }
    }

    /// The answer reached its end: nothing to cancel any more.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if self.armed {
            tracing::info!(execution_id = %self.id, "client went away; cancelling");
            self.registry.do_send(CancelExecution(self.id.clone()));
        }
    }
}

/// An execution whose log ends without `done` was suspended by a failed store write: say so
/// (retryable) rather than blame ourselves.
pub fn blame_store(state: &AppState, err: ApiError) -> ApiError {
    match state.store.health.failure() {
        Some(reason) if err.code() == ErrorCode::Internal => ApiError::storage(reason),
        _ => err,
    }
}

/// The `done` event (its data is the final execution object).
pub async fn until_done(
    mut cursor: Cursor,
    mut guard: DisconnectGuard,
) -> Result<SharedEvent, ApiError> {
    while let Some(event) = cursor.next().await {
        if event.kind == EventKind::Done {
            guard.disarm();
            return Ok(event);
        }
    }
    guard.disarm();
    Err(ApiError::new(
        ErrorCode::Internal,
        "the execution ended without a result",
    ))
}

/// One step of a translation from the event log to another protocol's stream.
pub enum Step {
    /// Frames of content (the stream has begun).
    Frame(Bytes),
    /// The last frames of a completed answer.
    Finish(Bytes),
    /// The execution ended without completing.
    Failed(ApiError),
    /// Nothing for a while.
    Idle,
    End,
}

/// The client's `Idempotency-Key` header, or a fresh key with `prefix` (these protocols have no
/// key of their own: a retry without the header is a new request, as with the providers).
pub fn idempotency_key(req: &HttpRequest, prefix: &str) -> String {
    req.headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{prefix}_{}", crate::domain::ids::time_ordered_token(16)))
}
