//! Execution records, the idempotency index and the per-project listing index.

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{joined, Store};
use crate::domain::{Event, ExecutionRecord, Status};

/// What a submit found: a new execution, or the one an earlier request with the same
/// idempotency key created.
pub enum SubmitOutcome {
    Created,
    Existing { id: String, same_body: bool },
}

pub struct ListPage {
    pub records: Vec<ExecutionRecord>,
    /// Opaque position after the last record, when more may follow.
    pub next_cursor: Option<String>,
}

fn encode(record: &ExecutionRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("execution records serialize")
}

fn decode(bytes: &[u8]) -> sled::Result<ExecutionRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| sled::Error::Unsupported(format!("corrupt execution record: {e}")))
}

fn index_key(record: &ExecutionRecord) -> Vec<u8> {
    // Newest first: the creation time inverted, then the id to break ties.
    let mut rest = (u64::MAX - record.created_at_ms).to_be_bytes().to_vec();
    rest.extend_from_slice(record.id.as_bytes());
    joined(&record.project_id, &rest)
}

impl Store {
    /// Creates the execution with its first event, unless the project already used this
    /// idempotency key. One transaction over all trees, so concurrent identical submits
    /// produce exactly one execution (the others see `Existing`).
    pub fn create_execution(
        &self,
        record: &ExecutionRecord,
        first_event: &Event,
    ) -> sled::Result<SubmitOutcome> {
        let idem_key = joined(&record.project_id, record.idempotency_key.as_bytes());
        let idem_value = joined(&record.id, record.fingerprint.as_bytes());
        let record_bytes = encode(record);
        let index = index_key(record);
        let event_key = Self::event_key(&record.id, first_event.seq);
        let event_value = first_event.encode();
        let result = (
            &self.idempotency,
            &self.executions,
            &self.project_index,
            &self.events,
        )
            .transaction(|(idem, execs, idx, events)| {
                if let Some(existing) = idem.get(&idem_key)? {
                    let mut parts = existing.splitn(2, |b| *b == 0);
                    let id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let same_body = parts.next() == Some(record.fingerprint.as_bytes());
                    return Ok(SubmitOutcome::Existing { id, same_body });
                }
                idem.insert(idem_key.as_slice(), idem_value.as_slice())?;
                execs.insert(record.id.as_bytes(), record_bytes.as_slice())?;
                idx.insert(index.as_slice(), &[] as &[u8])?;
                events.insert(event_key.as_slice(), event_value.as_slice())?;
                Ok::<_, ConflictableTransactionError<sled::Error>>(SubmitOutcome::Created)
            });
        match result {
            Ok(outcome) => Ok(outcome),
            Err(TransactionError::Abort(e)) | Err(TransactionError::Storage(e)) => Err(e),
        }
    }

    pub fn get_execution(&self, id: &str) -> sled::Result<Option<ExecutionRecord>> {
        self.executions
            .get(id.as_bytes())?
            .map(|b| decode(&b))
            .transpose()
    }

    /// The execution if it belongs to `project` (a foreign id is indistinguishable from an
    /// unknown one).
    pub fn get_project_execution(
        &self,
        project: &str,
        id: &str,
    ) -> sled::Result<Option<ExecutionRecord>> {
        Ok(self.get_execution(id)?.filter(|r| r.project_id == project))
    }

    /// Overwrites the record; durable at the writer's next group-commit ticket.
    pub fn put_execution(&self, record: &ExecutionRecord) -> sled::Result<()> {
        self.executions
            .insert(record.id.as_bytes(), encode(record))?;
        Ok(())
    }

    /// The project's executions, newest first, optionally of one status.
    pub fn list_executions(
        &self,
        project: &str,
        status: Option<Status>,
        limit: usize,
        cursor: Option<&[u8]>,
    ) -> sled::Result<ListPage> {
        let prefix = joined(project, &[]);
        let start = match cursor {
            Some(c) => {
                let mut k = prefix.clone();
                k.extend_from_slice(c);
                k.push(0); // strictly after the cursor's key
                k
            }
            None => prefix.clone(),
        };
        let mut records = Vec::new();
        let mut last_key: Option<Vec<u8>> = None;
        let mut more = false;
        for item in self.project_index.range(start..) {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            if records.len() == limit {
                more = true;
                break;
            }
            let id = String::from_utf8_lossy(&key[prefix.len() + 8..]).into_owned();
            let Some(record) = self.get_execution(&id)? else {
                continue;
            };
            last_key = Some(key[prefix.len()..].to_vec());
            if status.is_none_or(|s| record.status == s) {
                records.push(record);
            }
        }
        Ok(ListPage {
            records,
            next_cursor: if more {
                last_key.map(hex::encode)
            } else {
                None
            },
        })
    }

    /// Executions a crash left non-terminal, for recovery at start.
    pub fn unfinished_executions(&self) -> sled::Result<Vec<ExecutionRecord>> {
        let mut out = Vec::new();
        for item in self.executions.iter() {
            let (_, bytes) = item?;
            let record = decode(&bytes)?;
            if !record.status.is_terminal() {
                out.push(record);
            }
        }
        Ok(out)
    }
}
