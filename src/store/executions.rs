//! Execution records, the idempotency index and the per-project listing index.

use super::{indexes, joined, Store};
use crate::domain::{ChatRequest, Event, ExecutionRecord, Status};

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

pub(super) fn encode(record: &ExecutionRecord) -> Vec<u8> {
    // A record is ~1 KB of JSON: sized once instead of grown from empty (about ten
    // reallocations and copies per encode, three encodes per execution).
    let mut out = Vec::with_capacity(1024);
    serde_json::to_writer(&mut out, record).expect("execution records serialize");
    out
}

pub(super) fn decode(bytes: &[u8]) -> sled::Result<ExecutionRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| sled::Error::Unsupported(format!("corrupt execution record: {e}")))
}

impl Store {
    /// Creates the execution with its first event, unless the project already used this
    /// idempotency key. Race-safe without a transaction: the record, its request and its first
    /// event are written under the fresh id, then the key is claimed with a compare-and-swap;
    /// only the winner adds the listing entries, a loser removes what it wrote and answers
    /// with the winner's execution (whose record exists, since it was written before the
    /// claim). (A sled transaction would switch sled to a process-wide lock that every flush
    /// holds.) The `unfinished` entry comes first, so recovery finds whatever a crash leaves.
    pub fn create_execution(
        &self,
        record: &ExecutionRecord,
        request: &ChatRequest,
        first_event: &Event,
    ) -> sled::Result<SubmitOutcome> {
        // No read of the key first: the compare-and-swap answers the same question, and a
        // retry (the rare case) only costs writing and removing a record.
        let idem_key = joined(&record.project_id, record.idempotency_key.as_bytes());
        let event_key = Self::event_key(&record.id, first_event.seq);
        let id = record.id.as_bytes();
        self.unfinished.insert(id, &[] as &[u8])?;
        self.requests
            .insert(id, serde_json::to_vec(request).expect("requests serialize"))?;
        self.executions.insert(id, encode(record))?;
        self.events
            .insert(event_key.as_slice(), first_event.encode())?;
        let claim = joined(&record.id, record.fingerprint.as_bytes());
        match self
            .idempotency
            .compare_and_swap(&idem_key, None as Option<&[u8]>, Some(claim))?
        {
            Ok(()) => {
                self.project_index
                    .insert(indexes::project_key(record), &[] as &[u8])?;
                self.status_index
                    .insert(indexes::status_key(record, record.status), &[] as &[u8])?;
                Ok(SubmitOutcome::Created)
            }
            Err(lost) => {
                self.executions.remove(id)?;
                self.events.remove(event_key)?;
                self.requests.remove(id)?;
                self.unfinished.remove(id)?;
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

    /// Removes an orphan record, its request, its events and its index entries.
    pub fn remove_orphan(&self, record: &ExecutionRecord) -> sled::Result<()> {
        for key in self
            .events
            .scan_prefix(super::joined(&record.id, &[]))
            .keys()
        {
            self.events.remove(key?)?;
        }
        self.unindex_all(record)?;
        self.requests.remove(record.id.as_bytes())?;
        self.responses.remove(record.id.as_bytes())?;
        self.executions.remove(record.id.as_bytes())?;
        Ok(())
    }

    pub fn get_execution(&self, id: &str) -> sled::Result<Option<ExecutionRecord>> {
        self.executions
            .get(id.as_bytes())?
            .map(|b| decode(&b))
            .transpose()
    }

    /// The request the execution was submitted with (read by the execution actor only).
    pub fn get_request(&self, id: &str) -> sled::Result<Option<ChatRequest>> {
        self.requests
            .get(id.as_bytes())?
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| sled::Error::Unsupported(format!("corrupt request: {e}")))
            })
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

    /// Overwrites the record (never its request) and moves its index entries along with its
    /// status; durable at the writer's next group-commit ticket. The entries of the new status
    /// are written before the record and the old status's entry removed after it (see
    /// `indexes`).
    pub fn put_execution(&self, record: &ExecutionRecord) -> sled::Result<()> {
        let before = self
            .executions
            .get(record.id.as_bytes())?
            .and_then(|b| status_of(&b));
        self.put_execution_over(record, before)
    }

    /// [`Store::put_execution`] for a writer that knows the status of the stored record
    /// (`None`: there is none): the execution actor, the record's only writer while it runs,
    /// saves reading and parsing the record back.
    pub fn put_execution_over(
        &self,
        record: &ExecutionRecord,
        before: Option<Status>,
    ) -> sled::Result<()> {
        let id = record.id.as_bytes();
        let moved = before != Some(record.status);
        if moved {
            self.status_index
                .insert(indexes::status_key(record, record.status), &[] as &[u8])?;
            if record.status.is_terminal() {
                let key = indexes::finished_key(indexes::finished_at_ms(record), &record.id);
                self.finished.insert(key, &[] as &[u8])?;
            }
        }
        self.executions.insert(id, encode(record))?;
        if let Some(before) = before.filter(|_| moved) {
            self.status_index
                .remove(indexes::status_key(record, before))?;
        }
        if moved && record.status.is_terminal() {
            self.unfinished.remove(id)?;
        }
        Ok(())
    }

    /// The project's executions, newest first, optionally of one status: a status reads its
    /// own index, so the page costs the same however many executions have other statuses.
    pub fn list_executions(
        &self,
        project: &str,
        status: Option<Status>,
        limit: usize,
        cursor: Option<&[u8]>,
    ) -> sled::Result<ListPage> {
        let (index, prefix) = match status {
            Some(s) => (&self.status_index, indexes::status_prefix(project, s)),
            None => (&self.project_index, joined(project, &[])),
        };
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
        for item in index.range(start..) {
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
            // A status entry a crash left behind names a record that has moved on.
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

    /// Executions a crash left non-terminal, for recovery at start: read from `unfinished`,
    /// so start-up costs the same however many executions have finished. Entries whose record
    /// is gone or terminal (a crash between two writes) are repaired on the way.
    pub fn unfinished_executions(&self) -> sled::Result<Vec<ExecutionRecord>> {
        let mut out = Vec::new();
        for item in self.unfinished.iter() {
            let (id, _) = item?;
            let id = String::from_utf8_lossy(&id).into_owned();
            match self.get_execution(&id)? {
                None => {
                    self.unfinished.remove(id.as_bytes())?;
                    self.requests.remove(id.as_bytes())?;
                }
                Some(record) if record.status.is_terminal() => self.reindex(&record)?,
                Some(record) => out.push(record),
            }
        }
        Ok(out)
    }
}

/// Only the status of an encoded record: the other fields are skipped, not built.
fn status_of(bytes: &[u8]) -> Option<Status> {
    #[derive(serde::Deserialize)]
    struct OnlyStatus {
        status: Status,
    }
    serde_json::from_slice::<OnlyStatus>(bytes)
        .ok()
        .map(|r| r.status)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::{Message, Params, Role};

    pub(crate) fn request() -> ChatRequest {
        ChatRequest {
            messages: vec![Message::new(Role::User, "hi")],
            params: Params::default(),
            ..ChatRequest::default()
        }
    }

    pub(crate) fn record(id: &str, key: &str, fingerprint: &str) -> ExecutionRecord {
        ExecutionRecord {
            id: id.into(),
            project_id: "p".into(),
            status: Status::Pending,
            model: "m".into(),
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
            key_id: None,
            cost: None,
            created_at_ms: 1,
            started_at_ms: None,
            completed_at_ms: None,
            design: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_lost_claim_leaves_nothing_behind_and_names_the_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = Event::status(1, Status::Pending);
        let a = record("exec_a", "k", "f1");
        assert!(matches!(
            store.create_execution(&a, &request(), &first).unwrap(),
            SubmitOutcome::Created
        ));
        let b = record("exec_b", "k", "f1");
        match store.create_execution(&b, &request(), &first).unwrap() {
            SubmitOutcome::Existing { id, same_body } => assert!(id == "exec_a" && same_body),
            SubmitOutcome::Created => panic!("the key was taken"),
        }
        let c = record("exec_c", "k", "other");
        assert!(matches!(
            store.create_execution(&c, &request(), &first).unwrap(),
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
            .create_execution(&claimed, &request(), &Event::status(1, Status::Pending))
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

    /// Records that cannot be decoded: reading one fails, so a read that touches only the
    /// index it needs must not reach them.
    fn poison(store: &Store, id: &str) {
        store.executions.insert(id.as_bytes(), b"not json").unwrap();
    }

    fn with_status(id: &str, key: &str, status: Status, created_at_ms: u64) -> ExecutionRecord {
        let mut rec = record(id, key, "f");
        rec.status = status;
        rec.created_at_ms = created_at_ms;
        rec
    }

    #[tokio::test]
    async fn recovery_and_status_listings_read_only_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = Event::status(1, Status::Pending);
        for i in 0..30 {
            let id = format!("exec_done{i:02}");
            let mut rec = with_status(&id, &id, Status::Pending, 100 + i);
            store.create_execution(&rec, &request(), &first).unwrap();
            rec.status = Status::Completed;
            rec.completed_at_ms = Some(500);
            store.put_execution(&rec).unwrap();
        }
        for i in 0..3 {
            let id = format!("exec_run{i}");
            let mut rec = with_status(&id, &id, Status::Pending, 200 + i);
            store.create_execution(&rec, &request(), &first).unwrap();
            rec.status = Status::Processing;
            store.put_execution(&rec).unwrap();
        }
        for i in 0..30 {
            poison(&store, &format!("exec_done{i:02}"));
        }
        let mut unfinished: Vec<_> = store
            .unfinished_executions()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        unfinished.sort();
        assert_eq!(unfinished, ["exec_run0", "exec_run1", "exec_run2"]);

        // Pages of a status listing, newest first, with cursors.
        let page = store
            .list_executions("p", Some(Status::Processing), 2, None)
            .unwrap();
        let ids: Vec<_> = page.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["exec_run2", "exec_run1"]);
        let cursor = hex::decode(page.next_cursor.unwrap()).unwrap();
        let page = store
            .list_executions("p", Some(Status::Processing), 2, Some(&cursor))
            .unwrap();
        let ids: Vec<_> = page.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["exec_run0"]);
        assert!(page.next_cursor.is_none());
        // A status the record moved away from lists it no more.
        let pending = store
            .list_executions("p", Some(Status::Pending), 10, None)
            .unwrap();
        assert!(pending.records.is_empty());
        assert_eq!(store.unfinished.len(), 3);
        assert_eq!(store.finished.len(), 30);
    }
}
