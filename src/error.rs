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
    StorageUnavailable,
    Internal,
    /// The client sent its request body too slowly (`limits.body_timeout_ms`,
    /// `limits.body_min_bytes_per_sec`): 408, and the connection is closed.
    RequestTimeout,
    /// The project's balance (less its open holds) or the key's monthly spend cap does not
    /// cover what the request may cost: 402, not retryable until someone tops up.
    InsufficientBalance,
    /// No route produced an answer valid for the requested JSON format or schema (after one
    /// repair attempt per route): 502, not retryable (the same request would fail the same way).
    OutputInvalid,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 20] = [
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
        ErrorCode::StorageUnavailable,
        ErrorCode::Internal,
        ErrorCode::RequestTimeout,
        ErrorCode::InsufficientBalance,
        ErrorCode::OutputInvalid,
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
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::InsufficientBalance => "insufficient_balance",
            ErrorCode::OutputInvalid => "output_invalid",
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
            ErrorCode::ProviderUnavailable | ErrorCode::StorageUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::ProviderError | ErrorCode::StreamInterrupted | ErrorCode::OutputInvalid => {
                StatusCode::BAD_GATEWAY
            }
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::InsufficientBalance => StatusCode::PAYMENT_REQUIRED,
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
                | ErrorCode::StorageUnavailable
                | ErrorCode::Internal
                | ErrorCode::RequestTimeout
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

/// What a `storage_unavailable` answer suggests: the free-space check and the reopen both run
/// about once a second, so a few seconds is when things may have changed.
pub const STORAGE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub body: ErrorBody,
    pub retry_after: Option<Duration>,
    /// A status other than the code's own (an `internal` error that is a 503).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            body: ErrorBody::new(code, message),
            retry_after: None,
            status: None,
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

    /// The store cannot take writes (full disk, failed write): retry later, elsewhere or after
    /// the store is reopened. Nothing the caller was told was accepted is lost.
    pub fn storage(reason: impl fmt::Display) -> Self {
        ApiError {
            body: ErrorBody::new(
                ErrorCode::StorageUnavailable,
                format!("storage is unavailable: {reason}; retry later"),
            ),
            retry_after: Some(STORAGE_RETRY_AFTER),
            status: None,
        }
    }

    /// Cluster mode cannot reach the shared state (NATS down or partitioned from this node):
    /// `internal`, retryable, answered 503 like any other temporary unavailability.
    pub fn cluster_unavailable(reason: impl fmt::Display) -> Self {
        tracing::warn!(error = %reason, "shared state unavailable");
        ApiError {
            body: ErrorBody::new(
                ErrorCode::Internal,
                "the cluster's shared state is unavailable; retry shortly",
            ),
            retry_after: Some(Duration::from_secs(1)),
            status: Some(StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.body.code.status())
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
    /// An I/O error is the disk (sled has poisoned itself, see `store::health`); anything else
    /// is a bug.
    fn from(err: sled::Error) -> Self {
        match err {
            sled::Error::Io(err) => ApiError::storage(err),
            err => ApiError::internal(err),
        }
    }
}

impl From<crate::store::StoreFailed> for ApiError {
    fn from(err: crate::store::StoreFailed) -> Self {
        ApiError::storage(err)
    }
}

impl From<crate::store::Refusal> for ApiError {
    fn from(refusal: crate::store::Refusal) -> Self {
        ApiError::storage(refusal)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.http_status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let Some(after) = self.retry_after_header() {
            res.insert_header(after);
        }
        if self.body.code == ErrorCode::RequestTimeout {
            // The rest of a body that is not coming must not be read as the next request.
            res.force_close();
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
