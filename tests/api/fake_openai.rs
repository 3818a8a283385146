//! Fault-injecting fake of an OpenAI-compatible chat completions server, on the HTTP core of
//! [`crate::fake_http`].
//!
//! The answer is always the same known word sequence (`"w0 "`, `"w1 "`, ...),
//! one word per SSE chunk, and requests that carry an assistant prefix made of
//! whole chunks are continued from where that prefix ends. A test can
//! therefore compare the final text with [`FakeOpenAi::full_text`] to prove
//! that nothing was repeated or lost across a failover.
//!
//! Offered `tools` (and not answering a tool result), it calls one instead: the function named
//! by `tool_choice`, else the first, with [`TOOL_ARGUMENTS`] streamed in
//! [`TOOL_FRAGMENTS`] argument fragments (each fragment counts as a chunk for the faults), then
//! finish reason `tool_calls`.
//!
//! Asked for JSON (a `json_object` or `json_schema` `response_format`, or a system message
//! with [`JSON_INSTRUCTION_MARK`], as a model follows the instruction), it answers
//! [`JSON_ANSWER`] in [`TOOL_FRAGMENTS`] content chunks instead of words. Like OpenAI it
//! refuses `json_object` when no message says "json".
#![allow(dead_code)]

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::fake_http::{
    chunk_prefix, cut, json_str, reset_after_pause, text_range, word_tokens, write_chunk,
    write_json_response, write_last_chunk, write_sse_head, After, Core, Fake, Plan, Request, Wire,
};

/// Fixed `created` timestamp of every response.
const CREATED: u64 = 1_700_000_000;

/// The arguments of every tool call the fake makes.
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Oslo","unit":"celsius"}"#;
/// How many fragments the arguments are streamed in.
pub const TOOL_FRAGMENTS: usize = 3;

/// Fragment `n` (of [`TOOL_FRAGMENTS`]) of [`TOOL_ARGUMENTS`]; the fakes of the other wire
/// formats stream the same arguments.
pub fn tool_fragment(n: usize) -> &'static str {
    fragment(TOOL_ARGUMENTS, n)
}

/// The answer of every fake asked for JSON (the other wire formats' fakes answer it too).
pub const JSON_ANSWER: &str = r#"{"title":"Buy milk","done":false,"tags":["home"]}"#;
/// What a system message asking for JSON says (Switchyard's instruction starts with it).
pub const JSON_INSTRUCTION_MARK: &str = "Answer with a single JSON";

/// Fragment `n` (of [`TOOL_FRAGMENTS`]) of [`JSON_ANSWER`].
pub fn json_fragment(n: usize) -> &'static str {
    fragment(JSON_ANSWER, n)
}

fn fragment(text: &'static str, n: usize) -> &'static str {
    let len = text.len();
    &text[n * len / TOOL_FRAGMENTS..(n + 1) * len / TOOL_FRAGMENTS]
}

/// A fault applied to one chat completions request.
///
/// Chunk positions (`k`) count the content chunks of *this* response, i.e.
/// after a continuation offset was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Normal answer.
    None,
    /// Answer with exactly this text (streamed in pieces of up to 8 characters) instead of
    /// the word sequence; continuations are not recognised.
    Answer(String),
    /// Send `k` content chunks, then close the connection cleanly (FIN)
    /// without the terminating HTTP chunk, finish reason or `[DONE]`.
    CutAfter(usize),
    /// Send `k` content chunks, then reset the connection (RST).
    ResetAfter(usize),
    /// Send `k` content chunks, then send nothing more while keeping the
    /// connection open (until the client goes away, at most ~10 minutes).
    StallAfter(usize),
    /// After `k` content chunks send one event whose data is not valid JSON
    /// (`data: {not json`), then continue normally and complete the stream.
    MalformedAt(usize),
    /// After `k` content chunks send an in-stream error event
    /// (`{"error":{"message":"upstream overloaded",...}}`) and end the stream
    /// (terminating chunk, no finish reason, no `[DONE]`).
    ErrorEventAt(usize),
    /// Normal stream with finish reason (and usage if requested) but without
    /// `data: [DONE]`; the chunked body is terminated cleanly and the
    /// connection stays usable.
    NoDone,
    /// Answer with an HTTP error status and a JSON body
    /// (`content-type: application/json`, proper `content-length`).
    Status {
        code: u16,
        retry_after: Option<u64>,
        body: String,
    },
    /// 400 `unsupported_prefill` when the last message is an assistant
    /// message (prefill); any other request is answered normally.
    RejectsPrefill,
    /// Read the request, then reset the connection without writing anything.
    ResetBeforeHeaders,
    /// Read the request, then never answer (connection held open ~10 min).
    NoResponse,
    /// Wait this long before sending the response headers and first chunk,
    /// then answer normally.
    SlowFirstChunk(Duration),
}

impl Fault {
    /// Generic error status with an OpenAI-shaped `server_error` body.
    pub fn status(code: u16) -> Fault {
        let (message, kind) = match code {
            400 => ("Invalid request", "invalid_request_error"),
            401 => ("Unauthorized", "invalid_request_error"),
            403 => ("Forbidden", "invalid_request_error"),
            404 => ("Not found", "invalid_request_error"),
            429 => ("Rate limit reached", "requests"),
            500 => (
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            ),
            502 => ("Bad gateway", "server_error"),
            503 => (
                "The engine is currently overloaded, please try again later.",
                "server_error",
            ),
            504 => ("Gateway timeout", "server_error"),
            _ => ("Upstream error", "server_error"),
        };
        Fault::Status {
            code,
            retry_after: None,
            body: error_body(message, kind, None, None),
        }
    }

    /// Like [`Fault::status`] with a custom body.
    pub fn status_with_body(code: u16, body: impl Into<String>) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
            body: body.into(),
        }
    }

    /// 429 with OpenAI's rate limit body and, if given, `retry-after: secs`.
    pub fn rate_limited(retry_after: Option<u64>) -> Fault {
        Fault::Status {
            code: 429,
            retry_after,
            body: error_body(
                "Rate limit reached for requests. Please try again in 1s.",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
        }
    }

    /// 400 `context_length_exceeded` exactly as OpenAI words it.
    pub fn context_length() -> Fault {
        Fault::Status {
            code: 400,
            retry_after: None,
            body: error_body(
                "This model's maximum context length is 8192 tokens. However, your messages \
                 resulted in 9000 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
        }
    }

    /// 400 `content_filter` (prompt filtered by the content management policy).
    pub fn content_filter() -> Fault {
        Fault::Status {
            code: 400,
            retry_after: None,
            body: error_body(
                "The response was filtered due to the prompt triggering the content \
                 management policy. Please modify your prompt and retry.",
                "invalid_request_error",
                Some("prompt"),
                Some("content_filter"),
            ),
        }
    }

    /// 401 `invalid_api_key`.
    pub fn unauthorized() -> Fault {
        Fault::Status {
            code: 401,
            retry_after: None,
            body: error_body(
                "Incorrect API key provided. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
        }
    }

    /// 400 `unsupported_prefill`, applied only when the last message is an
    /// assistant message; other requests are answered normally.
    pub fn rejects_prefill() -> Fault {
        Fault::RejectsPrefill
    }

    /// The exact body sent for [`Fault::RejectsPrefill`].
    pub fn rejects_prefill_body() -> String {
        error_body(
            "assistant message prefill is not supported for this model",
            "invalid_request_error",
            Some("messages"),
            Some("unsupported_prefill"),
        )
    }
}

/// OpenAI-shaped error body: `{"error":{"message","type","param","code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> String {
    let mut error = serde_json::Map::new();
    error.insert("message".into(), Value::from(message));
    error.insert("type".into(), Value::from(kind));
    if let Some(param) = param {
        error.insert("param".into(), Value::from(param));
    }
    error.insert("code".into(), code.map(Value::from).unwrap_or(Value::Null));
    let mut root = serde_json::Map::new();
    root.insert("error".into(), Value::Object(error));
    Value::Object(root).to_string()
}

/// The OpenAI chat completions wire format.
pub struct OpenAi;

pub type FakeOpenAi = Fake<OpenAi>;
pub type RecordedRequest = crate::fake_http::RecordedRequest<Fault>;

impl Wire for OpenAi {
    type Fault = Fault;
    const NAME: &'static str = "fake openai";
    const BASE_PATH: &'static str = "/v1";

    fn no_fault() -> Fault {
        Fault::None
    }

    fn handle<'a>(
        core: Arc<Core<Self>>,
        socket: &'a mut TcpStream,
        req: Request,
    ) -> BoxFuture<'a, io::Result<After>> {
        Box::pin(async move { handle_request(socket, &core, req).await })
    }
}

impl Fake<OpenAi> {
    /// `http://127.0.0.1:PORT/v1/chat/completions`
    pub fn chat_url(&self) -> String {
        format!("{}/chat/completions", self.base_url())
    }
}

// ---------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------

/// What one answer looks like.
struct Answer {
    model: String,
    stream: bool,
    include_usage: bool,
    start: usize,
    words: usize,
    prompt_tokens: usize,
    chunk_delay: Duration,
    first_chunk_delay: Duration,
    /// The function to call instead of answering in text.
    tool: Option<String>,
    /// Answer [`JSON_ANSWER`] instead of words.
    json: bool,
}

/// The `response_format` type asked for, if any.
fn format_type(body: &Value) -> Option<&str> {
    body.pointer("/response_format/type")
        .and_then(Value::as_str)
}

/// Whether the request asks for JSON, by format or by a system instruction.
fn wants_json(body: &Value) -> bool {
    matches!(format_type(body), Some("json_object" | "json_schema"))
        || messages(body)
            .iter()
            .any(|m| role(m) == "system" && message_text(m).contains(JSON_INSTRUCTION_MARK))
}

/// OpenAI's 400 for `json_object` without the word "json" in the messages.
fn json_word_missing(body: &Value) -> bool {
    format_type(body) == Some("json_object")
        && !messages(body)
            .iter()
            .any(|m| message_text(m).to_ascii_lowercase().contains("json"))
}

/// The tool the fake calls for this request, if any.
fn tool_to_call(body: &Value) -> Option<String> {
    let tools = body.get("tools")?.as_array()?;
    if messages(body).last().is_some_and(|m| role(m) == "tool")
        || body.get("tool_choice") == Some(&Value::from("none"))
    {
        return None;
    }
    let named = body.pointer("/tool_choice/function/name");
    named
        .or_else(|| tools.first()?.pointer("/function/name"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

fn messages(body: &Value) -> &[Value] {
    body.get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn last_is_assistant(body: &Value) -> bool {
    messages(body)
        .last()
        .is_some_and(|m| role(m) == "assistant")
}

/// The continuation offset: the number of whole chunks the relevant
/// assistant message already contains, or 0.
fn continuation_start(body: &Value, words: usize) -> usize {
    let msgs = messages(body);
    let assistant = match msgs {
        [.., last] if role(last) == "assistant" => Some(last),
        [.., a, last] if role(a) == "assistant" && role(last) == "user" => Some(a),
        _ => None,
    };
    let Some(assistant) = assistant else {
        return 0;
    };
    chunk_prefix(&message_text(assistant), words).unwrap_or(0)
}

async fn handle_request(
    socket: &mut TcpStream,
    core: &Core<OpenAi>,
    req: Request,
) -> io::Result<After> {
    let keep = req.keep();
    if req.method != "POST" || !req.path.ends_with("/chat/completions") {
        let body = error_body(
            &format!("Unknown request URL: {} {}", req.method, req.path),
            "invalid_request_error",
            None,
            Some("unknown_url"),
        );
        write_json_response(socket, 404, None, &body, req.keep_alive).await?;
        return Ok(keep);
    }

    let raw = String::from_utf8_lossy(&req.body).into_owned();
    let parsed: Option<Value> = serde_json::from_str(&raw).ok();
    let body = parsed.clone().unwrap_or(Value::String(raw));

    let (fault, plan) = {
        let Plan {
            fault,
            words,
            chunk_delay,
            first_chunk_delay,
        } = core.next_plan();
        let start = continuation_start(&body, words);
        let prompt_tokens: usize = messages(&body)
            .iter()
            .map(|m| word_tokens(&message_text(m)))
            .sum();
        let plan = Answer {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("fake-model")
                .to_string(),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            start,
            words,
            prompt_tokens,
            chunk_delay,
            first_chunk_delay,
            tool: tool_to_call(&body),
            json: wants_json(&body),
        };
        (fault, plan)
    };
    core.record(RecordedRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req.headers.clone(),
        body: body.clone(),
        fault: fault.clone(),
        start_chunk: plan.start,
        received: req.received,
    });

    let fault = match fault {
        Fault::RejectsPrefill if !last_is_assistant(&body) => Fault::None,
        other => other,
    };

    match &fault {
        Fault::Status {
            code,
            retry_after,
            body,
        } => {
            write_json_response(socket, *code, *retry_after, body, req.keep_alive).await?;
            core.completed();
            return Ok(keep);
        }
        Fault::RejectsPrefill => {
            let body = Fault::rejects_prefill_body();
            write_json_response(socket, 400, None, &body, req.keep_alive).await?;
            core.completed();
            return Ok(keep);
        }
        Fault::ResetBeforeHeaders => return reset_after_pause(socket).await,
        Fault::NoResponse => return Ok(core.hold_open(socket).await),
        Fault::SlowFirstChunk(delay) => tokio::time::sleep(*delay).await,
        _ => {}
    }

    if parsed.is_none() {
        let body = error_body(
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
            None,
        );
        write_json_response(socket, 400, None, &body, req.keep_alive).await?;
        core.completed();
        return Ok(keep);
    }

    if json_word_missing(&body) {
        let body = error_body(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
            "invalid_request_error",
            Some("messages"),
            None,
        );
        write_json_response(socket, 400, None, &body, req.keep_alive).await?;
        core.completed();
        return Ok(keep);
    }

    let after = if plan.stream {
        stream_response(socket, core, &plan, &fault, req.keep_alive).await?
    } else {
        plain_response(socket, core, &plan, &fault, req.keep_alive).await?
    };
    if matches!(after, After::KeepAlive | After::Close) {
        core.completed();
    }
    Ok(match (after, req.keep_alive) {
        (After::KeepAlive, false) => After::Close,
        (after, _) => after,
    })
}

fn chunk_event(model: &str, delta: &str, finish_reason: Option<&str>) -> String {
    let finish = finish_reason.map(json_str).unwrap_or_else(|| "null".into());
    format!(
        "data: {{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":{CREATED},\
         \"model\":{},\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n",
        json_str(model)
    )
}

fn usage_json(prompt: usize, completion: usize) -> String {
    format!(
        "{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}",
        prompt + completion
    )
}

fn usage_event(model: &str, prompt: usize, completion: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":{CREATED},\
         \"model\":{},\"choices\":[],\"usage\":{}}}\n\n",
        json_str(model),
        usage_json(prompt, completion)
    )
}

const MALFORMED_EVENT: &str = "data: {not json\n\n";
const ERROR_EVENT: &str = "data: {\"error\":{\"message\":\"upstream overloaded\",\"type\":\"server_error\",\"code\":\"overloaded\"}}\n\n";
const DONE_EVENT: &str = "data: [DONE]\n\n";

async fn stream_response(
    socket: &mut TcpStream,
    core: &Core<OpenAi>,
    plan: &Answer,
    fault: &Fault,
    keep_alive: bool,
) -> io::Result<After> {
    write_sse_head(socket, keep_alive).await?;
    if !plan.first_chunk_delay.is_zero() {
        tokio::time::sleep(plan.first_chunk_delay).await;
    }

    let pieces: Option<Vec<String>> = match fault {
        Fault::Answer(text) => Some(
            text.chars()
                .collect::<Vec<_>>()
                .chunks(8)
                .map(|c| c.iter().collect())
                .collect(),
        ),
        _ => None,
    };
    let total = match (&plan.tool, &pieces) {
        (Some(_), _) => TOOL_FRAGMENTS,
        (None, Some(pieces)) => pieces.len(),
        (None, None) if plan.json => TOOL_FRAGMENTS,
        (None, None) => plan.words.saturating_sub(plan.start),
    };
    let mut sent = 0usize;
    loop {
        // Faults that trigger once `sent` content chunks have gone out.
        match *fault {
            Fault::CutAfter(k) if k == sent => return cut(socket).await,
            Fault::ResetAfter(k) if k == sent => return reset_after_pause(socket).await,
            Fault::StallAfter(k) if k == sent => return Ok(core.hold_open(socket).await),
            Fault::ErrorEventAt(k) if k == sent => {
                write_chunk(socket, ERROR_EVENT).await?;
                write_last_chunk(socket).await?;
                return Ok(After::KeepAlive);
            }
            Fault::MalformedAt(k) if k == sent => {
                write_chunk(socket, MALFORMED_EVENT).await?;
            }
            _ => {}
        }
        if sent == total {
            break;
        }
        if sent > 0 && !plan.chunk_delay.is_zero() {
            tokio::time::sleep(plan.chunk_delay).await;
        }
        let delta = match &plan.tool {
            Some(name) => tool_call_delta(name, sent),
            None => {
                let word = match &pieces {
                    Some(pieces) => json_str(&pieces[sent]),
                    None if plan.json => json_str(json_fragment(sent)),
                    None => json_str(&crate::fake_http::chunk_text(plan.start + sent)),
                };
                if sent == 0 {
                    format!("{{\"role\":\"assistant\",\"content\":{word}}}")
                } else {
                    format!("{{\"content\":{word}}}")
                }
            }
        };
        write_chunk(socket, &chunk_event(&plan.model, &delta, None)).await?;
        sent += 1;
    }

    // Faults positioned past the last content chunk still trigger before the
    // finish chunk.
    match *fault {
        Fault::CutAfter(k) if k > total => return cut(socket).await,
        Fault::ResetAfter(k) if k > total => return reset_after_pause(socket).await,
        Fault::StallAfter(k) if k > total => return Ok(core.hold_open(socket).await),
        Fault::ErrorEventAt(k) if k > total => {
            write_chunk(socket, ERROR_EVENT).await?;
            write_last_chunk(socket).await?;
            return Ok(After::KeepAlive);
        }
        Fault::MalformedAt(k) if k > total => {
            write_chunk(socket, MALFORMED_EVENT).await?;
        }
        _ => {}
    }

    if !plan.chunk_delay.is_zero() && sent > 0 {
        tokio::time::sleep(plan.chunk_delay).await;
    }
    let delta = if sent == 0 {
        "{\"role\":\"assistant\"}"
    } else {
        "{}"
    };
    let finish = if plan.tool.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    write_chunk(socket, &chunk_event(&plan.model, delta, Some(finish))).await?;
    if plan.include_usage {
        write_chunk(socket, &usage_event(&plan.model, plan.prompt_tokens, sent)).await?;
    }
    if *fault != Fault::NoDone {
        write_chunk(socket, DONE_EVENT).await?;
    }
    write_last_chunk(socket).await?;
    Ok(After::KeepAlive)
}

/// Fragment `n` of the tool call, OpenAI style: the first carries the id, type and name.
fn tool_call_delta(name: &str, n: usize) -> String {
    let piece = tool_fragment(n);
    let head = if n == 0 {
        format!(
            "\"id\":\"call_fake_1\",\"type\":\"function\",\"function\":{{\"name\":{},\"arguments\":{}}}",
            json_str(name),
            json_str(piece)
        )
    } else {
        format!("\"function\":{{\"arguments\":{}}}", json_str(piece))
    };
    let role = if n == 0 {
        "\"role\":\"assistant\",\"content\":null,"
    } else {
        ""
    };
    format!("{{{role}\"tool_calls\":[{{\"index\":0,{head}}}]}}")
}

/// Non-streaming answer. Stream faults map onto the single JSON body:
/// `CutAfter`/`ResetAfter`/`StallAfter` send the headers and half the body
/// first, `MalformedAt` sends `{not json` as the body, `ErrorEventAt` sends a
/// 200 whose body is the error object.
async fn plain_response(
    socket: &mut TcpStream,
    core: &Core<OpenAi>,
    plan: &Answer,
    fault: &Fault,
    keep_alive: bool,
) -> io::Result<After> {
    let total = plan.words.saturating_sub(plan.start);
    let pause = plan.first_chunk_delay + plan.chunk_delay * (total.saturating_sub(1) as u32);
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    let content = if plan.json {
        JSON_ANSWER.to_string()
    } else {
        text_range(plan.start, plan.words)
    };
    let body = match fault {
        Fault::MalformedAt(_) => "{not json".to_string(),
        Fault::ErrorEventAt(_) => error_body(
            "upstream overloaded",
            "server_error",
            None,
            Some("overloaded"),
        ),
        _ => format!(
            "{{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion\",\"created\":{CREATED},\
             \"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\
             \"content\":{}}},\"finish_reason\":\"stop\"}}],\"usage\":{}}}",
            json_str(&plan.model),
            json_str(&content),
            usage_json(plan.prompt_tokens, total)
        ),
    };
    match fault {
        Fault::CutAfter(_) | Fault::ResetAfter(_) | Fault::StallAfter(_) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(&body.as_bytes()[..body.len() / 2]).await?;
            socket.flush().await?;
            match fault {
                Fault::CutAfter(_) => {
                    socket.shutdown().await?;
                    Ok(After::Drop)
                }
                Fault::ResetAfter(_) => reset_after_pause(socket).await,
                _ => Ok(core.hold_open(socket).await),
            }
        }
        _ => {
            write_json_response(socket, 200, None, &body, keep_alive).await?;
            Ok(After::KeepAlive)
        }
    }
}
