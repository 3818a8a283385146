//! The per-execution event log: keys are `execution id ‖ 0 ‖ seq (big-endian)`, so one
//! execution's events are contiguous and ordered by seq.

use std::sync::Arc;

use super::Store;
use crate::domain::{Event, EventKind, SharedEvent, ToolCall};

/// An execution's answer as its log holds it.
#[derive(Debug, Default)]
pub struct Emitted {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    /// Finished workflow steps, in order.
    pub steps: Vec<crate::workflows::StepResult>,
    /// Whether the log's last step event started a step (its answer is `text`).
    pub step_open: bool,
    /// The answer's thinking blocks so far (the last one may be half made).
    pub thinking: crate::domain::ThinkingAssembly,
}

impl Store {
    pub(super) fn event_key(id: &str, seq: u64) -> Vec<u8> {
        super::joined(id, &seq.to_be_bytes())
    }

    /// Appends one event (memory only until the next group commit covers it).
    pub fn append_event(&self, id: &str, event: &Event) -> sled::Result<()> {
        self.events
            .insert(Self::event_key(id, event.seq), event.encode())?;
        Ok(())
    }

    /// Up to `limit` events with seq > `after`, in order.
    pub fn events_after(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> sled::Result<Vec<SharedEvent>> {
        let start = Self::event_key(id, after.saturating_add(1));
        let end = Self::event_key(id, u64::MAX);
        let mut out = Vec::new();
        for item in self.events.range(start..=end).take(limit) {
            let (key, value) = item?;
            let seq = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8-byte seq"));
            match Event::decode(seq, &value) {
                Some(ev) => out.push(Arc::new(ev)),
                None => tracing::error!(execution_id = %id, seq, "undecodable event in log"),
            }
        }
        Ok(out)
    }

    /// Every event of the execution, in order.
    pub fn all_events(&self, id: &str) -> sled::Result<Vec<SharedEvent>> {
        self.events_after(id, 0, usize::MAX)
    }

    /// What an execution's log has answered so far, in one pass: the text of the answer in
    /// progress (since the last step boundary or restart: earlier chunks belong to finished
    /// steps or are void), the tool calls it ended with (carried by the one chunk with an
    /// empty delta), and the finished steps of a workflow.
    pub fn emitted(&self, id: &str) -> sled::Result<Emitted> {
        let mut out = Emitted::default();
        for ev in self.all_events(id)? {
            match ev.kind {
                EventKind::Chunk => match ev.chunk_delta() {
                    Some(delta) if delta.is_empty() => match ev.carried_thinking() {
                        Some(fragment) => out.thinking.push(&fragment),
                        None => out.tool_calls.extend(ev.carried_tool_calls()),
                    },
                    Some(delta) => out.text.push_str(&delta),
                    None => {}
                },
                EventKind::Failover if ev.restarts_answer() => {
                    out.text.clear();
                    out.thinking = Default::default();
                }
                EventKind::Step => {
                    out.text.clear();
                    out.thinking = Default::default();
                    out.step_open = match ev.step_result() {
                        Some(result) => {
                            out.steps.push(result);
                            false
                        }
                        None => true,
                    };
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Whether the log ends with `done` (the execution finished, whatever its record says).
    pub fn is_finished_log(&self, id: &str) -> sled::Result<bool> {
        let start = Self::event_key(id, 0);
        let end = Self::event_key(id, u64::MAX);
        Ok(match self.events.range(start..=end).next_back() {
            Some(item) => {
                let (_, value) = item?;
                EventKind::from_tag(value.first().copied().unwrap_or(0)) == Some(EventKind::Done)
            }
            None => false,
        })
    }

    /// Drops the events after `seq` (a cluster node's unshared events once it was fenced).
    pub fn truncate_log(&self, id: &str, seq: u64) -> sled::Result<()> {
        let start = Self::event_key(id, seq.saturating_add(1));
        let end = Self::event_key(id, u64::MAX);
        for item in self.events.range(start..=end) {
            let (key, _) = item?;
            self.events.remove(key)?;
        }
        Ok(())
    }

    /// The highest seq in the log (0 when empty).
    pub fn last_seq(&self, id: &str) -> sled::Result<u64> {
        let start = Self::event_key(id, 0);
        let end = Self::event_key(id, u64::MAX);
        Ok(match self.events.range(start..=end).next_back() {
            Some(item) => {
                let (key, _) = item?;
                u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8-byte seq"))
            }
            None => 0,
        })
    }
}
