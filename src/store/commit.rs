//! Group commit: many writers, one fsync.
//!
//! A writer inserts into sled (memory only), takes a ticket, and waits until the durable
//! watermark reaches it. One task flushes in a loop: it reads the newest ticket, runs one
//! `flush` (write + fsync) on the blocking pool, and then publishes that ticket as durable, so
//! every write made before the ticket was taken is on disk. Under load one fsync covers
//! thousands of events; when idle a lone write waits for exactly one fsync.
//!
//! A *deferred* ticket asks for no flush of its own: it rides on the next flush another writer
//! asks for, or on one the committer runs [`DEFER_LIMIT`] later if nobody does. It is for
//! writes nothing is waiting on except their own publication (an execution's `processing`
//! event), which saves a whole flush (sled's write + the fsync) per request.
//!
//! Right before each flush the committer writes what writers staged in memory since the last
//! one ([`Staged`]: running executions' events, one sled value per execution, see
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
    /// Flush latencies go here once the metrics exist.
    flush_seconds: std::sync::OnceLock<prometheus::Histogram>,
    /// The newest ticket, deferred or not.
    requested: AtomicU64,
    /// The newest ticket whose writer wants a flush now.
    urgent: AtomicU64,
    wake: Notify,
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
    pub fn start(
        db: sled::Db,
        log_file: Option<std::fs::File>,
        health: StoreHealth,
        staged: Vec<Arc<dyn Staged>>,
    ) -> GroupCommit {
        let log_file = log_file.map(Arc::new);
        let inner = Arc::new(Inner {
            flush_seconds: std::sync::OnceLock::new(),
            requested: AtomicU64::new(0),
            urgent: AtomicU64::new(0),
            wake: Notify::new(),
            durable: watch::Sender::new(0),
            staged,
            failed: AtomicBool::new(false),
        });
        // The task lives as long as the runtime it runs on (the server's actix system).
        tokio::spawn(commit_loop(inner.clone(), db, log_file, health));
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
        self.inner.urgent.fetch_max(t, Ordering::AcqRel);
        self.inner.wake.notify_one();
        t
    }

    /// A ticket covering every write made before this call that becomes durable with the next
    /// flush anyone asks for, and after at most [`DEFER_LIMIT`] (plus one flush) regardless.
    pub fn deferred_ticket(&self) -> u64 {
        let t = self.inner.requested.fetch_add(1, Ordering::AcqRel) + 1;
        // The committer idles only when nothing is pending: only the first pending ticket has
        // to wake it (it re-reads `requested` after every flush).
        if t - 1 <= *self.inner.durable.borrow() {
            self.inner.wake.notify_one();
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
            match rx.wait_for(|d| *d >= ticket || failed()).await {
                Ok(d) if *d >= ticket => Ok(*d),
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

/// Flushes whenever a ticket is pending, until the runtime stops or a flush fails.
async fn commit_loop(
    inner: Arc<Inner>,
    db: sled::Db,
    log_file: Option<Arc<std::fs::File>>,
    health: StoreHealth,
) {
    loop {
        inner.pending().await;
        let (db, file, task_inner) = (db.clone(), log_file.clone(), inner.clone());
        let flush = move || -> std::io::Result<(u64, Duration)> {
            // Every write made before this load is in what the flush writes: sled's, and the
            // stage's, written after it.
            let target = task_inner.requested.load(Ordering::Acquire);
            let started = std::time::Instant::now();
            task_inner.write_staged().map_err(std::io::Error::other)?;
            db.flush().map_err(std::io::Error::other)?;
            if let Some(file) = file {
                file.sync_data()?;
            }
            Ok((target, started.elapsed()))
        };
        match tokio::task::spawn_blocking(flush).await {
            Ok(Ok((target, took))) => {
                if let Some(h) = inner.flush_seconds.get() {
                    h.observe(took.as_secs_f64());
                }
                inner.durable.send_replace(target);
            }
            Ok(Err(err)) => {
                health.fail(&err);
                inner.failed.store(true, Ordering::Release);
                // Wakes every waiter to see the failure.
                inner.durable.send_modify(|_| {});
                return;
            }
            Err(_) => return,
        }
    }
}

impl Inner {
    fn write_staged(&self) -> sled::Result<()> {
        self.staged.iter().try_for_each(|stage| stage.write())
    }

    /// Resolves when a flush is due: an urgent ticket is pending, or a deferred one has waited
    /// [`DEFER_LIMIT`].
    async fn pending(&self) {
        loop {
            let durable = *self.durable.borrow();
            if self.requested.load(Ordering::Acquire) <= durable {
                self.wake.notified().await;
                continue;
            }
            if self.urgent.load(Ordering::Acquire) <= durable {
                // Only deferred tickets: give an urgent one the chance to take them along.
                let _ = tokio::time::timeout(DEFER_LIMIT, self.wake.notified()).await;
            }
            return;
        }
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

    #[tokio::test]
    async fn a_lone_deferred_ticket_still_becomes_durable() {
        let (_dir, commit, flushes) = committer();
        let deferred = commit.deferred_ticket();
        assert!(commit.wait(deferred).await.unwrap() >= deferred);
        assert_eq!(flushes.get_sample_count(), 1);
    }
}
