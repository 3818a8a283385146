//! JSON request bodies: a size limit, a deadline and a minimum rate, and errors that name the
//! offending field.

use actix_web::{http::header, web, HttpRequest};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};

use crate::error::{ApiError, ErrorCode};

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {limit} bytes"),
    )
}

/// How a body must arrive: within `total` of the head, and (after `grace`) at no less than
/// `min_rate` bytes per second on average. A connection trickling a body in byte by byte would
/// otherwise hold its socket, and with enough of them the process's file descriptors, forever.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub total: Duration,
    pub min_rate: u64,
    pub grace: Duration,
}

impl Pace {
    fn of(req: &HttpRequest) -> Pace {
        let limits = req
            .app_data::<web::Data<super::AppState>>()
            .map(|s| s.settings.limits.clone())
            .unwrap_or_default();
        Pace {
            total: Duration::from_millis(limits.body_timeout_ms),
            min_rate: limits.body_min_bytes_per_sec,
            grace: Duration::from_millis(limits.body_rate_grace_ms),
        }
    }

    /// Why a body with `received` bytes after `elapsed` is cut off, if it is.
    fn violated(&self, received: usize, elapsed: Duration) -> Option<String> {
        if elapsed >= self.total {
            return Some(format!(
                "request body not received within {} ms",
                self.total.as_millis()
            ));
        }
        let rated = elapsed.saturating_sub(self.grace).as_secs_f64();
        if self.min_rate > 0 && rated > 0.0 && (received as f64) < self.min_rate as f64 * rated {
            return Some(format!(
                "request body arriving slower than {} bytes per second",
                self.min_rate
            ));
        }
        None
    }
}

/// How often a stalled body is checked against its [`Pace`].
const PACE_CHECK: Duration = Duration::from_millis(250);

/// Reads and parses the body, refusing more than `limit` bytes (early, from Content-Length,
/// when the client announces it) and bodies that arrive too slowly (408 `request_timeout`,
/// the connection closed; see [`Pace`]).
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        discard_rest(payload).await;
        return Err(too_large(limit));
    }
    let pace = Pace::of(req);
    let started = Instant::now();
    let mut buf = BytesMut::with_capacity(announced.unwrap_or(1024).min(limit));
    loop {
        let next = match tokio::time::timeout(PACE_CHECK, payload.next()).await {
            Ok(None) => break,
            Ok(Some(chunk)) => Some(chunk),
            Err(_) => None,
        };
        if let Some(why) = pace.violated(buf.len(), started.elapsed()) {
            return Err(ApiError::new(ErrorCode::RequestTimeout, why));
        }
        let Some(chunk) = next else { continue };
        let chunk =
            chunk.map_err(|e| ApiError::invalid(format!("cannot read request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            discard_rest(payload).await;
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    parse_json(&buf)
}

/// How much of a refused body is read and dropped, and for how long, before answering.
const DISCARD_BYTES: usize = 64 * 1024 * 1024;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads what the client is still sending, within bounds, before the refusal goes out: a
/// socket closed with unread bytes is reset, and a reset can destroy the 413 on its way to a
/// client that is still writing. Past the bounds the connection is simply dropped.
async fn discard_rest(mut payload: web::Payload) {
    let drain = async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = payload.next().await {
            seen += chunk.len();
            if seen > DISCARD_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "request body is empty: expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("malformed JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid(inner.to_string())
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })?;
    // Anything but whitespace after the object is not one JSON document.
    de.end()
        .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_must_beat_the_deadline_and_the_minimum_rate() {
        let pace = Pace {
            total: Duration::from_secs(30),
            min_rate: 100,
            grace: Duration::from_secs(5),
        };
        let s = Duration::from_secs;
        assert!(pace.violated(0, s(4)).is_none(), "grace");
        assert!(
            pace.violated(1_000, s(10)).is_none(),
            "100 B/s after 5 s of grace"
        );
        assert!(pace.violated(499, s(10)).unwrap().contains("slower"));
        assert!(pace.violated(1 << 30, s(30)).unwrap().contains("within"));
        let no_rate = Pace {
            min_rate: 0,
            ..pace
        };
        assert!(no_rate.violated(0, s(29)).is_none());
    }
    use crate::domain::SubmitBody;

    fn msg(body: &str) -> String {
        parse_json::<SubmitBody>(body.as_bytes())
            .unwrap_err()
            .body
            .message
    }

    #[test]
    fn errors_name_the_field() {
        let m = msg(
            r#"{"model":"m","idempotency_key":"k","messages":[{"role":"user","content":"x"}],"params":{"temperature":"hot"}}"#,
        );
        assert!(m.starts_with("params.temperature: invalid type"), "{m}");
        let m = msg(
            r#"{"model":"m","idempotency_key":"k","messages":[{"role":"robot","content":"x"}]}"#,
        );
        assert!(
            m.starts_with("messages[0].role: unknown variant `robot`"),
            "{m}"
        );
        let m = msg(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#);
        assert!(m.contains("missing field `idempotency_key`"), "{m}");
        let m = msg(r#"{"model": "m", "#);
        assert!(m.starts_with("malformed JSON"), "{m}");
        assert!(msg("  ").contains("empty"));
        let m = msg(
            r#"{"model":"m","idempotency_key":"k","messages":[{"role":"user","content":"x"}]} garbage"#,
        );
        assert!(m.starts_with("malformed JSON: trailing characters"), "{m}");
    }
}
