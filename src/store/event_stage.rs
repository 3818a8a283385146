//! Events waiting for the next group commit, one growing batch per execution.
//!
//! An execution's events become durable together at the next flush whichever way they reach
//! sled, so they need not reach it as one B-tree insert each (an insert copies the leaf it
//! lands in; events were 23 of a request's 43 sled writes). The actor stages each event here
//! (an append to a buffer under a short lock) and the committer, right before it flushes,
//! writes each execution's staged events as one log value keyed by the batch's first seq
//! (see `events.rs` for the value's form).
//!
//! Nothing reads the log past the durable seq of a running execution (cursors stop there, see
//! `cursor.rs`), so events that are staged rather than in sled are invisible to nobody who
//! could see them before. A crash loses what is staged exactly as it loses sled's unflushed
//! memory: neither was ever durable, hence never published.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::domain::Event;

pub struct EventStage {
    /// The log tree the batches go to.
    events: sled::Tree,
    /// Execution id → its staged batches, in order (one, unless its numbering restarted).
    pending: Mutex<HashMap<String, Vec<StagedBatch>>>,
    /// Held while staged batches go into sled and while a log is truncated, so a truncated
    /// log never gets back a batch staged before the truncation.
    writing: Mutex<()>,
}

/// Consecutive staged events of one execution, already in the log value's form.
struct StagedBatch {
    first_seq: u64,
    next_seq: u64,
    value: Vec<u8>,
}

impl StagedBatch {
    fn starting_with(event: &Event) -> StagedBatch {
        let mut value = super::events::batch_value_with_capacity(512);
        super::events::push_frame(&mut value, event.encode());
        StagedBatch {
            first_seq: event.seq,
            next_seq: event.seq + 1,
            value,
        }
    }
}

impl EventStage {
    pub fn new(events: sled::Tree) -> EventStage {
        EventStage {
            events,
            pending: Mutex::default(),
            writing: Mutex::default(),
        }
    }

    /// Stages `event` of execution `id`, behind the events it staged before.
    pub fn push(&self, id: &str, event: &Event) {
        let mut pending = self.pending.lock().expect("event stage lock");
        let Some(batches) = pending.get_mut(id) else {
            pending.insert(id.to_owned(), vec![StagedBatch::starting_with(event)]);
            return;
        };
        match batches.last_mut() {
            Some(batch) if batch.next_seq == event.seq => {
                super::events::push_frame(&mut batch.value, event.encode());
                batch.next_seq += 1;
            }
            // Not following the staged events (the execution restarted its numbering): a
            // batch of its own.
            _ => batches.push(StagedBatch::starting_with(event)),
        }
    }

    /// Excludes [`Self::write`] while held: see [`Self::discard`].
    pub fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().expect("event stage lock")
    }

    /// Drops what execution `id` staged. Called with [`Self::exclusive`] held, so no batch of
    /// the execution is on its way into sled meanwhile.
    pub fn discard(&self, id: &str) {
        self.pending.lock().expect("event stage lock").remove(id);
    }
}

impl super::commit::Staged for EventStage {
    /// Writes every staged batch into the log (memory only: the flush that follows makes them
    /// durable). Batches of one execution go in the order they were staged.
    fn write(&self) -> sled::Result<()> {
        let _writing = self.exclusive();
        let pending = std::mem::take(&mut *self.pending.lock().expect("event stage lock"));
        for (id, batches) in pending {
            for batch in batches {
                let key = super::Store::event_key(&id, batch.first_seq);
                self.events.insert(key, batch.value)?;
            }
        }
        Ok(())
    }
}
