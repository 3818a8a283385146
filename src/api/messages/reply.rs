//! The `done` event's execution object read as an Anthropic answer: the message object of a
//! non-stream reply, and the stop reason and usage a stream ends with.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::{SharedEvent, Status, ThinkingBlock, ToolCall};
use crate::error::{ApiError, ErrorBody, ErrorCode};

#[derive(Deserialize)]
pub struct Outcome {
    status: Status,
    #[serde(default)]
    output: Option<Output>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    attempts: Vec<Attempt>,
    /// The stop sequence that ended the answer, when the route named it.
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

#[derive(Deserialize)]
struct Output {
    #[serde(default)]
    text: String,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
    #[serde(default)]
    thinking: Vec<ThinkingBlock>,
}

#[derive(Deserialize, Default, Clone, Copy)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct Attempt {
    model: String,
    outcome: String,
}

/// Anthropic's stop reason for a canonical finish reason. The canonical form does not tell a
/// stop sequence from a natural end (OpenAI-format routes never do), so both are `end_turn`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A tool call as a `tool_use` block (its `input` always an object, as Anthropic's is).
pub fn tool_use(call: &ToolCall) -> Value {
    json!({"type": "tool_use", "id": call.id, "name": call.function.name,
           "input": call.arguments_object()})
}

impl Outcome {
    /// Reads the `done` event; a malformed one is an internal error, not a silent success.
    pub fn parse(event: &SharedEvent) -> Result<Outcome, ApiError> {
        serde_json::from_slice(&event.data).map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("unreadable execution result: {e}"),
            )
        })
    }

    pub fn completed(&self) -> bool {
        self.status == Status::Completed
    }

    /// Why the execution did not complete, as the error the client gets.
    pub fn failure(&self) -> ApiError {
        match &self.error {
            Some(e) => ApiError::new(e.code, e.message.clone()),
            None => ApiError::new(
                ErrorCode::Cancelled,
                format!("execution ended {}", self.status.as_str()),
            ),
        }
    }

    pub fn stop_reason(&self) -> &'static str {
        match &self.stop_sequence {
            Some(_) => "stop_sequence",
            None => stop_reason(self.finish_reason.as_deref()),
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage.unwrap_or_default()
    }

    /// The upstream model of the attempt that answered.
    fn upstream_model(&self) -> Option<&str> {
        self.attempts
            .iter()
            .rev()
            .find(|a| a.outcome == "succeeded")
            .map(|a| a.model.as_str())
    }

    /// The non-stream message object.
    pub fn message(&self, id: &str, model: &str) -> Result<Value, ApiError> {
        if !self.completed() {
            return Err(self.failure());
        }
        let mut content = Vec::new();
        if let Some(output) = &self.output {
            content.extend(output.thinking.iter().map(|b| json!(b)));
            if !output.text.is_empty() {
                content.push(json!({"type": "text", "text": output.text}));
            }
            content.extend(output.tool_calls.iter().map(tool_use));
        }
        let usage = self.usage();
        Ok(json!({
            "id": id, "type": "message", "role": "assistant",
            "model": self.upstream_model().unwrap_or(model),
            "content": content,
            "stop_reason": self.stop_reason(), "stop_sequence": self.stop_sequence,
            "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
        }))
    }
}
