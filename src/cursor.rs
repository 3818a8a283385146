//! A reader's position in one execution's event log: "everything after seq N, then keep me
//! posted". It replays from the log, switches to the live feed once caught up, and falls back
//! to the log whenever the live feed lags, skips or closes — so every reader (SSE, WebSocket,
//! late or reconnecting) sees each seq exactly once, in order.

use std::collections::VecDeque;
use tokio::sync::broadcast::error::RecvError;

use crate::actors::live::Subscription;
use crate::domain::{EventKind, SharedEvent};
use crate::store::EventLog;

/// Events read from the log per batch.
const LOG_BATCH: usize = 256;

pub struct Cursor {
    /// The log alone: a cursor per subscriber, so not a whole `Store`.
    log: EventLog,
    id: String,
    last: u64,
    live: Option<Subscription>,
    backlog: VecDeque<SharedEvent>,
    caught_up: bool,
    ended: bool,
    /// Set when the live feed overflowed: the last seq delivered before falling back to the log.
    lagged_after: Option<u64>,
}

impl Cursor {
    /// `live` must be subscribed before the cursor first reads the log: an event published
    /// after that is in the feed, one published before is already in the log.
    pub fn new(log: EventLog, id: String, after: u64, live: Option<Subscription>) -> Cursor {
        Cursor {
            log,
            id,
            last: after,
            live,
            backlog: VecDeque::new(),
            caught_up: false,
            ended: false,
            lagged_after: None,
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// Whether the reader fell behind the live feed since the last call (and from which seq it
    /// catches up from the log): transports tell their client.
    pub fn take_lag(&mut self) -> Option<u64> {
        self.lagged_after.take()
    }

    /// The next event, or `None` after `done` (or when a finished log has nothing more).
    pub async fn next(&mut self) -> Option<SharedEvent> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(event) = self.backlog.pop_front() {
                if event.seq <= self.last {
                    continue;
                }
                return Some(self.deliver(event));
            }
            if !self.caught_up {
                // While the execution runs, its log may hold events not yet durable: read only
                // up to the durable seq (the rest arrives live). A finished log is all durable.
                let durable = self.live.as_ref().map_or(u64::MAX, |l| l.durable_seq());
                match self.log.events_after(&self.id, self.last, LOG_BATCH) {
                    Ok(batch) => {
                        let before = self.backlog.len();
                        self.backlog
                            .extend(batch.into_iter().take_while(|e| e.seq <= durable));
                        if self.backlog.len() == before {
                            self.caught_up = true;
                        }
                    }
                    Err(err) => {
                        tracing::error!(execution_id = %self.id, error = %err, "event log read failed");
                        self.ended = true;
                    }
                }
                continue;
            }
            let Some(live) = self.live.as_mut() else {
                // Not running: the log was everything.
                self.ended = true;
                continue;
            };
            match live.batches.recv().await {
                Ok(batch) => {
                    let fresh = batch.iter().skip_while(|e| e.seq <= self.last);
                    for (expected, event) in (self.last + 1..).zip(fresh) {
                        if event.seq != expected {
                            // A gap: the log has everything published.
                            self.caught_up = false;
                            break;
                        }
                        self.backlog.push_back(event.clone());
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    self.lagged_after.get_or_insert(self.last);
                    self.caught_up = false;
                }
                Err(RecvError::Closed) => {
                    self.live = None;
                    self.caught_up = false;
                }
            }
        }
    }

    fn deliver(&mut self, event: SharedEvent) -> SharedEvent {
        self.last = event.seq;
        if event.kind == EventKind::Done {
            self.ended = true;
        }
        event
    }
}
