//! Fault-injecting fake of the Gemini API's `streamGenerateContent?alt=sse`, on the HTTP core
//! of [`crate::fake_http`].
//!
//! It answers `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` with one
//! `GenerateContentResponse` chunk per word (cumulative `usageMetadata` on each), then a chunk
//! with `finishReason: STOP`; the body simply ends, as Gemini's does. Like the real API it
//! refuses roles other than `user`/`model`, turns that do not alternate, and conversations that
//! do not end with a user turn (Gemini has no prefill). A trailing `model` turn that is a
//! chunk-aligned prefix followed by Switchyard's continue instruction is continued.
//!
//! Offered `functionDeclarations` (and not answering a function response), it calls one
//! instead: the first of `allowedFunctionNames`, else the first declared, in one chunk with a
//! whole `functionCall` part whose `args` are [`crate::fake_openai::TOOL_ARGUMENTS`], signed
//! with [`THOUGHT_SIGNATURE`], then a chunk with `finishReason: STOP`, as Gemini 3 ends a turn
//! that calls functions. Like the real API it refuses malformed parts (image parts included),
//! function calls outside `model` turns and responses outside `user` turns, a function-call
//! turn not answered by as many responses in the next turn, and, like Gemini 3, a step of the
//! current turn whose first call lacks a signature it issued (or the documented dummy).
//!
//! Asked for JSON (`generationConfig.responseMimeType: application/json`, or a system
//! instruction with [`crate::fake_openai::JSON_INSTRUCTION_MARK`]), it answers
//! [`crate::fake_openai::JSON_ANSWER`] in [`crate::fake_openai::TOOL_FRAGMENTS`] text chunks.
//! Like the real API it refuses a `responseSchema` without the JSON MIME type, beside a
//! `responseJsonSchema`, or with a field its `Schema` object does not have.
#![allow(dead_code)]

use std::io;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use switchyard::routing::CONTINUE_INSTRUCTION;
use tokio::net::TcpStream;

use crate::fake_http::{
    chunk_prefix, chunk_text, cut, due, word_tokens, write_chunk, write_json_response,
    write_last_chunk, write_sse_head, After, Core, Fake, Plan, RecordedRequest, Request, Wire,
};
use crate::fake_openai::{json_fragment, JSON_INSTRUCTION_MARK, TOOL_ARGUMENTS, TOOL_FRAGMENTS};

/// The `thoughtSignature` of every call the fake makes.
pub const THOUGHT_SIGNATURE: &str = "ZmFrZSB0aG91Z2h0";
/// The value Gemini's docs give for a call it did not sign.
pub const DUMMY_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// A fault applied to one request. `k` counts the text chunks of *this* response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Normal answer.
    None,
    /// Send `k` text chunks, then close the connection cleanly (FIN) without a finish reason.
    CutAfter(usize),
    /// After `k` text chunks send an `{"error": …}` chunk (503 `UNAVAILABLE`), then end the
    /// body.
    ErrorEventAt(usize),
    /// After `k` text chunks send a chunk with `finishReason: SAFETY`, then end the body.
    SafetyAt(usize),
    /// Answer only `promptFeedback.blockReason: SAFETY`, then end the body.
    PromptBlocked,
    /// Answer with an HTTP error status and a JSON body.
    Status {
        code: u16,
        retry_after: Option<u64>,
        body: String,
    },
}

impl Fault {
    /// An error status with Gemini's error body.
    pub fn status(code: u16, status: &str, message: &str) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
            body: error_body(code, status, message),
        }
    }

    /// 429 `RESOURCE_EXHAUSTED`.
    pub fn rate_limited() -> Fault {
        Fault::status(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
        )
    }

    /// 503 `UNAVAILABLE`.
    pub fn unavailable() -> Fault {
        Fault::status(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        )
    }

    /// 400 `INVALID_ARGUMENT`: the input is longer than the context window.
    pub fn token_limit() -> Fault {
        Fault::status(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        )
    }
}

/// `{"error":{"code","message","status"}}`
pub fn error_body(code: u16, status: &str, message: &str) -> String {
    json!({"error": {"code": code, "message": message, "status": status}}).to_string()
}

/// The Gemini `streamGenerateContent` wire format.
pub struct Gemini;

pub type FakeGemini = Fake<Gemini>;

impl Wire for Gemini {
    type Fault = Fault;
    const NAME: &'static str = "fake gemini";
    const BASE_PATH: &'static str = "/v1beta";

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
    start: usize,
    prompt_tokens: usize,
    /// The function to call instead of answering in text.
    tool: Option<String>,
    /// Answer [`crate::fake_openai::JSON_ANSWER`] instead of words.
    json: bool,
    plan: Plan<Fault>,
}

/// The fields of the API's `Schema` object (what `responseSchema` may hold).
const SCHEMA_FIELDS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// The first field of a `Schema` the API does not know, with its path.
fn unknown_schema_field(schema: &Value, path: &str) -> Option<String> {
    let fields = schema.as_object()?;
    for (key, value) in fields {
        if !SCHEMA_FIELDS.contains(&key.as_str()) {
            return Some(format!("{key}\" at '{path}"));
        }
        let nested = match key.as_str() {
            "properties" => value.as_object().map(|props| props.values().collect()),
            "items" => Some(vec![value]),
            "anyOf" => value.as_array().map(|v| v.iter().collect()),
            _ => None,
        };
        for (i, child) in nested.unwrap_or_default().into_iter().enumerate() {
            if let Some(e) = unknown_schema_field(child, &format!("{path}.{key}[{i}]")) {
                return Some(e);
            }
        }
    }
    None
}

/// The 400 for a `generationConfig` that asks for JSON wrongly.
fn invalid_json_config(body: &Value) -> Option<String> {
    let config = body.get("generationConfig")?;
    let mime = config.get("responseMimeType").and_then(Value::as_str);
    let schema = config.get("responseSchema");
    if schema.is_some() && config.get("responseJsonSchema").is_some() {
        return Some("responseSchema and responseJsonSchema cannot both be set".into());
    }
    if schema.is_some() && mime != Some("application/json") {
        return Some(
            "* GenerateContentRequest.generation_config.response_mime_type: must be application/json when response_schema is set".into(),
        );
    }
    let unknown = unknown_schema_field(schema?, "generation_config.response_schema")?;
    Some(format!(
        "Invalid JSON payload received. Unknown name \"{unknown}': Cannot find field."
    ))
}

/// Whether the request asks for JSON, by MIME type or by a system instruction.
fn wants_json(body: &Value) -> bool {
    body.pointer("/generationConfig/responseMimeType") == Some(&Value::from("application/json"))
        || body
            .get("systemInstruction")
            .and_then(parts_text)
            .is_some_and(|t| t.contains(JSON_INSTRUCTION_MARK))
}

fn parts(value: &Value) -> &[Value] {
    value
        .get("parts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The texts of the text parts (function parts have none); `None` without a parts list.
fn parts_texts(value: &Value) -> Option<Vec<String>> {
    value.get("parts")?.as_array()?;
    let texts = parts(value).iter().filter_map(|p| p.get("text")?.as_str());
    Some(texts.map(str::to_string).collect())
}

/// The text a model continues: the parts back to back.
fn parts_text(value: &Value) -> Option<String> {
    parts_texts(value).map(|t| t.concat())
}

fn word_count(value: &Value) -> usize {
    parts_texts(value)
        .unwrap_or_default()
        .iter()
        .map(|t| word_tokens(t))
        .sum()
}

fn contents(body: &Value) -> &[Value] {
    body.get("contents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// How many parts of a turn are of one kind (`functionCall`, `functionResponse`).
fn count(turn: &Value, kind: &str) -> usize {
    parts(turn).iter().filter(|p| p.get(kind).is_some()).count()
}

/// The model named by `…/models/{model}:streamGenerateContent`.
fn model_of(path: &str) -> Option<&str> {
    let rest = &path[path.find("/models/")? + "/models/".len()..];
    rest.strip_suffix(":streamGenerateContent")
}

/// The function the fake calls for this request, if any.
fn tool_to_call(body: &Value) -> Option<String> {
    let declarations = body.pointer("/tools/0/functionDeclarations")?.as_array()?;
    let answering = contents(body)
        .last()
        .is_some_and(|t| count(t, "functionResponse") > 0);
    let config = body.pointer("/toolConfig/functionCallingConfig");
    let mode = config.and_then(|c| c.get("mode")).and_then(Value::as_str);
    if answering || mode == Some("NONE") {
        return None;
    }
    let allowed = config.and_then(|c| c.pointer("/allowedFunctionNames/0"));
    allowed
        .or_else(|| declarations.first()?.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The keys of `Part`'s data union: a part carries exactly one of them.
const PART_DATA: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
];

/// A part with exactly one kind of data, allowed in its role and well formed.
fn part_fits(part: &Value, role: &str) -> bool {
    let is_str = |v: &Value, key: &str| {
        v.get(key)
            .is_some_and(|s| s.as_str().is_some_and(|s| !s.is_empty()))
    };
    let mut kinds = PART_DATA.iter().filter(|k| part.get(**k).is_some());
    let (Some(&kind), None) = (kinds.next(), kinds.next()) else {
        return false;
    };
    let data = &part[kind];
    match kind {
        "text" => data.as_str().is_some_and(|t| !t.is_empty()),
        "inlineData" => {
            role == "user"
                && data["mimeType"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("image/"))
                && is_str(data, "data")
        }
        "fileData" => role == "user" && is_str(data, "mimeType") && is_str(data, "fileUri"),
        "functionCall" => {
            role == "model" && is_str(data, "name") && data.get("args").is_none_or(Value::is_object)
        }
        _ => {
            role == "user"
                && is_str(data, "name")
                && data.get("response").is_some_and(Value::is_object)
        }
    }
}

/// Gemini 3's check of the current turn (the model steps since the last user turn with more
/// than function responses): each step's first call carries a signature, one the fake issued or
/// the documented dummy. Earlier turns are not checked, as the docs say.
fn unsigned_step(turns: &[Value]) -> Option<String> {
    let start = turns
        .iter()
        .rposition(|t| {
            t["role"] == "user" && parts(t).iter().any(|p| p.get("functionResponse").is_none())
        })
        .map_or(0, |i| i + 1);
    for (i, turn) in turns.iter().enumerate().skip(start) {
        let Some(call) = parts(turn).iter().find(|p| p.get("functionCall").is_some()) else {
            continue;
        };
        let name = call["functionCall"]["name"].as_str().unwrap_or("");
        match call.get("thoughtSignature").and_then(Value::as_str) {
            None => {
                return Some(format!(
                    "Function call `{name}` in the `{i}.` content block is missing a `thought_signature`."
                ))
            }
            Some(THOUGHT_SIGNATURE | DUMMY_THOUGHT_SIGNATURE) => {}
            Some(_) => return Some(format!("Corrupted thought signature in content block {i}.")),
        }
    }
    None
}

/// The 400s the real API gives a malformed request (its wording, where known).
fn invalid(body: &Value) -> Option<String> {
    let turns = contents(body);
    if turns.is_empty() {
        return Some("* GenerateContentRequest.contents: contents is not specified".into());
    }
    let mut previous: Option<&Value> = None;
    for (i, turn) in turns.iter().enumerate() {
        let role = turn.get("role").and_then(Value::as_str).unwrap_or("user");
        if role != "user" && role != "model" {
            return Some("Please use a valid role: user, model.".into());
        }
        if previous.is_some_and(|p| p.get("role").and_then(Value::as_str).unwrap_or("user") == role)
        {
            return Some(
                "Please ensure that multiturn requests alternate between user and model.".into(),
            );
        }
        if parts(turn).is_empty() {
            return Some(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            ));
        }
        if let Some(j) = parts(turn).iter().position(|p| !part_fits(p, role)) {
            return Some(format!(
                "* GenerateContentRequest.contents[{i}].parts[{j}]: invalid part for role {role}"
            ));
        }
        let calls = previous.map_or(0, |p| count(p, "functionCall"));
        if calls != count(turn, "functionResponse") {
            return Some(
                "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn."
                    .into(),
            );
        }
        previous = Some(turn);
    }
    if let Some(e) = unsigned_step(turns) {
        return Some(e);
    }
    if let Some(e) = invalid_json_config(body) {
        return Some(e);
    }
    if previous.and_then(|p| p.get("role")).and_then(Value::as_str) == Some("model") {
        return Some(
            "Please ensure that multiturn requests ends with a user role or a function response."
                .into(),
        );
    }
    if body
        .get("systemInstruction")
        .is_some_and(|s| parts_text(s).is_none())
    {
        return Some("* GenerateContentRequest.system_instruction: invalid parts".into());
    }
    None
}

fn answer(model: &str, body: &Value, plan: Plan<Fault>) -> Answer {
    let turns = contents(body);
    let prompt_tokens = body.get("systemInstruction").map_or(0, word_count)
        + turns.iter().map(word_count).sum::<usize>();
    let start = match turns {
        [.., prior, last]
            if prior["role"] == "model"
                && parts_text(last).as_deref() == Some(CONTINUE_INSTRUCTION) =>
        {
            parts_text(prior)
                .and_then(|p| chunk_prefix(&p, plan.words))
                .unwrap_or(0)
        }
        _ => 0,
    };
    Answer {
        model: model.to_string(),
        start,
        prompt_tokens,
        tool: tool_to_call(body),
        json: wants_json(body),
        plan,
    }
}

async fn handle_request(
    socket: &mut TcpStream,
    core: &Core<Gemini>,
    req: Request,
) -> io::Result<After> {
    let keep = req.keep();
    let model = model_of(&req.path).map(str::to_string);
    let Some(model) = model.filter(|_| req.method == "POST") else {
        let body = error_body(
            404,
            "NOT_FOUND",
            &format!("{} {} is not found", req.method, req.path),
        );
        write_json_response(socket, 404, None, &body, req.keep_alive).await?;
        return Ok(keep);
    };
    let raw = String::from_utf8_lossy(&req.body).into_owned();
    let parsed: Option<Value> = serde_json::from_str(&raw).ok();
    let body = parsed.clone().unwrap_or(Value::String(raw));
    let answer = answer(&model, &body, core.next_plan());
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

    let sse = req.query.split('&').any(|kv| kv == "alt=sse");
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
            error_body(400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
        )),
        _ if !sse => Some((
            400,
            None,
            error_body(400, "INVALID_ARGUMENT", "this fake answers alt=sse only"),
        )),
        (_, Some(body)) => {
            invalid(body).map(|m| (400, None, error_body(400, "INVALID_ARGUMENT", &m)))
        }
    };
    if let Some((code, retry_after, body)) = refusal {
        write_json_response(socket, code, retry_after, &body, req.keep_alive).await?;
        core.completed();
        return Ok(keep);
    }
    let after = stream_response(socket, &answer, req.keep_alive).await?;
    if matches!(after, After::KeepAlive | After::Close) {
        core.completed();
    }
    Ok(after)
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"promptTokenCount": prompt, "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion})
}

/// One `data:` line the way Gemini frames it (CRLF line ends).
fn data(value: Value) -> String {
    format!("data: {value}\r\n\r\n")
}

fn text_chunk(a: &Answer, text: &str, finish: Option<&str>, completion: usize) -> String {
    let mut candidate =
        json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = reason.into();
    }
    data(
        json!({"candidates": [candidate], "usageMetadata": usage(a.prompt_tokens, completion),
        "modelVersion": a.model, "responseId": "fake-response"}),
    )
}

/// The whole call, in one part, signed as Gemini 3 signs it; Gemini sends no call id.
fn call_chunk(a: &Answer, name: &str) -> String {
    let args: Value = serde_json::from_str(TOOL_ARGUMENTS).expect("valid arguments");
    let part = json!({"functionCall": {"name": name, "args": args},
        "thoughtSignature": THOUGHT_SIGNATURE});
    data(
        json!({"candidates": [{"content": {"parts": [part], "role": "model"}, "index": 0}],
        "usageMetadata": usage(a.prompt_tokens, 1), "modelVersion": a.model}),
    )
}

const BLOCKED_RATINGS: &str =
    r#"[{"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"HIGH","blocked":true}]"#;

async fn stream_response(
    socket: &mut TcpStream,
    a: &Answer,
    keep_alive: bool,
) -> io::Result<After> {
    write_sse_head(socket, keep_alive).await?;
    let plan = &a.plan;
    if !plan.first_chunk_delay.is_zero() {
        tokio::time::sleep(plan.first_chunk_delay).await;
    }
    let ratings: Value = serde_json::from_str(BLOCKED_RATINGS).expect("valid ratings");
    if plan.fault == Fault::PromptBlocked {
        let chunk = data(
            json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": ratings},
            "usageMetadata": usage(a.prompt_tokens, 0), "modelVersion": a.model}),
        );
        write_chunk(socket, &chunk).await?;
        write_last_chunk(socket).await?;
        return Ok(After::KeepAlive);
    }
    let total = match a.tool {
        Some(_) => 1,
        None if a.json => TOOL_FRAGMENTS,
        None => plan.words.saturating_sub(a.start),
    };
    let mut sent = 0usize;
    loop {
        match plan.fault {
            Fault::CutAfter(k) if due(k, sent, total) => return cut(socket).await,
            Fault::ErrorEventAt(k) if due(k, sent, total) => {
                let chunk = data(
                    serde_json::from_str(&error_body(
                        503,
                        "UNAVAILABLE",
                        "The model is overloaded. Please try again later.",
                    ))
                    .expect("valid error body"),
                );
                write_chunk(socket, &chunk).await?;
                write_last_chunk(socket).await?;
                return Ok(After::KeepAlive);
            }
            Fault::SafetyAt(k) if due(k, sent, total) => {
                let chunk = data(json!({"candidates": [{"finishReason": "SAFETY", "index": 0,
                    "safetyRatings": ratings}], "usageMetadata": usage(a.prompt_tokens, sent),
                    "modelVersion": a.model}));
                write_chunk(socket, &chunk).await?;
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
        let chunk = match &a.tool {
            Some(name) => call_chunk(a, name),
            None if a.json => text_chunk(a, json_fragment(sent), None, sent + 1),
            None => text_chunk(a, &chunk_text(a.start + sent), None, sent + 1),
        };
        sent += 1;
        write_chunk(socket, &chunk).await?;
    }
    if !plan.chunk_delay.is_zero() && sent > 0 {
        tokio::time::sleep(plan.chunk_delay).await;
    }
    write_chunk(socket, &text_chunk(a, "", Some("STOP"), sent)).await?;
    write_last_chunk(socket).await?;
    Ok(After::KeepAlive)
}
