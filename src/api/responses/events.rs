//! The execution's event log read as a Responses API event stream. Each log event maps to a
//! fixed list of protocol events, numbered in order from 0 (as OpenAI numbers them): replaying
//! the log from seq 1 always gives the same events with the same `sequence_number`s, which is what makes `starting_after` a
//! cursor that survives disconnects and restarts. The same fold, run to the end of the log,
//! is the response object (`GET /v1/responses/{id}`, `response.completed`).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

use super::meta::Meta;
use crate::domain::{Event, EventKind, Status, ToolCall, Usage};
use crate::error::{ErrorBody, ErrorCode};

/// One protocol event: its `type` and its JSON (with `type` and `sequence_number`).
pub struct Proto {
    pub seq: u64,
    pub kind: &'static str,
    body: Body,
}

/// A protocol event's JSON: built as a value (the few events per response that carry whole
/// objects), or already serialized (the text deltas, one per chunk: no map to build and drop).
enum Body {
    Value(Value),
    Json(String),
}

impl Proto {
    /// `event: <type>\ndata: <json>\n\n`.
    pub fn sse(&self) -> Bytes {
        match &self.body {
            Body::Value(v) => Bytes::from(format!("event: {}\ndata: {v}\n\n", self.kind)),
            Body::Json(j) => Bytes::from(format!("event: {}\ndata: {j}\n\n", self.kind)),
        }
    }

    /// The event's JSON as a value.
    #[cfg(test)]
    pub fn json(&self) -> Value {
        match &self.body {
            Body::Value(v) => v.clone(),
            Body::Json(j) => serde_json::from_str(j).expect("events serialize to JSON"),
        }
    }
}

/// `response.output_text.delta`, serialized straight from borrowed fields.
#[derive(serde::Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    delta: &'a str,
    logprobs: [u8; 0],
    sequence_number: u64,
}

enum Item {
    Message {
        id: String,
        text: String,
        status: &'static str,
    },
    Call {
        id: String,
        call: ToolCall,
    },
}

impl Item {
    fn json(&self) -> Value {
        match self {
            Item::Message { id, text, status } => json!({
                "type": "message", "id": id, "status": status, "role": "assistant",
                "content": if text.is_empty() && *status == "in_progress" { json!([]) } else { json!([text_part(text)]) },
            }),
            Item::Call { id, call } => json!({
                "type": "function_call", "id": id, "call_id": call.id, "name": call.function.name,
                "arguments": call.function.arguments, "status": "completed",
            }),
        }
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// What the `done` event (the final execution object) tells this protocol.
#[derive(Deserialize)]
struct Finished {
    status: Status,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// The response as far as the log has been read.
pub struct Translation {
    id: String,
    stem: String,
    created_at: u64,
    model: String,
    metadata: Map<String, Value>,
    meta: Arc<Meta>,
    /// How many protocol events were made (the next `sequence_number`).
    count: u64,
    status: &'static str,
    output: Vec<Item>,
    /// The message item text is going to, while one is open.
    open: Option<usize>,
    usage: Option<Usage>,
    error: Option<Value>,
    incomplete: Option<&'static str>,
    /// Whether `response.in_progress` went out (a restarted execution logs no second
    /// `processing`, but nothing here depends on that).
    started: bool,
    finished: bool,
    /// A JSON answer (`text.format` other than text) is held until the execution completes:
    /// a repair restarts it, and this protocol cannot take back text once sent. Rebuilt the
    /// same way on every replay, so sequence numbers stay stable.
    held: Option<String>,
}

impl Translation {
    pub fn new(
        exec_id: &str,
        created_at_ms: u64,
        model: &str,
        metadata: Map<String, Value>,
        meta: Arc<Meta>,
    ) -> Translation {
        let stem = exec_id.trim_start_matches("exec_").to_string();
        Translation {
            id: format!("resp_{stem}"),
            stem,
            created_at: created_at_ms / 1000,
            model: model.to_string(),
            metadata,
            status: if meta.background {
                "queued"
            } else {
                "in_progress"
            },
            count: 0,
            output: Vec::new(),
            open: None,
            usage: None,
            error: None,
            incomplete: None,
            started: false,
            finished: false,
            held: meta
                .text
                .as_ref()
                .and_then(|t| t.pointer("/format/type"))
                .is_some_and(|t| t != "text")
                .then(String::new),
            meta,
        }
    }

    /// The number of protocol events so far (the next `sequence_number`).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the response reached a terminal status.
    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn status(&self) -> &'static str {
        self.status
    }

    /// The protocol events one log event amounts to.
    pub fn apply(&mut self, event: &Event) -> Vec<Proto> {
        let mut out = Out {
            count: self.count,
            events: Vec::new(),
        };
        if self.finished {
            return out.events;
        }
        match event.kind {
            EventKind::Status => {
                #[derive(Deserialize)]
                struct Payload {
                    status: Status,
                }
                let status = serde_json::from_slice::<Payload>(&event.data).map(|p| p.status);
                match status {
                    Ok(Status::Pending) if event.seq == 1 => {
                        out.push_response("response.created", &self.response());
                        if self.meta.background {
                            out.push_response("response.queued", &self.response());
                        }
                    }
                    Ok(Status::Processing) if !self.started => {
                        self.started = true;
                        self.status = "in_progress";
                        out.push_response("response.in_progress", &self.response());
                    }
                    _ => {}
                }
            }
            EventKind::Chunk => {
                let delta = event.chunk_delta().unwrap_or_default();
                if let Some(held) = self.held.as_mut() {
                    held.push_str(&delta);
                } else if !delta.is_empty() {
                    let index = self.open_message(&mut out);
                    if let Item::Message { id, text, .. } = &mut self.output[index] {
                        text.push_str(&delta);
                        out.push_delta(id, index, &delta);
                    }
                }
                for call in event.carried_tool_calls() {
                    self.close_message(&mut out, "completed");
                    let index = self.output.len();
                    let id = format!("fc_{}_{index}", self.stem);
                    let item = Item::Call { id, call };
                    let mut added = item.json();
                    added["status"] = json!("in_progress");
                    added["arguments"] = json!("");
                    out.push(
                        "response.output_item.added",
                        json!({"output_index": index, "item": added}),
                    );
                    if let Item::Call { id, call } = &item {
                        let args = &call.function.arguments;
                        out.push(
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": index, "delta": args}),
                        );
                        out.push(
                            "response.function_call_arguments.done",
                            json!({"item_id": id, "output_index": index, "name": call.function.name,
                                "arguments": args}),
                        );
                    }
                    out.push(
                        "response.output_item.done",
                        json!({"output_index": index, "item": item.json()}),
                    );
                    self.output.push(item);
                }
            }
            // A held JSON answer that starts over (a repair) is replaced, not appended to.
            EventKind::Failover if event.restarts_answer() => {
                if let Some(held) = self.held.as_mut() {
                    held.clear();
                }
            }
            // A failover shows only as the text that continues; errors of a try that
            // failed over are not the response's.
            EventKind::Failover | EventKind::Error | EventKind::Step => {}
            EventKind::Done => self.finish(&mut out, event),
        }
        self.count = out.count;
        out.events
    }

    fn open_message(&mut self, out: &mut Out) -> usize {
        if let Some(index) = self.open {
            return index;
        }
        let index = self.output.len();
        let id = format!("msg_{}_{index}", self.stem);
        let item = Item::Message {
            id: id.clone(),
            text: String::new(),
            status: "in_progress",
        };
        out.push(
            "response.output_item.added",
            json!({"output_index": index, "item": item.json()}),
        );
        out.push(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                "part": text_part("")}),
        );
        self.output.push(item);
        self.open = Some(index);
        index
    }

    fn close_message(&mut self, out: &mut Out, end: &'static str) {
        let Some(index) = self.open.take() else {
            return;
        };
        let Item::Message { id, text, status } = &mut self.output[index] else {
            return;
        };
        *status = end;
        out.push(
            "response.output_text.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "text": text,
                "logprobs": []}),
        );
        out.push(
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                "part": text_part(text)}),
        );
        let item = self.output[index].json();
        out.push(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
    }

    fn finish(&mut self, out: &mut Out, event: &Event) {
        self.finished = true;
        let finished: Finished = match serde_json::from_slice(&event.data) {
            Ok(f) => f,
            Err(_) => Finished {
                status: Status::Failed,
                finish_reason: None,
                usage: None,
                error: Some(ErrorBody::new(
                    ErrorCode::Internal,
                    "unreadable execution result",
                )),
            },
        };
        self.usage = finished.usage;
        match finished.status {
            Status::Completed => {
                if let Some(text) = self.held.take().filter(|t| !t.is_empty()) {
                    let index = self.open_message(out);
                    if let Item::Message { id, text: all, .. } = &mut self.output[index] {
                        all.push_str(&text);
                        out.push_delta(id, index, &text);
                    }
                }
                self.incomplete = match finished.finish_reason.as_deref() {
                    Some("length") => Some("max_output_tokens"),
                    Some("content_filter") => Some("content_filter"),
                    _ => None,
                };
                let (item_status, status, kind) = match self.incomplete {
                    Some(_) => ("incomplete", "incomplete", "response.incomplete"),
                    None => ("completed", "completed", "response.completed"),
                };
                self.close_message(out, item_status);
                self.status = status;
                out.push_response(kind, &self.response());
            }
            Status::Cancelled => {
                self.close_message(out, "incomplete");
                self.status = "cancelled";
                out.push(
                    "error",
                    json!({"code": "cancelled", "message": "the response was cancelled", "param": null}),
                );
            }
            _ => {
                self.close_message(out, "incomplete");
                self.status = "failed";
                let error = finished.error.unwrap_or_else(|| {
                    ErrorBody::new(ErrorCode::Internal, "the response ended without a result")
                });
                self.error = Some(json!({"code": response_error_code(error.code),
                    "message": error.message}));
                out.push_response("response.failed", &self.response());
            }
        }
    }

    /// The response object as it stands.
    /// The response object, serialized straight from the fold's fields (it goes out whole
    /// three times per streamed response: created, in progress, completed).
    pub fn response(&self) -> ResponseView<'_> {
        let meta = &self.meta;
        ResponseView {
            id: &self.id,
            object: "response",
            created_at: self.created_at,
            status: self.status,
            background: meta.background,
            error: self.error.as_ref(),
            incomplete_details: self.incomplete.map(|reason| Incomplete { reason }),
            instructions: meta.instructions.as_deref(),
            max_output_tokens: meta.max_output_tokens,
            model: &self.model,
            output: ItemsView(&self.output),
            parallel_tool_calls: meta.parallel_tool_calls.unwrap_or(true),
            previous_response_id: meta.previous_response_id.as_deref(),
            reasoning: Reasoning {
                effort: None,
                summary: None,
            },
            store: meta.store,
            temperature: meta.temperature,
            text: OrDefault(meta.text.as_ref(), DefaultText::Text),
            tool_choice: OrDefault(meta.tool_choice.as_ref(), DefaultText::Auto),
            tools: &meta.tools,
            top_p: meta.top_p,
            truncation: "disabled",
            usage: self.usage.map(UsageView),
            user: meta.user.as_deref(),
            metadata: &self.metadata,
        }
    }
}

/// The response object (OpenAI's field order), borrowed from a [`Translation`].
#[derive(serde::Serialize)]
pub struct ResponseView<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    background: bool,
    error: Option<&'a Value>,
    incomplete_details: Option<Incomplete>,
    instructions: Option<&'a str>,
    max_output_tokens: Option<u32>,
    model: &'a str,
    output: ItemsView<'a>,
    parallel_tool_calls: bool,
    previous_response_id: Option<&'a str>,
    reasoning: Reasoning,
    store: bool,
    temperature: Option<f64>,
    text: OrDefault<'a>,
    tool_choice: OrDefault<'a>,
    tools: &'a [Value],
    top_p: Option<f64>,
    truncation: &'static str,
    usage: Option<UsageView>,
    user: Option<&'a str>,
    metadata: &'a Map<String, Value>,
}

#[derive(serde::Serialize)]
struct Incomplete {
    reason: &'static str,
}

#[derive(serde::Serialize)]
struct Reasoning {
    effort: Option<()>,
    summary: Option<()>,
}

/// The request's value, or the default OpenAI reports when it was not given.
struct OrDefault<'a>(Option<&'a Value>, DefaultText);

enum DefaultText {
    /// `text`: `{"format": {"type": "text"}}`.
    Text,
    /// `tool_choice`: `"auto"`.
    Auto,
}

impl serde::Serialize for OrDefault<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match (self.0, &self.1) {
            (Some(value), _) => value.serialize(serializer),
            (None, DefaultText::Auto) => serializer.serialize_str("auto"),
            (None, DefaultText::Text) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("format", &Kind { kind: "text" })?;
                map.end()
            }
        }
    }
}

#[derive(serde::Serialize)]
struct Kind {
    #[serde(rename = "type")]
    kind: &'static str,
}

struct UsageView(Usage);

impl serde::Serialize for UsageView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let u = &self.0;
        let mut s = serializer.serialize_struct("Usage", 5)?;
        s.serialize_field("input_tokens", &u.prompt_tokens)?;
        s.serialize_field("input_tokens_details", &CachedTokens { cached_tokens: 0 })?;
        s.serialize_field("output_tokens", &u.completion_tokens)?;
        s.serialize_field(
            "output_tokens_details",
            &ReasoningTokens {
                reasoning_tokens: 0,
            },
        )?;
        s.serialize_field("total_tokens", &u.total_tokens)?;
        s.end()
    }
}

#[derive(serde::Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(serde::Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

/// The output items, each as its JSON (few per response).
struct ItemsView<'a>(&'a [Item]);

impl serde::Serialize for ItemsView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Item::json))
    }
}

/// OpenAI's codes for a failed response, from the normalized ones.
fn response_error_code(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::RateLimited => "rate_limit_exceeded",
        ErrorCode::InvalidRequest | ErrorCode::ContextLengthExceeded => "invalid_prompt",
        _ => "server_error",
    }
}

/// Numbers protocol events as they are made.
struct Out {
    count: u64,
    events: Vec<Proto>,
}

impl Out {
    fn push(&mut self, kind: &'static str, mut data: Value) {
        let seq = self.count;
        self.count += 1;
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        self.events.push(Proto {
            seq,
            kind,
            body: Body::Value(data),
        });
    }

    /// An event carrying the whole response object, serialized once from the fold.
    fn push_response(&mut self, kind: &'static str, response: &ResponseView<'_>) {
        #[derive(serde::Serialize)]
        struct Lifecycle<'a, 'b> {
            #[serde(rename = "type")]
            kind: &'static str,
            response: &'a ResponseView<'b>,
            sequence_number: u64,
        }
        let seq = self.count;
        self.count += 1;
        let json = serde_json::to_string(&Lifecycle {
            kind,
            response,
            sequence_number: seq,
        })
        .expect("responses serialize");
        self.events.push(Proto {
            seq,
            kind,
            body: Body::Json(json),
        });
    }

    fn push_delta(&mut self, item_id: &str, output_index: usize, delta: &str) {
        let (seq, kind) = (self.count, "response.output_text.delta");
        self.count += 1;
        let json = serde_json::to_string(&TextDelta {
            kind,
            item_id,
            output_index,
            content_index: 0,
            delta,
            logprobs: [],
            sequence_number: seq,
        })
        .expect("deltas serialize");
        self.events.push(Proto {
            seq,
            kind,
            body: Body::Json(json),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Vec<Event> {
        let call: ToolCall = serde_json::from_value(json!(
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}))
        .unwrap();
        vec![
            Event::status(1, Status::Pending),
            Event::processing(2, "p", "m"),
            Event::chunk(3, "Hel"),
            Event::from_payload(4, EventKind::Failover, &json!({"from": "p", "to": "q"})),
            Event::chunk(5, "lo"),
            Event::tool_calls(6, &[call]),
            Event::from_payload(
                7,
                EventKind::Done,
                &json!({"status": "completed", "finish_reason": "tool_calls",
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
            ),
        ]
    }

    fn run(meta: Meta) -> (Translation, Vec<Proto>) {
        let mut t = Translation::new("exec_abc", 5_000, "m", Map::new(), Arc::new(meta));
        let events = log().iter().flat_map(|e| t.apply(e)).collect();
        (t, events)
    }

    #[test]
    fn the_log_becomes_openais_event_sequence_numbered_without_gaps() {
        let (t, events) = run(Meta::default());
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in events.iter().enumerate() {
            let data = e.json();
            assert_eq!(data["sequence_number"], i as u64);
            assert_eq!(data["type"], e.kind);
        }
        let response = serde_json::to_value(t.response()).unwrap();
        assert_eq!(response["status"], "completed");
        assert_eq!(response["id"], "resp_abc");
        assert_eq!(response["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(response["output"][1]["call_id"], "c1");
        assert_eq!(response["usage"]["total_tokens"], 5);
    }

    #[test]
    fn a_background_response_is_queued_first() {
        let meta = Meta {
            background: true,
            ..Meta::default()
        };
        let (_, events) = run(meta);
        assert_eq!(events[0].json()["response"]["status"], "queued");
        assert_eq!(events[1].kind, "response.queued");
        assert_eq!(events[2].kind, "response.in_progress");
    }

    #[test]
    fn a_length_stop_is_incomplete_and_a_cancel_ends_with_an_error_event() {
        let mut t = Translation::new("exec_x", 0, "m", Map::new(), Arc::default());
        let log = [
            Event::status(1, Status::Pending),
            Event::processing(2, "p", "m"),
            Event::chunk(3, "cut"),
            Event::from_payload(
                4,
                EventKind::Done,
                &json!({"status": "completed", "finish_reason": "length"}),
            ),
        ];
        let events: Vec<Proto> = log.iter().flat_map(|e| t.apply(e)).collect();
        let last = events.last().unwrap();
        assert_eq!(last.kind, "response.incomplete");
        assert_eq!(last.json()["response"]["status"], "incomplete");
        assert_eq!(
            last.json()["response"]["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(last.json()["response"]["output"][0]["status"], "incomplete");

        let mut t = Translation::new("exec_x", 0, "m", Map::new(), Arc::default());
        let log = [
            Event::status(1, Status::Pending),
            Event::from_payload(2, EventKind::Done, &json!({"status": "cancelled"})),
        ];
        let events: Vec<Proto> = log.iter().flat_map(|e| t.apply(e)).collect();
        assert_eq!(events.last().unwrap().kind, "error");
        assert_eq!(
            serde_json::to_value(t.response()).unwrap()["status"],
            "cancelled"
        );
    }
}
