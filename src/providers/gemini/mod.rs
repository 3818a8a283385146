//! The Gemini `streamGenerateContent?alt=sse` client: the model's URL, the API key header, and
//! the classification of HTTP errors; `request` builds the body and `stream` reads the chunks.

use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

use super::http::Http;
use super::sse;
use super::{ProviderError, ProviderStream, UpstreamRequest};
use crate::error::ErrorCode;
use crate::settings::ProviderSettings;
use crate::store::AttemptLog;

mod request;
/// The schemas `request` declares functions and response schemas with.
mod schema;
mod stream;

use request::request_body;
use stream::ChunkParser;

pub struct Gemini {
    base: String,
    api_key: Option<String>,
    http: Http,
}

impl Gemini {
    pub fn new(settings: &ProviderSettings, http: Http) -> Gemini {
        let base = settings.base_url.as_deref().unwrap_or_default();
        Gemini {
            base: base.trim_end_matches('/').to_string(),
            api_key: settings.api_key.clone(),
            http,
        }
    }

    /// The model is part of the path; `models/x` and `x` name the same model.
    fn url(&self, model: &str) -> String {
        format!(
            "{}/models/{}:streamGenerateContent?alt=sse",
            self.base,
            model.trim_start_matches("models/")
        )
    }

    pub async fn open(
        &self,
        req: &UpstreamRequest,
        log: &AttemptLog,
    ) -> Result<ProviderStream, ProviderError> {
        let body = request_body(req);
        let http = self.http.client();
        let mut builder = http.post(self.url(&req.model));
        if let Some(key) = &self.api_key {
            builder = builder.header("x-goog-api-key", key);
        }
        let resp = sse::send(&http, builder, &body, log, classify_status).await?;
        let mut parser = ChunkParser::default();
        Ok(sse::parse_response(resp, log.clone(), move |ev| {
            parser.parse(&ev.data)
        }))
    }
}

#[derive(Deserialize)]
struct Envelope {
    error: ApiError,
}

/// `{"error":{"code":400,"message":"...","status":"INVALID_ARGUMENT","details":[...]}}`
#[derive(Deserialize, Default)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl ApiError {
    /// The `retryDelay` of a `google.rpc.RetryInfo` detail ("37s"), Gemini's Retry-After.
    fn retry_delay(&self) -> Option<Duration> {
        self.details
            .iter()
            .filter(|d| {
                d.get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
            })
            .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
            .and_then(|s| s.trim().strip_suffix('s'))
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    }

    fn mentions_token_limit(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        (m.contains("token count") && m.contains("exceeds"))
            || m.contains("maximum number of tokens")
    }
}

/// A non-2xx answer, classified by its status word where it is unambiguous, else by status.
pub fn classify_status(status: u16, retry_after: Option<Duration>, body: &str) -> ProviderError {
    let detail = serde_json::from_str::<Envelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    let retry_after = retry_after.or_else(|| detail.retry_delay());
    let mut err = ProviderError::from_status(status, retry_after, body);
    if detail.status == "RESOURCE_EXHAUSTED" {
        err.code = ErrorCode::RateLimited;
    } else if status == 400 && detail.mentions_token_limit() {
        err.code = ErrorCode::ContextLengthExceeded;
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_map_to_one_code_each() {
        let body = |code: u16, status: &str, msg: &str| {
            json!({"error": {"code": code, "message": msg, "status": status}}).to_string()
        };
        let c = |s, b: String| classify_status(s, None, &b).code;
        assert_eq!(
            c(
                429,
                body(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted")
            ),
            ErrorCode::RateLimited
        );
        assert_eq!(
            c(503, body(503, "UNAVAILABLE", "The model is overloaded.")),
            ErrorCode::ProviderUnavailable
        );
        assert_eq!(
            c(
                500,
                body(500, "INTERNAL", "An internal error has occurred.")
            ),
            ErrorCode::ProviderUnavailable
        );
        assert_eq!(
            c(
                400,
                body(
                    400,
                    "INVALID_ARGUMENT",
                    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
                )
            ),
            ErrorCode::ContextLengthExceeded
        );
        assert_eq!(
            c(400, body(400, "INVALID_ARGUMENT", "API key not valid.")),
            ErrorCode::ProviderError
        );
        assert_eq!(
            c(404, body(404, "NOT_FOUND", "models/x is not found")),
            ErrorCode::ProviderError
        );
    }

    #[test]
    fn retry_info_is_the_retry_after() {
        let body = json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}})
        .to_string();
        let e = classify_status(429, None, &body);
        assert_eq!(e.retry_after, Some(Duration::from_secs(37)));
        assert_eq!(e.message, "provider answered 429: quota");
        let e = classify_status(429, Some(Duration::from_secs(2)), &body);
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    }
}
