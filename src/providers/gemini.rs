//! The Gemini `streamGenerateContent?alt=sse` wire format: `user`/`model` turns of text,
//! image and function parts, `systemInstruction`, `generationConfig`, `tools`/`toolConfig`,
//! and a stream of `GenerateContentResponse` chunks that ends at the end of the body.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Duration;

use super::sse::{self, Parsed};
use super::turns::{conversation, stop_sequences, Part, Speaker, Turn};
use super::{Delta, ProviderError, ProviderStream, StreamItem, UpstreamRequest};
use crate::domain::request::Image;
use crate::domain::tools::{Tool, ToolChoice, ToolMode};
use crate::domain::{ToolCallDelta, Usage};
use crate::error::ErrorCode;
use crate::settings::ProviderSettings;
use crate::store::AttemptLog;

mod schema;

/// Finish reasons that mean a filter stopped the answer: the execution fails with
/// `content_filtered` instead of passing a truncated answer off as complete.
const FILTER_FINISH_REASONS: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
];

/// Finish reasons that mean the model produced a call that cannot be used (its arguments
/// unparsable, or a call the request did not allow): the answer fails with `provider_error`,
/// so routing moves on, instead of completing with no usable call.
const UNUSABLE_CALL_FINISH_REASONS: &[&str] = &["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"];

/// The signature Gemini's docs name for a call it did not sign (made on another route, or
/// whose signature a client dropped): it tells Gemini 3 to skip the check that would refuse
/// the turn.
const DUMMY_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

pub struct Gemini {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl Gemini {
    pub fn new(settings: &ProviderSettings, http: reqwest::Client) -> Gemini {
        let base = settings.base_url.as_deref().unwrap_or_default();
        Gemini {
            base: base.trim_end_matches('/').to_string(),
            api_key: settings.api_key.clone(),
            http,
        }
    }

    /// The model is part of the path; `models/x` and `x` name the same model.
    fn url(&self, model: &str) -> String {
        format!(
            "{}/models/{}:streamGenerateContent?alt=sse",
            self.base,
            model.trim_start_matches("models/")
        )
    }

    pub async fn open(
        &self,
        req: &UpstreamRequest,
        log: &AttemptLog,
    ) -> Result<ProviderStream, ProviderError> {
        let body = request_body(req);
        let mut builder = self.http.post(self.url(&req.model)).json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.header("x-goog-api-key", key);
        }
        let resp = sse::send(&self.http, builder, &body, log, classify_status).await?;
        let mut parser = ChunkParser::default();
        Ok(sse::parse_stream(
            resp.bytes_stream(),
            log.clone(),
            move |ev| parser.parse(&ev.data),
        ))
    }
}

/// The JSON body sent upstream (also what the debug log records). Gemini has no prefill: a
/// trailing `model` turn is sent as is, which is why its default continuation is `instruction`.
pub fn request_body(req: &UpstreamRequest) -> Value {
    let conv = conversation(&req.messages);
    let contents: Vec<Value> = conv.turns.iter().map(content).collect();
    let mut body = json!({ "contents": contents });
    if !conv.system.is_empty() {
        let parts: Vec<Value> = conv.system.iter().map(|t| json!({"text": t})).collect();
        body["systemInstruction"] = json!({ "parts": parts });
    }
    let p = &req.params;
    if !p.tools.is_empty() {
        let declarations: Vec<Value> = p.tools.iter().map(declaration).collect();
        body["tools"] = json!([{ "functionDeclarations": declarations }]);
        if let Some(choice) = &p.tool_choice {
            body["toolConfig"] = json!({ "functionCallingConfig": calling_config(choice) });
        }
    }
    let mut config = Map::new();
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            config.insert(key.to_string(), v);
        }
    };
    set("temperature", p.temperature.map(Value::from));
    set("topP", p.top_p.map(Value::from));
    set("maxOutputTokens", p.max_tokens.map(Value::from));
    set("stopSequences", stop_sequences(p).map(Value::from));
    set("presencePenalty", p.presence_penalty.map(Value::from));
    set("frequencyPenalty", p.frequency_penalty.map(Value::from));
    set("seed", p.seed.map(Value::from));
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    body
}

/// A turn as `Content`; tool results travel in `user` turns, as the current docs show.
fn content(turn: &Turn<'_>) -> Value {
    let role = match turn.speaker {
        Speaker::User => "user",
        Speaker::Assistant => "model",
    };
    let mut parts: Vec<Value> = turn.parts.iter().map(part).collect();
    if let Some(first) = unsigned_first_call(turn) {
        parts[first]["thoughtSignature"] = DUMMY_THOUGHT_SIGNATURE.into();
    }
    json!({"role": role, "parts": parts})
}

/// Where a turn's calls need the dummy signature: at its first call, when none of its calls
/// carries a signature. Gemini 3 refuses a step whose first call is unsigned; Gemini signs only
/// the first of parallel calls, so a turn with any signature is sent as it came.
fn unsigned_first_call(turn: &Turn<'_>) -> Option<usize> {
    let signed = |p: &Part<'_>| matches!(p, Part::Call(c) if c.thought_signature().is_some());
    if turn.parts.iter().any(signed) {
        return None;
    }
    turn.parts.iter().position(|p| matches!(p, Part::Call(_)))
}

/// One part. A call goes back with the thought signature it came with; Gemini's calls carry
/// `args` as an object and its results a `response` object named by function, not by call id.
fn part(part: &Part<'_>) -> Value {
    match part {
        Part::Text(text) => json!({"text": text}),
        Part::Image(image) => image_part(image),
        Part::Call(call) => {
            let mut part = json!({"functionCall": {
                "name": call.function.name, "args": call.arguments_object()}});
            if let Some(signature) = call.thought_signature() {
                part["thoughtSignature"] = signature.into();
            }
            part
        }
        Part::Result {
            function, content, ..
        } => json!({"functionResponse": {"name": function, "response": response(content)}}),
    }
}

/// An image: inline data for a data URL, else a `fileData` part that names the URL (Gemini
/// needs the media type either way).
fn image_part(image: &Image) -> Value {
    match image.inline() {
        Some((mime_type, data)) => json!({"inlineData": {"mimeType": mime_type, "data": data}}),
        None => json!({"fileData": {"mimeType": image.media_type(), "fileUri": image.url}}),
    }
}

/// A tool result as the object `response` must be: a JSON object result as is, any other text
/// wrapped as `{"result": text}`.
fn response(content: &str) -> Value {
    match serde_json::from_str::<Value>(content) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "result": content }),
    }
}

fn declaration(t: &Tool) -> Value {
    let f = &t.function;
    let mut declaration = json!({"name": f.name});
    if let Some(description) = &f.description {
        declaration["description"] = description.as_str().into();
    }
    if let Some(parameters) = &f.parameters {
        declaration["parameters"] = schema::subset(parameters);
    }
    declaration
}

/// `tool_choice` as a `functionCallingConfig`; a named function is `ANY` limited to it.
fn calling_config(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Mode(ToolMode::None) => json!({"mode": "NONE"}),
        ToolChoice::Mode(ToolMode::Auto) => json!({"mode": "AUTO"}),
        ToolChoice::Mode(ToolMode::Required) => json!({"mode": "ANY"}),
        ToolChoice::Named { function, .. } => {
            json!({"mode": "ANY", "allowedFunctionNames": [function.name]})
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    error: ApiError,
}

/// `{"error":{"code":400,"message":"...","status":"INVALID_ARGUMENT","details":[...]}}`
#[derive(Deserialize, Default)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl ApiError {
    /// The `retryDelay` of a `google.rpc.RetryInfo` detail ("37s"), Gemini's Retry-After.
    fn retry_delay(&self) -> Option<Duration> {
        self.details
            .iter()
            .filter(|d| {
                d.get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
            })
            .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
            .and_then(|s| s.trim().strip_suffix('s'))
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    }

    fn mentions_token_limit(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        (m.contains("token count") && m.contains("exceeds"))
            || m.contains("maximum number of tokens")
    }
}

/// A non-2xx answer, classified by its status word where it is unambiguous, else by status.
pub fn classify_status(status: u16, retry_after: Option<Duration>, body: &str) -> ProviderError {
    let detail = serde_json::from_str::<Envelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    let retry_after = retry_after.or_else(|| detail.retry_delay());
    let mut err = ProviderError::from_status(status, retry_after, body);
    if detail.status == "RESOURCE_EXHAUSTED" {
        err.code = ErrorCode::RateLimited;
    } else if status == 400 && detail.mentions_token_limit() {
        err.code = ErrorCode::ContextLengthExceeded;
    }
    err
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    /// Thought summaries are not part of the answer.
    #[serde(default)]
    thought: bool,
    #[serde(default)]
    function_call: Option<WireCall>,
    /// Set on a call's part by thinking models; it must go back on the same part.
    #[serde(default)]
    thought_signature: Option<String>,
}

/// A call arrives whole, in one part; `id` only where the API assigns one.
#[derive(Deserialize)]
struct WireCall {
    name: String,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    total_token_count: u64,
}

/// One stream's parser: it numbers the calls, which Gemini sends whole and unnumbered, and
/// remembers whether the answer called any (Gemini finishes a call with `STOP`).
#[derive(Default)]
struct ChunkParser {
    calls: u32,
}

impl ChunkParser {
    /// One SSE `data:` payload → a canonical item or an error; Gemini has no end marker.
    fn parse(&mut self, data: &str) -> Parsed {
        let chunk = match serde_json::from_str::<Chunk>(data) {
            Ok(chunk) => chunk,
            Err(e) => return sse::skipped(data, &e),
        };
        if let Some(err) = refusal(&chunk) {
            return Parsed::Error(err);
        }
        let candidate = chunk.candidates.into_iter().next();
        let finish = candidate.as_ref().and_then(|c| c.finish_reason.clone());
        let mut delta = Delta {
            usage: chunk.usage_metadata.map(usage),
            ..Delta::default()
        };
        let parts = candidate.and_then(|c| c.content).map(|c| c.parts);
        let mut text = String::new();
        for part in parts.into_iter().flatten().filter(|p| !p.thought) {
            text.extend(part.text);
            if let Some(call) = part.function_call {
                delta
                    .tool_calls
                    .push(self.call(call, part.thought_signature));
            }
        }
        delta.text = Some(text).filter(|t| !t.is_empty());
        delta.finish_reason = finish.and_then(finish_reason).map(|reason| {
            if reason == "stop" && self.calls > 0 {
                "tool_calls".into()
            } else {
                reason
            }
        });
        Parsed::Item(StreamItem::Delta(delta))
    }

    /// A whole call as one fragment. Without an id from Gemini the execution names it, unique
    /// across the conversation (a per-stream counter would repeat in the next turn).
    fn call(&mut self, call: WireCall, thought_signature: Option<String>) -> ToolCallDelta {
        let index = self.calls;
        self.calls += 1;
        let args = call.args.unwrap_or_else(|| json!({}));
        ToolCallDelta {
            index,
            id: call.id.filter(|id| !id.is_empty()),
            name: Some(call.name),
            arguments: args.to_string(),
            thought_signature,
        }
    }
}

/// Why a chunk ends the stream instead of answering: an error, a blocked prompt, or an answer
/// that finished as a failure.
fn refusal(chunk: &Chunk) -> Option<ProviderError> {
    if let Some(err) = &chunk.error {
        return Some(in_stream_error(err));
    }
    if let Some(reason) = chunk
        .prompt_feedback
        .as_ref()
        .and_then(|f| f.block_reason.as_ref())
    {
        return Some(ProviderError::new(
            ErrorCode::ContentFiltered,
            format!("the provider blocked the prompt (blockReason {reason})"),
        ));
    }
    let finish = chunk.candidates.first()?.finish_reason.as_deref()?;
    failed_finish(finish)
}

/// A finish reason that fails the answer: a filter stopped it, or its tool call is unusable.
/// The latter is `provider_error` (not retryable: the route fails and the next one is asked)
/// rather than `stream_interrupted`, since the stream itself ended properly.
fn failed_finish(finish: &str) -> Option<ProviderError> {
    if FILTER_FINISH_REASONS.contains(&finish) {
        return Some(ProviderError::new(
            ErrorCode::ContentFiltered,
            format!("the provider stopped the answer (finishReason {finish})"),
        ));
    }
    UNUSABLE_CALL_FINISH_REASONS.contains(&finish).then(|| {
        ProviderError::new(
            ErrorCode::ProviderError,
            format!("the model produced an unusable tool call (finishReason {finish})"),
        )
    })
}

fn usage(u: UsageMetadata) -> Usage {
    Usage {
        prompt_tokens: u.prompt_token_count,
        completion_tokens: u.candidates_token_count,
        total_tokens: if u.total_token_count > 0 {
            u.total_token_count
        } else {
            u.prompt_token_count + u.candidates_token_count
        },
    }
}

fn in_stream_error(e: &ApiError) -> ProviderError {
    let code = match e.status.as_str() {
        "RESOURCE_EXHAUSTED" => ErrorCode::RateLimited,
        "UNAVAILABLE" => ErrorCode::ProviderUnavailable,
        _ => ErrorCode::StreamInterrupted,
    };
    ProviderError::new(
        code,
        format!("provider sent an error event: {} ({})", e.message, e.status),
    )
}

/// Gemini's finish reasons in the OpenAI vocabulary the rest of Switchyard speaks; the
/// unspecified one is no finish at all.
fn finish_reason(reason: String) -> Option<String> {
    match reason.as_str() {
        "FINISH_REASON_UNSPECIFIED" => None,
        "STOP" => Some("stop".into()),
        "MAX_TOKENS" => Some("length".into()),
        _ => Some(reason.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tools::{ExtraContent, FunctionCall, ToolKind};
    use crate::domain::{Message, Params, Role, ToolCall};

    fn run(body: &str) -> Vec<Result<StreamItem, ProviderError>> {
        let mut parser = ChunkParser::default();
        sse::run_recorded(body, move |ev| parser.parse(&ev.data))
    }

    fn text(items: &[Result<StreamItem, ProviderError>]) -> String {
        items
            .iter()
            .filter_map(|i| match i {
                Ok(StreamItem::Delta(d)) => d.text.clone(),
                _ => None,
            })
            .collect()
    }

    fn chunk(text: &str, finish: Option<&str>, completion: u64) -> String {
        let finish = finish
            .map(|f| format!(",\"finishReason\":\"{f}\""))
            .unwrap_or_default();
        format!(
            "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"{text}\"}}],\"role\": \"model\"}}{finish},\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 8,\"candidatesTokenCount\": {completion},\"totalTokenCount\": {}}},\"modelVersion\": \"gemini-x\"}}\r\n\r\n",
            8 + completion
        )
    }

    #[test]
    fn a_full_stream_yields_text_finish_and_usage() {
        let body = format!(
            "{}{}{}",
            chunk("Hel", None, 1),
            chunk("lo", None, 2),
            chunk("", Some("STOP"), 2)
        );
        let items = run(&body);
        assert!(items.iter().all(|i| i.is_ok()), "{items:?}");
        assert_eq!(text(&items), "Hello");
        match items.last().unwrap() {
            Ok(StreamItem::Delta(d)) => {
                assert_eq!(d.finish_reason.as_deref(), Some("stop"));
                assert_eq!(
                    d.usage,
                    Some(Usage {
                        prompt_tokens: 8,
                        completion_tokens: 2,
                        total_tokens: 10
                    })
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn max_tokens_is_a_length_finish() {
        let items = run(&chunk("a", Some("MAX_TOKENS"), 1));
        match &items[0] {
            Ok(StreamItem::Delta(d)) => assert_eq!(d.finish_reason.as_deref(), Some("length")),
            other => panic!("{other:?}"),
        }
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn a_stream_without_finish_reason_is_cut() {
        let items = run(&format!(
            "{}{}",
            chunk("Hel", None, 1),
            chunk("lo", None, 2)
        ));
        assert_eq!(text(&items), "Hello");
        assert_eq!(
            items.last().unwrap().as_ref().unwrap_err().code,
            ErrorCode::StreamInterrupted
        );
    }

    #[test]
    fn safety_blocks_are_content_filtered() {
        let items = run(&format!(
            "{}{}",
            chunk("Hel", None, 1),
            chunk("", Some("SAFETY"), 1)
        ));
        assert_eq!(text(&items), "Hel");
        assert_eq!(
            items.last().unwrap().as_ref().unwrap_err().code,
            ErrorCode::ContentFiltered
        );
        let items = run(
            "data: {\"promptFeedback\": {\"blockReason\": \"PROHIBITED_CONTENT\"},\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8}}\n\n",
        );
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0].as_ref().unwrap_err().code,
            ErrorCode::ContentFiltered
        );
    }

    #[test]
    fn an_unusable_call_fails_the_stream_with_provider_error() {
        for reason in ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"] {
            let items = run(&format!(
                "{}data: {{\"candidates\": [{{\"finishReason\": \"{reason}\", \"index\": 0}}]}}\n\n",
                chunk("Checking.", None, 1)
            ));
            assert_eq!(text(&items), "Checking.");
            let err = items.last().unwrap().as_ref().unwrap_err();
            assert_eq!(err.code, ErrorCode::ProviderError);
            assert!(!err.is_retryable());
            assert!(err.message.contains(reason), "{}", err.message);
        }
    }

    #[test]
    fn error_chunks_end_the_stream_and_garbage_is_skipped() {
        let body = format!(
            "data: {{not json\n\n{}data: {{\"error\": {{\"code\": 429, \"message\": \"quota\", \"status\": \"RESOURCE_EXHAUSTED\"}}}}\n\n{}",
            chunk("a", None, 1),
            chunk("b", Some("STOP"), 2)
        );
        let items = run(&body);
        assert!(matches!(items[0], Ok(StreamItem::Skipped { .. })));
        assert_eq!(text(&items), "a");
        assert_eq!(
            items.last().unwrap().as_ref().unwrap_err().code,
            ErrorCode::RateLimited
        );
        assert_eq!(items.len(), 3);
    }

    #[test]
    fn thought_parts_are_not_answer_text() {
        let items = run(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hmm\",\"thought\":true},{\"text\":\"a\"},{\"text\":\"b\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}]}\n\n",
        );
        assert_eq!(text(&items), "ab");
    }

    #[test]
    fn the_body_maps_roles_system_and_generation_config() {
        let req = UpstreamRequest {
            model: "gemini-x".into(),
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "a"),
                Message::new(Role::User, "b"),
                Message::new(Role::Assistant, "w0 w1 "),
                Message::new(Role::User, "go on"),
            ],
            params: Params {
                temperature: Some(0.5),
                top_p: Some(0.9),
                max_tokens: Some(64),
                stop: Some(crate::domain::request::Stop::Many(vec!["X".into()])),
                ..Params::default()
            },
        };
        assert_eq!(
            request_body(&req),
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
                    {"role": "model", "parts": [{"text": "w0 w1 "}]},
                    {"role": "user", "parts": [{"text": "go on"}]},
                ],
                "systemInstruction": {"parts": [{"text": "be brief"}]},
                "generationConfig": {"temperature": 0.5, "topP": 0.9, "maxOutputTokens": 64, "stopSequences": ["X"]},
            })
        );
        let bare = UpstreamRequest {
            params: Params::default(),
            messages: vec![Message::new(Role::User, "a")],
            ..req
        };
        assert_eq!(
            request_body(&bare),
            json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}]})
        );
    }

    #[test]
    fn images_become_inline_data_or_file_data_parts_before_the_text() {
        let user = Message {
            images: vec![
                Image {
                    url: "data:image/webp;base64,UklGRg==".into(),
                    detail: Some("low".into()),
                },
                Image {
                    url: "https://example.test/cat.PNG?size=2".into(),
                    detail: None,
                },
            ],
            ..Message::new(Role::User, "Which is the cat?")
        };
        let req = UpstreamRequest {
            model: "gemini-x".into(),
            messages: vec![user],
            params: Params::default(),
        };
        assert_eq!(
            request_body(&req)["contents"],
            json!([{"role": "user", "parts": [
                {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
                {"fileData": {"mimeType": "image/png",
                              "fileUri": "https://example.test/cat.PNG?size=2"}},
                {"text": "Which is the cat?"},
            ]}])
        );
    }

    #[test]
    fn calls_results_tools_and_choice_take_gemini_shapes() {
        let call = |id: &str, name: &str, arguments: &str| ToolCall {
            id: id.into(),
            kind: ToolKind::Function,
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
            extra_content: None,
        };
        let result = |id: &str, content: &str| Message {
            tool_call_id: Some(id.into()),
            ..Message::new(Role::Tool, content)
        };
        let tools = serde_json::from_value(json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "additionalProperties": false,
                               "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}},
        ]))
        .unwrap();
        let named = serde_json::from_value(
            json!({"type": "function", "function": {"name": "get_weather"}}),
        )
        .unwrap();
        let req = UpstreamRequest {
            model: "gemini-x".into(),
            messages: vec![
                Message::new(Role::User, "Weather in Oslo? And the time?"),
                Message {
                    tool_calls: vec![
                        call("c1", "get_weather", r#"{"city":"Oslo"}"#),
                        call("c2", "now", ""),
                    ],
                    ..Message::new(Role::Assistant, "")
                },
                result("c1", r#"{"temp": 3}"#),
                result("c2", "12:00"),
            ],
            params: Params {
                tools,
                tool_choice: Some(named),
                ..Params::default()
            },
        };
        assert_eq!(
            request_body(&req),
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "Weather in Oslo? And the time?"}]},
                    {"role": "model", "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                         "thoughtSignature": "skip_thought_signature_validator"},
                        {"functionCall": {"name": "now", "args": {}}},
                    ]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"temp": 3}}},
                        {"functionResponse": {"name": "now", "response": {"result": "12:00"}}},
                    ]},
                ],
                "tools": [{"functionDeclarations": [
                    {"name": "get_weather", "description": "Weather",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}},
                    {"name": "now"},
                ]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                         "allowedFunctionNames": ["get_weather"]}},
            })
        );
        for (mode, expected) in [
            (ToolMode::Auto, "AUTO"),
            (ToolMode::Required, "ANY"),
            (ToolMode::None, "NONE"),
        ] {
            let config = calling_config(&ToolChoice::Mode(mode));
            assert_eq!(config, json!({ "mode": expected }));
        }
    }

    #[test]
    fn function_call_parts_become_whole_calls_and_stop_is_a_tool_calls_finish() {
        let body = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Checking.\"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[",
            "{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Oslo\"}},\"thoughtSignature\":\"c2ln\"},",
            "{\"functionCall\":{\"name\":\"now\"}},",
            "{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Rome\"},\"id\":\"fc_7\"}}",
            "],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],",
            "\"usageMetadata\":{\"promptTokenCount\":20,\"candidatesTokenCount\":9,\"totalTokenCount\":29}}\r\n\r\n",
        );
        let items = run(body);
        assert!(items.iter().all(|i| i.is_ok()), "{items:?}");
        assert_eq!(text(&items), "Checking.");
        let last = match items.last().unwrap() {
            Ok(StreamItem::Delta(d)) => d,
            other => panic!("{other:?}"),
        };
        let fragment = |index, id: Option<&str>, name: &str, arguments: &str| ToolCallDelta {
            index,
            id: id.map(str::to_string),
            name: Some(name.into()),
            arguments: arguments.into(),
            thought_signature: None,
        };
        assert_eq!(
            last.tool_calls,
            [
                ToolCallDelta {
                    thought_signature: Some("c2ln".into()),
                    ..fragment(0, None, "get_weather", r#"{"city":"Oslo"}"#)
                },
                fragment(1, None, "now", "{}"),
                fragment(2, Some("fc_7"), "get_weather", r#"{"city":"Rome"}"#),
            ]
        );
        assert_eq!(last.finish_reason.as_deref(), Some("tool_calls"));
        // Without a call, STOP stays a plain stop.
        let items = run(&chunk("a", Some("STOP"), 1));
        match &items[0] {
            Ok(StreamItem::Delta(d)) => assert_eq!(d.finish_reason.as_deref(), Some("stop")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn signed_calls_go_back_with_their_signature_and_unsigned_turns_get_the_dummy() {
        let call = |id: &str, signature: Option<&str>| ToolCall {
            id: id.into(),
            kind: ToolKind::Function,
            function: FunctionCall {
                name: "now".into(),
                arguments: "{}".into(),
            },
            extra_content: signature.map(|s| ExtraContent::thought_signature(s.into())),
        };
        let step = |calls: Vec<ToolCall>| {
            let answers = calls.iter().map(|c| Message {
                tool_call_id: Some(c.id.clone()),
                ..Message::new(Role::Tool, "12:00")
            });
            let asking = Message {
                tool_calls: calls.clone(),
                ..Message::new(Role::Assistant, "")
            };
            std::iter::once(asking).chain(answers).collect::<Vec<_>>()
        };
        let mut messages = vec![Message::new(Role::User, "Time?")];
        // Gemini's parallel calls: only the first is signed.
        messages.extend(step(vec![call("a", Some("c2ln")), call("b", None)]));
        // Calls another route made.
        messages.extend(step(vec![call("c", None), call("d", None)]));
        let req = UpstreamRequest {
            model: "gemini-x".into(),
            messages,
            params: Params::default(),
        };
        let contents = request_body(&req)["contents"].clone();
        let signatures = |turn: usize| -> Vec<Value> {
            contents[turn]["parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["thoughtSignature"].clone())
                .collect()
        };
        assert_eq!(signatures(1), [json!("c2ln"), Value::Null]);
        assert_eq!(signatures(3), [json!(DUMMY_THOUGHT_SIGNATURE), Value::Null]);
        assert_eq!(
            signatures(2),
            [Value::Null, Value::Null],
            "results carry none"
        );
    }

    #[test]
    fn statuses_map_to_one_code_each() {
        let body = |code: u16, status: &str, msg: &str| {
            json!({"error": {"code": code, "message": msg, "status": status}}).to_string()
        };
        let c = |s, b: String| classify_status(s, None, &b).code;
        assert_eq!(
            c(
                429,
                body(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted")
            ),
            ErrorCode::RateLimited
        );
        assert_eq!(
            c(503, body(503, "UNAVAILABLE", "The model is overloaded.")),
            ErrorCode::ProviderUnavailable
        );
        assert_eq!(
            c(
                500,
                body(500, "INTERNAL", "An internal error has occurred.")
            ),
            ErrorCode::ProviderUnavailable
        );
        assert_eq!(
            c(
                400,
                body(
                    400,
                    "INVALID_ARGUMENT",
                    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
                )
            ),
            ErrorCode::ContextLengthExceeded
        );
        assert_eq!(
            c(400, body(400, "INVALID_ARGUMENT", "API key not valid.")),
            ErrorCode::ProviderError
        );
        assert_eq!(
            c(404, body(404, "NOT_FOUND", "models/x is not found")),
            ErrorCode::ProviderError
        );
    }

    #[test]
    fn retry_info_is_the_retry_after() {
        let body = json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}})
        .to_string();
        let e = classify_status(429, None, &body);
        assert_eq!(e.retry_after, Some(Duration::from_secs(37)));
        assert_eq!(e.message, "provider answered 429: quota");
        let e = classify_status(429, Some(Duration::from_secs(2)), &body);
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    }
}
