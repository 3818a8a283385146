//! The per-execution event log: keys are `execution id ‖ 0 ‖ seq (big-endian)`, so one
//! execution's events are contiguous and ordered by seq.
//!
//! A value holds one event (its storage form: tag byte, then the JSON data) or a batch of
//! consecutive events starting at the key's seq: the byte [`BATCH`] (no event kind has it),
//! then per event its length (u32 little-endian) and its storage form. Running executions
//! write batches, one per group commit (see `event_stage.rs`); a submit's first event and the
//! cluster mirror's events are single values, as every event was before layout 3.

use bytes::Bytes;
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

/// The first byte of a value holding a batch of events.
const BATCH: u8 = 0;

/// An empty batch value with room for `capacity` bytes of events.
pub(super) fn batch_value_with_capacity(capacity: usize) -> Vec<u8> {
    let mut value = Vec::with_capacity(capacity);
    value.push(BATCH);
    value
}

/// Appends one event's storage form to a batch value.
pub(super) fn push_frame(value: &mut Vec<u8>, stored: &[u8]) {
    let len = u32::try_from(stored.len()).expect("an event is smaller than 4 GiB");
    value.extend_from_slice(&len.to_le_bytes());
    value.extend_from_slice(stored);
}

/// The storage forms a log value holds, in seq order (a corrupt batch ends early; the caller
/// reports it).
fn frames(value: &Bytes) -> Vec<Bytes> {
    if value.first() != Some(&BATCH) {
        return vec![value.clone()];
    }
    let mut frames = Vec::new();
    let mut at = 1;
    while let Some(len) = value.get(at..at + 4) {
        let end = at + 4 + u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if end > value.len() {
            break;
        }
        frames.push(value.slice(at + 4..end));
        at = end;
    }
    frames
}

fn key_seq(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8-byte seq"))
}

impl Store {
    pub(super) fn event_key(id: &str, seq: u64) -> Vec<u8> {
        super::joined(id, &seq.to_be_bytes())
    }

    /// Writes one event as its own value (memory only until the next group commit covers
    /// it): a submit's first event, the cluster mirror's, tests'.
    pub fn append_event(&self, id: &str, event: &Event) -> sled::Result<()> {
        self.events
            .insert(Self::event_key(id, event.seq), event.encode())?;
        Ok(())
    }

    /// Stages a running execution's event for the next group commit, which writes it with the
    /// execution's other staged events as one value (see `event_stage.rs`). Until that commit
    /// is durable the log does not show it; nothing reads a running log that far.
    pub fn stage_event(&self, id: &str, event: &Event) {
        self.stage.push(id, event);
    }

    /// A handle on the event log alone (see [`EventLog`]).
    pub fn event_log(&self) -> EventLog {
        EventLog {
            events: self.events.clone(),
        }
    }

    /// Every event of the execution, in order.
    pub fn all_events(&self, id: &str) -> sled::Result<Vec<SharedEvent>> {
        self.event_log().events_after(id, 0, usize::MAX)
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

    /// The log's last event, if any.
    fn last_event(&self, id: &str) -> sled::Result<Option<Event>> {
        let range = Self::event_key(id, 0)..=Self::event_key(id, u64::MAX);
        Ok(match self.events.range(range).next_back() {
            Some(item) => {
                let (key, value) = item?;
                EventLog::decode_value(id, &key, &value).pop()
            }
            None => None,
        })
    }

    /// Whether the log ends with `done` (the execution finished, whatever its record says).
    pub fn is_finished_log(&self, id: &str) -> sled::Result<bool> {
        Ok(self
            .last_event(id)?
            .is_some_and(|ev| ev.kind == EventKind::Done))
    }

    /// Drops the events after `seq` (a cluster node's unshared events once it was fenced),
    /// staged ones included.
    pub fn truncate_log(&self, id: &str, seq: u64) -> sled::Result<()> {
        let _writing = self.stage.exclusive();
        self.stage.discard(id);
        let from = seq.saturating_add(1);
        let start = self.event_log().start_key(id, from)?;
        let end = Self::event_key(id, u64::MAX);
        for item in self.events.range(start..=end) {
            let (key, value) = item?;
            if key_seq(&key) >= from {
                self.events.remove(key)?;
                continue;
            }
            // A batch reaching past `seq`: keep its events up to it.
            let mut kept = batch_value_with_capacity(value.len());
            for ev in EventLog::decode_value(id, &key, &value) {
                if ev.seq <= seq {
                    push_frame(&mut kept, ev.encode());
                }
            }
            self.events.insert(key, kept)?;
        }
        Ok(())
    }

    /// The highest seq in the log (0 when empty).
    pub fn last_seq(&self, id: &str) -> sled::Result<u64> {
        Ok(self.last_event(id)?.map_or(0, |ev| ev.seq))
    }
}

/// The event log alone, for what holds one per reader (a cursor per subscriber): one tree
/// handle instead of a whole [`Store`] (440 bytes).
#[derive(Clone)]
pub struct EventLog {
    events: sled::Tree,
}

impl EventLog {
    /// The events of the value at `key`, with their seqs.
    fn decode_value(id: &str, key: &[u8], value: &[u8]) -> Vec<Event> {
        let first = key_seq(key);
        let value = Bytes::copy_from_slice(value);
        let mut out = Vec::new();
        for (seq, stored) in (first..).zip(frames(&value)) {
            match Event::decode_shared(seq, stored) {
                Some(ev) => out.push(ev),
                None => tracing::error!(execution_id = %id, seq, "undecodable event in log"),
            }
        }
        out
    }

    /// Where a read from `seq` starts: the value holding `seq`'s event, which may start
    /// before it (a batch), or `seq`'s own key when the log has nothing at or before it.
    fn start_key(&self, id: &str, seq: u64) -> sled::Result<Vec<u8>> {
        let range = Store::event_key(id, 0)..=Store::event_key(id, seq);
        Ok(match self.events.range(range).next_back() {
            Some(item) => item?.0.to_vec(),
            None => Store::event_key(id, seq),
        })
    }

    /// Up to `limit` events with seq > `after`, in order.
    pub fn events_after(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> sled::Result<Vec<SharedEvent>> {
        let from = after.saturating_add(1);
        let start = self.start_key(id, from)?;
        let end = Store::event_key(id, u64::MAX);
        let mut out = Vec::new();
        for item in self.events.range(start..=end) {
            let (key, value) = item?;
            let events = EventLog::decode_value(id, &key, &value);
            out.extend(events.into_iter().filter(|e| e.seq >= from).map(Arc::new));
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn seqs(events: &[SharedEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    /// A log of a single first event, then batches as group commits write them: 2..=4, 5,
    /// 6..=9 (`done`).
    async fn batched_log() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append_event("exec_a", &Event::status(1, Status::Pending))
            .unwrap();
        let commits: [&[u64]; 3] = [&[2, 3, 4], &[5], &[6, 7, 8]];
        for seqs in commits {
            for &seq in seqs {
                store.stage_event("exec_a", &Event::chunk(seq, &format!("w{seq} ")));
                // Another execution's events interleave in the same stage.
                store.stage_event("exec_b", &Event::chunk(seq - 1, "x"));
            }
            store.commit.sync().await.unwrap();
        }
        store.stage_event("exec_a", &Event::status(9, Status::Completed));
        let done = Event::from_payload(9, EventKind::Done, &serde_json::json!({"seq": 9}));
        store.truncate_log("exec_a", 8).unwrap();
        store.stage_event("exec_a", &done);
        store.commit.sync().await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn batches_read_back_as_the_events_they_hold_from_any_seq() {
        let (_dir, store) = batched_log().await;
        assert_eq!(
            seqs(&store.all_events("exec_a").unwrap()),
            (1..=9).collect::<Vec<_>>()
        );
        for after in 0..=9 {
            let got = store
                .event_log()
                .events_after("exec_a", after, usize::MAX)
                .unwrap();
            assert_eq!(
                seqs(&got),
                (after + 1..=9).collect::<Vec<_>>(),
                "after {after}"
            );
        }
        // A limit stops inside a batch.
        assert_eq!(
            seqs(&store.event_log().events_after("exec_a", 2, 2).unwrap()),
            [3, 4]
        );
        assert_eq!(
            seqs(&store.event_log().events_after("exec_a", 2, 3).unwrap()),
            [3, 4, 5]
        );
        assert_eq!(store.last_seq("exec_a").unwrap(), 9);
        assert!(store.is_finished_log("exec_a").unwrap());
        assert_eq!(
            store.emitted("exec_a").unwrap().text,
            "w2 w3 w4 w5 w6 w7 w8 "
        );
        assert_eq!(store.last_seq("exec_b").unwrap(), 7);
        assert!(!store.is_finished_log("exec_b").unwrap());
        assert_eq!(store.last_seq("exec_none").unwrap(), 0);
        // Three values for nine events of exec_a, one per commit, after the first.
        let values = store
            .events
            .scan_prefix(super::super::joined("exec_a", &[]))
            .count();
        assert_eq!(values, 5);
    }

    #[tokio::test]
    async fn truncation_cuts_inside_a_batch_and_drops_what_is_staged() {
        let (_dir, store) = batched_log().await;
        store.truncate_log("exec_a", 3).unwrap();
        assert_eq!(seqs(&store.all_events("exec_a").unwrap()), [1, 2, 3]);
        assert_eq!(store.last_seq("exec_a").unwrap(), 3);
        assert!(!store.is_finished_log("exec_a").unwrap());
        // Staged but not yet written: a truncation takes it back too.
        store.stage_event("exec_a", &Event::chunk(4, "again "));
        store.truncate_log("exec_a", 3).unwrap();
        store.commit.sync().await.unwrap();
        assert_eq!(store.last_seq("exec_a").unwrap(), 3);
        // The log goes on from the cut.
        store.stage_event("exec_a", &Event::chunk(4, "new "));
        store.commit.sync().await.unwrap();
        assert_eq!(store.emitted("exec_a").unwrap().text, "w2 w3 new ");
    }

    #[tokio::test]
    async fn staged_events_are_in_the_log_once_their_commit_is_durable_and_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.stage_event("exec_a", &Event::chunk(1, "a"));
        assert_eq!(
            store.last_seq("exec_a").unwrap(),
            0,
            "not before its commit"
        );
        let ticket = store.commit.ticket();
        store.commit.wait(ticket).await.unwrap();
        assert_eq!(store.last_seq("exec_a").unwrap(), 1);
        store.stage_event("exec_a", &Event::chunk(2, "b"));
        store.flush().unwrap();
        assert_eq!(store.last_seq("exec_a").unwrap(), 2);
    }

    #[test]
    fn a_corrupt_batch_yields_the_events_before_the_damage() {
        let mut value = batch_value_with_capacity(64);
        push_frame(&mut value, Event::chunk(1, "a").encode());
        push_frame(&mut value, Event::chunk(2, "b").encode());
        value.truncate(value.len() - 3);
        let events = EventLog::decode_value("exec_a", &Store::event_key("exec_a", 7), &value);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].seq, 7);
        assert_eq!(events[0].chunk_delta().as_deref(), Some("a"));
    }
}
