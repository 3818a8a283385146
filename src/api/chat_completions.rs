//! `POST /v1/chat/completions`: the OpenAI wire format, stream and non-stream, running as an
//! execution through the same actor, event log and failover. The execution id comes back in
//! `x-switchyard-execution-id`.

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::time::Duration;

use super::executions::{accept, Ack};
use super::{body::read_json, openai_error::OpenAiError, AppState, Principal};
use crate::actors::{CancelExecution, Registry, Subscribe};
use crate::cursor::Cursor;
use crate::domain::request::Stop;
use crate::domain::{ids, EventKind, Message, Params, Role, SharedEvent, SubmitBody};
use crate::error::{ApiError, ErrorBody, ErrorCode};

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
    tools: Option<Value>,
    tool_choice: Option<Value>,
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
    tool_calls: Option<Value>,
    #[serde(default)]
    tool_call_id: Option<String>,
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
        if self.tools.is_some() || self.tool_choice.is_some() || self.parallel_tool_calls.is_some()
        {
            return Err(unsupported("tools", "tool calling"));
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
                "tool" => return Err(unsupported(&format!("messages[{i}].role"), "the tool role")),
                other => {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}].role: unknown role `{other}`"
                    )))
                }
            };
            if m.tool_calls.is_some() || m.tool_call_id.is_some() {
                return Err(unsupported(&format!("messages[{i}]"), "tool calling"));
            }
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
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
            },
            metadata,
            webhook_url: None,
        };
        Ok((body, self.stream, include_usage))
    }
}

/// Cancels the execution if the client goes away before the end (when configured).
struct DisconnectGuard {
    registry: Addr<Registry>,
    id: String,
    armed: bool,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if self.armed {
            tracing::info!(execution_id = %self.id, "client went away; cancelling");
            self.registry.do_send(CancelExecution(self.id.clone()));
        }
    }
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
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("chatcmpl_{}", ids::random_token(24)));
    let (body, streaming, include_usage) = request.into_submit(key)?;
    let (record, _, _) = accept(&state, &principal, &body, Ack::ByEvents).await?;
    let live = state
        .registry
        .send(Subscribe(record.id.clone()))
        .await
        .map_err(ApiError::internal)?;
    let guard = DisconnectGuard {
        registry: state.registry.clone(),
        id: record.id.clone(),
        armed: state.settings.compat.cancel_on_disconnect,
    };
    let shape = Shape {
        id: format!("chatcmpl-{}", record.id.trim_start_matches("exec_")),
        created: record.created_at_ms / 1000,
        model: record.model.clone(),
    };
    let cursor = Cursor::new(state.store.clone(), record.id.clone(), 0, live);
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
        };
        let (head, finished) = stream_head(&mut st, keepalive).await?;
        let head = stream::iter(head.into_iter().map(Ok::<_, Infallible>));
        let tail =
            stream::iter((!finished).then_some(st)).flat_map(move |st| stream_tail(st, keepalive));
        let body = head.chain(tail);
        return Ok(res
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .streaming(body));
    }
    let done = until_done(cursor, guard).await?;
    Ok(res.json(completion(&shape, &done)?))
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

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn data(event: &SharedEvent) -> Value {
    serde_json::from_slice(&event.data).unwrap_or(Value::Null)
}

/// The final execution object (the `done` event's data).
async fn until_done(mut cursor: Cursor, mut guard: DisconnectGuard) -> Result<Value, ApiError> {
    while let Some(event) = cursor.next().await {
        if event.kind == EventKind::Done {
            guard.armed = false;
            return Ok(data(&event));
        }
    }
    guard.armed = false;
    Err(ApiError::new(
        ErrorCode::Internal,
        "the execution ended without a result",
    ))
}

fn upstream_model(execution: &Value) -> Option<String> {
    execution["attempts"]
        .as_array()?
        .iter()
        .rev()
        .find(|a| a["outcome"] == "succeeded")
        .and_then(|a| a["model"].as_str())
        .map(str::to_string)
}

fn failure(execution: &Value) -> ApiError {
    let error: Option<ErrorBody> = serde_json::from_value(execution["error"].clone()).ok();
    match error {
        Some(e) => ApiError::new(e.code, e.message),
        None => ApiError::new(
            ErrorCode::Cancelled,
            format!(
                "execution ended {}",
                execution["status"].as_str().unwrap_or("unfinished")
            ),
        ),
    }
}

fn completion(shape: &Shape, execution: &Value) -> Result<Value, ApiError> {
    if execution["status"] != "completed" {
        return Err(failure(execution));
    }
    Ok(json!({
        "id": shape.id, "object": "chat.completion", "created": shape.created,
        "model": upstream_model(execution).unwrap_or_else(|| shape.model.clone()),
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": execution["output"]["text"], "refusal": null},
            "logprobs": null,
            "finish_reason": execution["finish_reason"].as_str().unwrap_or("stop"),
        }],
        "usage": execution["usage"],
        "x_switchyard": {"execution_id": execution["id"], "attempts": execution["attempts"].as_array().map_or(0, Vec::len)},
    }))
}

struct StreamState {
    cursor: Cursor,
    shape: Shape,
    include_usage: bool,
    guard: DisconnectGuard,
    started: bool,
    /// Whether answer text went out (after that, a failure can only be an error event).
    sent_text: bool,
}

/// One step of the translation from the event log to `chat.completion.chunk`s.
enum Step {
    Frame(Bytes),
    /// The last frames of a completed answer.
    Finish(Bytes),
    /// The execution ended without completing.
    Failed(ApiError),
    /// Nothing for a while.
    Idle,
    End,
}

impl StreamState {
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
                    self.sent_text = true;
                    return Step::Frame(self.shape.content(&delta));
                }
                EventKind::Status | EventKind::Failover => {
                    let payload = data(&event);
                    if let Some(model) = payload["model"].as_str() {
                        self.shape.model = model.to_string();
                    }
                    if event.kind == EventKind::Status
                        && payload["status"] == "processing"
                        && !self.started
                    {
                        self.started = true;
                        return Step::Frame(
                            self.shape
                                .chunk(json!({"role": "assistant", "content": ""}), None),
                        );
                    }
                }
                EventKind::Error => {}
                EventKind::Done => {
                    let payload = data(&event);
                    self.guard.armed = false;
                    if payload["status"] != "completed" {
                        return Step::Failed(failure(&payload));
                    }
                    let reason = payload["finish_reason"].as_str().unwrap_or("stop");
                    let mut out = self.shape.chunk(json!({}), Some(reason)).to_vec();
                    if self.include_usage {
                        out.extend_from_slice(&sse(&json!({
                            "id": self.shape.id, "object": "chat.completion.chunk", "created": self.shape.created,
                            "model": self.shape.model, "system_fingerprint": null,
                            "choices": [], "usage": payload["usage"],
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
