//! One execution's live feed: the events that just became durable, published as one batch per
//! group commit, and the highest durable seq. Readers that are caught up take batches; a reader
//! that falls more than [`LIVE_BATCHES`] batches behind reads the log instead — and never past
//! the durable seq, so no reader ever sees an event a crash could still take back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

use crate::domain::SharedEvent;

/// Batches a subscriber may fall behind by before it catches up from the log.
pub const LIVE_BATCHES: usize = 256;

pub type Batch = Arc<[SharedEvent]>;

#[derive(Clone)]
pub struct LiveFeed {
    batches: broadcast::Sender<Batch>,
    durable: Arc<AtomicU64>,
}

/// A reader's end of the feed.
pub struct Subscription {
    pub batches: broadcast::Receiver<Batch>,
    durable: Arc<AtomicU64>,
}

impl Subscription {
    /// The highest seq that is durable (and so may be read from the log).
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }
}

impl LiveFeed {
    /// `durable_seq`: the last seq already durable when the feed starts (a resumed execution
    /// starts with a log).
    pub fn new(durable_seq: u64) -> LiveFeed {
        LiveFeed {
            batches: broadcast::channel(LIVE_BATCHES).0,
            durable: Arc::new(AtomicU64::new(durable_seq)),
        }
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            batches: self.batches.subscribe(),
            durable: self.durable.clone(),
        }
    }

    /// Whether anyone still follows the feed.
    pub fn has_readers(&self) -> bool {
        self.batches.receiver_count() > 0
    }

    /// Publishes events that just became durable, in seq order.
    pub fn publish(&self, batch: Vec<SharedEvent>) {
        let Some(last) = batch.last() else { return };
        self.durable.store(last.seq, Ordering::Release);
        // No receiver is fine: readers that are not caught up read the log.
        let _ = self.batches.send(batch.into());
    }
}
