//! The on-disk layout version (`meta` key `layout_version`, u32 BE) and the migration that
//! brings an older data dir up to it when the store opens, so existing data dirs keep working.
//!
//! - 1 (no version key): each record held its whole request and there were no status,
//!   `unfinished` or `finished` indexes (listings filtered, recovery scanned every record).
//! - 2: requests in their own tree, written once; the three indexes (see `indexes`).
//! - 3: an event log value may hold a batch of events (see `events`). Nothing to migrate (a
//!   single event is still a valid value); the version keeps an older binary, which would
//!   misread batches, from opening the data dir.
//! - 4: analytics entries in a binary form (see `analytics`). Nothing to migrate (JSON entries
//!   still read, and are rewritten in the new form when next counted into); the version keeps
//!   an older binary, which would count them from zero, from opening the data dir.
//!
//! The migration is idempotent and writes the version last: a crash halfway runs it again on
//! the next open. It reads the whole history once; every later start reads only `unfinished`.

use serde_json::Value;

use super::{executions, Store};

pub const LAYOUT_VERSION: u32 = 4;
const LAYOUT_KEY: &[u8] = b"layout_version";

impl Store {
    /// The layout the data dir is in: the stored version, 1 for a data dir with executions
    /// but no version, the current one for a new data dir.
    pub fn layout_version(&self) -> sled::Result<u32> {
        Ok(match self.meta.get(LAYOUT_KEY)? {
            Some(v) => u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4])),
            None if self.executions.is_empty() => LAYOUT_VERSION,
            None => 1,
        })
    }

    /// Migrates the data dir to [`LAYOUT_VERSION`] (called by `open`).
    pub(super) fn migrate(&self) -> anyhow::Result<()> {
        let version = self.layout_version()?;
        if version > LAYOUT_VERSION {
            anyhow::bail!(
                "the data dir is in layout {version}, written by a newer switchyard (this one knows up to {LAYOUT_VERSION})"
            );
        }
        if version < 2 {
            let started = std::time::Instant::now();
            let moved = self.split_requests_and_index()?;
            tracing::info!(
                executions = moved,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store migrated to layout 2"
            );
        }
        self.meta
            .insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Layout 1 → 2: each record's `request` moves to `requests`, and every record is indexed.
    fn split_requests_and_index(&self) -> anyhow::Result<usize> {
        let mut count = 0;
        for item in self.executions.iter() {
            let (id, bytes) = item?;
            let mut value: Value = serde_json::from_slice(&bytes)?;
            let request = value.as_object_mut().and_then(|o| o.remove("request"));
            let record = executions::decode(&bytes)?;
            if let Some(request) = request {
                self.requests.insert(&id, serde_json::to_vec(&request)?)?;
                self.executions.insert(&id, executions::encode(&record))?;
            }
            self.reindex(&record)?;
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Event, Status};

    use crate::store::executions::tests::{record, request};

    /// What layout 1 wrote, written with sled directly: the request inside the record, a
    /// project listing entry and an idempotency claim; no version, no status, `unfinished`,
    /// `finished` or `requests` entries.
    fn write_layout_1(db: &sled::Db, id: &str, key: &str, status: Status) {
        let mut rec = record(id, key, "f");
        rec.status = status;
        rec.completed_at_ms = status.is_terminal().then_some(5);
        let mut value = serde_json::to_value(&rec).unwrap();
        value["request"] = serde_json::to_value(request()).unwrap();
        let tree = |name: &str| db.open_tree(name).unwrap();
        tree("executions")
            .insert(id.as_bytes(), serde_json::to_vec(&value).unwrap())
            .unwrap();
        tree("project_index")
            .insert(super::super::indexes::project_key(&rec), &[] as &[u8])
            .unwrap();
        tree("idempotency")
            .insert(
                super::super::joined("p", key.as_bytes()),
                super::super::joined(id, b"f"),
            )
            .unwrap();
        tree("events")
            .insert(
                Store::event_key(id, 1),
                Event::status(1, Status::Pending).encode(),
            )
            .unwrap();
    }

    fn old_data_dir(write: impl FnOnce(&sled::Db)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        // No flusher thread: it could still hold the directory's lock right after the drop.
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .flush_every_ms(None)
            .open()
            .unwrap();
        write(&db);
        db.flush().unwrap();
        drop(db);
        wait_for_unlock(&dir.path().join("db").join("db"));
        dir
    }

    /// sled's IO pool may still hold the file (and its lock) for a moment after the last
    /// handle is dropped: the store opened next would fail on the lock instead of on what is
    /// tested.
    fn wait_for_unlock(file: &std::path::Path) {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(file).unwrap();
        for _ in 0..5_000 {
            // SAFETY: flock on a descriptor we own; the lock goes with the file's close.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("sled still holds the lock on the test data dir");
    }

    #[tokio::test]
    async fn a_layout_1_data_dir_is_migrated_on_open_and_reads_the_same() {
        let dir = old_data_dir(|db| {
            write_layout_1(db, "exec_done", "k1", Status::Completed);
            write_layout_1(db, "exec_running", "k2", Status::Processing);
        });
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.layout_version().unwrap(), LAYOUT_VERSION);

        // The request moved out of the record, whole.
        let raw = store.executions.get("exec_done").unwrap().unwrap();
        let value: Value = serde_json::from_slice(&raw).unwrap();
        assert!(value.get("request").is_none(), "{value}");
        assert_eq!(store.get_request("exec_done").unwrap(), Some(request()));
        assert_eq!(store.get_request("exec_running").unwrap(), Some(request()));
        let done = store.get_execution("exec_done").unwrap().unwrap();
        assert_eq!(done.status, Status::Completed);
        assert!(store.is_acknowledged(&done).unwrap());
        assert_eq!(store.all_events("exec_done").unwrap().len(), 1);

        // The indexes exist: recovery, status listings and the sweep read them.
        let unfinished: Vec<_> = store
            .unfinished_executions()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(unfinished, ["exec_running"]);
        let listed = store
            .list_executions("p", Some(Status::Completed), 10, None)
            .unwrap();
        assert_eq!(listed.records.len(), 1);
        assert_eq!(listed.records[0].id, "exec_done");
        assert_eq!(store.finished.len(), 1);
        // Migrating again (a crash before the version was written) changes nothing.
        store.split_requests_and_index().unwrap();
        assert_eq!(store.get_request("exec_done").unwrap(), Some(request()));
        assert_eq!(store.finished.len(), 1);
        assert_eq!(store.unfinished.len(), 1);
    }

    #[tokio::test]
    async fn a_data_dir_from_a_newer_layout_is_refused() {
        let dir = old_data_dir(|db| {
            db.open_tree("meta")
                .unwrap()
                .insert(LAYOUT_KEY, &(LAYOUT_VERSION + 1).to_be_bytes())
                .unwrap();
        });
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
