//! The execution's event log as Anthropic's stream: `message_start`, then per content block
//! `content_block_start` / `content_block_delta` / `content_block_stop`, `ping`s, and
//! `message_delta` + `message_stop` — or an `error` event when the execution fails after the
//! stream began. A failover only changes the model; the text continues in the same block.

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;

use super::error::MessagesError;
use super::reply::{tool_use, Outcome};
use crate::api::following::{DisconnectGuard, Step};
use crate::cursor::Cursor;
use crate::domain::{EventKind, SharedEvent, ThinkingDelta};
use crate::error::{ApiError, ErrorCode};

/// `event: <name>\ndata: <json>\n\n`, as Anthropic frames every event.
pub fn frame(name: &str, data: &impl Serialize) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut out, data).expect("stream events serialize");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub fn error_frame(err: ApiError) -> Bytes {
    frame("error", &MessagesError(err).body())
}

fn ping() -> Bytes {
    frame("ping", &json!({"type": "ping"}))
}

pub struct StreamState {
    pub cursor: Cursor,
    pub guard: DisconnectGuard,
    pub id: String,
    /// The upstream model currently answering (updated on failover).
    pub model: String,
    /// Whether `message_start` went out (it waits for the first content, to name its model).
    started: bool,
    /// Whether the `ping` Anthropic sends after the first `content_block_start` went out.
    pinged: bool,
    /// The index of the open text block, if one is open.
    open_text: Option<usize>,
    /// The index the next content block gets.
    next_index: usize,
    /// The thinking block being made: sent whole once its signature arrives, since a try cut
    /// inside a thinking block starts it over and this protocol cannot take text back.
    thinking: String,
}

impl StreamState {
    pub fn new(cursor: Cursor, guard: DisconnectGuard, id: String, model: String) -> Self {
        StreamState {
            cursor,
            guard,
            id,
            model,
            started: false,
            pinged: false,
            open_text: None,
            next_index: 0,
            thinking: String::new(),
        }
    }

    /// `message_start` before the first frame.
    fn start(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            // The real counts are known at the end; `message_delta` carries them.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        out.extend_from_slice(&frame(
            "message_start",
            &json!({"type": "message_start", "message": message}),
        ));
    }

    /// Opens block `index`, with the one early `ping` after the first block's start.
    fn open_block(&mut self, out: &mut Vec<u8>, index: usize, block: &Value) {
        out.extend_from_slice(&frame(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        if !std::mem::replace(&mut self.pinged, true) {
            out.extend_from_slice(&ping());
        }
    }

    fn close_text(&mut self, out: &mut Vec<u8>) {
        if let Some(index) = self.open_text.take() {
            out.extend_from_slice(&frame(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn text(&mut self, text: &str) -> Bytes {
        #[derive(Serialize)]
        struct TextDelta<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            text: &'a str,
        }
        #[derive(Serialize)]
        struct Delta<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            index: usize,
            delta: TextDelta<'a>,
        }
        let mut out = Vec::new();
        self.start(&mut out);
        let index = match self.open_text {
            Some(index) => index,
            None => {
                let index = self.next_index;
                self.next_index += 1;
                self.open_text = Some(index);
                self.open_block(&mut out, index, &json!({"type": "text", "text": ""}));
                index
            }
        };
        let delta = Delta {
            kind: "content_block_delta",
            index,
            delta: TextDelta {
                kind: "text_delta",
                text,
            },
        };
        out.extend_from_slice(&frame("content_block_delta", &delta));
        Bytes::from(out)
    }

    /// A thinking fragment: text is held; the signature sends the block whole; a redacted
    /// block goes as it is. `None` while the block is still being made.
    fn thinking(&mut self, fragment: ThinkingDelta) -> Option<Bytes> {
        let mut out = Vec::new();
        let index = self.next_index;
        match fragment {
            ThinkingDelta::Text(text) => {
                self.thinking.push_str(&text);
                return None;
            }
            ThinkingDelta::Signature(signature) => {
                self.start(&mut out);
                self.close_text(&mut out);
                self.next_index += 1;
                let block = json!({"type": "thinking", "thinking": ""});
                self.open_block(&mut out, index, &block);
                let thinking = std::mem::take(&mut self.thinking);
                for delta in [
                    json!({"type": "thinking_delta", "thinking": thinking}),
                    json!({"type": "signature_delta", "signature": signature}),
                ] {
                    out.extend_from_slice(&frame(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index, "delta": delta}),
                    ));
                }
            }
            ThinkingDelta::Redacted(data) => {
                self.start(&mut out);
                self.close_text(&mut out);
                self.next_index += 1;
                let block = json!({"type": "redacted_thinking", "data": data});
                self.open_block(&mut out, index, &block);
            }
        }
        out.extend_from_slice(&frame(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        Some(Bytes::from(out))
    }

    /// Each call whole: its block opened with an empty `input`, the arguments as one
    /// `input_json_delta`, the block closed.
    fn tool_calls(&mut self, calls: &[crate::domain::ToolCall]) -> Bytes {
        let mut out = Vec::new();
        self.start(&mut out);
        self.close_text(&mut out);
        for call in calls {
            let index = self.next_index;
            self.next_index += 1;
            let mut block = tool_use(call);
            let input = std::mem::replace(&mut block["input"], json!({}));
            self.open_block(&mut out, index, &block);
            out.extend_from_slice(&frame(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}),
            ));
            out.extend_from_slice(&frame(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
        Bytes::from(out)
    }

    fn finish(&mut self, outcome: &Outcome) -> Bytes {
        let mut out = Vec::new();
        self.start(&mut out);
        self.close_text(&mut out);
        let usage = outcome.usage();
        out.extend_from_slice(&frame(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": outcome.stop_reason(),
                              "stop_sequence": outcome.stop_sequence},
                    "usage": {"input_tokens": usage.prompt_tokens,
                              "output_tokens": usage.completion_tokens}}),
        ));
        out.extend_from_slice(&frame("message_stop", &json!({"type": "message_stop"})));
        Bytes::from(out)
    }

    pub async fn step(&mut self, keepalive: Duration) -> Step {
        loop {
            let event = match tokio::time::timeout(keepalive, self.cursor.next()).await {
                Err(_) => return Step::Idle,
                Ok(None) => return Step::End,
                Ok(Some(event)) => event,
            };
            match event.kind {
                EventKind::Chunk => {
                    let Some(delta) = event.chunk_delta() else {
                        continue;
                    };
                    if !delta.is_empty() {
                        return Step::Frame(self.text(&delta));
                    }
                    if let Some(fragment) = event.carried_thinking() {
                        match self.thinking(fragment) {
                            Some(frames) => return Step::Frame(frames),
                            None => continue,
                        }
                    }
                    let calls = event.carried_tool_calls();
                    if !calls.is_empty() {
                        return Step::Frame(self.tool_calls(&calls));
                    }
                }
                EventKind::Status | EventKind::Failover => {
                    // Thinking not yet sent is void when the answer starts over.
                    if event.restarts_answer() {
                        self.thinking.clear();
                    }
                    // `processing` names the first route's model, each `failover` the next.
                    if let Some(model) = model_of(&event) {
                        self.model = model;
                    }
                }
                // Steps are a workflow's; this protocol submits none.
                EventKind::Error | EventKind::Step => {}
                EventKind::Done => {
                    self.guard.disarm();
                    let outcome = match Outcome::parse(&event) {
                        Ok(o) => o,
                        Err(err) => return Step::Failed(err),
                    };
                    if !outcome.completed() {
                        return Step::Failed(outcome.failure());
                    }
                    return Step::Finish(self.finish(&outcome));
                }
            }
        }
    }
}

fn model_of(event: &SharedEvent) -> Option<String> {
    let payload: Value = serde_json::from_slice(&event.data).ok()?;
    payload["model"].as_str().map(str::to_string)
}

fn ended_early() -> ApiError {
    ApiError::new(ErrorCode::Internal, "the execution ended without a result")
}

/// Holds the response head until the first content (or the result): a request that fails
/// before any content gets a real HTTP error status, which the SDKs turn into typed errors.
pub async fn head(st: &mut StreamState, keepalive: Duration) -> Result<(Bytes, bool), ApiError> {
    loop {
        match st.step(keepalive).await {
            Step::Frame(frame) => return Ok((frame, false)),
            Step::Finish(frames) => return Ok((frames, true)),
            Step::Failed(err) => return Err(err),
            Step::Idle => {}
            Step::End => return Err(ended_early()),
        }
    }
}

/// The rest of the stream; an unrecoverable failure ends it with an `error` event, never with
/// `message_stop`. Silences are filled with `ping`s.
pub fn tail(
    st: StreamState,
    keepalive: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    stream::unfold(Some(st), move |st| async move {
        let mut st = st?;
        match st.step(keepalive).await {
            Step::Frame(frame) => Some((Ok(frame), Some(st))),
            Step::Idle => Some((Ok(ping()), Some(st))),
            Step::Finish(frames) => Some((Ok(frames), None)),
            Step::Failed(err) => Some((Ok(error_frame(err)), None)),
            Step::End => Some((Ok(error_frame(ended_early())), None)),
        }
    })
}

/// `tail` until `revoked` fires, then one `authentication_error` event and the end.
pub fn until_revoked(
    tail: impl futures_util::Stream<Item = Result<Bytes, Infallible>>,
    revoked: crate::revocation::Revoked,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let revoked = stream::once(revoked.fired()).map(|()| {
        Ok(error_frame(ApiError::new(
            ErrorCode::Unauthorized,
            "the api key was revoked or rotated while streaming",
        )))
    });
    // Whichever ends first: the tail at its end, or the revocation after its one event.
    let end = || stream::once(async { None });
    stream::select(tail.map(Some).chain(end()), revoked.map(Some).chain(end()))
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready)
}
