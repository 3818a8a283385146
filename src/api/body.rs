//! JSON request bodies: a size limit, and errors that name the offending field.

use actix_web::{http::header, web, HttpRequest};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {limit} bytes"),
    )
}

/// Reads and parses the body, refusing more than `limit` bytes (early, from Content-Length,
/// when the client announces it).
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
    let mut buf = BytesMut::with_capacity(announced.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
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
