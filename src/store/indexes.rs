//! Secondary indexes over the executions, so that no read and no start-up walks the whole
//! history:
//!
//! - `status_index` (project ‖ 0 ‖ status tag ‖ !created BE ‖ id → ()): `?status=` listings
//!   read only executions of that status, newest first, with the same cursors as the
//!   unfiltered listing (`!created BE ‖ id`).
//! - `unfinished` (id → ()): what recovery at start reads; an execution leaves it when its
//!   terminal record is written.
//! - `finished` (completed BE ‖ id → ()): terminal executions by completion time, oldest
//!   first, so the retention sweep reads only what it deletes.
//!
//! No transactions (see `create_execution`): each index is written so that a crash between
//! two writes leaves an extra entry, which its reader checks against the record and skips or
//! repairs, never a missing one.

use super::{joined, Store};
use crate::domain::{ExecutionRecord, Status};

/// One byte per status, stable on disk (not the enum's discriminant).
fn status_tag(status: Status) -> u8 {
    match status {
        Status::Pending => 1,
        Status::Processing => 2,
        Status::Completed => 3,
        Status::Failed => 4,
        Status::Cancelled => 5,
        Status::Expired => 6,
    }
}

/// `!created BE ‖ id`: newest first, ties broken by id; the position a listing cursor names.
pub(super) fn listing_suffix(record: &ExecutionRecord) -> Vec<u8> {
    let mut rest = (u64::MAX - record.created_at_ms).to_be_bytes().to_vec();
    rest.extend_from_slice(record.id.as_bytes());
    rest
}

/// The project listing's key (`project_index`).
pub(super) fn project_key(record: &ExecutionRecord) -> Vec<u8> {
    joined(&record.project_id, &listing_suffix(record))
}

/// Where a status listing of `project` starts.
pub(super) fn status_prefix(project: &str, status: Status) -> Vec<u8> {
    joined(project, &[status_tag(status)])
}

pub(super) fn status_key(record: &ExecutionRecord, status: Status) -> Vec<u8> {
    let mut key = status_prefix(&record.project_id, status);
    key.extend_from_slice(&listing_suffix(record));
    key
}

/// When a terminal record counts as finished: its completion, or its creation for a record
/// that never recorded one.
pub(super) fn finished_at_ms(record: &ExecutionRecord) -> u64 {
    record.completed_at_ms.unwrap_or(record.created_at_ms)
}

pub(super) fn finished_key(at_ms: u64, id: &str) -> Vec<u8> {
    let mut key = at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// The id in a `finished` key.
pub(super) fn finished_id(key: &[u8]) -> String {
    String::from_utf8_lossy(key.get(8..).unwrap_or_default()).into_owned()
}

impl Store {
    /// Writes every index entry the record should have (idempotent). Used by the migration
    /// and by recovery, which cannot know which of a crashed writer's entries made it.
    pub fn reindex(&self, record: &ExecutionRecord) -> sled::Result<()> {
        self.project_index
            .insert(project_key(record), &[] as &[u8])?;
        self.status_index
            .insert(status_key(record, record.status), &[] as &[u8])?;
        if record.status.is_terminal() {
            let key = finished_key(finished_at_ms(record), &record.id);
            self.finished.insert(key, &[] as &[u8])?;
            self.unfinished.remove(record.id.as_bytes())?;
        } else {
            self.unfinished.insert(record.id.as_bytes(), &[] as &[u8])?;
        }
        Ok(())
    }

    /// Removes every index entry of the record (its project listing, every status it may have
    /// been listed under, `unfinished` and `finished`).
    pub(super) fn unindex_all(&self, record: &ExecutionRecord) -> sled::Result<()> {
        self.project_index.remove(project_key(record))?;
        for status in [
            Status::Pending,
            Status::Processing,
            Status::Completed,
            Status::Failed,
            Status::Cancelled,
            Status::Expired,
        ] {
            self.status_index.remove(status_key(record, status))?;
        }
        self.unfinished.remove(record.id.as_bytes())?;
        self.finished
            .remove(finished_key(finished_at_ms(record), &record.id))?;
        Ok(())
    }
}
