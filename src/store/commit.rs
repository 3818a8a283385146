//! Group commit: many writers, one fsync.
//!
//! A writer inserts into sled (memory only), takes a ticket, and waits until the durable
//! watermark reaches it. A flush reads the newest ticket, writes and fsyncs, and then publishes
//! that ticket as durable, so every write made before the ticket was taken is on disk. Under
//! load one fsync covers thousands of events; when idle a lone write waits for exactly one
//! fsync.
//!
//! The writer that asks for a flush while none runs starts the flusher itself, on the blocking
//! pool of the runtime the store was opened on; the flusher keeps flushing while newer urgent
//! tickets are pending, then stops. Its last `durable` update wakes the waiting writers
//! directly. Nothing else sits between a writer and the fsync: the hand-offs through a committer
//! task (writer → task → blocking pool → task → writer) were two thread wake-ups per commit,
//! measured at ~65 µs of a request's latency at concurrency 1 (issue 16).
//!
//! A *deferred* ticket asks for no flush of its own: it rides on the next flush another writer
//! asks for, or on one [`DEFER_LIMIT`] later if nobody does (a timer task, woken by the first
//! deferred ticket while nothing is pending). It is for writes nothing is waiting on except
//! their own publication (an execution's `processing` event, an attempt's last debug-log
//! batch), which saves a whole flush (sled's write + the fsync) per request.
//!
//! Right before each flush the flusher writes what writers staged in memory since the last one
//! ([`Staged`]: running executions' events, one sled value per execution, see
//! `event_stage.rs`; analytics counts merged per entry): a ticket taken after staging is
//! covered by the flush that first reads a `requested` at or past it, and that flush writes
//! the stages after that read.
//!
//! A failed flush is final: sled poisons itself on a write error, so every pending and later
//! ticket fails ([`StoreFailed`]) instead of waiting for a durability that cannot come, and
//! the failure is reported to [`StoreHealth`], which decides when the store is reopened.
//!
//! No linger: writes that arrive while a flush runs already share the next one, and a 500 µs
//! wait before flushing under load was measured to lower throughput (gateway_overhead c=32,
//! twice) and raise submit p99.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

use super::health::StoreHealth;

/// Writes held in memory until the next group commit, which puts them into sled right before
/// its flush (on the blocking pool, off the writers' threads).
pub trait Staged: Send + Sync {
    fn write(&self) -> sled::Result<()>;
}

/// The longest a deferred ticket waits for another writer's flush before it gets its own.
pub const DEFER_LIMIT: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// sled's data file, `fdatasync`ed after each flush (see [`GroupCommit::start`]).
    log_file: Option<std::fs::File>,
    health: StoreHealth,
    /// Where flushers run: the blocking pool of the runtime the store was opened on.
    runtime: tokio::runtime::Handle,
    /// Flush latencies go here once the metrics exist.
    flush_seconds: std::sync::OnceLock<prometheus::Histogram>,
    /// The newest ticket, deferred or not.
    requested: AtomicU64,
    /// The newest ticket whose writer wants a flush now.
    urgent: AtomicU64,
    /// Set while a flusher runs (or after a failed flush, for good).
    flushing: AtomicBool,
    /// Wakes the deferred tickets' timer task (shared with it: it holds no `Inner` while it
    /// waits, so a dropped store closes sled's files).
    deferred: Arc<Notify>,
    durable: watch::Sender<u64>,
    /// What writers hold in memory for the next commit (see [`Staged`]).
    staged: Vec<Arc<dyn Staged>>,
    /// Set once a flush failed: nothing written to this store becomes durable any more.
    failed: AtomicBool,
}

/// A write could not be made durable: the store failed (full disk, I/O error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store could not make the write durable")]
pub struct StoreFailed;

impl GroupCommit {
    /// `log_file`: sled's data file. sled 0.34's flush ends with `sync_file_range` on Linux,
    /// which neither flushes the drive's write cache nor the file's size; an `fdatasync` of the
    /// file after each flush does, so "durable" survives a power failure too.
    /// `staged`: what writers hold in memory for the next commit (see [`Staged`]).
    /// Must be called on a tokio runtime: flushes run on its blocking pool.
    pub fn start(
        db: sled::Db,
        log_file: Option<std::fs::File>,
        health: StoreHealth,
        staged: Vec<Arc<dyn Staged>>,
    ) -> GroupCommit {
        let inner = Arc::new(Inner {
            db,
            log_file,
            health,
            runtime: tokio::runtime::Handle::current(),
            flush_seconds: std::sync::OnceLock::new(),
            requested: AtomicU64::new(0),
            urgent: AtomicU64::new(0),
            flushing: AtomicBool::new(false),
            deferred: Arc::new(Notify::new()),
            durable: watch::Sender::new(0),
            staged,
            failed: AtomicBool::new(false),
        });
        // The timer lives as long as the runtime it runs on (the server's actix system), or
        // until the store is dropped.
        tokio::spawn(deferred_timer(
            Arc::downgrade(&inner),
            inner.deferred.clone(),
        ));
        GroupCommit { inner }
    }

    /// Puts everything staged into sled (memory only; a flush makes it durable): what each
    /// commit does before its flush, and what a shutdown's last flush needs first.
    pub fn write_staged(&self) -> sled::Result<()> {
        self.inner.write_staged()
    }

    pub fn observe_flushes(&self, histogram: prometheus::Histogram) {
        let _ = self.inner.flush_seconds.set(histogram);
    }

    /// Takes a ticket covering every write made before this call, and asks for a flush now.
    pub fn ticket(&self) -> u64 {
        let t = self.inner.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.inner.urge(t);
        t
    }

    /// A ticket covering every write made before this call that becomes durable with the next
    /// flush anyone asks for, and after at most [`DEFER_LIMIT`] (plus one flush) regardless.
    pub fn deferred_ticket(&self) -> u64 {
        let t = self.inner.requested.fetch_add(1, Ordering::AcqRel) + 1;
        // The timer idles only when nothing is pending: only the first pending ticket has to
        // wake it (it re-reads `requested` after every wait).
        if t - 1 <= *self.inner.durable.borrow() {
            self.inner.deferred.notify_one();
        }
        t
    }

    /// Resolves once `ticket` is durable, with the durable watermark (≥ `ticket`), or with
    /// [`StoreFailed`] once it cannot become durable.
    pub fn wait(
        &self,
        ticket: u64,
    ) -> impl std::future::Future<Output = Result<u64, StoreFailed>> + 'static {
        let mut rx = self.inner.durable.subscribe();
        let inner = self.inner.clone();
        async move {
            let failed = || inner.failed.load(Ordering::Acquire);
            // Copied out of the watch's guard, which may not be held across the await below.
            let reached = rx.wait_for(|d| *d >= ticket || failed()).await.map(|d| *d);
            match reached {
                Ok(d) if d >= ticket => Ok(d),
                Ok(_) => Err(StoreFailed),
                // The store is gone (shutdown): nothing will become durable any more.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Makes everything written so far durable.
    pub async fn sync(&self) -> Result<u64, StoreFailed> {
        let t = self.ticket();
        self.wait(t).await
    }
}

/// Turns deferred tickets nobody's flush took along into a flush of their own, [`DEFER_LIMIT`]
/// after the first of them; ends with the store (whose drop wakes it).
async fn deferred_timer(inner: std::sync::Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let due = strong.requested.load(Ordering::Acquire);
        let pending = due > *strong.durable.borrow();
        drop(strong);
        if !pending {
            notified.await;
            continue;
        }
        tokio::time::sleep(DEFER_LIMIT / 2).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // Only when a ticket pending since the period began is still pending: one taken during
        // the period is checked at the end of the next, so none waits longer than two periods
        // (`DEFER_LIMIT`) plus a flush. Tickets other writers' flushes keep covering (a steady
        // load) never cost a flush of their own.
        if due > *strong.durable.borrow() {
            strong.urge(strong.requested.load(Ordering::Acquire));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the timer task.
        self.deferred.notify_one();
    }
}

impl Inner {
    fn write_staged(&self) -> sled::Result<()> {
        self.staged.iter().try_for_each(|stage| stage.write())
    }

    /// Asks for a flush covering `ticket`: starts a flusher unless one runs (it sees `ticket`
    /// after its current flush).
    fn urge(self: &Arc<Self>, ticket: u64) {
        self.urgent.fetch_max(ticket, Ordering::SeqCst);
        if !self.flushing.swap(true, Ordering::SeqCst) {
            let inner = self.clone();
            self.runtime
                .spawn_blocking(move || inner.flush_while_urgent());
        }
    }

    /// Flushes until no urgent ticket is left; the caller set `flushing`.
    fn flush_while_urgent(&self) {
        loop {
            // Every write made before this load is in what the flush writes: sled's, and the
            // stage's, written after it.
            let target = self.requested.load(Ordering::Acquire);
            let started = std::time::Instant::now();
            if let Err(err) = self.flush() {
                self.health.fail(&err);
                // `flushing` stays set: no flusher starts again on this store.
                self.failed.store(true, Ordering::Release);
                // Wakes every waiter to see the failure.
                self.durable.send_modify(|_| {});
                return;
            }
            if let Some(h) = self.flush_seconds.get() {
                h.observe(started.elapsed().as_secs_f64());
            }
            self.durable.send_replace(target);
            if self.urgent.load(Ordering::SeqCst) > target {
                continue;
            }
            if self.requested.load(Ordering::Acquire) > target {
                // Deferred tickets taken during this flush: they found a ticket pending, so
                // none of them woke the timer.
                self.deferred.notify_one();
            }
            self.flushing.store(false, Ordering::SeqCst);
            // A writer that urged between the load above and the store saw `flushing` set and
            // left the flush to this loop: take it back, unless a new flusher already did.
            if self.urgent.load(Ordering::SeqCst) <= target
                || self.flushing.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    }

    fn flush(&self) -> std::io::Result<()> {
        self.write_staged().map_err(std::io::Error::other)?;
        self.db.flush().map_err(std::io::Error::other)?;
        if let Some(file) = &self.log_file {
            file.sync_data()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committer() -> (tempfile::TempDir, GroupCommit, prometheus::Histogram) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let commit = GroupCommit::start(db, None, StoreHealth::new(dir.path(), 0), Vec::new());
        let flushes =
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("f", "f")).unwrap();
        commit.observe_flushes(flushes.clone());
        (dir, commit, flushes)
    }

    #[tokio::test]
    async fn a_deferred_ticket_rides_on_the_next_urgent_one() {
        let (_dir, commit, flushes) = committer();
        let deferred = commit.deferred_ticket();
        let urgent = commit.ticket();
        assert!(commit.wait(deferred).await.unwrap() >= urgent);
        assert_eq!(flushes.get_sample_count(), 1);
    }

    /// The flusher hand-off: a writer that urges just as the flusher stops must still get its
    /// flush (from the stopping flusher or a new one), under writers on several threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_ticket_from_racing_writers_becomes_durable() {
        let (_dir, commit, flushes) = committer();
        let writers = (0..8).map(|_| {
            let commit = commit.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    let t = match i % 3 {
                        0 => commit.deferred_ticket(),
                        _ => commit.ticket(),
                    };
                    assert!(commit.wait(t).await.unwrap() >= t);
                }
            })
        });
        let all = futures_util::future::join_all(writers);
        // A lost hand-off hangs a writer: fail instead of hanging the suite.
        let done = tokio::time::timeout(Duration::from_secs(120), all).await;
        for writer in done.expect("a ticket never became durable") {
            writer.unwrap();
        }
        assert!(flushes.get_sample_count() >= 1);
    }

    /// Holds the first flush that writes it until told to go on.
    struct Gate {
        started: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
        go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Staged for Gate {
        fn write(&self) -> sled::Result<()> {
            if let Some(started) = self.started.lock().unwrap().take() {
                started.send(()).unwrap();
                self.go.lock().unwrap().recv().unwrap();
            }
            Ok(())
        }
    }

    /// A deferred ticket taken while a flush runs (after it read its target) finds a ticket
    /// pending, so it does not wake the timer itself: the flush that ends without it must.
    #[tokio::test]
    async fn a_deferred_ticket_taken_during_a_flush_still_becomes_durable() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let gate = Arc::new(Gate {
            started: std::sync::Mutex::new(Some(started_tx)),
            go: std::sync::Mutex::new(go_rx),
        });
        let health = StoreHealth::new(dir.path(), 0);
        let commit = GroupCommit::start(db, None, health, vec![gate]);
        // Lets the timer task see nothing pending and park.
        tokio::task::yield_now().await;
        let urgent = commit.ticket();
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        let deferred = commit.deferred_ticket();
        go.send(()).unwrap();
        assert_eq!(
            commit.wait(urgent).await.unwrap(),
            urgent,
            "the flush read its target first"
        );
        let durable = tokio::time::timeout(Duration::from_secs(60), commit.wait(deferred)).await;
        assert!(durable.expect("the deferred ticket was stranded").unwrap() >= deferred);
    }

    #[tokio::test]
    async fn a_lone_deferred_ticket_still_becomes_durable() {
        let (_dir, commit, flushes) = committer();
        let deferred = commit.deferred_ticket();
        assert!(commit.wait(deferred).await.unwrap() >= deferred);
        assert_eq!(flushes.get_sample_count(), 1);
    }
}
