//! The Anthropic Messages client: the request with its headers and API version, and the
//! classification of HTTP errors; `request` builds the body and `stream` reads the
//! `message_start` … `message_stop` stream.

use serde::Deserialize;
use std::time::Duration;

use super::http::Http;
use super::sse;
use super::{ProviderError, ProviderStream, UpstreamRequest};
use crate::error::ErrorCode;
use crate::settings::ProviderSettings;
use crate::store::AttemptLog;

mod request;
mod stream;

use request::request_body;
use stream::EventParser;

/// The API version every request pins.
pub const API_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    url: String,
    api_key: Option<String>,
    http: Http,
}

impl Anthropic {
    pub fn new(settings: &ProviderSettings, http: Http) -> Anthropic {
        let base = settings.base_url.as_deref().unwrap_or_default();
        Anthropic {
            url: format!("{}/messages", base.trim_end_matches('/')),
            api_key: settings.api_key.clone(),
            http,
        }
    }

    pub async fn open(
        &self,
        req: &UpstreamRequest,
        log: &AttemptLog,
    ) -> Result<ProviderStream, ProviderError> {
        let prepared = request_body(req);
        let http = self.http.client();
        let mut builder = http
            .post(&self.url)
            .header("anthropic-version", API_VERSION);
        if let Some(key) = &self.api_key {
            builder = builder.header("x-api-key", key);
        }
        let resp = sse::send(&http, builder, &prepared.body, log, classify_status).await?;
        let mut parser = EventParser::new(prepared.trimmed_prefill, prepared.output_tool);
        Ok(sse::parse_response(resp, log.clone(), move |ev| {
            parser.parse(&ev.data)
        }))
    }
}

/// A non-2xx answer: `{"type":"error","error":{"type","message"}}`. The error type decides
/// where it is unambiguous, the status otherwise.
pub fn classify_status(status: u16, retry_after: Option<Duration>, body: &str) -> ProviderError {
    let mut err = ProviderError::from_status(status, retry_after, body);
    let detail = serde_json::from_str::<Envelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    let message = detail.message.to_ascii_lowercase();
    match detail.kind.as_str() {
        "rate_limit_error" => err.code = ErrorCode::RateLimited,
        "overloaded_error" => err.code = ErrorCode::ProviderUnavailable,
        "invalid_request_error"
            if message.contains("prompt is too long")
                || message.contains("exceed context limit") =>
        {
            err.code = ErrorCode::ContextLengthExceeded
        }
        _ => {}
    }
    err
}

#[derive(Deserialize)]
struct Envelope {
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_and_error_types_map_to_one_code_each() {
        let body = |kind: &str, msg: &str| {
            json!({"type": "error", "error": {"type": kind, "message": msg}}).to_string()
        };
        let c = |s, b: String| classify_status(s, None, &b).code;
        assert_eq!(
            c(429, body("rate_limit_error", "slow down")),
            ErrorCode::RateLimited
        );
        assert_eq!(
            c(529, body("overloaded_error", "Overloaded")),
            ErrorCode::ProviderUnavailable
        );
        assert_eq!(
            c(500, body("api_error", "boom")),
            ErrorCode::ProviderUnavailable
        );
        assert_eq!(
            c(
                400,
                body(
                    "invalid_request_error",
                    "prompt is too long: 210000 tokens > 200000 maximum"
                )
            ),
            ErrorCode::ContextLengthExceeded
        );
        assert_eq!(
            c(
                400,
                body(
                    "invalid_request_error",
                    "input length and `max_tokens` exceed context limit: 198000 + 4096 > 200000"
                )
            ),
            ErrorCode::ContextLengthExceeded
        );
        assert_eq!(
            c(401, body("authentication_error", "invalid x-api-key")),
            ErrorCode::ProviderError
        );
        assert_eq!(
            c(400, body("invalid_request_error", "max_tokens: required")),
            ErrorCode::ProviderError
        );
        let e = classify_status(
            400,
            None,
            &body(
                "invalid_request_error",
                "This model does not support assistant message prefill.",
            ),
        );
        assert!(e.rejects_message_form());
        assert_eq!(
            e.message,
            "provider answered 400: This model does not support assistant message prefill."
        );
    }
}
