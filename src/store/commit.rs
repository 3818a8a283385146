//! Group commit: many writers, one fsync.
//!
//! A writer inserts into sled (memory only), takes a ticket, and waits until the durable
//! watermark reaches it. One task flushes in a loop: it reads the newest ticket, runs one
//! `flush` (write + fsync) on the blocking pool, and then publishes that ticket as durable, so
//! every write made before the ticket was taken is on disk. Under load one fsync covers
//! thousands of events; when idle a lone write waits for exactly one fsync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<Inner>,
}

struct Inner {
    /// Flush latencies go here once the metrics exist.
    flush_seconds: std::sync::OnceLock<prometheus::Histogram>,
    requested: AtomicU64,
    wake: Notify,
    durable: watch::Sender<u64>,
}

impl GroupCommit {
    /// `log_file`: sled's data file. sled 0.34's flush ends with `sync_file_range` on Linux,
    /// which neither flushes the drive's write cache nor the file's size; an `fdatasync` of the
    /// file after each flush does, so "durable" survives a power failure too.
    pub fn start(db: sled::Db, log_file: Option<std::fs::File>) -> GroupCommit {
        let log_file = log_file.map(Arc::new);
        let inner = Arc::new(Inner {
            flush_seconds: std::sync::OnceLock::new(),
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            durable: watch::Sender::new(0),
        });
        // The task lives as long as the runtime it runs on (the server's actix system).
        let task_inner = inner.clone();
        tokio::spawn(async move {
            let inner = task_inner;
            loop {
                let target = inner.requested.load(Ordering::Acquire);
                if target <= *inner.durable.borrow() {
                    inner.wake.notified().await;
                    continue;
                }
                let (db, file) = (db.clone(), log_file.clone());
                let started = std::time::Instant::now();
                let flush = move || -> sled::Result<()> {
                    db.flush()?;
                    if let Some(file) = file {
                        file.sync_data()?;
                    }
                    Ok(())
                };
                match tokio::task::spawn_blocking(flush).await {
                    Ok(Ok(_)) => {
                        if let Some(h) = inner.flush_seconds.get() {
                            h.observe(started.elapsed().as_secs_f64());
                        }
                        inner.durable.send_replace(target);
                    }
                    Ok(Err(err)) => {
                        tracing::error!(error = %err, "store flush failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(_) => return,
                }
            }
        });
        GroupCommit { inner }
    }

    pub fn observe_flushes(&self, histogram: prometheus::Histogram) {
        let _ = self.inner.flush_seconds.set(histogram);
    }

    /// Takes a ticket covering every write made before this call.
    pub fn ticket(&self) -> u64 {
        let t = self.inner.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.inner.wake.notify_one();
        t
    }

    /// Resolves once `ticket` is durable, with the durable watermark (≥ `ticket`).
    pub fn wait(&self, ticket: u64) -> impl std::future::Future<Output = u64> + 'static {
        let mut rx = self.inner.durable.subscribe();
        async move {
            match rx.wait_for(|d| *d >= ticket).await {
                Ok(d) => *d,
                // The store is gone (shutdown): nothing will become durable any more.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Makes everything written so far durable.
    pub async fn sync(&self) -> u64 {
        let t = self.ticket();
        self.wait(t).await
    }
}
