//! The vocabulary every layer shares: ids, the validated request, status and its allowed
//! transitions, the event type and the execution record.

pub mod event;
pub mod execution;
pub mod ids;
pub mod request;
pub mod status;
pub mod thinking;
pub mod tools;

pub use event::{Event, EventKind, SharedEvent};
pub use execution::{Attempt, AttemptOutcome, Cost, Design, ExecutionRecord, Usage, Validation};
pub use request::{ChatRequest, Message, Mode, Params, Role, Simulate, SubmitBody};
pub use status::Status;
pub use thinking::{ThinkingAssembly, ThinkingBlock, ThinkingDelta, ThinkingParam};
pub use tools::{ToolCall, ToolCallAssembly, ToolCallDelta};

/// Milliseconds since the Unix epoch: the one clock used in records.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 with milliseconds, for the JSON views.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
