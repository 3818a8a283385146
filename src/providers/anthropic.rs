//! The Anthropic Messages wire format: the system prompt apart, alternating turns of text
//! blocks, native prefill for continuations, and the `message_start` … `message_stop` stream.

use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

use super::sse::{self, Parsed};
use super::turns::{conversation, stop_sequences, Speaker, Turn};
use super::{Delta, ProviderError, ProviderStream, StreamItem, UpstreamRequest};
use crate::domain::Usage;
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
    let messages: Vec<Value> = turns
        .iter()
        .map(|t| {
            let role = match t.speaker {
                Speaker::User => "user",
                Speaker::Assistant => "assistant",
            };
            let blocks: Vec<Value> = t
                .texts
                .iter()
                .map(|text| json!({"type": "text", "text": text}))
                .collect();
            json!({"role": role, "content": blocks})
        })
        .collect();
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
    Prepared {
        body,
        trimmed_prefill,
    }
}

/// Cuts trailing whitespace from a final assistant turn (dropping parts, or the turn, left
/// empty); returns whether anything was cut.
fn trim_prefill(turns: &mut Vec<Turn<'_>>) -> bool {
    let mut trimmed = false;
    while turns
        .last()
        .is_some_and(|t| t.speaker == Speaker::Assistant)
    {
        let turn = turns.last_mut().expect("checked above");
        match turn.texts.pop() {
            None => {
                turns.pop();
            }
            Some(text) => {
                let kept = text.trim_end();
                trimmed |= kept.len() < text.len();
                if !kept.is_empty() {
                    turn.texts.push(kept);
                    break;
                }
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
    ContentBlockDelta {
        delta: BlockDelta,
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
    /// `ping`, `content_block_start`, `content_block_stop`, and event types newer than this
    /// code: activity without content.
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

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    /// Tool input JSON, thinking and signatures: not answer text.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// One stream's parser: it carries the prompt token count from `message_start` to the usage
/// reported with `message_delta`.
struct EventParser {
    input_tokens: u64,
    /// Drop the whitespace a continuation of a trimmed prefill starts with (see `Prepared`).
    strip_leading: bool,
}

impl EventParser {
    fn new(strip_leading: bool) -> EventParser {
        EventParser {
            input_tokens: 0,
            strip_leading,
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
            Event::ContentBlockDelta {
                delta: BlockDelta::TextDelta { text },
            } => Delta {
                text: self.text(text),
                ..Delta::default()
            },
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
            Event::ContentBlockDelta { .. } | Event::Other => Delta::default(),
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
    use crate::domain::{Message, Params, Role};

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
                Message::new(Role::Tool, "t"),
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
                    {"role": "user", "content": [{"type": "text", "text": "t"}]},
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
