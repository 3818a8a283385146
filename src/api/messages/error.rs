//! Errors in Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`) with
//! Anthropic's statuses, so the official SDKs raise their typed exceptions.
//!
//! The mapping from the normalized codes of `crate::error` (README, "Anthropic Messages API"):
//! the status follows Anthropic's table for its own types (529 for an unavailable provider,
//! 500 for a provider's failure, 504 for a timeout), and our code travels in the
//! `x-switchyard-error-code` header, since Anthropic's body has no place for it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};
use std::fmt;

use crate::error::{ApiError, ErrorCode};

#[derive(Debug)]
pub struct MessagesError(pub ApiError);

impl From<ApiError> for MessagesError {
    fn from(err: ApiError) -> Self {
        MessagesError(err)
    }
}

impl fmt::Display for MessagesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Anthropic's error type and status for one normalized code.
pub fn anthropic_error(code: ErrorCode) -> (&'static str, u16) {
    match code {
        ErrorCode::InvalidRequest
        | ErrorCode::ContextLengthExceeded
        | ErrorCode::ContentFiltered => ("invalid_request_error", 400),
        ErrorCode::Unauthorized => ("authentication_error", 401),
        ErrorCode::InsufficientBalance => ("billing_error", 402),
        ErrorCode::Forbidden => ("permission_error", 403),
        ErrorCode::NotFound => ("not_found_error", 404),
        ErrorCode::RequestTimeout => ("timeout_error", 408),
        // Anthropic has no conflict type of its own; the status keeps the meaning.
        ErrorCode::Conflict | ErrorCode::IdempotencyConflict | ErrorCode::Cancelled => {
            ("invalid_request_error", 409)
        }
        ErrorCode::PayloadTooLarge => ("request_too_large", 413),
        ErrorCode::RateLimited => ("rate_limit_error", 429),
        ErrorCode::ProviderError
        | ErrorCode::StreamInterrupted
        | ErrorCode::OutputInvalid
        | ErrorCode::Internal => ("api_error", 500),
        ErrorCode::ProviderTimeout => ("timeout_error", 504),
        // Nothing can take the request now: Anthropic's "try again shortly".
        ErrorCode::ProviderUnavailable | ErrorCode::StorageUnavailable => ("overloaded_error", 529),
    }
}

impl MessagesError {
    /// The whole error body (also the data of a stream's `error` event).
    pub fn body(&self) -> Value {
        let (kind, _) = anthropic_error(self.0.code());
        json!({"type": "error", "error": {"type": kind, "message": self.0.body.message}})
    }
}

impl ResponseError for MessagesError {
    fn status_code(&self) -> StatusCode {
        // An error with a status of its own (the cluster's shared state unavailable: 503)
        // keeps it; the SDKs retry either.
        if let Some(status) = self.0.status {
            return status;
        }
        let (_, status) = anthropic_error(self.0.code());
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let Some(after) = self.0.retry_after_header() {
            res.insert_header(after);
        }
        res.insert_header(("x-switchyard-error-code", self.0.code().as_str()));
        if self.0.code() == ErrorCode::RequestTimeout {
            // As in `ApiError`: the unread rest of the body must not become the next request.
            res.force_close();
        }
        res.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_an_anthropic_type_and_an_error_status() {
        for code in ErrorCode::ALL {
            let (kind, status) = anthropic_error(code);
            assert!(kind.ends_with("_error") || kind == "request_too_large");
            assert!(status >= 400, "{code}");
        }
        let res = MessagesError(ApiError::new(ErrorCode::RateLimited, "slow")).error_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers().get("retry-after").unwrap(), "1");
        assert_eq!(
            res.headers().get("x-switchyard-error-code").unwrap(),
            "rate_limited"
        );
    }
}
