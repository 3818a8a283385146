//! One provider try as a task: it opens the stream, enforces the first-chunk, idle and total
//! timeouts, and forwards canonical items to the execution actor over a bounded channel.
//! Aborting the task drops the HTTP response, which closes the upstream connection.

use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use super::{Provider, ProviderError, StreamItem, UpstreamRequest};
use crate::store::{AttemptLog, LogEntry};

#[derive(Debug)]
pub enum AttemptEvent {
    Item(StreamItem),
    /// The stream ended cleanly after a finish reason.
    Finished,
    Failed(ProviderError),
}

/// Owns the running task; dropping it does not stop the task, [`AttemptHandle::abort`] does.
pub struct AttemptHandle {
    task: tokio::task::AbortHandle,
}

impl AttemptHandle {
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Starts the try; its events arrive on the returned receiver, ending with `Finished` or
/// `Failed` (or nothing, if aborted).
pub fn spawn_attempt(
    provider: Arc<Provider>,
    request: UpstreamRequest,
    log: AttemptLog,
) -> (mpsc::Receiver<AttemptEvent>, AttemptHandle) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(run(provider, request, tx, log));
    (
        rx,
        AttemptHandle {
            task: task.abort_handle(),
        },
    )
}

async fn run(
    provider: Arc<Provider>,
    request: UpstreamRequest,
    tx: mpsc::Sender<AttemptEvent>,
    log: AttemptLog,
) {
    let s = &provider.settings;
    let started = Instant::now();
    let total_deadline = started + s.total_timeout();
    let first_deadline = (started + s.first_chunk_timeout()).min(total_deadline);
    let outcome = drive(
        &provider,
        &request,
        &tx,
        &log,
        first_deadline,
        total_deadline,
    )
    .await;
    let last = match outcome {
        Ok(()) => AttemptEvent::Finished,
        Err(e) => {
            log.record(LogEntry::Error {
                code: e.code.as_str(),
                message: &e.message,
            });
            AttemptEvent::Failed(e)
        }
    };
    let _ = tx.send(last).await;
}

async fn drive(
    provider: &Provider,
    request: &UpstreamRequest,
    tx: &mpsc::Sender<AttemptEvent>,
    log: &AttemptLog,
    first_deadline: Instant,
    total_deadline: Instant,
) -> Result<(), ProviderError> {
    let s = &provider.settings;
    let mut stream = match timeout_at(first_deadline, provider.open(request, log)).await {
        Ok(opened) => opened?,
        Err(_) => return Err(ProviderError::no_response(s.first_chunk_timeout())),
    };
    let mut got_text = false;
    loop {
        // Until the first text arrives the first-chunk deadline applies (a role-only
        // preamble does not count); after it, the idle timeout between events.
        let deadline = if got_text {
            (Instant::now() + s.idle_timeout()).min(total_deadline)
        } else {
            first_deadline
        };
        match timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(if deadline == total_deadline {
                    ProviderError::total_timeout(s.total_timeout())
                } else if got_text {
                    ProviderError::stalled(s.idle_timeout())
                } else {
                    ProviderError::first_chunk_timeout(s.first_chunk_timeout())
                })
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(item))) => {
                if let StreamItem::Delta(d) = &item {
                    got_text |= d.text.is_some();
                }
                if tx.send(AttemptEvent::Item(item)).await.is_err() {
                    // The execution stopped listening: drop the stream.
                    return Ok(());
                }
            }
        }
    }
}
