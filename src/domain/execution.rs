//! The persisted execution record and its public JSON view.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Mode, Status};
use crate::error::{ErrorBody, ErrorCode};
use crate::workflows::{StepResult, VersionRef};

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
    /// What this attempt cost in micro-dollars at its route's prices (its usage, or an
    /// estimate from the text it produced when the provider reported none); `None` on a
    /// route without prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<u64>,
}

/// What an execution holds and was charged, in micro-dollars (`crate::ledger`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// The hold placed at submit (0 when the project has no balance and the key no cap).
    pub held_micros: u64,
    /// What the answer cost — the sum over its attempts — once `completed`; 0 for any other
    /// end (the hold is released); `None` while running.
    pub settled_micros: Option<u64>,
}

/// Everything known about an execution except its event log and its request, which live
/// beside it: the record is rewritten on every status and attempt change, the request (up to
/// megabytes) is written once. A record written before the split still decodes (its
/// `request` field is ignored; the store's migration moves it out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub id: String,
    pub project_id: String,
    pub status: Status,
    pub model: String,
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
    /// The API key that submitted: its monthly spend is charged (not shown in the view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub completed_at_ms: Option<u64>,
    /// Mode, structure, workflow and what they produced (absent from a plain live record).
    #[serde(default, skip_serializing_if = "Design::is_plain")]
    pub design: Design,
}

/// How an execution was asked to answer (mode, structure, workflow) and what that produced
/// (each step's output, the parsed data, the validation outcome). Empty for a plain live
/// execution, and then absent from the stored record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Design {
    #[serde(default, skip_serializing_if = "Mode::is_live")]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structure: Option<VersionRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<VersionRef>,
    /// Finished steps of a workflow with steps, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepResult>,
    /// The answer parsed, when a JSON format or schema was asked for and the answer is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// The thinking blocks the answer began with (`params.thinking` on a route that thinks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thinking: Vec<super::ThinkingBlock>,
    /// The stop sequence that ended the answer, when the provider says which (Anthropic does;
    /// OpenAI-format routes report a plain `stop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequence: Option<String>,
}

impl Design {
    /// A live execution without structure or workflow: nothing to store.
    pub fn is_plain(&self) -> bool {
        *self == Design::default()
    }
}

/// Whether the answer matched the requested JSON format, and how it got there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub valid: bool,
    /// Repair attempts made (one per route at most).
    pub repairs: u32,
    /// The last invalid answer's problems (empty when the first answer was valid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl ExecutionRecord {
    /// The sum of the attempts' costs.
    pub fn attempts_cost(&self) -> u64 {
        self.attempts.iter().filter_map(|a| a.cost_micros).sum()
    }

    pub fn duration_ms(&self) -> Option<u64> {
        self.completed_at_ms
            .map(|end| end.saturating_sub(self.created_at_ms))
    }

    /// The public JSON object (`GET /v1/executions/{id}`, `done` events, webhooks).
    /// `live_text` is the partial output of a running execution, read from its log.
    pub fn view<'a>(&'a self, live_text: Option<&'a str>) -> ExecutionView<'a> {
        ExecutionView {
            id: &self.id,
            object: "execution",
            status: self.status,
            model: &self.model,
            output: self
                .output_text
                .as_deref()
                .or(live_text)
                .map(|text| Output {
                    text,
                    data: self.design.output_data.as_ref(),
                    tool_calls: &self.output_tool_calls,
                    thinking: &self.design.thinking,
                }),
            error: self.error.as_ref(),
            finish_reason: self.finish_reason.as_deref(),
            usage: self.usage,
            attempts: self.attempts.iter().map(AttemptView).collect(),
            cost: self.cost,
            metadata: &self.metadata,
            idempotency_key: &self.idempotency_key,
            channel_id: &self.channel_id,
            webhook_url: self.webhook_url.as_deref(),
            created_at: Rfc3339(self.created_at_ms),
            started_at: self.started_at_ms.map(Rfc3339),
            completed_at: self.completed_at_ms.map(Rfc3339),
            duration_ms: self.duration_ms(),
            mode: self.design.mode,
            structure: self.design.structure.as_ref(),
            workflow: self.design.workflow.as_ref(),
            steps: &self.design.steps,
            validation: self.design.validation.as_ref(),
            stop_sequence: self.design.stop_sequence.as_deref(),
        }
    }
}

/// [`ExecutionRecord::view`]: serialized straight from the record, without building a JSON
/// tree first (it is on every request's path: the `done` event).
#[derive(Serialize)]
pub struct ExecutionView<'a> {
    id: &'a str,
    object: &'static str,
    status: Status,
    model: &'a str,
    output: Option<Output<'a>>,
    error: Option<&'a ErrorBody>,
    finish_reason: Option<&'a str>,
    usage: Option<Usage>,
    attempts: Vec<AttemptView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Cost>,
    metadata: &'a Map<String, Value>,
    idempotency_key: &'a str,
    channel_id: &'a str,
    webhook_url: Option<&'a str>,
    created_at: Rfc3339,
    started_at: Option<Rfc3339>,
    completed_at: Option<Rfc3339>,
    duration_ms: Option<u64>,
    mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    structure: Option<&'a VersionRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow: Option<&'a VersionRef>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    steps: &'a [StepResult],
    #[serde(skip_serializing_if = "Option::is_none")]
    validation: Option<&'a Validation>,
    /// The stop sequence that ended the answer, when the provider named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequence: Option<&'a str>,
}

#[derive(Serialize)]
struct Output<'a> {
    text: &'a str,
    /// The parsed answer, when a JSON format was asked for and the answer is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    /// Only when the answer called tools.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [super::ToolCall],
    /// The thinking blocks the answer began with (extended thinking).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    thinking: &'a [super::ThinkingBlock],
}

/// One attempt in the public view.
struct AttemptView<'a>(&'a Attempt);

impl Serialize for AttemptView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let a = self.0;
        let mut s = serializer.serialize_struct("Attempt", 12)?;
        s.serialize_field("provider", &a.provider)?;
        s.serialize_field("model", &a.model)?;
        s.serialize_field("strategy", &a.strategy)?;
        s.serialize_field("outcome", &a.outcome)?;
        s.serialize_field("chunks_delivered", &a.chunks_delivered)?;
        s.serialize_field("error_code", &a.error_code)?;
        s.serialize_field("error_message", &a.error_message)?;
        s.serialize_field("usage", &a.usage)?;
        s.serialize_field("started_at", &Rfc3339(a.started_at_ms))?;
        s.serialize_field("time_to_first_chunk_ms", &a.first_chunk_ms)?;
        s.serialize_field("ended_at", &a.ended_at_ms.map(Rfc3339))?;
        match a.cost_micros {
            Some(cost) => s.serialize_field("cost_micros", &cost)?,
            None => s.skip_field("cost_micros")?,
        }
        s.end()
    }
}

/// Milliseconds since the epoch, serialized as an RFC 3339 timestamp without an intermediate
/// `String`.
struct Rfc3339(u64);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.0);
        serializer.collect_str(&humantime::format_rfc3339_millis(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rfc3339;
    use serde_json::json;

    #[test]
    fn the_view_is_the_documented_object() {
        let record = ExecutionRecord {
            id: "exec_1".into(),
            project_id: "p".into(),
            status: Status::Completed,
            model: "chat-default".into(),
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            metadata: json!({"user": "u1"}).as_object().unwrap().clone(),
            webhook_url: None,
            channel_id: "ch_1".into(),
            output_text: Some("hello".into()),
            output_tool_calls: Vec::new(),
            error: None,
            finish_reason: Some("stop".into()),
            usage: Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            }),
            attempts: vec![Attempt {
                provider: "mock".into(),
                model: "m".into(),
                strategy: "initial".into(),
                outcome: AttemptOutcome::Succeeded,
                chunks_delivered: 2,
                error_code: Some(ErrorCode::ProviderTimeout),
                error_message: None,
                usage: None,
                cost_micros: None,
                started_at_ms: 1_700_000_000_100,
                first_chunk_ms: Some(7),
                ended_at_ms: None,
            }],
            key_id: None,
            cost: None,
            created_at_ms: 1_700_000_000_000,
            started_at_ms: Some(1_700_000_000_050),
            completed_at_ms: Some(1_700_000_000_500),
            design: Default::default(),
        };
        let expected = json!({
            "id": "exec_1", "object": "execution", "status": "completed",
            "model": "chat-default", "output": {"text": "hello"}, "error": null,
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            "attempts": [{
                "provider": "mock", "model": "m", "strategy": "initial",
                "outcome": "succeeded", "chunks_delivered": 2,
                "error_code": "provider_timeout", "error_message": null, "usage": null,
                "started_at": rfc3339(1_700_000_000_100), "time_to_first_chunk_ms": 7,
                "ended_at": null,
            }],
            "metadata": {"user": "u1"}, "idempotency_key": "k", "channel_id": "ch_1",
            "webhook_url": null, "created_at": rfc3339(1_700_000_000_000),
            "started_at": rfc3339(1_700_000_000_050),
            "completed_at": rfc3339(1_700_000_000_500), "duration_ms": 500, "mode": "live",
        });
        assert_eq!(serde_json::to_value(record.view(None)).unwrap(), expected);
        let running = ExecutionRecord {
            output_text: None,
            ..record
        };
        let view = serde_json::to_value(running.view(Some("he"))).unwrap();
        assert_eq!(view["output"], json!({"text": "he"}));
        let call: crate::domain::ToolCall = serde_json::from_value(
            json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}),
        )
        .unwrap();
        let calling = ExecutionRecord {
            output_text: Some(String::new()),
            output_tool_calls: vec![call],
            ..running
        };
        let view = serde_json::to_value(calling.view(None)).unwrap();
        assert_eq!(view["output"]["text"], "");
        assert_eq!(view["output"]["tool_calls"][0]["id"], "c1");
    }
}
