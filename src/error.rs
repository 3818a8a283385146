//! The API error type: the normalized codes, their HTTP statuses and the contract's JSON shape.
//!
//! Every failure a client can see — bad input, auth, provider trouble — ends up as one
//! [`ErrorCode`]; the status and `retryable` flag follow from the code alone, so the mapping is
//! deterministic and lives in exactly one place.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The fixed, documented set of error codes (README "Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    PayloadTooLarge,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    IdempotencyConflict,
    RateLimited,
    ContextLengthExceeded,
    ContentFiltered,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderError,
    StreamInterrupted,
    Cancelled,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::InvalidRequest,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::IdempotencyConflict,
        ErrorCode::RateLimited,
        ErrorCode::ContextLengthExceeded,
        ErrorCode::ContentFiltered,
        ErrorCode::ProviderTimeout,
        ErrorCode::ProviderUnavailable,
        ErrorCode::ProviderError,
        ErrorCode::StreamInterrupted,
        ErrorCode::Cancelled,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::ContentFiltered => "content_filtered",
            ErrorCode::ProviderTimeout => "provider_timeout",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
            ErrorCode::ProviderError => "provider_error",
            ErrorCode::StreamInterrupted => "stream_interrupted",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::ContextLengthExceeded
            | ErrorCode::ContentFiltered => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict | ErrorCode::IdempotencyConflict | ErrorCode::Cancelled => {
                StatusCode::CONFLICT
            }
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ProviderTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ProviderUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ProviderError | ErrorCode::StreamInterrupted => StatusCode::BAD_GATEWAY,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::ProviderTimeout
                | ErrorCode::ProviderUnavailable
                | ErrorCode::StreamInterrupted
                | ErrorCode::Internal
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error object as it appears in bodies, execution records and `error` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            retryable: code.retryable(),
        }
    }
}

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub body: ErrorBody,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            body: ErrorBody::new(code, message),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no {what} with id `{id}`"))
    }

    pub fn internal(err: impl fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub fn code(&self) -> ErrorCode {
        self.body.code
    }

    /// `Retry-After` in whole seconds: the provider's hint when there is one, and one second
    /// for any 429 without it. Both error shapes send it.
    pub fn retry_after_header(&self) -> Option<(header::HeaderName, String)> {
        let after = self.retry_after.or_else(|| {
            (self.body.code == ErrorCode::RateLimited).then_some(Duration::from_secs(1))
        })?;
        Some((header::RETRY_AFTER, after.as_secs().max(1).to_string()))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.body.code, self.body.message)
    }
}

impl From<sled::Error> for ApiError {
    fn from(err: sled::Error) -> Self {
        ApiError::internal(err)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.body.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let Some(after) = self.retry_after_header() {
            res.insert_header(after);
        }
        res.json(Envelope { error: &self.body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_name_and_an_error_status() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            assert!(code.status().is_client_error() || code.status().is_server_error());
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn rate_limited_answers_carry_retry_after() {
        let res = ApiError::new(ErrorCode::RateLimited, "slow down").error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }
}
