//! One execution's live feed: the events that just became durable, published as one batch per
//! group commit, and the highest durable seq. Readers that are caught up take batches; a reader
//! that falls more than [`LIVE_BATCHES`] batches behind reads the log instead — and never past
//! the durable seq, so no reader ever sees an event a crash could still take back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Subscriptions that show each event as it comes (see [`Subscription::for_outcome`]).
    followers: Arc<AtomicUsize>,
}

/// A reader's end of the feed.
pub struct Subscription {
    pub batches: broadcast::Receiver<Batch>,
    durable: Arc<AtomicU64>,
    /// Set while this subscription counts as a follower.
    follower: Option<Arc<AtomicUsize>>,
}

impl Subscription {
    /// The highest seq that is durable (and so may be read from the log).
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// For a reader that shows nothing before the execution ends (a non-stream answer): it
    /// no longer counts as a follower, so the execution need not make each chunk durable at
    /// once for it — the chunks ride on the terminal event's commit instead of costing
    /// commits of their own (issue 16).
    pub fn for_outcome(mut self) -> Subscription {
        self.unfollow();
        self
    }

    fn unfollow(&mut self) {
        if let Some(followers) = self.follower.take() {
            followers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.unfollow();
    }
}

impl LiveFeed {
    /// `durable_seq`: the last seq already durable when the feed starts (a resumed execution
    /// starts with a log).
    pub fn new(durable_seq: u64) -> LiveFeed {
        LiveFeed {
            batches: broadcast::channel(LIVE_BATCHES).0,
            durable: Arc::new(AtomicU64::new(durable_seq)),
            followers: Arc::default(),
        }
    }

    /// A subscription that follows every event as it comes.
    pub fn subscribe(&self) -> Subscription {
        self.followers.fetch_add(1, Ordering::AcqRel);
        Subscription {
            batches: self.batches.subscribe(),
            durable: self.durable.clone(),
            follower: Some(self.followers.clone()),
        }
    }

    /// Whether a reader shows events as they come (a stream, a WebSocket channel): then
    /// progress is worth a commit of its own.
    pub fn has_followers(&self) -> bool {
        self.followers.load(Ordering::Acquire) > 0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_readers_that_follow_make_progress_urgent() {
        let feed = LiveFeed::new(0);
        assert!(!feed.has_followers());
        let outcome = feed.subscribe().for_outcome();
        assert!(!feed.has_followers(), "a non-stream reader does not follow");
        let stream = feed.subscribe();
        assert!(feed.has_followers());
        drop(stream);
        assert!(!feed.has_followers(), "a dropped stream no longer follows");
        drop(outcome);
        assert!(!feed.has_followers());
    }
}
