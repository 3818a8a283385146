//! The persisted execution record and its public JSON view.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{rfc3339, ChatRequest, Status};
use crate::error::{ErrorBody, ErrorCode};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The process stopped while this attempt streamed; the execution resumed elsewhere.
    Interrupted,
}

/// One try against one route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// How the request was built: `initial`, or a continuation strategy after a fault.
    pub strategy: String,
    pub outcome: AttemptOutcome,
    pub chunks_delivered: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_chunk_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
}

/// Everything known about an execution except its event log (which lives beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub id: String,
    pub project_id: String,
    pub status: Status,
    pub model: String,
    pub request: ChatRequest,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub metadata: Map<String, Value>,
    pub webhook_url: Option<String>,
    pub channel_id: String,
    /// The final text; while running, the text is the concatenation of the log's chunks.
    pub output_text: Option<String>,
    /// The tool calls the answer ended with (whole; see `Event::tool_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tool_calls: Vec<super::ToolCall>,
    pub error: Option<ErrorBody>,
    /// Why the provider stopped (`stop`, `length`, …), when it completed.
    #[serde(default)]
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    pub attempts: Vec<Attempt>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub completed_at_ms: Option<u64>,
}

impl ExecutionRecord {
    pub fn duration_ms(&self) -> Option<u64> {
        self.completed_at_ms
            .map(|end| end.saturating_sub(self.created_at_ms))
    }

    /// The public JSON object (`GET /v1/executions/{id}`, `done` events, webhooks).
    /// `live_text` is the partial output of a running execution, read from its log.
    pub fn view(&self, live_text: Option<&str>) -> Value {
        let text = self.output_text.as_deref().or(live_text);
        let attempts: Vec<Value> = self
            .attempts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "provider": a.provider,
                    "model": a.model,
                    "strategy": a.strategy,
                    "outcome": a.outcome,
                    "chunks_delivered": a.chunks_delivered,
                    "error_code": a.error_code,
                    "error_message": a.error_message,
                    "usage": a.usage,
                    "started_at": rfc3339(a.started_at_ms),
                    "time_to_first_chunk_ms": a.first_chunk_ms,
                    "ended_at": a.ended_at_ms.map(rfc3339),
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "object": "execution",
            "status": self.status,
            "model": self.model,
            "output": text.map(|t| {
                let mut output = serde_json::json!({"text": t});
                if !self.output_tool_calls.is_empty() {
                    output["tool_calls"] = serde_json::json!(self.output_tool_calls);
                }
                output
            }),
            "error": self.error,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "attempts": attempts,
            "metadata": self.metadata,
            "idempotency_key": self.idempotency_key,
            "channel_id": self.channel_id,
            "webhook_url": self.webhook_url,
            "created_at": rfc3339(self.created_at_ms),
            "started_at": self.started_at_ms.map(rfc3339),
            "completed_at": self.completed_at_ms.map(rfc3339),
            "duration_ms": self.duration_ms(),
        })
    }
}
