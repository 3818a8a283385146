//! Execution records, the idempotency index and the per-project listing index.

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
    /// idempotency key. Race-safe without a transaction: the record and its first event are
    /// written under the fresh id, then the key is claimed with a compare-and-swap; only the
    /// winner adds the listing entry, a loser removes what it wrote and answers with the
    /// winner's execution (whose record exists, since it was written before the claim).
    /// (A sled transaction would switch sled to a process-wide lock that every flush holds.)
    pub fn create_execution(
        &self,
        record: &ExecutionRecord,
        first_event: &Event,
    ) -> sled::Result<SubmitOutcome> {
        // No read of the key first: the compare-and-swap answers the same question, and a
        // retry (the rare case) only costs writing and removing a record.
        let idem_key = joined(&record.project_id, record.idempotency_key.as_bytes());
        let event_key = Self::event_key(&record.id, first_event.seq);
        self.executions
            .insert(record.id.as_bytes(), encode(record))?;
        self.events
            .insert(event_key.as_slice(), first_event.encode())?;
        let claim = joined(&record.id, record.fingerprint.as_bytes());
        match self
            .idempotency
            .compare_and_swap(&idem_key, None as Option<&[u8]>, Some(claim))?
        {
            Ok(()) => {
                self.project_index.insert(index_key(record), &[] as &[u8])?;
                Ok(SubmitOutcome::Created)
            }
            Err(lost) => {
                self.executions.remove(record.id.as_bytes())?;
                self.events.remove(event_key)?;
                let winner = lost.current.unwrap_or_default();
                Ok(Self::existing(&winner, &record.fingerprint))
            }
        }
    }

    fn existing(claim: &[u8], fingerprint: &str) -> SubmitOutcome {
        let mut parts = claim.splitn(2, |b| *b == 0);
        let id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let same_body = parts.next() == Some(fingerprint.as_bytes());
        SubmitOutcome::Existing { id, same_body }
    }

    /// Whether the record is the one its idempotency key names. A crash between writing a
    /// record and claiming its key leaves an orphan nobody was told about.
    pub fn is_acknowledged(&self, record: &ExecutionRecord) -> sled::Result<bool> {
        let idem_key = joined(&record.project_id, record.idempotency_key.as_bytes());
        Ok(self.idempotency.get(idem_key)?.is_some_and(|claim| {
            claim.starts_with(record.id.as_bytes()) && claim.get(record.id.len()) == Some(&0)
        }))
    }

    /// Removes an orphan record and its events.
    pub fn remove_orphan(&self, record: &ExecutionRecord) -> sled::Result<()> {
        for event in self.all_events(&record.id)? {
            self.events.remove(Self::event_key(&record.id, event.seq))?;
        }
        self.executions.remove(record.id.as_bytes())?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChatRequest, Message, Params, Role};

    fn record(id: &str, key: &str, fingerprint: &str) -> ExecutionRecord {
        ExecutionRecord {
            id: id.into(),
            project_id: "p".into(),
            status: Status::Pending,
            model: "m".into(),
            request: ChatRequest {
                messages: vec![Message::new(Role::User, "hi")],
                params: Params::default(),
            },
            idempotency_key: key.into(),
            fingerprint: fingerprint.into(),
            metadata: Default::default(),
            webhook_url: None,
            channel_id: "ch".into(),
            output_text: None,
            output_tool_calls: Vec::new(),
            error: None,
            finish_reason: None,
            usage: None,
            attempts: Vec::new(),
            created_at_ms: 1,
            started_at_ms: None,
            completed_at_ms: None,
        }
    }

    #[tokio::test]
    async fn a_lost_claim_leaves_nothing_behind_and_names_the_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = Event::status(1, Status::Pending);
        let a = record("exec_a", "k", "f1");
        assert!(matches!(
            store.create_execution(&a, &first).unwrap(),
            SubmitOutcome::Created
        ));
        let b = record("exec_b", "k", "f1");
        match store.create_execution(&b, &first).unwrap() {
            SubmitOutcome::Existing { id, same_body } => assert!(id == "exec_a" && same_body),
            SubmitOutcome::Created => panic!("the key was taken"),
        }
        let c = record("exec_c", "k", "other");
        assert!(matches!(
            store.create_execution(&c, &first).unwrap(),
            SubmitOutcome::Existing {
                same_body: false,
                ..
            }
        ));
        assert!(store.get_execution("exec_b").unwrap().is_none());
        assert_eq!(store.last_seq("exec_b").unwrap(), 0);
        assert_eq!(
            store
                .list_executions("p", None, 10, None)
                .unwrap()
                .records
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn a_record_without_its_claim_is_an_orphan_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let claimed = record("exec_a", "k", "f");
        store
            .create_execution(&claimed, &Event::status(1, Status::Pending))
            .unwrap();
        assert!(store.is_acknowledged(&claimed).unwrap());
        // What a crash between the record write and the claim leaves.
        let orphan = record("exec_ab", "k2", "f");
        store.put_execution(&orphan).unwrap();
        store
            .append_event("exec_ab", &Event::status(1, Status::Pending))
            .unwrap();
        assert!(!store.is_acknowledged(&orphan).unwrap());
        store.remove_orphan(&orphan).unwrap();
        assert!(store.get_execution("exec_ab").unwrap().is_none());
        assert_eq!(store.last_seq("exec_ab").unwrap(), 0);
        assert!(store.get_execution("exec_a").unwrap().is_some());
    }
}
