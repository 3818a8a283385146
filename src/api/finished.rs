//! The `done` event's execution object as the OpenAI-compatible layer reads it: only the parts
//! a `chat.completion` answers with, borrowed from the event's bytes, and the completion
//! written straight from them (no JSON tree on the per-request path).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

use crate::domain::{SharedEvent, Status};
use crate::error::{ApiError, ErrorBody, ErrorCode};

#[derive(Deserialize)]
pub(super) struct Finished<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    pub status: Status,
    #[serde(default, borrow)]
    output: Option<Output<'a>>,
    #[serde(default, borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub usage: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default, borrow)]
    attempts: Vec<AttemptSummary<'a>>,
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
    #[serde(default, borrow)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AttemptSummary<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
}

impl<'a> Finished<'a> {
    /// Reads the `done` event; a malformed one is an internal error, not a silent success.
    pub fn parse(event: &'a SharedEvent) -> Result<Finished<'a>, ApiError> {
        serde_json::from_slice(&event.data).map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("unreadable execution result: {e}"),
            )
        })
    }

    /// The answer's text (empty when there is none).
    pub fn text(&self) -> &str {
        self.output.as_ref().map_or("", |o| o.text.as_ref())
    }

    pub fn completed(&self) -> bool {
        self.status == Status::Completed
    }

    /// The upstream model of the attempt that answered.
    pub fn upstream_model(&self) -> Option<&str> {
        self.attempts
            .iter()
            .rev()
            .find(|a| a.outcome == "succeeded")
            .map(|a| a.model.as_ref())
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

    /// The non-stream `chat.completion` body.
    pub fn completion(&self, id: &str, created: u64, model: &str) -> Result<Vec<u8>, ApiError> {
        if !self.completed() {
            return Err(self.failure());
        }
        let (text, tool_calls) = match &self.output {
            Some(o) => (
                Some(o.text.as_ref()),
                o.tool_calls.filter(|c| c.get() != "[]"),
            ),
            None => (None, None),
        };
        let body = Completion {
            id,
            object: "chat.completion",
            created,
            model: self.upstream_model().unwrap_or(model),
            system_fingerprint: None,
            choices: [Choice {
                index: 0,
                message: Message {
                    role: "assistant",
                    // OpenAI sends null content for an answer that is only tool calls.
                    content: text.filter(|t| tool_calls.is_none() || !t.is_empty()),
                    refusal: None,
                    tool_calls,
                },
                logprobs: None,
                finish_reason: self.finish_reason.as_deref().unwrap_or("stop"),
            }],
            usage: self.usage,
            x_switchyard: Extension {
                execution_id: &self.id,
                attempts: self.attempts.len(),
            },
        };
        Ok(serde_json::to_vec(&body).expect("completions serialize"))
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<()>,
    choices: [Choice<'a>; 1],
    usage: Option<&'a RawValue>,
    x_switchyard: Extension<'a>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Extension<'a> {
    execution_id: &'a str,
    attempts: usize,
}
