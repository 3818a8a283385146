//! The OpenAI chat completions wire format, for any OpenAI-compatible API.

use eventsource_stream::Eventsource;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use std::time::Duration;

use super::{Delta, ProviderError, ProviderStream, StreamItem, UpstreamRequest};
use crate::domain::Usage;
use crate::settings::ProviderSettings;
use crate::store::{redacted_headers, AttemptLog, LogEntry};

pub struct OpenAi {
    url: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl OpenAi {
    pub fn new(settings: &ProviderSettings, http: reqwest::Client) -> OpenAi {
        let base = settings.base_url.as_deref().unwrap_or_default();
        OpenAi {
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            api_key: settings.api_key.clone(),
            http,
        }
    }

    pub async fn open(
        &self,
        req: &UpstreamRequest,
        log: &AttemptLog,
    ) -> Result<ProviderStream, ProviderError> {
        let body = request_body(req);
        let mut builder = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let request = builder
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
            body: &body,
        });
        let resp = self
            .http
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
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp.text().await.unwrap_or_default();
            log.record(LogEntry::Chunk { data: &body });
            return Err(ProviderError::from_status(
                status.as_u16(),
                retry_after,
                &body,
            ));
        }
        Ok(parse_stream(resp.bytes_stream(), log.clone()))
    }
}

/// The JSON body sent upstream (also what the debug log records).
pub fn request_body(req: &UpstreamRequest) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": req.model,
        "messages": req.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let (Some(obj), serde_json::Value::Object(params)) = (
        body.as_object_mut(),
        serde_json::to_value(&req.params).unwrap_or_default(),
    ) {
        obj.extend(params);
    }
    body
}

#[derive(Deserialize)]
struct ChunkPayload {
    #[serde(default)]
    choices: Vec<ChoicePayload>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoicePayload {
    #[serde(default)]
    delta: Option<DeltaPayload>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaPayload {
    #[serde(default)]
    content: Option<String>,
}

/// One SSE `data:` payload → a canonical item, an error event, or the end marker.
enum Parsed {
    Item(StreamItem),
    Error(ProviderError),
    Done,
}

fn parse_data(data: &str) -> Parsed {
    if data.trim() == "[DONE]" {
        return Parsed::Done;
    }
    match serde_json::from_str::<ChunkPayload>(data) {
        Ok(chunk) => {
            if let Some(err) = chunk.error {
                return Parsed::Error(ProviderError::in_stream(&err));
            }
            let choice = chunk.choices.into_iter().next();
            let (text, finish_reason) = match choice {
                Some(c) => (c.delta.and_then(|d| d.content), c.finish_reason),
                None => (None, None),
            };
            Parsed::Item(StreamItem::Delta(Delta {
                text: text.filter(|t| !t.is_empty()),
                finish_reason,
                usage: chunk.usage,
            }))
        }
        Err(e) => Parsed::Item(StreamItem::Skipped {
            raw: data.chars().take(2_000).collect(),
            reason: format!("unparseable event: {e}"),
        }),
    }
}

struct ParseState<S> {
    events: S,
    log: AttemptLog,
    saw_finish: bool,
    over: bool,
}

fn parse_stream<B>(bytes: B, log: AttemptLog) -> ProviderStream
where
    B: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
{
    let state = ParseState {
        events: Box::pin(bytes.eventsource()),
        log,
        saw_finish: false,
        over: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.over {
            return None;
        }
        match st.events.next().await {
            Some(Ok(ev)) => match parse_data(&ev.data) {
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
            // A stream that ends cleanly after its finish reason is complete, [DONE] or not.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn run(body: &'static str) -> Vec<Result<StreamItem, ProviderError>> {
        let bytes = stream::iter(vec![Ok(bytes::Bytes::from_static(body.as_bytes()))]);
        crate::providers::block_on_test(parse_stream(bytes, AttemptLog::disabled()).collect())
    }

    fn text(item: &Result<StreamItem, ProviderError>) -> Option<&str> {
        match item {
            Ok(StreamItem::Delta(d)) => d.text.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn a_full_stream_yields_text_finish_and_usage() {
        let items = run(concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n",
        ));
        assert_eq!(items.len(), 4);
        assert_eq!(text(&items[0]), Some("Hel"));
        assert_eq!(text(&items[1]), Some("lo"));
        match &items[3] {
            Ok(StreamItem::Delta(d)) => assert_eq!(d.usage.unwrap().total_tokens, 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cut_stream_ends_with_stream_interrupted() {
        let items = run("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1].as_ref().unwrap_err().code,
            ErrorCode::StreamInterrupted
        );
    }

    #[test]
    fn finish_without_done_completes() {
        let items = run(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\n",
        );
        assert_eq!(items.len(), 1);
        assert!(items[0].is_ok());
    }

    #[test]
    fn garbage_is_skipped_and_error_events_end_the_stream() {
        let items = run(concat!(
            "data: {not json\n\n",
            "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"never\"}}]}\n\n",
        ));
        assert!(matches!(items[0], Ok(StreamItem::Skipped { .. })));
        assert_eq!(
            items[1].as_ref().unwrap_err().code,
            ErrorCode::StreamInterrupted
        );
        assert_eq!(items.len(), 2);
    }
}
