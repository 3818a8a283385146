//! Whether the store can take writes: no write has failed, and the data dir's file system has
//! more free space than the floor (`limits.min_free_disk_mb`).
//!
//! sled poisons itself on the first failed write (a full disk, an I/O error): every later write
//! of that instance fails, even once space is back, so a failure is final for this store. The
//! server then refuses new work and answers not-ready; once space is back it reopens the store
//! (see `startup`), which recovers exactly like a start after a crash.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often free space is measured (one `statvfs`).
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The most often a persisting storage problem is logged.
const LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct StoreHealth {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    floor_bytes: u64,
    /// Free bytes at the last check (`u64::MAX` until measured or when it cannot be measured).
    free_bytes: AtomicU64,
    /// The first write failure, if any: final for this store instance.
    failure: watch::Sender<Option<Arc<str>>>,
    /// When each kind of storage warning was last logged.
    last_logged: Mutex<[Option<Instant>; 2]>,
}

/// Why the store refuses new work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A write failed; the store is reopened once space is back.
    Failed(Arc<str>),
    /// Free space fell under the floor; running executions may still finish.
    LowDisk { free_bytes: u64, floor_bytes: u64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Failed(err) => write!(f, "the store cannot write ({err})"),
            Refusal::LowDisk {
                free_bytes,
                floor_bytes,
            } => write!(
                f,
                "the store's disk has {} MB free, under limits.min_free_disk_mb = {}",
                free_bytes / (1024 * 1024),
                floor_bytes / (1024 * 1024)
            ),
        }
    }
}

impl StoreHealth {
    pub fn new(dir: &Path, floor_mb: u64) -> StoreHealth {
        let health = StoreHealth {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                floor_bytes: floor_mb.saturating_mul(1024 * 1024),
                free_bytes: AtomicU64::new(u64::MAX),
                failure: watch::Sender::new(None),
                last_logged: Mutex::new([None; 2]),
            }),
        };
        health.measure();
        health
    }

    /// Every [`DISK_CHECK_INTERVAL`] while the runtime runs: measures free space, and probes
    /// whether sled is poisoned with a flush (free when nothing is dirty), so a failed write
    /// is noticed even when nobody waits on a group commit.
    pub fn start_monitor(&self, db: sled::Db) {
        let health = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DISK_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (h, db) = (health.clone(), db.clone());
                let check = move || {
                    h.measure();
                    if h.failure().is_none() {
                        if let Err(err) = db.flush() {
                            h.fail(&err);
                        }
                    }
                };
                if tokio::task::spawn_blocking(check).await.is_err() {
                    return;
                }
            }
        });
    }

    fn measure(&self) {
        let free = free_bytes(&self.inner.dir).unwrap_or(u64::MAX);
        self.inner.free_bytes.store(free, Ordering::Relaxed);
        if free < self.inner.floor_bytes && self.failure().is_none() {
            self.log_throttled(1, || {
                tracing::warn!(
                    free_mb = free / (1024 * 1024),
                    floor_mb = self.inner.floor_bytes / (1024 * 1024),
                    "free disk space under limits.min_free_disk_mb: refusing new work"
                )
            });
        }
    }

    /// Records a failed write. The first failure is kept (and logged); later ones are the same
    /// poisoned store speaking again.
    pub fn fail(&self, err: &dyn std::fmt::Display) {
        let message: Arc<str> = err.to_string().into();
        let first = self.inner.failure.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(message.clone());
            true
        });
        if first {
            tracing::error!(error = %message, "a store write failed: refusing new work until the store is reopened");
        }
    }

    pub fn failure(&self) -> Option<Arc<str>> {
        self.inner.failure.borrow().clone()
    }

    pub fn free_bytes(&self) -> u64 {
        self.inner.free_bytes.load(Ordering::Relaxed)
    }

    /// `Ok` when new work may be accepted.
    pub fn admit(&self) -> Result<(), Refusal> {
        if let Some(err) = self.failure() {
            return Err(Refusal::Failed(err));
        }
        let free_bytes = self.free_bytes();
        if free_bytes < self.inner.floor_bytes {
            return Err(Refusal::LowDisk {
                free_bytes,
                floor_bytes: self.inner.floor_bytes,
            });
        }
        Ok(())
    }

    /// Resolves once a write has failed and the disk has room again (above the floor, and at
    /// least the room sled needs to reopen): the moment to reopen the store.
    pub async fn reopen_due(&self) {
        let mut failure = self.inner.failure.subscribe();
        let _ = failure.wait_for(|f| f.is_some()).await;
        let room = self.inner.floor_bytes.max(REOPEN_ROOM);
        loop {
            // Measured now: the monitor's last figure may predate whatever filled the disk.
            let health = self.clone();
            let _ = tokio::task::spawn_blocking(move || health.measure()).await;
            if self.free_bytes() >= room {
                return;
            }
            self.log_throttled(0, || {
                tracing::warn!(
                    free_mb = self.free_bytes() / (1024 * 1024),
                    "the store cannot write; waiting for disk space to reopen it"
                )
            });
            tokio::time::sleep(DISK_CHECK_INTERVAL).await;
        }
    }

    /// Runs `log` unless warning `kind` was logged within [`LOG_EVERY`].
    fn log_throttled(&self, kind: usize, log: impl FnOnce()) {
        let mut last = self
            .inner
            .last_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last[kind].is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            return;
        }
        last[kind] = Some(now);
        drop(last);
        log();
    }
}

/// Free space a reopen needs at least, whatever the floor: sled writes a new segment on open.
const REOPEN_ROOM: u64 = 4 * 1024 * 1024;

/// Bytes available to an unprivileged writer on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is written by statvfs before it is read.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_free_space_refuses_new_work() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StoreHealth::new(dir.path(), 0).admit(), Ok(()));
        let refusal = StoreHealth::new(dir.path(), u64::MAX / (1024 * 1024))
            .admit()
            .unwrap_err();
        assert!(matches!(refusal, Refusal::LowDisk { .. }), "{refusal:?}");
    }

    #[test]
    fn the_first_failure_is_kept_and_refuses_new_work() {
        let dir = tempfile::tempdir().unwrap();
        let health = StoreHealth::new(dir.path(), 0);
        health.fail(&"disk full");
        health.fail(&"something later");
        assert_eq!(health.admit(), Err(Refusal::Failed("disk full".into())));
    }
}
