//! What the streaming wire formats share: sending a request with its debug log, classifying a
//! non-2xx answer, and unfolding an SSE body into canonical items with one rule for when a
//! stream is complete and when it was cut.

use eventsource_stream::{Event, Eventsource};
use futures_util::stream::{self, StreamExt};
use std::time::Duration;

use super::{Headroom, ProviderError, ProviderStream, StreamItem};
use crate::store::{redacted_headers, AttemptLog, LogEntry};

/// Turns a non-2xx status, its `Retry-After` and its body into one normalized error.
pub type Classify = fn(u16, Option<Duration>, &str) -> ProviderError;

/// Sends `body` as the request's JSON and returns the response once its status is a success.
/// The request (secrets redacted), the response head and any error body are logged; the log
/// stores the body with references to the execution's request for the prompt (see
/// `store::request_refs`), which serializes the same value to the same JSON.
pub async fn send(
    http: &reqwest::Client,
    builder: reqwest::RequestBuilder,
    body: &serde_json::Value,
    log: &AttemptLog,
    classify: Classify,
) -> Result<reqwest::Response, ProviderError> {
    let json = bytes::Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"));
    let request = builder
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json.clone())
        .build()
        .map_err(|e| ProviderError::from_transport(&e))?;
    log.record(LogEntry::Request {
        url: request.url().as_str(),
        headers: redacted_headers(
            request
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
        ),
        body,
    });
    let resp = http
        .execute(request)
        .await
        .map_err(|e| ProviderError::from_transport(&e))?;
    let status = resp.status();
    log.record(LogEntry::Response {
        status: status.as_u16(),
        headers: redacted_headers(
            resp.headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
        ),
    });
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    let headroom = Headroom::from_headers(resp.headers(), crate::domain::now_ms());
    let text = resp.text().await.unwrap_or_default();
    log.record(LogEntry::Chunk { data: &text });
    let mut err = classify(status.as_u16(), retry_after, &text);
    err.headroom = headroom;
    Err(err)
}

/// [`parse_stream`] over a successful response, led by what its rate-limit headers said (read
/// once here, so the quota board learns the route's headroom from successes too).
pub fn parse_response<F>(resp: reqwest::Response, log: AttemptLog, parse: F) -> ProviderStream
where
    F: FnMut(&Event) -> Parsed + Send + 'static,
{
    let headroom = Headroom::from_headers(resp.headers(), crate::domain::now_ms());
    let body = parse_stream(resp.bytes_stream(), log, parse);
    match headroom {
        Some(h) => stream::once(async move { Ok(StreamItem::Headroom(h)) })
            .chain(body)
            .boxed(),
        None => body,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the providers we speak to).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// What one SSE event meant to a wire format.
pub enum Parsed {
    /// A canonical item; an empty delta still counts as activity for the idle timeout.
    Item(StreamItem),
    /// An in-stream error: the stream ends with it.
    Error(ProviderError),
    /// The format's explicit end marker.
    Done,
}

struct State<S, F> {
    events: S,
    parse: F,
    log: AttemptLog,
    saw_finish: bool,
    over: bool,
}

/// The canonical stream over an SSE body. Every event is logged as received (or as skipped).
/// It ends cleanly at the format's end marker, or at the end of the body once a delta carried
/// a finish reason; any other end is a cut.
pub fn parse_stream<B, F>(bytes: B, log: AttemptLog, parse: F) -> ProviderStream
where
    B: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
    F: FnMut(&Event) -> Parsed + Send + 'static,
{
    let state = State {
        events: Box::pin(bytes.eventsource()),
        parse,
        log,
        saw_finish: false,
        over: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.over {
            return None;
        }
        match st.events.next().await {
            Some(Ok(ev)) => match (st.parse)(&ev) {
                Parsed::Item(StreamItem::Skipped { raw, reason }) => {
                    st.log.record(LogEntry::Skipped {
                        data: &raw,
                        reason: &reason,
                    });
                    Some((Ok(StreamItem::Skipped { raw, reason }), st))
                }
                parsed => {
                    st.log.record(LogEntry::Chunk { data: &ev.data });
                    match parsed {
                        Parsed::Done => None,
                        Parsed::Error(e) => {
                            st.over = true;
                            Some((Err(e), st))
                        }
                        Parsed::Item(item) => {
                            if let StreamItem::Delta(d) = &item {
                                st.saw_finish |= d.finish_reason.is_some();
                            }
                            Some((Ok(item), st))
                        }
                    }
                }
            },
            // A body that ends after its finish reason is complete, end marker or not.
            Some(Err(_)) | None if st.saw_finish => None,
            Some(Err(e)) => {
                st.over = true;
                Some((Err(ProviderError::cut(&e.to_string())), st))
            }
            None => {
                st.over = true;
                Some((Err(ProviderError::cut("connection closed")), st))
            }
        }
    })
    .boxed()
}

/// An event skipped because it could not be understood (its payload shortened for the log).
pub fn skipped(data: &str, err: &serde_json::Error) -> Parsed {
    Parsed::Item(StreamItem::Skipped {
        raw: data.chars().take(2_000).collect(),
        reason: format!("unparseable event: {err}"),
    })
}

/// Runs `parse` over a recorded SSE body (unit tests of the wire formats).
#[cfg(test)]
pub(crate) fn run_recorded<F>(body: &str, parse: F) -> Vec<Result<StreamItem, ProviderError>>
where
    F: FnMut(&Event) -> Parsed + Send + 'static,
{
    let bytes = stream::iter(vec![Ok(bytes::Bytes::from(body.to_string()))]);
    super::block_on_test(parse_stream(bytes, AttemptLog::disabled(), parse).collect())
}

/// The text of every delta in a recorded run, concatenated.
#[cfg(test)]
pub(crate) fn recorded_text(items: &[Result<StreamItem, ProviderError>]) -> String {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(StreamItem::Delta(d)) => d.text.clone(),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", " 7 ".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
