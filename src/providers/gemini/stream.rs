//! Gemini SSE chunks → canonical deltas: text, whole calls, usage, finishes, blocks, errors.

use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiError;
use crate::domain::{ToolCallDelta, Usage};
use crate::error::ErrorCode;
use crate::providers::sse::{self, Parsed};
use crate::providers::{Delta, ProviderError, StreamItem};

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
pub(super) struct ChunkParser {
    calls: u32,
}

impl ChunkParser {
    /// One SSE `data:` payload → a canonical item or an error; Gemini has no end marker.
    pub(super) fn parse(&mut self, data: &str) -> Parsed {
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
    UNUSABLE_CALL_FINISH_REASONS
        .contains(&finish)
        .then(|| ProviderError {
            model_fault: true,
            ..ProviderError::new(
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

    fn run(body: &str) -> Vec<Result<StreamItem, ProviderError>> {
        let mut parser = ChunkParser::default();
        sse::run_recorded(body, move |ev| parser.parse(&ev.data))
    }

    use crate::providers::sse::recorded_text as text;

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
            assert!(
                !err.counts_against_provider(),
                "the model's fault, not the provider's"
            );
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
}
