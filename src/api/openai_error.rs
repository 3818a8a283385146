//! Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) for the
//! OpenAI-compatible endpoints, so the official SDKs raise their typed exceptions. The status
//! and `code` are the same normalized ones as everywhere else.

use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};
use std::fmt;

use crate::error::{ApiError, ErrorCode};

#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        OpenAiError(err)
    }
}

impl fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn openai_type(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unauthorized => "authentication_error",
        ErrorCode::Forbidden => "permission_error",
        ErrorCode::NotFound => "not_found_error",
        ErrorCode::RateLimited => "rate_limit_error",
        // OpenAI's own type for an account out of credit.
        ErrorCode::InsufficientBalance => "insufficient_quota",
        ErrorCode::ProviderTimeout
        | ErrorCode::ProviderUnavailable
        | ErrorCode::ProviderError
        | ErrorCode::StreamInterrupted
        | ErrorCode::OutputInvalid
        | ErrorCode::StorageUnavailable
        | ErrorCode::Internal => "server_error",
        _ => "invalid_request_error",
    }
}

/// The field a bad request names: our messages start with its path (`messages[0].content: …`),
/// which OpenAI's shape carries as `param` so SDKs can show it.
fn param_of(code: ErrorCode, message: &str) -> Option<&str> {
    if code.status().as_u16() != 400 {
        return None;
    }
    let (head, _) = message.split_once(": ")?;
    let is_path = !head.is_empty()
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
    is_path.then_some(head)
}

impl OpenAiError {
    pub fn body(&self) -> Value {
        let b = &self.0.body;
        json!({"message": b.message, "type": openai_type(b.code),
               "param": param_of(b.code, &b.message), "code": b.code})
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.0.http_status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let Some(after) = self.0.retry_after_header() {
            res.insert_header(after);
        }
        if self.0.code() == ErrorCode::RequestTimeout {
            // As in `ApiError`: the unread rest of the body must not become the next request.
            res.force_close();
        }
        res.json(json!({"error": self.body()}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_is_the_param() {
        let param = |code, msg| param_of(code, msg).map(str::to_string);
        assert_eq!(
            param(
                ErrorCode::InvalidRequest,
                "messages[0].content: must not be empty"
            ),
            Some("messages[0].content".into())
        );
        assert_eq!(
            param(ErrorCode::InvalidRequest, "model: unknown model `x`"),
            Some("model".into())
        );
        assert_eq!(
            param(ErrorCode::InvalidRequest, "invalid JSON: expected value"),
            None
        );
        assert_eq!(param(ErrorCode::RateLimited, "limit: over"), None);
    }
}
