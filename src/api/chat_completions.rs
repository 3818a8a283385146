//! `POST /v1/chat/completions`: the OpenAI wire format, stream and non-stream, running as an
//! execution through the same actor, event log and failover. The execution id comes back in
//! `x-switchyard-execution-id`.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::time::Duration;

use super::executions::{accept, live_feed, Ack, Reading};
use super::finished::Finished;
use super::following::{blame_store, until_done, DisconnectGuard, Step};
use super::{body::read_json, openai_error::OpenAiError, AppState, Principal};
use crate::cursor::Cursor;
use crate::domain::request::Stop;
use crate::domain::tools::{Tool, ToolChoice};
use crate::domain::{EventKind, Message, Params, Role, SharedEvent, SubmitBody, ToolCall};
use crate::error::{ApiError, ErrorCode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    model: String,
    messages: Vec<CompatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Stop>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    seed: Option<i64>,
    n: Option<u32>,
    user: Option<String>,
    metadata: Option<Map<String, Value>>,
    store: Option<bool>,
    response_format: Option<Value>,
    tools: Option<Vec<Tool>>,
    tool_choice: Option<ToolChoice>,
    parallel_tool_calls: Option<bool>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    logit_bias: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct CompatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<EchoedCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// A tool call a client sends back on an assistant message. Clients that rebuild the message
/// from stream deltas keep each call's `index`; it means nothing here and is dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoedCall {
    id: String,
    #[serde(rename = "type", default)]
    kind: crate::domain::tools::ToolKind,
    function: crate::domain::tools::FunctionCall,
    #[serde(default)]
    extra_content: Option<crate::domain::tools::ExtraContent>,
    #[serde(default, rename = "index")]
    _index: Option<u32>,
}

impl EchoedCall {
    fn into_call(self) -> ToolCall {
        ToolCall {
            id: self.id,
            kind: self.kind,
            function: self.function,
            extra_content: self.extra_content,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    image_url: Option<crate::domain::request::Image>,
}

fn unsupported(field: &str, what: &str) -> ApiError {
    ApiError::invalid(format!(
        "{field}: {what} is not supported by this model's routes"
    ))
}

impl CompletionRequest {
    /// The canonical submit this request amounts to; what no route can do is a clear 400.
    fn into_submit(self, idempotency_key: String) -> Result<(SubmitBody, bool, bool), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n: only n=1 is supported"));
        }
        if self.logprobs == Some(true) || self.top_logprobs.is_some() {
            return Err(unsupported("logprobs", "log probabilities"));
        }
        if self.logit_bias.is_some() {
            return Err(unsupported("logit_bias", "logit bias"));
        }
        let _ = (&self.user, &self.store);
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                "tool" => Role::Tool,
                other => {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}].role: unknown role `{other}`"
                    )))
                }
            };
            let mut images = Vec::new();
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text, part.image_url) {
                            ("text", Some(t), _) => text.push_str(&t),
                            ("text", None, _) => {
                                return Err(ApiError::invalid(format!(
                                    "messages[{i}].content[{j}].text: required on a text part"
                                )))
                            }
                            ("image_url", _, Some(image)) => images.push(image),
                            (kind, _, _) => {
                                return Err(unsupported(
                                    &format!("messages[{i}].content[{j}]"),
                                    &format!("a `{kind}` part"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            messages.push(Message {
                role,
                content,
                name: m.name,
                tool_calls: m
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .map(EchoedCall::into_call)
                    .collect(),
                tool_call_id: m.tool_call_id,
                images,
                thinking: Default::default(),
            });
        }
        let include_usage = self
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let metadata = self.metadata.unwrap_or_default();
        let body = SubmitBody {
            model: self.model,
            messages,
            idempotency_key,
            params: Params {
                temperature: self.temperature,
                top_p: self.top_p,
                max_tokens: self.max_completion_tokens.or(self.max_tokens),
                stop: self.stop,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: self.seed,
                response_format: self
                    .response_format
                    .filter(|f| f.get("type") != Some(&json!("text"))),
                tools: self.tools.unwrap_or_default(),
                tool_choice: self.tool_choice,
                parallel_tool_calls: self.parallel_tool_calls,
                thinking: Default::default(),
            },
            metadata,
            webhook_url: None,
            ..SubmitBody::default()
        };
        Ok((body, self.stream, include_usage))
    }
}

/// Validation names fields as the executions API has them (`params.tools`); this API has them
/// at the top level.
fn own_field_names(mut err: ApiError) -> ApiError {
    if let Some(rest) = err.body.message.strip_prefix("params.") {
        err.body.message = rest.to_string();
    }
    err
}

pub async fn create(
    state: web::Data<AppState>,
    principal: Result<Principal, ApiError>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, OpenAiError> {
    let principal = principal?;
    let request: CompletionRequest =
        read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let key = super::following::idempotency_key(&req, "chatcmpl");
    let (body, streaming, include_usage) = request.into_submit(key)?;
    let json_answer = body.params.response_format.is_some();
    let accepted = accept(&state, &req, &principal, &body, Ack::ByEvents)
        .await
        .map_err(own_field_names)?;
    let record = accepted.record;
    let live = live_feed(&state, &record.id, accepted.live, Reading::of(streaming)).await?;
    let guard = DisconnectGuard::new(&state, &record.id);
    let shape = Shape {
        id: format!("chatcmpl-{}", record.id.trim_start_matches("exec_")),
        created: record.created_at_ms / 1000,
        model: record.model.clone(),
    };
    let cursor = Cursor::new(state.store.event_log(), record.id.clone(), 0, live);
    let mut res = HttpResponse::Ok();
    res.insert_header(("x-switchyard-execution-id", record.id.clone()));
    if streaming {
        let keepalive = Duration::from_millis(state.settings.limits.sse_keepalive_ms);
        let mut st = StreamState {
            cursor,
            shape,
            include_usage,
            guard,
            started: false,
            sent_text: false,
            hold_text: json_answer,
        };
        let (head, finished) = stream_head(&mut st, keepalive)
            .await
            .map_err(|err| blame_store(&state, err))?;
        let head = stream::iter(head.into_iter().map(Ok::<_, Infallible>));
        let tail =
            stream::iter((!finished).then_some(st)).flat_map(move |st| stream_tail(st, keepalive));
        // A revoked or rotated key ends the answer with an error event (the SDKs raise it).
        let revoked = principal.revocation(&state);
        let body = head.chain(until_revoked(tail, revoked));
        return Ok(res
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .streaming(body));
    }
    let done = until_done(cursor, guard)
        .await
        .map_err(|err| blame_store(&state, err))?;
    let body = Finished::parse(&done)?.completion(&shape.id, shape.created, &shape.model)?;
    Ok(res.content_type("application/json").body(body))
}

/// What every chunk of one response repeats.
struct Shape {
    id: String,
    created: u64,
    /// The upstream model currently answering (updated on failover).
    model: String,
}

impl Shape {
    /// A content chunk, the hot path: the delta borrowed from the event, one serialization.
    fn content(&self, text: &str) -> Bytes {
        #[derive(Serialize)]
        struct Delta<'a> {
            content: &'a str,
        }
        #[derive(Serialize)]
        struct Choice<'a> {
            index: u32,
            delta: Delta<'a>,
            logprobs: Option<()>,
            finish_reason: Option<()>,
        }
        #[derive(Serialize)]
        struct Chunk<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            model: &'a str,
            system_fingerprint: Option<()>,
            choices: [Choice<'a>; 1],
        }
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices: [Choice {
                index: 0,
                delta: Delta { content: text },
                logprobs: None,
                finish_reason: None,
            }],
        };
        let mut out = b"data: ".to_vec();
        serde_json::to_writer(&mut out, &chunk).expect("chunks serialize");
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        sse(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        }))
    }
}

/// Whole tool calls as one stream delta, each with the `index` the SDKs accumulate by.
fn stream_tool_calls(calls: &[ToolCall]) -> Value {
    #[derive(Serialize)]
    struct Indexed<'a> {
        index: usize,
        #[serde(flatten)]
        call: &'a ToolCall,
    }
    let indexed: Vec<Indexed> = calls
        .iter()
        .enumerate()
        .map(|(index, call)| Indexed { index, call })
        .collect();
    json!({"tool_calls": indexed})
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn data(event: &SharedEvent) -> Value {
    serde_json::from_slice(&event.data).unwrap_or(Value::Null)
}

struct StreamState {
    cursor: Cursor,
    shape: Shape,
    include_usage: bool,
    guard: DisconnectGuard,
    /// Whether the role chunk went out (it leads the first frame of the answer).
    started: bool,
    /// Whether answer text went out (after that, a failure can only be an error event).
    sent_text: bool,
    /// A JSON answer is sent whole once validated: an invalid answer restarts (a repair
    /// attempt), and this protocol has no way to take back text already streamed.
    hold_text: bool,
}

impl StreamState {
    /// The first frame of the answer goes out behind the role chunk, which is held until then
    /// so that it names the upstream model that actually answers (a switch before any text
    /// changes it).
    fn with_role(&mut self, frame: Bytes) -> Bytes {
        if std::mem::replace(&mut self.started, true) {
            return frame;
        }
        let mut out = self
            .shape
            .chunk(json!({"role": "assistant", "content": ""}), None)
            .to_vec();
        out.extend_from_slice(&frame);
        Bytes::from(out)
    }

    async fn step(&mut self, keepalive: Duration) -> Step {
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
                    if !delta.is_empty() && self.hold_text {
                        continue;
                    }
                    if !delta.is_empty() {
                        self.sent_text = true;
                        let frame = self.shape.content(&delta);
                        return Step::Frame(self.with_role(frame));
                    }
                    let calls = event.carried_tool_calls();
                    if !calls.is_empty() {
                        self.sent_text = true;
                        let frame = self.shape.chunk(stream_tool_calls(&calls), None);
                        return Step::Frame(self.with_role(frame));
                    }
                }
                EventKind::Status | EventKind::Failover => {
                    let payload = data(&event);
                    // `processing` names the first route's model, each `failover` the next
                    // one's: the chunks after it name the model that answers them.
                    if let Some(model) = payload["model"].as_str() {
                        self.shape.model = model.to_string();
                    }
                }
                // Steps are a workflow's; this protocol submits none.
                EventKind::Error | EventKind::Step => {}
                EventKind::Done => {
                    self.guard.disarm();
                    let finished = match Finished::parse(&event) {
                        Ok(f) => f,
                        Err(err) => return Step::Failed(err),
                    };
                    if !finished.completed() {
                        return Step::Failed(finished.failure());
                    }
                    let reason = finished.finish_reason.as_deref().unwrap_or("stop");
                    let mut out = Vec::new();
                    if self.hold_text {
                        let text = self.shape.content(finished.text());
                        out.extend_from_slice(&self.with_role(text));
                    }
                    let finish = self.shape.chunk(json!({}), Some(reason));
                    out.extend_from_slice(&self.with_role(finish));
                    if self.include_usage {
                        out.extend_from_slice(&sse(&json!({
                            "id": self.shape.id, "object": "chat.completion.chunk", "created": self.shape.created,
                            "model": self.shape.model, "system_fingerprint": null,
                            "choices": [], "usage": finished.usage,
                        })));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    return Step::Finish(Bytes::from(out));
                }
            }
        }
    }
}

/// Holds the response head until the first answer text (or the result): a request that fails
/// before any text gets a real HTTP error status — what the SDKs turn into typed exceptions.
async fn stream_head(
    st: &mut StreamState,
    keepalive: Duration,
) -> Result<(Vec<Bytes>, bool), ApiError> {
    let mut head = Vec::new();
    loop {
        match st.step(keepalive).await {
            Step::Frame(frame) => {
                head.push(frame);
                if st.sent_text {
                    return Ok((head, false));
                }
            }
            Step::Finish(frames) => {
                head.push(frames);
                return Ok((head, true));
            }
            Step::Failed(err) => return Err(err),
            Step::Idle => {}
            Step::End => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "the execution ended without a result",
                ))
            }
        }
    }
}

/// `tail` until `revoked` fires, then one `unauthorized` error event and the end.
fn until_revoked(
    tail: impl futures_util::Stream<Item = Result<Bytes, Infallible>>,
    revoked: crate::revocation::Revoked,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let revoked = stream::once(revoked.fired()).map(|()| {
        let err = ApiError::new(
            ErrorCode::Unauthorized,
            "the api key was revoked or rotated while streaming",
        );
        Ok(sse(&json!({"error": OpenAiError(err).body()})))
    });
    // Whichever ends first: the tail at its end, or the revocation after its one event.
    let end = || stream::once(async { None });
    stream::select(tail.map(Some).chain(end()), revoked.map(Some).chain(end()))
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready)
}

/// The rest of the stream; an unrecoverable failure ends it with an error event, never with a
/// clean finish.
fn stream_tail(
    st: StreamState,
    keepalive: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    stream::unfold(Some(st), move |st| async move {
        let mut st = st?;
        match st.step(keepalive).await {
            Step::Frame(frame) => Some((Ok(frame), Some(st))),
            Step::Idle => Some((Ok(Bytes::from_static(b": keep-alive\n\n")), Some(st))),
            Step::Finish(frames) => Some((Ok(frames), None)),
            Step::Failed(err) => Some((Ok(sse(&json!({"error": OpenAiError(err).body()}))), None)),
            Step::End => None,
        }
    })
}
