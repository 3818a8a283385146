//! Provider failures and their classification into normalized codes.
//!
//! Classification is deterministic: the same status, body or transport fault always maps to the
//! same code, so retry and failover decisions can be tested as pure functions.

use std::time::Duration;

use crate::error::{ErrorBody, ErrorCode};

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    pub code: ErrorCode,
    pub message: String,
    /// HTTP status, when the provider answered with one.
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// The model's output was unusable (e.g. a malformed tool call): the provider itself is
    /// healthy, so its breaker must not count it.
    pub model_fault: bool,
    /// What the failed response's rate-limit headers said, for the quota board.
    pub headroom: Option<super::Headroom>,
}

impl ProviderError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProviderError {
        ProviderError {
            code,
            message: message.into(),
            status: None,
            retry_after: None,
            model_fault: false,
            headroom: None,
        }
    }

    /// Whether trying the same route again may help.
    pub fn is_retryable(&self) -> bool {
        self.code.retryable()
    }

    /// Whether this failure says something about the provider's health (as opposed to a
    /// request it rightly refused).
    pub fn counts_against_provider(&self) -> bool {
        if self.model_fault {
            return false;
        }
        match self.code {
            ErrorCode::ProviderUnavailable
            | ErrorCode::ProviderTimeout
            | ErrorCode::StreamInterrupted
            | ErrorCode::RateLimited => true,
            ErrorCode::ProviderError => matches!(self.status, None | Some(401 | 403)),
            _ => false,
        }
    }

    /// Whether the fault is the provider's as a whole rather than one model's: no HTTP answer
    /// at all (connection refused or reset) or rejected credentials. Such a fault counts
    /// against every route of the provider.
    pub fn is_provider_wide(&self) -> bool {
        !self.model_fault
            && match self.code {
                ErrorCode::ProviderUnavailable => self.status.is_none(),
                ErrorCode::ProviderError => matches!(self.status, Some(401 | 403)),
                _ => false,
            }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }

    /// No response headers within the first-chunk deadline.
    pub fn no_response(after: Duration) -> ProviderError {
        Self::new(
            ErrorCode::ProviderTimeout,
            format!("no response within {} ms", after.as_millis()),
        )
    }

    pub fn first_chunk_timeout(after: Duration) -> ProviderError {
        Self::new(
            ErrorCode::ProviderTimeout,
            format!("no first chunk within {} ms", after.as_millis()),
        )
    }

    pub fn stalled(after: Duration) -> ProviderError {
        Self::new(
            ErrorCode::ProviderTimeout,
            format!("stream stalled: no event for {} ms", after.as_millis()),
        )
    }

    pub fn total_timeout(after: Duration) -> ProviderError {
        Self::new(
            ErrorCode::ProviderTimeout,
            format!(
                "attempt exceeded its total timeout of {} ms",
                after.as_millis()
            ),
        )
    }

    pub fn cut(detail: &str) -> ProviderError {
        Self::new(
            ErrorCode::StreamInterrupted,
            format!("stream ended before a finish reason: {detail}"),
        )
    }

    /// A transport failure before response headers arrived.
    pub fn from_transport(err: &reqwest::Error) -> ProviderError {
        let code = if err.is_timeout() {
            ErrorCode::ProviderTimeout
        } else {
            ErrorCode::ProviderUnavailable
        };
        Self::new(code, format!("request failed: {}", error_chain(err)))
    }

    /// A non-2xx answer, classified by status and the provider's error body.
    pub fn from_status(status: u16, retry_after: Option<Duration>, body: &str) -> ProviderError {
        let detail = provider_message(body);
        let lower = body.to_ascii_lowercase();
        let code = match status {
            429 => ErrorCode::RateLimited,
            400 | 413 | 422 if mentions_context_length(&lower) => ErrorCode::ContextLengthExceeded,
            400 | 403 | 422 if mentions_content_filter(&lower) => ErrorCode::ContentFiltered,
            408 => ErrorCode::ProviderTimeout,
            500..=599 => ErrorCode::ProviderUnavailable,
            _ => ErrorCode::ProviderError,
        };
        ProviderError {
            code,
            message: format!("provider answered {status}: {detail}"),
            status: Some(status),
            retry_after,
            model_fault: false,
            headroom: None,
        }
    }

    /// An error event inside an otherwise started stream.
    pub fn in_stream(error: &serde_json::Value) -> ProviderError {
        let text = error.to_string().to_ascii_lowercase();
        let code = if text.contains("rate_limit") || text.contains("rate limit") {
            ErrorCode::RateLimited
        } else if mentions_content_filter(&text) {
            ErrorCode::ContentFiltered
        } else {
            ErrorCode::StreamInterrupted
        };
        let message = error
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| error.to_string());
        Self::new(code, format!("provider sent an error event: {message}"))
    }

    /// Whether a 4xx says the provider does not accept the continuation's message form
    /// (e.g. a trailing assistant message), so another strategy may work on the same route.
    pub fn rejects_message_form(&self) -> bool {
        let lower = self.message.to_ascii_lowercase();
        self.code == ErrorCode::ProviderError
            && matches!(self.status, Some(400 | 422))
            && (lower.contains("prefill")
                || lower.contains("assistant")
                || lower.contains("final message")
                || lower.contains("last message")
                // Gemini, which has no prefill: "… requests ends with a user role …"
                || lower.contains("with a user role"))
    }
}

fn mentions_context_length(lower: &str) -> bool {
    lower.contains("context_length")
        || lower.contains("context length")
        || lower.contains("maximum context")
        || lower.contains("too many tokens")
        || lower.contains("prompt is too long")
}

fn mentions_content_filter(lower: &str) -> bool {
    lower.contains("content_filter")
        || lower.contains("content filter")
        || lower.contains("content_policy")
        || lower.contains("content management policy")
        || lower.contains("safety")
}

/// The `error.message` of an OpenAI-style body, else the body itself (shortened).
fn provider_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(300).collect())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_one_code_each() {
        let c = |s, b: &str| ProviderError::from_status(s, None, b).code;
        assert_eq!(c(429, "{}"), ErrorCode::RateLimited);
        assert_eq!(c(500, "{}"), ErrorCode::ProviderUnavailable);
        assert_eq!(c(503, "{}"), ErrorCode::ProviderUnavailable);
        assert_eq!(
            c(401, r#"{"error":{"code":"invalid_api_key"}}"#),
            ErrorCode::ProviderError
        );
        assert_eq!(
            c(
                400,
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#
            ),
            ErrorCode::ContextLengthExceeded
        );
        assert_eq!(
            c(
                400,
                r#"{"error":{"message":"filtered by the content management policy","code":"content_filter"}}"#
            ),
            ErrorCode::ContentFiltered
        );
        assert_eq!(
            c(400, r#"{"error":{"message":"bad"}}"#),
            ErrorCode::ProviderError
        );
    }

    #[test]
    fn the_provider_message_is_kept() {
        let e = ProviderError::from_status(503, None, r#"{"error":{"message":"overloaded"}}"#);
        assert_eq!(e.message, "provider answered 503: overloaded");
        assert!(e.is_retryable());
    }

    #[test]
    fn prefill_rejections_are_recognised() {
        let e = ProviderError::from_status(
            400,
            None,
            r#"{"error":{"message":"assistant message prefill is not supported for this model"}}"#,
        );
        assert!(e.rejects_message_form());
        assert!(!ProviderError::from_status(400, None, "{}").rejects_message_form());
        let gemini = ProviderError::from_status(
            400,
            None,
            r#"{"error":{"code":400,"message":"Please ensure that multiturn requests ends with a user role or a function response.","status":"INVALID_ARGUMENT"}}"#,
        );
        assert!(gemini.rejects_message_form());
    }

    #[test]
    fn only_faults_of_the_whole_provider_are_provider_wide() {
        let refused = ProviderError::new(ErrorCode::ProviderUnavailable, "connection refused");
        assert!(refused.is_provider_wide());
        assert!(ProviderError::from_status(401, None, "{}").is_provider_wide());
        assert!(ProviderError::from_status(403, None, "{}").is_provider_wide());
        // A model's outage, overload or timeout says nothing about the provider's other models.
        for status in [429, 500, 503, 404] {
            let err = ProviderError::from_status(status, None, "{}");
            assert!(!err.is_provider_wide(), "{status}");
        }
        assert!(!ProviderError::stalled(Duration::from_secs(1)).is_provider_wide());
        assert!(!ProviderError::cut("eof").is_provider_wide());
    }
}
