//! The Anthropic Messages wire format: the system prompt apart, alternating turns of text,
//! image and tool blocks, native prefill for continuations, and the `message_start` …
//! `message_stop` stream.

use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

use super::sse::{self, Parsed};
use super::turns::{conversation, stop_sequences, Part, Speaker, Turn};
use super::{Delta, ProviderError, ProviderStream, StreamItem, UpstreamRequest};
use crate::domain::request::Image;
use crate::domain::tools::{Tool, ToolChoice, ToolMode};
use crate::domain::{Params, ToolCallDelta, Usage};
use crate::error::ErrorCode;
use crate::settings::ProviderSettings;
use crate::store::AttemptLog;

/// The API version every request pins.
pub const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; this is used when the request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

pub struct Anthropic {
    url: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl Anthropic {
    pub fn new(settings: &ProviderSettings, http: reqwest::Client) -> Anthropic {
        let base = settings.base_url.as_deref().unwrap_or_default();
        Anthropic {
            url: format!("{}/messages", base.trim_end_matches('/')),
            api_key: settings.api_key.clone(),
            http,
        }
    }

    pub async fn open(
        &self,
        req: &UpstreamRequest,
        log: &AttemptLog,
    ) -> Result<ProviderStream, ProviderError> {
        let prepared = request_body(req);
        let mut builder = self
            .http
            .post(&self.url)
            .header("anthropic-version", API_VERSION)
            .json(&prepared.body);
        if let Some(key) = &self.api_key {
            builder = builder.header("x-api-key", key);
        }
        let resp = sse::send(&self.http, builder, &prepared.body, log, classify_status).await?;
        let mut parser = EventParser::new(prepared.trimmed_prefill);
        Ok(sse::parse_stream(
            resp.bytes_stream(),
            log.clone(),
            move |ev| parser.parse(&ev.data),
        ))
    }
}

/// The body sent upstream (also what the debug log records).
pub struct Prepared {
    pub body: Value,
    /// Whether trailing whitespace was cut from the prefill. Anthropic rejects a final
    /// assistant message that ends in whitespace, and a model continuing the trimmed text
    /// starts by writing that whitespace again, which the emitted text already has.
    pub trimmed_prefill: bool,
}

pub fn request_body(req: &UpstreamRequest) -> Prepared {
    let conv = conversation(&req.messages);
    let mut turns = conv.turns;
    let trimmed_prefill = trim_prefill(&mut turns);
    let messages: Vec<Value> = turns.iter().map(message).collect();
    let p = &req.params;
    let mut body = json!({
        "model": req.model,
        "max_tokens": p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "stream": true,
        "messages": messages,
    });
    if !conv.system.is_empty() {
        body["system"] = conv.system.join("\n\n").into();
    }
    // Anthropic's range is 0–1 where the canonical one is 0–2: a failover route should answer
    // rather than refuse a temperature its primary accepted.
    if let Some(t) = p.temperature {
        body["temperature"] = t.min(1.0).into();
    }
    if let Some(top_p) = p.top_p {
        body["top_p"] = top_p.into();
    }
    if let Some(stops) = stop_sequences(p) {
        body["stop_sequences"] = stops.into();
    }
    if !p.tools.is_empty() {
        body["tools"] = p.tools.iter().map(tool).collect();
        if let Some(choice) = tool_choice(p) {
            body["tool_choice"] = choice;
        }
    } else if let Some(declared) = history_tools(&turns) {
        // Anthropic refuses tool blocks in a request that defines no tools (OpenAI does not):
        // the functions of the history are declared, and `none` keeps the model from calling.
        body["tools"] = declared;
        body["tool_choice"] = json!({"type": "none"});
    }
    Prepared {
        body,
        trimmed_prefill,
    }
}

fn message(turn: &Turn<'_>) -> Value {
    let role = match turn.speaker {
        Speaker::User => "user",
        Speaker::Assistant => "assistant",
    };
    let blocks: Vec<Value> = turn.parts.iter().map(block).collect();
    json!({"role": role, "content": blocks})
}

/// One part as a content block. A call's `input` must be an object, whatever text the model
/// generated as its arguments; an empty result is sent without content rather than as an
/// empty string.
fn block(part: &Part<'_>) -> Value {
    match part {
        Part::Text(text) => json!({"type": "text", "text": text}),
        Part::Image(image) => json!({"type": "image", "source": image_source(image)}),
        Part::Call(call) => json!({"type": "tool_use", "id": call.id,
            "name": call.function.name, "input": call.arguments_object()}),
        Part::Result {
            call_id,
            content: "",
            ..
        } => json!({"type": "tool_result", "tool_use_id": call_id}),
        Part::Result {
            call_id, content, ..
        } => json!({"type": "tool_result", "tool_use_id": call_id, "content": content}),
    }
}

/// Where an image block's bytes come from: inline base64 for a data URL, else the URL, which
/// Anthropic fetches itself.
fn image_source(image: &Image) -> Value {
    match image.inline() {
        Some((media_type, data)) => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        None => json!({"type": "url", "url": image.url}),
    }
}

/// A function as Anthropic declares it; `input_schema` is required, so a function without
/// parameters gets the empty object schema.
fn tool(t: &Tool) -> Value {
    let f = &t.function;
    let schema = f
        .parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    let mut tool = json!({"name": f.name, "input_schema": schema});
    if let Some(description) = &f.description {
        tool["description"] = description.as_str().into();
    }
    tool
}

/// The functions the conversation's calls and results name, in order of first mention, each
/// declared with the loosest schema Anthropic takes; `None` without tool turns.
fn history_tools(turns: &[Turn<'_>]) -> Option<Value> {
    let mut names: Vec<&str> = Vec::new();
    for part in turns.iter().flat_map(|t| &t.parts) {
        let name = match part {
            Part::Call(call) => call.function.name.as_str(),
            Part::Result { function, .. } => function,
            Part::Text(_) | Part::Image(_) => continue,
        };
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    let declared: Vec<Value> = names
        .into_iter()
        .map(|name| json!({"name": name, "input_schema": {"type": "object"}}))
        .collect();
    (!declared.is_empty()).then(|| declared.into())
}

/// `tool_choice` in Anthropic's words; `parallel_tool_calls: false` rides on it as
/// `disable_parallel_tool_use` (which `none` does not take: it calls nothing).
fn tool_choice(p: &Params) -> Option<Value> {
    let serial = p.parallel_tool_calls == Some(false);
    let mut choice = match &p.tool_choice {
        Some(ToolChoice::Mode(ToolMode::None)) => return Some(json!({"type": "none"})),
        // Anthropic's default is `auto`: spelled out only to carry the parallel flag.
        None if !serial => return None,
        None | Some(ToolChoice::Mode(ToolMode::Auto)) => json!({"type": "auto"}),
        Some(ToolChoice::Mode(ToolMode::Required)) => json!({"type": "any"}),
        Some(ToolChoice::Named { function, .. }) => json!({"type": "tool", "name": function.name}),
    };
    if serial {
        choice["disable_parallel_tool_use"] = true.into();
    }
    Some(choice)
}

/// Cuts trailing whitespace from a final assistant turn (dropping parts, or the turn, left
/// empty); returns whether anything was cut. A turn that ends with a call is left alone.
fn trim_prefill(turns: &mut Vec<Turn<'_>>) -> bool {
    let mut trimmed = false;
    while turns
        .last()
        .is_some_and(|t| t.speaker == Speaker::Assistant)
    {
        let turn = turns.last_mut().expect("checked above");
        match turn.parts.pop() {
            None => {
                turns.pop();
            }
            Some(Part::Text(text)) => {
                let kept = text.trim_end();
                trimmed |= kept.len() < text.len();
                if !kept.is_empty() {
                    turn.parts.push(Part::Text(kept));
                    break;
                }
            }
            Some(other) => {
                turn.parts.push(other);
                break;
            }
        }
    }
    trimmed
}

/// A non-2xx answer: `{"type":"error","error":{"type","message"}}`. The error type decides
/// where it is unambiguous, the status otherwise.
pub fn classify_status(status: u16, retry_after: Option<Duration>, body: &str) -> ProviderError {
    let mut err = ProviderError::from_status(status, retry_after, body);
    let detail = serde_json::from_str::<Envelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    let message = detail.message.to_ascii_lowercase();
    match detail.kind.as_str() {
        "rate_limit_error" => err.code = ErrorCode::RateLimited,
        "overloaded_error" => err.code = ErrorCode::ProviderUnavailable,
        "invalid_request_error"
            if message.contains("prompt is too long")
                || message.contains("exceed context limit") =>
        {
            err.code = ErrorCode::ContextLengthExceeded
        }
        _ => {}
    }
    err
}

#[derive(Deserialize)]
struct Envelope {
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// An `error` event inside a started stream.
fn in_stream_error(e: &ErrorDetail) -> ProviderError {
    let code = match e.kind.as_str() {
        "overloaded_error" => ErrorCode::ProviderUnavailable,
        "rate_limit_error" => ErrorCode::RateLimited,
        _ => ErrorCode::StreamInterrupted,
    };
    ProviderError::new(
        code,
        format!("provider sent an error event: {} ({})", e.message, e.kind),
    )
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u32,
        content_block: BlockStart,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {
        #[serde(default)]
        index: u32,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: EventUsage,
    },
    MessageStop,
    Error {
        error: ErrorDetail,
    },
    /// `ping`, and event types newer than this code: activity without content.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: EventUsage,
}

#[derive(Deserialize, Default)]
struct EventUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

/// The `content_block` a block starts with. A streamed `tool_use` starts with an empty `input`:
/// its arguments follow as `input_json_delta` fragments.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockStart {
    ToolUse {
        id: String,
        name: String,
    },
    /// Text (its text comes in deltas), thinking and newer block types.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// Thinking and signatures: not answer text.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// One stream's parser: it carries the prompt token count from `message_start` to the usage
/// reported with `message_delta`, and tells tool calls apart by their block index.
struct EventParser {
    input_tokens: u64,
    /// Drop the whitespace a continuation of a trimmed prefill starts with (see `Prepared`).
    strip_leading: bool,
    /// Open `tool_use` blocks that have had no argument text yet: a function without
    /// parameters gets `{}` when its block stops, as OpenAI would send, rather than an empty
    /// string no client can parse.
    argless_calls: Vec<u32>,
}

impl EventParser {
    fn new(strip_leading: bool) -> EventParser {
        EventParser {
            input_tokens: 0,
            strip_leading,
            argless_calls: Vec::new(),
        }
    }

    fn parse(&mut self, data: &str) -> Parsed {
        let event = match serde_json::from_str::<Event>(data) {
            Ok(event) => event,
            Err(e) => return sse::skipped(data, &e),
        };
        let delta = match event {
            Event::MessageStart { message } => {
                self.input_tokens = message.usage.input_tokens.unwrap_or(0);
                Delta::default()
            }
            Event::ContentBlockStart {
                index,
                content_block: BlockStart::ToolUse { id, name },
            } => {
                self.argless_calls.push(index);
                call(ToolCallDelta {
                    index,
                    id: Some(id),
                    name: Some(name),
                    ..ToolCallDelta::default()
                })
            }
            Event::ContentBlockDelta {
                delta: BlockDelta::TextDelta { text },
                ..
            } => Delta {
                text: self.text(text),
                ..Delta::default()
            },
            Event::ContentBlockDelta {
                index,
                delta: BlockDelta::InputJsonDelta { partial_json },
            } => {
                if !partial_json.is_empty() {
                    self.argless_calls.retain(|i| *i != index);
                }
                call(ToolCallDelta {
                    index,
                    arguments: partial_json,
                    ..ToolCallDelta::default()
                })
            }
            Event::ContentBlockStop { index } if self.argless_calls.contains(&index) => {
                self.argless_calls.retain(|i| *i != index);
                call(ToolCallDelta {
                    index,
                    arguments: "{}".into(),
                    ..ToolCallDelta::default()
                })
            }
            Event::MessageDelta { delta, usage } => {
                if let Some(n) = usage.input_tokens {
                    self.input_tokens = n;
                }
                if delta.stop_reason.as_deref() == Some("refusal") {
                    return Parsed::Error(ProviderError::new(
                        ErrorCode::ContentFiltered,
                        "the provider refused to continue the answer (stop_reason refusal)",
                    ));
                }
                Delta {
                    text: None,
                    tool_calls: Vec::new(),
                    finish_reason: delta.stop_reason.map(finish_reason),
                    usage: usage.output_tokens.map(|out| Usage {
                        prompt_tokens: self.input_tokens,
                        completion_tokens: out,
                        total_tokens: self.input_tokens + out,
                    }),
                }
            }
            Event::MessageStop => return Parsed::Done,
            Event::Error { error } => return Parsed::Error(in_stream_error(&error)),
            Event::ContentBlockStart { .. }
            | Event::ContentBlockDelta { .. }
            | Event::ContentBlockStop { .. }
            | Event::Other => Delta::default(),
        };
        Parsed::Item(StreamItem::Delta(delta))
    }

    fn text(&mut self, text: String) -> Option<String> {
        let text = if self.strip_leading {
            let rest = text.trim_start();
            self.strip_leading = rest.is_empty();
            rest.to_string()
        } else {
            text
        };
        Some(text).filter(|t| !t.is_empty())
    }
}

/// A delta carrying one tool-call fragment.
fn call(fragment: ToolCallDelta) -> Delta {
    Delta {
        tool_calls: vec![fragment],
        ..Delta::default()
    }
}

/// Anthropic's stop reasons in the OpenAI vocabulary the rest of Switchyard speaks.
fn finish_reason(stop_reason: String) -> String {
    match stop_reason.as_str() {
        "end_turn" | "stop_sequence" => "stop".into(),
        "max_tokens" => "length".into(),
        "tool_use" => "tool_calls".into(),
        _ => stop_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::Stop;
    use crate::domain::tools::{FunctionCall, ToolKind};
    use crate::domain::{Message, Params, Role, ToolCall};

    fn run(body: &str, strip_leading: bool) -> Vec<Result<StreamItem, ProviderError>> {
        let mut parser = EventParser::new(strip_leading);
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

    fn delta(item: &Result<StreamItem, ProviderError>) -> &Delta {
        match item {
            Ok(StreamItem::Delta(d)) => d,
            other => panic!("not a delta: {other:?}"),
        }
    }

    const HEAD: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
    );
    const TAIL: &str = concat!(
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
    );
    const STOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn a_full_stream_yields_text_finish_and_usage() {
        let items = run(&format!("{HEAD}{TAIL}{STOP}"), false);
        assert!(items.iter().all(|i| i.is_ok()), "{items:?}");
        assert_eq!(text(&items), "Hello");
        let last = delta(items.last().unwrap());
        assert_eq!(last.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            last.usage,
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 15,
                total_tokens: 40
            })
        );
        // message_start, block start, ping, 2 deltas, block stop, message_delta: each one item,
        // so pings keep an otherwise silent stream alive.
        assert_eq!(items.len(), 7);
    }

    #[test]
    fn a_stop_reason_without_message_stop_completes() {
        let items = run(&format!("{HEAD}{TAIL}"), false);
        assert!(items.iter().all(|i| i.is_ok()), "{items:?}");
    }

    #[test]
    fn a_stream_without_stop_reason_or_message_stop_is_cut() {
        let items = run(HEAD, false);
        assert_eq!(text(&items), "Hello");
        let err = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(err.code, ErrorCode::StreamInterrupted);
    }

    #[test]
    fn error_events_are_classified_and_end_the_stream() {
        let error = |kind: &str| {
            format!(
                "{HEAD}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"m\"}}}}\n\n{TAIL}{STOP}"
            )
        };
        for (kind, code) in [
            ("overloaded_error", ErrorCode::ProviderUnavailable),
            ("rate_limit_error", ErrorCode::RateLimited),
            ("api_error", ErrorCode::StreamInterrupted),
        ] {
            let items = run(&error(kind), false);
            assert_eq!(items.last().unwrap().as_ref().unwrap_err().code, code);
            assert_eq!(items.len(), 6, "nothing after the error: {items:?}");
        }
    }

    #[test]
    fn a_refusal_is_content_filtered() {
        let body = format!(
            "{HEAD}event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"refusal\"}},\"usage\":{{\"output_tokens\":2}}}}\n\n{STOP}"
        );
        let items = run(&body, false);
        assert_eq!(
            items.last().unwrap().as_ref().unwrap_err().code,
            ErrorCode::ContentFiltered
        );
    }

    #[test]
    fn garbage_is_skipped() {
        let body = format!("{HEAD}data: {{not json\n\n{TAIL}{STOP}");
        let items = run(&body, false);
        assert!(items
            .iter()
            .any(|i| matches!(i, Ok(StreamItem::Skipped { .. }))));
        assert_eq!(text(&items), "Hello");
    }

    #[test]
    fn a_continuation_of_a_trimmed_prefill_drops_its_leading_whitespace() {
        let body = concat!(
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" \"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" w3 \"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" w4\"}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        assert_eq!(text(&run(body, true)), "w3  w4");
        assert_eq!(text(&run(body, false)), "  w3  w4");
    }

    fn req(messages: Vec<Message>, params: Params) -> UpstreamRequest {
        UpstreamRequest {
            model: "claude-x".into(),
            messages,
            params,
        }
    }

    #[test]
    fn the_body_separates_system_merges_turns_and_maps_params() {
        let params = Params {
            temperature: Some(1.5),
            top_p: Some(0.9),
            stop: Some(Stop::One("END".into())),
            seed: Some(3),
            ..Params::default()
        };
        let p = request_body(&req(
            vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "a"),
                Message::new(Role::User, "b"),
                Message::new(Role::Assistant, "c"),
                Message::new(Role::User, "d"),
            ],
            params,
        ));
        assert!(!p.trimmed_prefill);
        assert_eq!(
            p.body,
            json!({
                "model": "claude-x",
                "max_tokens": 4096,
                "stream": true,
                "system": "be brief",
                "temperature": 1.0,
                "top_p": 0.9,
                "stop_sequences": ["END"],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
                    {"role": "user", "content": [{"type": "text", "text": "d"}]},
                ],
            })
        );
        let p = request_body(&req(
            vec![Message::new(Role::User, "a")],
            Params {
                max_tokens: Some(10),
                ..Params::default()
            },
        ));
        assert_eq!(p.body["max_tokens"], 10);
        assert!(p.body.get("system").is_none());
    }

    #[test]
    fn a_trailing_assistant_message_is_a_prefill_without_trailing_whitespace() {
        let p = request_body(&req(
            vec![
                Message::new(Role::User, "a"),
                Message::new(Role::Assistant, "w0 w1 "),
            ],
            Params::default(),
        ));
        assert!(p.trimmed_prefill);
        assert_eq!(p.body["messages"][1]["role"], "assistant");
        assert_eq!(p.body["messages"][1]["content"][0]["text"], "w0 w1");

        let p = request_body(&req(
            vec![
                Message::new(Role::User, "a"),
                Message::new(Role::Assistant, "  \n"),
            ],
            Params::default(),
        ));
        assert!(p.trimmed_prefill);
        assert_eq!(p.body["messages"].as_array().unwrap().len(), 1);

        let p = request_body(&req(
            vec![
                Message::new(Role::User, "a"),
                Message::new(Role::Assistant, "Hello wor"),
            ],
            Params::default(),
        ));
        assert!(!p.trimmed_prefill);
        assert_eq!(p.body["messages"][1]["content"][0]["text"], "Hello wor");
    }

    #[test]
    fn images_become_base64_or_url_blocks_before_the_text() {
        let user = Message {
            images: vec![
                Image {
                    url: "data:image/png;base64,iVBORw0KGgo=".into(),
                    detail: Some("high".into()),
                },
                Image {
                    url: "https://example.test/cat.jpg".into(),
                    detail: None,
                },
            ],
            ..Message::new(Role::User, "Which is the cat?")
        };
        let p = request_body(&req(vec![user], Params::default()));
        assert_eq!(
            p.body["messages"],
            json!([{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
                {"type": "text", "text": "Which is the cat?"},
            ]}])
        );
    }

    fn weather_call(id: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            kind: ToolKind::Function,
            function: FunctionCall {
                name: "get_weather".into(),
                arguments: arguments.into(),
            },
            extra_content: None,
        }
    }

    fn tools_params(choice: Option<ToolChoice>, parallel: Option<bool>) -> Params {
        let tools = serde_json::from_value(json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "now"}},
        ]))
        .unwrap();
        Params {
            tools,
            tool_choice: choice,
            parallel_tool_calls: parallel,
            ..Params::default()
        }
    }

    #[test]
    fn calls_and_results_become_tool_use_and_tool_result_blocks() {
        let messages = vec![
            Message::new(Role::User, "Weather in Oslo and Rome?"),
            Message {
                tool_calls: vec![
                    weather_call("call_1", r#"{"city":"Oslo"}"#),
                    weather_call("call_2", "{not json"),
                ],
                ..Message::new(Role::Assistant, "Checking.")
            },
            Message {
                tool_call_id: Some("call_1".into()),
                ..Message::new(Role::Tool, "3 degrees")
            },
            Message::new(Role::User, "Be quick."),
            Message {
                tool_call_id: Some("call_2".into()),
                ..Message::new(Role::Tool, "")
            },
        ];
        let p = request_body(&req(messages, tools_params(None, None)));
        assert_eq!(
            p.body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and Rome?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "3 degrees"},
                    {"type": "tool_result", "tool_use_id": "call_2"},
                    {"type": "text", "text": "Be quick."},
                ]},
            ])
        );
        assert_eq!(
            p.body["tools"],
            json!([
                {"name": "get_weather", "description": "Weather",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert!(p.body.get("tool_choice").is_none(), "auto is the default");
    }

    #[test]
    fn tool_choice_maps_to_anthropic_words_with_the_parallel_flag() {
        let mode = |m| Some(ToolChoice::Mode(m));
        let named: ToolChoice =
            serde_json::from_value(json!({"type": "function", "function": {"name": "now"}}))
                .unwrap();
        let cases = [
            (mode(ToolMode::Auto), None, json!({"type": "auto"})),
            (mode(ToolMode::Required), None, json!({"type": "any"})),
            (mode(ToolMode::None), Some(false), json!({"type": "none"})),
            (
                Some(named),
                Some(false),
                json!({"type": "tool", "name": "now", "disable_parallel_tool_use": true}),
            ),
            (
                None,
                Some(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (mode(ToolMode::Required), Some(true), json!({"type": "any"})),
        ];
        for (choice, parallel, expected) in cases {
            let p = request_body(&req(
                vec![Message::new(Role::User, "a")],
                tools_params(choice, parallel),
            ));
            assert_eq!(p.body["tool_choice"], expected);
        }
        let p = request_body(&req(
            vec![Message::new(Role::User, "a")],
            Params {
                tool_choice: mode(ToolMode::None),
                ..Params::default()
            },
        ));
        assert!(p.body.get("tools").is_none() && p.body.get("tool_choice").is_none());
    }

    #[test]
    fn tool_history_without_tools_declares_its_functions_and_calls_none() {
        let messages = vec![
            Message::new(Role::User, "Weather in Oslo?"),
            Message {
                tool_calls: vec![weather_call("call_1", r#"{"city":"Oslo"}"#)],
                ..Message::new(Role::Assistant, "")
            },
            Message {
                tool_call_id: Some("call_1".into()),
                ..Message::new(Role::Tool, "3 degrees")
            },
            Message::new(Role::User, "Thanks, and now a poem."),
        ];
        let p = request_body(&req(messages.clone(), Params::default()));
        assert_eq!(
            p.body["tools"],
            json!([{"name": "get_weather", "input_schema": {"type": "object"}}])
        );
        assert_eq!(p.body["tool_choice"], json!({"type": "none"}));
        // Offered tools are sent as they are, history or not.
        let p = request_body(&req(messages, tools_params(None, None)));
        assert_eq!(p.body["tools"].as_array().unwrap().len(), 2);
        assert!(p.body.get("tool_choice").is_none());
    }

    const TOOL_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking.\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Os\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"lo\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_02\",\"name\":\"now\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":30}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn tool_use_blocks_stream_as_call_fragments_and_finish_as_tool_calls() {
        let items = run(TOOL_STREAM, false);
        assert!(items.iter().all(|i| i.is_ok()), "{items:?}");
        assert_eq!(text(&items), "Checking.");
        let mut calls = crate::domain::ToolCallAssembly::default();
        for item in &items {
            for fragment in &delta(item).tool_calls {
                calls.push(fragment.clone());
            }
        }
        let calls = calls.finish("x");
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].function.name.as_str()),
            ("toolu_01", "get_weather")
        );
        assert_eq!(calls[0].function.arguments, r#"{"city": "Oslo"}"#);
        assert_eq!(
            (calls[1].id.as_str(), calls[1].function.arguments.as_str()),
            ("toolu_02", "{}"),
            "a call without arguments gets an empty object"
        );
        let last = delta(items.last().unwrap());
        assert_eq!(last.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn statuses_and_error_types_map_to_one_code_each() {
        let body = |kind: &str, msg: &str| {
            json!({"type": "error", "error": {"type": kind, "message": msg}}).to_string()
        };
        let c = |s, b: String| classify_status(s, None, &b).code;
        assert_eq!(
            c(429, body("rate_limit_error", "slow down")),
            ErrorCode::RateLimited
        );
        assert_eq!(
            c(529, body("overloaded_error", "Overloaded")),
            ErrorCode::ProviderUnavailable
        );
        assert_eq!(
            c(500, body("api_error", "boom")),
            ErrorCode::ProviderUnavailable
        );
        assert_eq!(
            c(
                400,
                body(
                    "invalid_request_error",
                    "prompt is too long: 210000 tokens > 200000 maximum"
                )
            ),
            ErrorCode::ContextLengthExceeded
        );
        assert_eq!(
            c(
                400,
                body(
                    "invalid_request_error",
                    "input length and `max_tokens` exceed context limit: 198000 + 4096 > 200000"
                )
            ),
            ErrorCode::ContextLengthExceeded
        );
        assert_eq!(
            c(401, body("authentication_error", "invalid x-api-key")),
            ErrorCode::ProviderError
        );
        assert_eq!(
            c(400, body("invalid_request_error", "max_tokens: required")),
            ErrorCode::ProviderError
        );
        let e = classify_status(
            400,
            None,
            &body(
                "invalid_request_error",
                "This model does not support assistant message prefill.",
            ),
        );
        assert!(e.rejects_message_form());
        assert_eq!(
            e.message,
            "provider answered 400: This model does not support assistant message prefill."
        );
    }
}
