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
        | ErrorCode::StorageUnavailable
        | ErrorCode::Internal => "server_error",
        _ => "invalid_request_error",
    }
}

impl OpenAiError {
    pub fn body(&self) -> Value {
        let b = &self.0.body;
        json!({"message": b.message, "type": openai_type(b.code), "param": null, "code": b.code})
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.0.code().status()
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
