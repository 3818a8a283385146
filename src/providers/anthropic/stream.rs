//! Anthropic SSE events → canonical deltas: text, call fragments, usage, finishes, errors.

use serde::Deserialize;

use super::ErrorDetail;
use crate::domain::{ThinkingDelta, ToolCallDelta, Usage};
use crate::error::ErrorCode;
use crate::providers::sse::{self, Parsed};
use crate::providers::{Delta, ProviderError, StreamItem};

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
    /// A redacted thinking block comes whole, its data in the start event.
    RedactedThinking {
        data: String,
    },
    /// Text and thinking (their content comes in deltas) and newer block types.
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
    /// Extended thinking: passed through as thinking, never as answer text.
    ThinkingDelta {
        thinking: String,
    },
    /// The end of a thinking block: what lets a later turn send the block back.
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

/// One stream's parser: it carries the prompt token count from `message_start` to the usage
/// reported with `message_delta`, and tells tool calls apart by their block index.
pub(super) struct EventParser {
    input_tokens: u64,
    /// Drop the whitespace a continuation of a trimmed prefill starts with (see `request::Prepared`).
    strip_leading: bool,
    /// Open `tool_use` blocks that have had no argument text yet: a function without
    /// parameters gets `{}` when its block stops, as OpenAI would send, rather than an empty
    /// string no client can parse.
    argless_calls: Vec<u32>,
    /// Structured output through a forced tool call (see `request::Prepared::output_tool`).
    output: Option<OutputCall>,
}

/// The forced call whose input is the answer: its `input_json_delta` fragments are streamed
/// as answer text, so the execution sees the JSON as it would from any other provider.
struct OutputCall {
    name: String,
    /// Its block, once started.
    index: Option<u32>,
    /// Whether any input text went out (an empty input is still the answer `{}`).
    written: bool,
}

impl EventParser {
    pub(super) fn new(strip_leading: bool, output_tool: Option<String>) -> EventParser {
        EventParser {
            input_tokens: 0,
            strip_leading,
            argless_calls: Vec::new(),
            output: output_tool.map(|name| OutputCall {
                name,
                index: None,
                written: false,
            }),
        }
    }

    fn is_output_tool(&self, name: &str) -> bool {
        self.output.as_ref().is_some_and(|o| o.name == name)
    }

    fn is_output_block(&self, index: u32) -> bool {
        self.output.as_ref().is_some_and(|o| o.index == Some(index))
    }

    /// Answer text from the output call's input.
    fn output_text(&mut self, text: String) -> Delta {
        if let Some(o) = &mut self.output {
            o.written |= !text.is_empty();
        }
        Delta {
            text: Some(text).filter(|t| !t.is_empty()),
            ..Delta::default()
        }
    }

    pub(super) fn parse(&mut self, data: &str) -> Parsed {
        let event = match serde_json::from_str::<Event>(data) {
            Ok(event) => event,
            Err(e) => return sse::skipped(data, &e),
        };
        let delta = match event {
            Event::ContentBlockStart {
                index,
                content_block: BlockStart::ToolUse { name, .. },
            } if self.is_output_tool(&name) => {
                if let Some(o) = &mut self.output {
                    o.index = Some(index);
                }
                Delta::default()
            }
            Event::ContentBlockDelta {
                index,
                delta: BlockDelta::InputJsonDelta { partial_json },
            } if self.is_output_block(index) => self.output_text(partial_json),
            Event::ContentBlockStop { index }
                if self.is_output_block(index)
                    && self.output.as_ref().is_some_and(|o| !o.written) =>
            {
                self.output_text("{}".into())
            }
            // Forced to call, the model writes no text; any it did would spoil the JSON.
            Event::ContentBlockDelta {
                delta: BlockDelta::TextDelta { .. },
                ..
            } if self.output.is_some() => {
                return Parsed::Item(StreamItem::Skipped {
                    raw: data.to_string(),
                    reason: "text beside the structured-output tool call".into(),
                })
            }
            Event::ContentBlockDelta {
                delta: BlockDelta::ThinkingDelta { thinking },
                ..
            } => thought(ThinkingDelta::Text(thinking)),
            Event::ContentBlockDelta {
                delta: BlockDelta::SignatureDelta { signature },
                ..
            } => thought(ThinkingDelta::Signature(signature)),
            Event::ContentBlockStart {
                content_block: BlockStart::RedactedThinking { data },
                ..
            } => thought(ThinkingDelta::Redacted(data)),
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
                    stop_sequence: delta.stop_sequence,
                    finish_reason: delta.stop_reason.map(|r| match r.as_str() {
                        // The forced call is the answer, not a call to hand to the client.
                        "tool_use" if self.output.is_some() => "stop".into(),
                        _ => finish_reason(r),
                    }),
                    usage: usage.output_tokens.map(|out| Usage {
                        prompt_tokens: self.input_tokens,
                        completion_tokens: out,
                        total_tokens: self.input_tokens + out,
                    }),
                    ..Delta::default()
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

/// A delta carrying one thinking fragment.
fn thought(fragment: ThinkingDelta) -> Delta {
    Delta {
        thinking: Some(fragment),
        ..Delta::default()
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

    fn run(body: &str, strip_leading: bool) -> Vec<Result<StreamItem, ProviderError>> {
        let mut parser = EventParser::new(strip_leading, None);
        sse::run_recorded(body, move |ev| parser.parse(&ev.data))
    }

    use crate::providers::sse::recorded_text as text;

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
    fn the_output_tool_s_input_streams_as_text_and_finishes_as_stop() {
        let body = TOOL_STREAM.replace("get_weather", "json_output");
        let mut parser = EventParser::new(false, Some("json_output".into()));
        let items = sse::run_recorded(&body, move |ev| parser.parse(&ev.data));
        // The stray text block is skipped; the other, unforced call still comes through.
        assert!(
            matches!(items[2], Ok(StreamItem::Skipped { .. })),
            "{items:?}"
        );
        let ok: Vec<&Delta> = items
            .iter()
            .filter_map(|i| match i {
                Ok(StreamItem::Delta(d)) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(text(&items), r#"{"city": "Oslo"}"#);
        let calls: Vec<_> = ok.iter().flat_map(|d| &d.tool_calls).collect();
        assert!(calls.iter().all(|c| c.index == 2), "{calls:?}");
        assert_eq!(ok.last().unwrap().finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn an_output_tool_with_empty_input_answers_an_empty_object() {
        let body = concat!(
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"json_output\",\"input\":{}}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
            "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":2}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let mut parser = EventParser::new(false, Some("json_output".into()));
        let items = sse::run_recorded(body, move |ev| parser.parse(&ev.data));
        assert_eq!(text(&items), "{}");
        assert!(items.iter().all(|i| delta(i).tool_calls.is_empty()));
        assert_eq!(
            delta(items.last().unwrap()).finish_reason.as_deref(),
            Some("stop")
        );
    }

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
}
