//! Fault-injecting fake of the Anthropic Messages API (streaming only), on the HTTP core of
//! [`crate::fake_http`].
//!
//! It answers `POST /v1/messages` with the documented event sequence (`message_start`,
//! `content_block_start`, `ping`, one `content_block_delta` per word, `content_block_stop`,
//! `message_delta`, `message_stop`) and refuses, as the real API does, requests without
//! `anthropic-version` or `max_tokens`, with a `system` role among the messages, with turns
//! that do not alternate starting with `user`, or with a final assistant message that ends in
//! whitespace, or with an `image` block that is not a user's base64 (JPEG, PNG, GIF or WebP)
//! or URL image. A final assistant message that is a chunk-aligned prefix (its trailing space
//! trimmed) is a prefill: the answer continues after it, starting with the space a model
//! would write.
//!
//! Offered `tools` (and not answering a tool result), it calls one instead, as a `tool_use`
//! block: the one named by `tool_choice`, else the first, with the arguments of
//! [`crate::fake_openai::TOOL_ARGUMENTS`] streamed in [`TOOL_FRAGMENTS`] `input_json_delta`
//! fragments (each counts as a delta for the faults), then `stop_reason: tool_use`. Like the
//! real API it refuses tool blocks in the wrong role, tool blocks in a request that defines no
//! `tools`, and a `tool_use` not answered by a `tool_result` at the start of the next message
//! (or the reverse), and, like the real API, tools whose name is not `^[a-zA-Z0-9_-]{1,64}$`
//! or whose `input_schema` is not of type `object`, and a `tool_choice` naming no defined tool.
//!
//! Asked for extended thinking (`thinking: {"type": "enabled"}`), it first streams a thinking
//! block ([`THINKING`] in [`THINKING_FRAGMENTS`] `thinking_delta`s, then a `signature_delta`
//! of [`SIGNATURE`]) and the answer in the next block; like the real API it refuses thinking
//! with a `temperature` or `top_p`, with a prefilled assistant turn, or with a forced tool call.
//!
//! Asked for JSON by a system instruction with [`crate::fake_openai::JSON_INSTRUCTION_MARK`]
//! (Anthropic has no JSON mode), it answers [`crate::fake_openai::JSON_ANSWER`] in
//! [`TOOL_FRAGMENTS`] text deltas.
#![allow(dead_code)]

use std::io;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::fake_http::{
    chunk_prefix, chunk_text, cut, due, word_tokens, write_chunk, write_json_response,
    write_last_chunk, write_sse_head, After, Core, Fake, Plan, RecordedRequest, Request, Wire,
};
use crate::fake_openai::{json_fragment, tool_fragment, JSON_INSTRUCTION_MARK, TOOL_FRAGMENTS};

/// A fault applied to one request. `k` counts the text deltas of *this* response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Normal answer.
    None,
    /// Send `k` text deltas, then close the connection cleanly (FIN) without
    /// `message_delta` or `message_stop`.
    CutAfter(usize),
    /// Send `k` text deltas, then nothing more while holding the connection open.
    StallAfter(usize),
    /// After `k` text deltas send an `error` event of this type, then end the body.
    ErrorEventAt(usize, &'static str),
    /// Cut the stream inside the thinking block, after its first fragment.
    CutInThinking,
    /// End normally, but as a stop sequence would: `stop_reason: stop_sequence` naming the
    /// request's first stop sequence.
    StopSequence,
    /// Answer with an HTTP error status and a JSON body.
    Status {
        code: u16,
        retry_after: Option<u64>,
        body: String,
    },
}

impl Fault {
    /// An error status with Anthropic's error body.
    pub fn status(code: u16, kind: &str, message: &str) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
            body: error_body(kind, message),
        }
    }

    /// 429 `rate_limit_error` with `retry-after: secs` if given.
    pub fn rate_limited(retry_after: Option<u64>) -> Fault {
        Fault::Status {
            code: 429,
            retry_after,
            body: error_body(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization.",
            ),
        }
    }

    /// 529 `overloaded_error`.
    pub fn overloaded() -> Fault {
        Fault::status(529, "overloaded_error", "Overloaded")
    }

    /// 400 `invalid_request_error`: the prompt is longer than the context window.
    pub fn prompt_too_long() -> Fault {
        Fault::status(
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
        )
    }
}

/// `{"type":"error","error":{"type","message"}}`
pub fn error_body(kind: &str, message: &str) -> String {
    json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
}

/// The Anthropic Messages wire format.
pub struct Anthropic;

pub type FakeAnthropic = Fake<Anthropic>;

impl Wire for Anthropic {
    type Fault = Fault;
    const NAME: &'static str = "fake anthropic";
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

/// What one answer looks like.
struct Answer {
    model: String,
    /// First word of this answer (after a prefill).
    start: usize,
    /// Whether the first delta starts with the space the trimmed prefill lacks.
    leading_space: bool,
    prompt_tokens: usize,
    /// The tool to call instead of answering in text.
    tool: Option<String>,
    /// Answer [`crate::fake_openai::JSON_ANSWER`] instead of words.
    json: bool,
    /// Stream a thinking block first.
    thinking: bool,
    /// The request's first stop sequence (reported by [`Fault::StopSequence`]).
    stop_sequence: Option<String>,
    plan: Plan<Fault>,
}

/// The 400 for a malformed tool definition or a `tool_choice` naming no defined tool.
fn invalid_tools(body: &Value) -> Option<String> {
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, tool) in tools.iter().enumerate() {
        let name = str_field(tool, "name");
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Some(format!(
                "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            ));
        }
        if tool.pointer("/input_schema/type") != Some(&Value::from("object")) {
            return Some(format!(
                "tools.{i}.custom.input_schema.type: Input should be 'object'"
            ));
        }
    }
    let choice = body.get("tool_choice")?;
    let named = str_field(choice, "name");
    if str_field(choice, "type") == "tool" && !tools.iter().any(|t| str_field(t, "name") == named) {
        return Some(format!(
            "tool_choice: tool `{named}` is not among the tools"
        ));
    }
    None
}

/// A message's content as blocks (a string is one text block).
fn blocks(message: &Value) -> Option<Vec<Value>> {
    match message.get("content")? {
        Value::String(s) => Some(vec![json!({"type": "text", "text": s})]),
        Value::Array(blocks) => Some(blocks.clone()),
        _ => None,
    }
}

fn block_type(block: &Value) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or("")
}

fn str_field<'a>(block: &'a Value, key: &str) -> &'a str {
    block.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The texts of a message's text blocks (tool blocks have none).
fn content_texts(message: &Value) -> Option<Vec<String>> {
    let blocks = blocks(message)?;
    let texts = blocks.iter().filter(|b| block_type(b) == "text");
    Some(texts.map(|b| str_field(b, "text").to_string()).collect())
}

/// The text a model continues: the blocks back to back.
fn content_text(message: &Value) -> Option<String> {
    content_texts(message).map(|t| t.concat())
}

/// The tool the fake calls for this request, if any.
fn tool_to_call(body: &Value) -> Option<String> {
    let tools = body.get("tools")?.as_array()?;
    let last = body.get("messages")?.as_array()?.last()?;
    let answering = blocks(last)
        .unwrap_or_default()
        .iter()
        .any(|b| block_type(b) == "tool_result");
    let choice = body.get("tool_choice");
    let kind = choice.map(|c| str_field(c, "type"));
    if answering || kind == Some("none") {
        return None;
    }
    let named = choice.filter(|_| kind == Some("tool"));
    named
        .or_else(|| tools.first())
        .map(|t| str_field(t, "name").to_string())
}

/// A block well formed for its role: tool calls only from the assistant, results and images
/// only from the user, ids and image sources as the API requires them.
fn block_fits(block: &Value, role: &str) -> bool {
    let id_ok = |id: &str| {
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match (block_type(block), role) {
        ("text", _) => block.get("text").is_some_and(Value::is_string),
        ("tool_use", "assistant") => {
            id_ok(str_field(block, "id"))
                && !str_field(block, "name").is_empty()
                && block.get("input").is_some_and(Value::is_object)
        }
        ("image", "user") => block.get("source").is_some_and(image_source_fits),
        ("thinking", "assistant") => {
            block.get("thinking").is_some_and(Value::is_string)
                && !str_field(block, "signature").is_empty()
        }
        ("redacted_thinking", "assistant") => !str_field(block, "data").is_empty(),
        ("tool_result", "user") => {
            id_ok(str_field(block, "tool_use_id"))
                && block
                    .get("content")
                    .is_none_or(|c| c.is_string() || c.is_array())
        }
        _ => false,
    }
}

/// An image block's `source` as the API takes it: base64 data of one of its four media types,
/// or an http(s) URL.
fn image_source_fits(source: &Value) -> bool {
    match str_field(source, "type") {
        "base64" => {
            matches!(
                str_field(source, "media_type"),
                "image/jpeg" | "image/png" | "image/gif" | "image/webp"
            ) && !str_field(source, "data").is_empty()
        }
        "url" => {
            let url = str_field(source, "url");
            url.starts_with("https://") || url.starts_with("http://")
        }
        _ => false,
    }
}

/// Anthropic's pairing rule: the `tool_use` blocks of an assistant message are answered by
/// `tool_result` blocks at the start of the next message, and results answer only those.
fn unpaired(i: usize, previous: &[Value], blocks: &[Value]) -> Option<String> {
    let uses: Vec<&str> = previous
        .iter()
        .filter(|b| block_type(b) == "tool_use")
        .map(|b| str_field(b, "id"))
        .collect();
    let leading: Vec<&str> = blocks
        .iter()
        .take_while(|b| block_type(b) == "tool_result")
        .map(|b| str_field(b, "tool_use_id"))
        .collect();
    let all_results = blocks
        .iter()
        .filter(|b| block_type(b) == "tool_result")
        .count();
    if all_results > leading.len() {
        return Some(format!(
            "messages.{i}: `tool_result` blocks must come before any other content"
        ));
    }
    let missing: Vec<&str> = uses
        .iter()
        .copied()
        .filter(|u| !leading.contains(u))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
            missing.join(", ")
        ));
    }
    let extra = leading.iter().find(|r| !uses.contains(r))?;
    Some(format!(
        "messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {extra}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
    ))
}

fn uses_tool_blocks(messages: &[Value]) -> bool {
    messages
        .iter()
        .flat_map(|m| blocks(m).unwrap_or_default())
        .any(|b| matches!(block_type(&b), "tool_use" | "tool_result"))
}

fn defines_tools(body: &Value) -> bool {
    body.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
}

/// The 400s the real API gives a malformed request (its wording, where known).
fn invalid(req: &Request, body: &Value) -> Option<String> {
    if req.header("anthropic-version").is_none() {
        return Some("anthropic-version: header is required".into());
    }
    if !body.get("max_tokens").is_some_and(Value::is_u64) {
        return Some("max_tokens: Field required".into());
    }
    if body.get("stream") != Some(&Value::Bool(true)) {
        return Some("this fake answers streaming requests only".into());
    }
    if body.get("system").is_some_and(|s| !s.is_string()) {
        return Some("system: Input should be a valid string".into());
    }
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Some("messages: Field required".into());
    };
    if messages.is_empty() {
        return Some("messages: at least one message is required".into());
    }
    let mut previous_role = "assistant";
    let mut previous_blocks = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Some(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        if role == previous_role {
            return Some(if i == 0 {
                "messages: first message must use the \"user\" role".into()
            } else {
                "messages: roles must alternate between \"user\" and \"assistant\"".into()
            });
        }
        previous_role = role;
        let Some(blocks) = blocks(m) else {
            return Some(format!("messages.{i}.content: invalid content"));
        };
        if let Some(j) = blocks.iter().position(|b| !block_fits(b, role)) {
            return Some(format!(
                "messages.{i}.content.{j}: invalid `{}` block",
                block_type(&blocks[j])
            ));
        }
        let last = i + 1 == messages.len();
        let empty_text = blocks
            .iter()
            .any(|b| block_type(b) == "text" && str_field(b, "text").is_empty());
        if (blocks.is_empty() || empty_text) && !last {
            return Some(format!(
                "messages.{i}: all messages must have non-empty content"
            ));
        }
        if let Some(e) = unpaired(i, &previous_blocks, &blocks) {
            return Some(e);
        }
        previous_blocks = blocks;
    }
    if let Some(e) = invalid_tools(body) {
        return Some(e);
    }
    if let Some(e) = invalid_thinking(body) {
        return Some(e);
    }
    if uses_tool_blocks(messages) && !defines_tools(body) {
        return Some(
            "Requests which include `tool_use` or `tool_result` blocks must define tools.".into(),
        );
    }
    let last = messages.last().expect("not empty");
    let trailing_ws = content_text(last).is_some_and(|t| t.ends_with(char::is_whitespace));
    if last["role"] == "assistant" && trailing_ws {
        return Some(
            "messages: final assistant content cannot end with trailing whitespace".into(),
        );
    }
    None
}

/// The thinking the fake streams when asked to think, and its signature.
pub const THINKING: &str = "Let me think about this.";
pub const THINKING_FRAGMENTS: [&str; 3] = ["Let me ", "think about ", "this."];
pub const SIGNATURE: &str = "sig_fake_0123";

/// Why a request for extended thinking is refused, as Anthropic refuses it.
fn invalid_thinking(body: &Value) -> Option<String> {
    if body.pointer("/thinking/type") != Some(&json!("enabled")) {
        return None;
    }
    if body.get("temperature").is_some() || body.get("top_p").is_some() {
        return Some("`temperature` and `top_p` may not be set when thinking is enabled".into());
    }
    let messages = body["messages"].as_array()?;
    if messages.last().is_some_and(|m| m["role"] == "assistant") {
        return Some(
            "thinking may not be enabled when the final message is an assistant prefill".into(),
        );
    }
    if body.pointer("/tool_choice/type") == Some(&json!("tool")) {
        return Some("thinking may not be enabled when tool_choice forces tool use".into());
    }
    None
}

fn answer(body: &Value, plan: Plan<Fault>) -> Answer {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let system = body.get("system").and_then(Value::as_str).unwrap_or("");
    let prompt_tokens = word_tokens(system)
        + messages
            .iter()
            .filter_map(content_texts)
            .flatten()
            .map(|t| word_tokens(&t))
            .sum::<usize>();
    let prefill = messages
        .last()
        .filter(|m| m["role"] == "assistant")
        .and_then(content_text)
        .filter(|t| !t.is_empty());
    let (start, leading_space) = match prefill {
        None => (0, false),
        Some(p) => match chunk_prefix(&format!("{p} "), plan.words) {
            Some(k) => (k, true),
            None => (0, false),
        },
    };
    Answer {
        model: body["model"].as_str().unwrap_or("claude-fake").to_string(),
        start,
        leading_space,
        prompt_tokens,
        tool: tool_to_call(body),
        json: system.contains(JSON_INSTRUCTION_MARK),
        thinking: body.pointer("/thinking/type") == Some(&json!("enabled")),
        stop_sequence: body
            .pointer("/stop_sequences/0")
            .and_then(Value::as_str)
            .map(str::to_string),
        plan,
    }
}

async fn handle_request(
    socket: &mut TcpStream,
    core: &Core<Anthropic>,
    req: Request,
) -> io::Result<After> {
    let keep = req.keep();
    if req.method != "POST" || !req.path.ends_with("/messages") {
        let body = error_body(
            "not_found_error",
            &format!("{} {} not found", req.method, req.path),
        );
        write_json_response(socket, 404, None, &body, req.keep_alive).await?;
        return Ok(keep);
    }
    let raw = String::from_utf8_lossy(&req.body).into_owned();
    let parsed: Option<Value> = serde_json::from_str(&raw).ok();
    let body = parsed.clone().unwrap_or(Value::String(raw));
    let answer = answer(&body, core.next_plan());
    core.record(RecordedRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req.headers.clone(),
        body: body.clone(),
        fault: answer.plan.fault.clone(),
        start_chunk: answer.start,
        received: req.received,
    });

    let refusal = match (&answer.plan.fault, &parsed) {
        (
            Fault::Status {
                code,
                retry_after,
                body,
            },
            _,
        ) => Some((*code, *retry_after, body.clone())),
        (_, None) => Some((
            400,
            None,
            error_body("invalid_request_error", "invalid JSON body"),
        )),
        (_, Some(body)) => {
            invalid(&req, body).map(|m| (400, None, error_body("invalid_request_error", &m)))
        }
    };
    if let Some((code, retry_after, body)) = refusal {
        write_json_response(socket, code, retry_after, &body, req.keep_alive).await?;
        core.completed();
        return Ok(keep);
    }
    let after = stream_response(socket, core, &answer, req.keep_alive).await?;
    if matches!(after, After::KeepAlive | After::Close) {
        core.completed();
    }
    Ok(after)
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

async fn stream_response(
    socket: &mut TcpStream,
    core: &Core<Anthropic>,
    a: &Answer,
    keep_alive: bool,
) -> io::Result<After> {
    write_sse_head(socket, keep_alive).await?;
    let plan = &a.plan;
    if !plan.first_chunk_delay.is_zero() {
        tokio::time::sleep(plan.first_chunk_delay).await;
    }
    let start = event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
            "role": "assistant", "content": [], "model": a.model, "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": a.prompt_tokens, "output_tokens": 1}}}),
    );
    write_chunk(socket, &start).await?;
    // The answer's block comes after the thinking block, when there is one.
    let index = usize::from(a.thinking);
    if a.thinking {
        let open = json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": ""}});
        write_chunk(socket, &event("content_block_start", open)).await?;
        for (i, fragment) in THINKING_FRAGMENTS.iter().enumerate() {
            if i == 1 && plan.fault == Fault::CutInThinking {
                return cut(socket).await;
            }
            let data = json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": fragment}});
            write_chunk(socket, &event("content_block_delta", data)).await?;
        }
        let data = json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": SIGNATURE}});
        write_chunk(socket, &event("content_block_delta", data)).await?;
        let stop = json!({"type": "content_block_stop", "index": 0});
        write_chunk(socket, &event("content_block_stop", stop)).await?;
    }
    let content_block = match &a.tool {
        Some(name) => json!({"type": "tool_use", "id": "toolu_fake_1", "name": name, "input": {}}),
        None => json!({"type": "text", "text": ""}),
    };
    let block = event(
        "content_block_start",
        json!({"type": "content_block_start", "index": index, "content_block": content_block}),
    );
    write_chunk(socket, &block).await?;
    write_chunk(socket, "event: ping\ndata: {\"type\": \"ping\"}\n\n").await?;

    let total = match a.tool {
        Some(_) => TOOL_FRAGMENTS,
        None if a.json => TOOL_FRAGMENTS,
        None => plan.words.saturating_sub(a.start),
    };
    let mut sent = 0usize;
    loop {
        match plan.fault {
            Fault::CutAfter(k) if due(k, sent, total) => return cut(socket).await,
            Fault::StallAfter(k) if due(k, sent, total) => return Ok(core.hold_open(socket).await),
            Fault::ErrorEventAt(k, kind) if due(k, sent, total) => {
                let data =
                    json!({"type": "error", "error": {"type": kind, "message": "Overloaded"}});
                write_chunk(socket, &event("error", data)).await?;
                write_last_chunk(socket).await?;
                return Ok(After::KeepAlive);
            }
            _ => {}
        }
        if sent == total {
            break;
        }
        if sent > 0 && !plan.chunk_delay.is_zero() {
            tokio::time::sleep(plan.chunk_delay).await;
        }
        let delta = match a.tool {
            Some(_) => json!({"type": "input_json_delta", "partial_json": tool_fragment(sent)}),
            None if a.json => json!({"type": "text_delta", "text": json_fragment(sent)}),
            None => {
                let mut text = chunk_text(a.start + sent);
                if sent == 0 && a.leading_space {
                    text.insert(0, ' ');
                }
                json!({"type": "text_delta", "text": text})
            }
        };
        let data = json!({"type": "content_block_delta", "index": index, "delta": delta});
        write_chunk(socket, &event("content_block_delta", data)).await?;
        sent += 1;
    }
    if !plan.chunk_delay.is_zero() && sent > 0 {
        tokio::time::sleep(plan.chunk_delay).await;
    }
    let stop = event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    );
    write_chunk(socket, &stop).await?;
    let (stop_reason, stop_sequence) = match (&a.tool, &plan.fault) {
        (Some(_), _) => ("tool_use", None),
        (None, Fault::StopSequence) => ("stop_sequence", a.stop_sequence.clone()),
        (None, _) => ("end_turn", None),
    };
    let delta = event(
        "message_delta",
        json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": {"output_tokens": sent}}),
    );
    write_chunk(socket, &delta).await?;
    write_chunk(
        socket,
        &event("message_stop", json!({"type": "message_stop"})),
    )
    .await?;
    write_last_chunk(socket).await?;
    Ok(After::KeepAlive)
}
