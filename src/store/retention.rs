//! Deleting what is past its retention, one small batch per call, so the background sweep
//! (`crate::retention`) can pause between batches and never holds up the hot path.
//!
//! Each sweep reads only what it deletes (or a bounded window): finished executions and debug
//! logs come off the front of the `finished` index, analytics minutes off the front of each
//! (project, dimension) range; WebSocket tokens off the front of their expiry index
//! (`Store::remove_expired_ws_tokens`). Every delete is idempotent and the index entry that
//! leads to it goes last, so a crash mid-batch is finished by the next sweep.
//!
//! Deleted data is given back by sled's segment cleaning, which keeps up only because its
//! flusher runs often (`SLED_FLUSH_EVERY_MS` in `store/mod.rs`; README "Storage and
//! retention" has the figures).

use super::{indexes, joined, Store};
use crate::domain::ExecutionRecord;

/// `meta` key: the last `finished` key whose debug log was deleted (debug logs are kept for
/// less time than executions, so the execution sweep does not reach them).
const DEBUG_LOG_CURSOR: &[u8] = b"retention.debug_logs";

/// What one batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Items deleted (executions, debug logs, analytics minutes, tokens).
    pub deleted: usize,
    /// Whether the batch was full, so more may be waiting.
    pub more: bool,
}

impl Store {
    /// Deletes up to `batch` executions that finished before `cutoff_ms`, with their request,
    /// events, debug log, idempotency claim, listing entries and webhook job (unless dead). Running
    /// executions are never in `finished`, so never deleted. Returns how many were deleted.
    pub fn sweep_executions(&self, cutoff_ms: u64, batch: usize) -> sled::Result<Swept> {
        let end = indexes::finished_key(cutoff_ms, "");
        let mut deleted = 0;
        let mut seen = 0;
        for item in self.finished.range(..end).take(batch) {
            let (key, _) = item?;
            seen += 1;
            let id = indexes::finished_id(&key);
            match self.get_execution(&id)? {
                // A crash between writing this entry and the terminal record: not finished.
                Some(record) if !record.status.is_terminal() => {}
                Some(record) => {
                    self.delete_execution(&record)?;
                    deleted += 1;
                }
                // A crash after the record was deleted: finish the id-keyed part.
                None => self.delete_by_id(&id)?,
            }
            self.finished.remove(key)?;
        }
        Ok(Swept {
            deleted,
            more: seen == batch,
        })
    }

    pub(super) fn delete_execution(&self, record: &ExecutionRecord) -> sled::Result<()> {
        self.delete_by_id(&record.id)?;
        let idem_key = joined(&record.project_id, record.idempotency_key.as_bytes());
        if self.is_acknowledged(record)? {
            self.idempotency.remove(idem_key)?;
        }
        self.unindex_all(record)?;
        // A dead delivery stays listed for `retention.dead_webhooks` (the outbox's sweep
        // deletes it then); a pending or delivered one has nothing left to deliver.
        if !self.webhook(&record.id)?.is_some_and(|job| job.dead) {
            self.remove_webhook(&record.id)?;
        }
        self.executions.remove(record.id.as_bytes())?;
        Ok(())
    }

    /// Everything keyed by the execution id alone: events, debug log, request (and its
    /// Responses API side).
    fn delete_by_id(&self, id: &str) -> sled::Result<()> {
        remove_prefix(&self.events, &joined(id, &[]))?;
        remove_prefix(&self.attempt_log, &joined(id, &[]))?;
        self.requests.remove(id.as_bytes())?;
        self.responses.remove(id.as_bytes())?;
        Ok(())
    }

    /// Deletes the debug logs of up to `batch` executions that finished before `cutoff_ms`
    /// (and were not deleted whole yet). Returns how many logs had entries to delete.
    pub fn sweep_debug_logs(&self, cutoff_ms: u64, batch: usize) -> sled::Result<Swept> {
        let end = indexes::finished_key(cutoff_ms, "");
        let after = self.meta.get(DEBUG_LOG_CURSOR)?.map(|c| c.to_vec());
        let range = match &after {
            Some(c) if c.as_slice() >= end.as_slice() => return Ok(Swept::default()),
            Some(c) => self.finished.range((
                std::ops::Bound::Excluded(c.clone()),
                std::ops::Bound::Excluded(end),
            )),
            None => self.finished.range(..end),
        };
        let mut deleted = 0;
        let mut seen = 0;
        let mut last = None;
        for item in range.take(batch) {
            let (key, _) = item?;
            seen += 1;
            let id = indexes::finished_id(&key);
            if remove_prefix(&self.attempt_log, &joined(&id, &[]))? > 0 {
                deleted += 1;
            }
            last = Some(key);
        }
        if let Some(last) = last {
            self.meta.insert(DEBUG_LOG_CURSOR, last)?;
        }
        Ok(Swept {
            deleted,
            more: seen == batch,
        })
    }

    /// Deletes up to `batch` analytics minutes that start before `cutoff_secs`: the front of
    /// each (project, dimension) range, skipping from one range to the next.
    pub fn sweep_analytics(&self, cutoff_secs: u64, batch: usize) -> sled::Result<Swept> {
        let mut deleted = 0;
        let mut from: Vec<u8> = Vec::new();
        while deleted < batch {
            let Some(item) = self.analytics.range(from.as_slice()..).next() else {
                break;
            };
            let (key, _) = item?;
            // project ‖ 0 ‖ dimension tag: the range's prefix.
            let Some(zero) = key.iter().position(|b| *b == 0) else {
                break;
            };
            let Some(prefix) = key.get(..zero + 2) else {
                break;
            };
            let mut end = prefix.to_vec();
            end.extend_from_slice(&cutoff_secs.to_be_bytes());
            for old in self
                .analytics
                .range(prefix.to_vec()..end)
                .take(batch - deleted)
            {
                self.analytics.remove(old?.0)?;
                deleted += 1;
            }
            // The next range: the same project with the next dimension tag.
            from = prefix.to_vec();
            let tag = from.last_mut().expect("prefix has a tag");
            match tag.checked_add(1) {
                Some(next) => *tag = next,
                None => from.push(0),
            }
        }
        Ok(Swept {
            deleted,
            more: deleted == batch,
        })
    }
}

/// Removes every key starting with `prefix`; returns how many.
fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> sled::Result<usize> {
    let mut n = 0;
    for item in tree.scan_prefix(prefix).keys() {
        tree.remove(item?)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Event, Status};
    use crate::store::executions::tests::{record, request};
    use crate::store::{AttemptLog, LogEntry, WsTokenRecord};
    use std::sync::Arc;

    fn finished(store: &Store, id: &str, key: &str, at_ms: u64) -> ExecutionRecord {
        let mut rec = record(id, key, "f");
        store
            .create_execution(&rec, &request(), &Event::status(1, Status::Pending))
            .unwrap();
        store
            .append_event(id, &Event::status(2, Status::Completed))
            .unwrap();
        let log = AttemptLog::new(store.clone(), id, 0, Arc::new(request()));
        log.record(LogEntry::Chunk { data: "x" });
        drop(log);
        rec.status = Status::Completed;
        rec.completed_at_ms = Some(at_ms);
        store.put_execution(&rec).unwrap();
        rec
    }

    #[tokio::test]
    async fn executions_finished_before_the_cutoff_go_with_everything_kept_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            finished(&store, &format!("exec_old{i}"), &format!("k{i}"), 1_000 + i);
        }
        let young = finished(&store, "exec_young", "ky", 9_000);
        let running = record("exec_running", "kr", "f");
        store
            .create_execution(&running, &request(), &Event::status(1, Status::Pending))
            .unwrap();

        let first = store.sweep_executions(5_000, 3).unwrap();
        assert_eq!(
            first,
            Swept {
                deleted: 3,
                more: true
            }
        );
        let second = store.sweep_executions(5_000, 3).unwrap();
        assert_eq!(
            second,
            Swept {
                deleted: 2,
                more: false
            }
        );
        assert_eq!(store.sweep_executions(5_000, 3).unwrap().deleted, 0);

        for i in 0..5 {
            let id = format!("exec_old{i}");
            assert!(store.get_execution(&id).unwrap().is_none());
            assert!(store.get_request(&id).unwrap().is_none());
            assert_eq!(store.last_seq(&id).unwrap(), 0);
            assert!(store.attempt_log(&id).unwrap().is_empty());
        }
        // Nothing of theirs is left in any tree but what the others own.
        assert_eq!(store.idempotency.len(), 2);
        assert_eq!(store.project_index.len(), 2);
        assert_eq!(store.status_index.len(), 2);
        assert_eq!(store.requests.len(), 2);
        assert_eq!(store.finished.len(), 1);
        assert!(store.get_execution(&young.id).unwrap().is_some());
        assert_eq!(store.all_events(&young.id).unwrap().len(), 2);
        assert!(store.get_execution(&running.id).unwrap().is_some());
        // Far past every cutoff, a running execution is still not deleted.
        store.sweep_executions(u64::MAX / 2, 10).unwrap();
        assert!(store.get_execution(&running.id).unwrap().is_some());
        assert!(store.get_execution(&young.id).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_dead_webhook_job_outlives_its_execution_and_a_pending_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (id, key, dead) in [("exec_dead", "kd", true), ("exec_pending", "kp", false)] {
            finished(&store, id, key, 1_000);
            store
                .put_webhook(&crate::store::WebhookJob {
                    execution_id: id.into(),
                    project_id: "p".into(),
                    url: "https://hooks.example/x".into(),
                    event_type: "execution.completed".into(),
                    attempts: 1,
                    next_at_ms: 2_000,
                    last_error: None,
                    dead,
                    created_at_ms: 1_000,
                    last_attempt_at_ms: None,
                    delivered_at_ms: None,
                    expires_at_ms: dead.then_some(u64::MAX / 2),
                })
                .unwrap();
        }
        assert_eq!(store.sweep_executions(5_000, 10).unwrap().deleted, 2);
        assert!(store.webhook("exec_dead").unwrap().is_some());
        assert!(store.webhook("exec_pending").unwrap().is_none());
    }

    #[tokio::test]
    async fn debug_logs_go_earlier_than_their_execution_and_are_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        finished(&store, "exec_a", "ka", 1_000);
        finished(&store, "exec_b", "kb", 2_000);
        finished(&store, "exec_c", "kc", 9_000);
        assert_eq!(store.sweep_debug_logs(5_000, 1).unwrap().deleted, 1);
        assert_eq!(store.sweep_debug_logs(5_000, 1).unwrap().deleted, 1);
        // The cursor: what was swept is not read again.
        assert_eq!(store.sweep_debug_logs(5_000, 10).unwrap(), Swept::default());
        assert!(store.attempt_log("exec_a").unwrap().is_empty());
        assert!(store.attempt_log("exec_b").unwrap().is_empty());
        assert_eq!(store.attempt_log("exec_c").unwrap().len(), 1);
        assert!(store.get_execution("exec_a").unwrap().is_some());
        assert_eq!(store.sweep_debug_logs(10_000, 10).unwrap().deleted, 1);
        assert!(store.attempt_log("exec_c").unwrap().is_empty());
    }

    #[tokio::test]
    async fn analytics_minutes_before_the_cutoff_go_in_every_project_and_dimension() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for project in ["acme", "globex"] {
            for minute_ms in [60_000, 120_000, 600_000] {
                let mut rec = record("exec_x", "k", "f");
                rec.project_id = project.into();
                rec.status = Status::Completed;
                rec.completed_at_ms = Some(minute_ms);
                store.count_in_analytics(&rec);
            }
        }
        // Counts go into the tree with the next group commit.
        store.commit.sync().await.unwrap();
        // 2 projects × 2 dimensions × 3 minutes.
        assert_eq!(store.analytics.len(), 12);
        let swept = store.sweep_analytics(300, 100).unwrap();
        assert_eq!(swept.deleted, 8);
        assert!(!swept.more);
        assert_eq!(store.analytics.len(), 4);
        let series = store
            .analytics("acme", crate::store::Dimension::Model, 0, 10_000, 60)
            .unwrap();
        assert_eq!(series["m"].keys().copied().collect::<Vec<_>>(), [600]);
    }

    #[tokio::test]
    async fn expired_ws_tokens_go_in_slices_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let token = |execution_id: String, expires_at_ms| WsTokenRecord {
            project_id: "p".into(),
            execution_id,
            channel: "c".into(),
            expires_at_ms,
            key_id: None,
            key_hash: None,
        };
        let mut old = Vec::new();
        let mut new = Vec::new();
        for i in 0..10 {
            let t = token(format!("exec_old{i}"), 1_000);
            old.push(store.ws_token_for(&t, 0).unwrap());
            let t = token(format!("exec_new{i}"), 9_000);
            new.push(store.ws_token_for(&t, 0).unwrap());
        }
        let mut deleted = 0;
        loop {
            let swept = store.remove_expired_ws_tokens(5_000, 3).unwrap();
            deleted += swept.deleted;
            if !swept.more {
                break;
            }
        }
        assert_eq!(deleted, 10);
        // The live tokens keep their record, expiry entry and per-execution entry.
        assert_eq!(store.ws_tokens.len(), 30);
        assert!(store.take_ws_token(&new[3]).unwrap().is_some());
        assert!(store.take_ws_token(&old[3]).unwrap().is_none());
    }
}
