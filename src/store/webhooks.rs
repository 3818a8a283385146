//! The webhook outbox: one job per terminal execution with a `webhook_url`, written with the
//! terminal record (so it is durable exactly when the `done` event is), kept after delivery or
//! after giving up until retention removes it; and each project's signing secrets.
//!
//! Trees: `webhooks` (execution id → job), `webhook_due` (project ‖ 0 ‖ due ms BE ‖ id →
//! destination) holding only pending jobs, so the deliverer reads what is due per project
//! without touching the rest; `webhook_by_project` (project ‖ 0 ‖ id → ()) for the listing
//! (ids are time-ordered); `webhook_expiry` (expiry ms BE ‖ id → ()) for finished jobs;
//! `webhook_secrets` (project → secrets).
//!
//! No sled transactions (see `executions.rs`): each change writes in an order whose crash
//! leftovers are harmless. An index entry that disagrees with its job is stale and dropped
//! when met; a job a crash left without its index entries is re-indexed at start.

use serde::{Deserialize, Serialize};

use super::{joined, Store};

#[derive(Clone)]
pub struct WebhookTrees {
    jobs: sled::Tree,
    due: sled::Tree,
    by_project: sled::Tree,
    expiry: sled::Tree,
    /// Shared in a cluster: every node signs with the same secrets.
    pub(super) secrets: super::SharedTree,
}

impl WebhookTrees {
    pub fn open(
        db: &sled::Db,
        replication: &std::sync::Arc<super::Replication>,
    ) -> sled::Result<WebhookTrees> {
        Ok(WebhookTrees {
            jobs: db.open_tree("webhooks")?,
            due: db.open_tree("webhook_due")?,
            by_project: db.open_tree("webhook_by_project")?,
            expiry: db.open_tree("webhook_expiry")?,
            secrets: super::SharedTree::open(db, "webhook_secrets", replication)?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookJob {
    pub execution_id: String,
    /// Empty in jobs written before projects were recorded; filled in at start.
    #[serde(default)]
    pub project_id: String,
    pub url: String,
    /// `execution.completed`, `execution.failed`, …
    pub event_type: String,
    pub attempts: u32,
    /// When the next try is due (meaningful while pending).
    pub next_at_ms: u64,
    pub last_error: Option<String>,
    /// Given up (after the last retry, or at once for a refused destination).
    pub dead: bool,
    #[serde(default)]
    pub created_at_ms: u64,
    #[serde(default)]
    pub last_attempt_at_ms: Option<u64>,
    #[serde(default)]
    pub delivered_at_ms: Option<u64>,
    /// When a finished (delivered or dead) job is deleted.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        [Self::Pending, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

impl WebhookJob {
    /// A job due now.
    pub fn new(
        execution_id: &str,
        project_id: &str,
        url: &str,
        event_type: String,
        now_ms: u64,
    ) -> WebhookJob {
        WebhookJob {
            execution_id: execution_id.to_string(),
            project_id: project_id.to_string(),
            url: url.to_string(),
            event_type,
            attempts: 0,
            next_at_ms: now_ms,
            last_error: None,
            dead: false,
            created_at_ms: now_ms,
            last_attempt_at_ms: None,
            delivered_at_ms: None,
            expires_at_ms: None,
        }
    }

    pub fn status(&self) -> DeliveryStatus {
        match (self.delivered_at_ms, self.dead) {
            (Some(_), _) => DeliveryStatus::Delivered,
            (None, true) => DeliveryStatus::Dead,
            (None, false) => DeliveryStatus::Pending,
        }
    }

    /// What the per-destination limit counts: scheme, host and port.
    pub fn destination(&self) -> String {
        destination(&self.url)
    }

    fn due_key(&self) -> Vec<u8> {
        let mut rest = self.next_at_ms.to_be_bytes().to_vec();
        rest.extend_from_slice(self.execution_id.as_bytes());
        joined(&self.project_id, &rest)
    }

    fn project_key(&self) -> Vec<u8> {
        joined(&self.project_id, self.execution_id.as_bytes())
    }

    fn expiry_key(&self) -> Option<Vec<u8>> {
        let at = self.expires_at_ms?;
        let mut key = at.to_be_bytes().to_vec();
        key.extend_from_slice(self.execution_id.as_bytes());
        Some(key)
    }
}

pub fn destination(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_string(),
    }
}

/// A due job as the index has it: enough to schedule without reading the job.
#[derive(Debug, Clone)]
pub struct DueEntry {
    pub execution_id: String,
    pub project_id: String,
    pub destination: String,
    pub due_at_ms: u64,
}

/// A project's due entries, oldest first, and the earliest not yet due.
#[derive(Debug, Default)]
pub struct DueScan {
    pub projects: Vec<(String, Vec<DueEntry>)>,
    pub next_due_ms: Option<u64>,
}

pub struct DeliveryPage {
    pub jobs: Vec<WebhookJob>,
    pub next_cursor: Option<String>,
}

/// A project's signing secrets: the current one and, during a rotation's grace period, the
/// one it replaced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SigningSecrets {
    pub current: String,
    pub created_at_ms: u64,
    pub previous: Option<String>,
    pub previous_expires_at_ms: Option<u64>,
}

impl SigningSecrets {
    /// The secrets a delivery at `now_ms` is signed with, current first.
    pub fn active(&self, now_ms: u64) -> Vec<&str> {
        let mut active = vec![self.current.as_str()];
        if let (Some(old), Some(until)) = (&self.previous, self.previous_expires_at_ms) {
            if now_ms < until {
                active.push(old);
            }
        }
        active
    }
}

impl SigningSecrets {
    /// A project's first secrets: `seed` when given, a random secret without.
    pub fn first(seed: Option<&str>) -> SigningSecrets {
        SigningSecrets {
            current: seed.map(str::to_string).unwrap_or_else(new_secret),
            created_at_ms: crate::domain::now_ms(),
            previous: None,
            previous_expires_at_ms: None,
        }
    }
}

fn new_secret() -> String {
    format!("whsec_{}", crate::domain::ids::random_token(40))
}

impl Store {
    /// Records a new job (from the terminal record): job first, then its indexes.
    pub fn put_webhook(&self, job: &WebhookJob) -> sled::Result<()> {
        let t = &self.webhooks;
        t.jobs.insert(job.execution_id.as_bytes(), encode(job))?;
        t.by_project.insert(job.project_key(), &[])?;
        if job.status() == DeliveryStatus::Pending {
            t.due.insert(job.due_key(), job.destination().as_bytes())?;
        }
        Ok(())
    }

    /// Stores `job` after a try: reschedules it or finishes it. `due_at_ms` is the due time its
    /// index entry was found under.
    pub fn update_webhook(&self, job: &WebhookJob, due_at_ms: u64) -> sled::Result<()> {
        let t = &self.webhooks;
        let old = WebhookJob {
            next_at_ms: due_at_ms,
            ..job.clone()
        };
        if let Some(key) = job.expiry_key() {
            t.expiry.insert(key, &[])?;
        }
        t.jobs.insert(job.execution_id.as_bytes(), encode(job))?;
        if job.status() == DeliveryStatus::Pending {
            t.due.insert(job.due_key(), job.destination().as_bytes())?;
        }
        if old.due_key() != job.due_key() || job.status() != DeliveryStatus::Pending {
            t.due.remove(old.due_key())?;
        }
        Ok(())
    }

    /// Makes a delivered or dead job pending again, due at `now_ms` with a fresh attempt budget
    /// (a manual redelivery). Job first, then its due entry; the stale expiry entry is dropped
    /// (the sweep would skip it anyway).
    pub fn requeue_webhook(&self, job: &WebhookJob, now_ms: u64) -> sled::Result<WebhookJob> {
        let t = &self.webhooks;
        let requeued = WebhookJob {
            attempts: 0,
            next_at_ms: now_ms,
            dead: false,
            delivered_at_ms: None,
            expires_at_ms: None,
            ..job.clone()
        };
        t.jobs
            .insert(requeued.execution_id.as_bytes(), encode(&requeued))?;
        t.due
            .insert(requeued.due_key(), requeued.destination().as_bytes())?;
        if let Some(key) = job.expiry_key() {
            t.expiry.remove(key)?;
        }
        Ok(requeued)
    }

    /// Writes a job as another node of the cluster wrote it, moving its index entries.
    pub fn apply_webhook(&self, job: &WebhookJob) -> sled::Result<()> {
        match self.webhook(&job.execution_id)? {
            Some(local) => self.update_webhook(job, local.next_at_ms),
            None => {
                self.put_webhook(job)?;
                if let Some(key) = job.expiry_key() {
                    self.webhooks.expiry.insert(key, &[])?;
                }
                Ok(())
            }
        }
    }

    pub fn webhook(&self, execution_id: &str) -> sled::Result<Option<WebhookJob>> {
        Ok(self
            .webhooks
            .jobs
            .get(execution_id.as_bytes())?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Removes a job and its index entries (e.g. with its execution).
    pub fn remove_webhook(&self, execution_id: &str) -> sled::Result<()> {
        let t = &self.webhooks;
        let Some(job) = self.webhook(execution_id)? else {
            t.jobs.remove(execution_id.as_bytes())?;
            return Ok(());
        };
        t.due.remove(job.due_key())?;
        t.by_project.remove(job.project_key())?;
        if let Some(key) = job.expiry_key() {
            t.expiry.remove(key)?;
        }
        t.jobs.remove(execution_id.as_bytes())?;
        Ok(())
    }

    /// Drops a due entry that no longer matches its job.
    pub fn drop_due_entry(&self, entry: &DueEntry) -> sled::Result<()> {
        let mut rest = entry.due_at_ms.to_be_bytes().to_vec();
        rest.extend_from_slice(entry.execution_id.as_bytes());
        self.webhooks.due.remove(joined(&entry.project_id, &rest))?;
        Ok(())
    }

    /// Per project with pending jobs: up to `per_project` entries due at `now_ms` that `skip`
    /// does not reject (in flight, destination busy), oldest first. Reads one index range per
    /// project, never the jobs themselves.
    pub fn due_webhooks(
        &self,
        now_ms: u64,
        per_project: usize,
        mut skip: impl FnMut(&DueEntry) -> bool,
    ) -> sled::Result<DueScan> {
        let due = &self.webhooks.due;
        let mut scan = DueScan::default();
        let mut from: Vec<u8> = Vec::new();
        // A project's entries end at `project ‖ 0 ‖ …`; the next project starts after
        // `project ‖ 1`.
        while let Some((key, _)) = due.range(from.clone()..).next().transpose()? {
            let Some(split) = key.iter().position(|b| *b == 0) else {
                due.remove(&key)?;
                continue;
            };
            let project = String::from_utf8_lossy(&key[..split]).into_owned();
            let mut entries = Vec::new();
            let mut examined = 0;
            for item in due.scan_prefix(&key[..=split]) {
                let (k, v) = item?;
                let Some(entry) = parse_due(&k[split + 1..], &project, &v) else {
                    due.remove(&k)?;
                    continue;
                };
                if entry.due_at_ms > now_ms {
                    scan.next_due_ms = Some(
                        scan.next_due_ms
                            .map_or(entry.due_at_ms, |n| n.min(entry.due_at_ms)),
                    );
                    break;
                }
                examined += 1;
                if !skip(&entry) {
                    entries.push(entry);
                }
                // Bounded work per project: a backlog to a busy destination is not reread
                // in full on every pass.
                if entries.len() >= per_project || examined >= per_project * 8 {
                    break;
                }
            }
            if !entries.is_empty() {
                scan.projects.push((project, entries));
            }
            from = key[..split].to_vec();
            from.push(1);
        }
        Ok(scan)
    }

    /// The project's jobs, newest first, `limit` at a time after `cursor` (an execution id).
    pub fn list_webhooks(
        &self,
        project: &str,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> sled::Result<DeliveryPage> {
        let prefix = joined(project, b"");
        let end = match cursor {
            Some(id) => joined(project, id.as_bytes()),
            None => joined(project, &[0xff]),
        };
        let mut jobs = Vec::new();
        let mut next_cursor = None;
        for item in self.webhooks.by_project.range(prefix..end).rev() {
            let (key, _) = item?;
            let id = String::from_utf8_lossy(&key[project.len() + 1..]).into_owned();
            let Some(job) = self.webhook(&id)? else {
                continue;
            };
            if status.is_some_and(|s| s != job.status()) {
                continue;
            }
            if jobs.len() == limit {
                next_cursor = jobs.last().map(|j: &WebhookJob| j.execution_id.clone());
                break;
            }
            jobs.push(job);
        }
        Ok(DeliveryPage { jobs, next_cursor })
    }

    /// Deletes finished jobs whose retention ended by `now_ms`; how many.
    pub fn sweep_webhooks(&self, now_ms: u64) -> sled::Result<usize> {
        let t = &self.webhooks;
        let mut removed = 0;
        for item in t.expiry.range(..now_ms.to_be_bytes().to_vec()) {
            let (key, _) = item?;
            let id = String::from_utf8_lossy(&key[8..]).into_owned();
            if let Some(job) = self.webhook(&id)? {
                if job.expiry_key().as_deref() == Some(&key[..]) {
                    t.by_project.remove(job.project_key())?;
                    t.jobs.remove(id.as_bytes())?;
                    removed += 1;
                }
            }
            t.expiry.remove(key)?;
        }
        Ok(removed)
    }

    /// Gives every job the index entries it should have: jobs from before the indexes existed,
    /// and those a crash left between writes. Runs once per start: it reads every job (the
    /// only full scan), and writes only what is missing. Fills in missing projects from the execution, and
    /// gives dead jobs from before retention `dead_retention_ms` from now.
    pub fn reindex_webhooks(&self, dead_retention_ms: u64) -> sled::Result<usize> {
        let t = &self.webhooks;
        let mut repaired = 0;
        for item in t.jobs.iter() {
            let (_, bytes) = item?;
            let Ok(mut job) = serde_json::from_slice::<WebhookJob>(&bytes) else {
                continue;
            };
            let mut changed = false;
            if job.project_id.is_empty() {
                job.project_id = self
                    .get_execution(&job.execution_id)
                    .ok()
                    .flatten()
                    .map(|r| r.project_id)
                    .unwrap_or_else(|| crate::api::DEFAULT_PROJECT.to_string());
                changed = true;
            }
            if job.status() == DeliveryStatus::Dead && job.expires_at_ms.is_none() {
                // Kept forever before; from now on, for the retention period.
                job.expires_at_ms = Some(crate::domain::now_ms() + dead_retention_ms);
                changed = true;
            }
            if changed {
                t.jobs.insert(job.execution_id.as_bytes(), encode(&job))?;
            }
            // Reads first: a start writes only what is missing.
            let mut missing = false;
            if !t.by_project.contains_key(job.project_key())? {
                t.by_project.insert(job.project_key(), &[])?;
                missing = true;
            }
            if job.status() == DeliveryStatus::Pending {
                if !t.due.contains_key(job.due_key())? {
                    t.due.insert(job.due_key(), job.destination().as_bytes())?;
                    missing = true;
                }
            } else if let Some(key) = job.expiry_key() {
                if !t.expiry.contains_key(&key)? {
                    t.expiry.insert(key, &[])?;
                    missing = true;
                }
            }
            repaired += (changed || missing) as usize;
        }
        Ok(repaired)
    }

    /// The project's signing secrets, created on first use (`seed` for the first secret, a
    /// random one without).
    pub fn webhook_secrets(
        &self,
        project: &str,
        seed: Option<&str>,
    ) -> sled::Result<SigningSecrets> {
        let tree = &self.webhooks.secrets;
        if let Some(secrets) = self.stored_webhook_secrets(project)? {
            return Ok(secrets);
        }
        let fresh = SigningSecrets::first(seed);
        let bytes = serde_json::to_vec(&fresh).expect("secrets serialize");
        match tree.compare_and_swap(project.as_bytes(), None as Option<&[u8]>, Some(bytes))? {
            Ok(()) => Ok(fresh),
            // Created by a concurrent first use: theirs wins.
            Err(current) => Ok(current
                .current
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(fresh)),
        }
    }

    /// The project's signing secrets if it has any yet.
    pub fn stored_webhook_secrets(&self, project: &str) -> sled::Result<Option<SigningSecrets>> {
        Ok(self
            .webhooks
            .secrets
            .get(project.as_bytes())?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Keeps the project's first secrets as the cluster agreed on them (not queued again:
    /// they are shared already).
    pub fn adopt_webhook_secrets(
        &self,
        project: &str,
        secrets: &SigningSecrets,
    ) -> sled::Result<()> {
        let bytes = serde_json::to_vec(secrets).expect("secrets serialize");
        self.webhooks
            .secrets
            .raw()
            .insert(project.as_bytes(), bytes)?;
        Ok(())
    }

    /// Replaces the project's secret; the old one keeps signing (as a second `v1`) until
    /// `now_ms + grace_ms`.
    pub fn rotate_webhook_secret(
        &self,
        project: &str,
        seed: Option<&str>,
        grace_ms: u64,
        now_ms: u64,
    ) -> sled::Result<SigningSecrets> {
        let tree = &self.webhooks.secrets;
        loop {
            let before = self.webhook_secrets(project, seed)?;
            let after = SigningSecrets {
                current: new_secret(),
                created_at_ms: now_ms,
                previous: (grace_ms > 0).then(|| before.current.clone()),
                previous_expires_at_ms: (grace_ms > 0).then_some(now_ms + grace_ms),
            };
            let swapped = tree.compare_and_swap(
                project.as_bytes(),
                Some(serde_json::to_vec(&before).expect("secrets serialize")),
                Some(serde_json::to_vec(&after).expect("secrets serialize")),
            )?;
            if swapped.is_ok() {
                return Ok(after);
            }
        }
    }

    /// The single secret every delivery was signed with before secrets were per project: the
    /// default project's first secret, so its receivers keep verifying after an upgrade.
    pub fn legacy_webhook_secret(&self) -> sled::Result<Option<String>> {
        Ok(self
            .meta
            .get(b"webhook_secret")?
            .map(|s| String::from_utf8_lossy(&s).into_owned()))
    }
}

fn encode(job: &WebhookJob) -> Vec<u8> {
    serde_json::to_vec(job).expect("webhook jobs serialize")
}

/// `due ms BE ‖ id` (after the project) and the destination value.
fn parse_due(rest: &[u8], project: &str, value: &[u8]) -> Option<DueEntry> {
    let due = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some(DueEntry {
        execution_id: String::from_utf8(rest[8..].to_vec()).ok()?,
        project_id: project.to_string(),
        destination: String::from_utf8_lossy(value).into_owned(),
        due_at_ms: due,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_secret_signs_only_until_its_grace_period_ends() {
        let s = SigningSecrets {
            current: "new".into(),
            created_at_ms: 1_000,
            previous: Some("old".into()),
            previous_expires_at_ms: Some(5_000),
        };
        assert_eq!(s.active(4_999), ["new", "old"]);
        assert_eq!(s.active(5_000), ["new"]);
    }

    #[tokio::test]
    async fn jobs_from_before_the_indexes_are_indexed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // The shape earlier versions wrote: no project, no timestamps, dead kept forever.
        let old = |id: &str, dead: bool| {
            serde_json::json!({"execution_id": id, "url": "https://example.com/h",
                "event_type": "execution.completed", "attempts": 3, "next_at_ms": 10,
                "last_error": "answered 500", "dead": dead})
        };
        for (id, dead) in [("exec_a", false), ("exec_b", true)] {
            let bytes = serde_json::to_vec(&old(id, dead)).unwrap();
            store.webhooks.jobs.insert(id.as_bytes(), bytes).unwrap();
        }
        assert!(store
            .due_webhooks(1_000, 8, |_| false)
            .unwrap()
            .projects
            .is_empty());

        assert_eq!(store.reindex_webhooks(60_000).unwrap(), 2);
        assert_eq!(
            store.reindex_webhooks(60_000).unwrap(),
            0,
            "nothing left to repair"
        );
        let scan = store.due_webhooks(1_000, 8, |_| false).unwrap();
        assert_eq!(scan.projects.len(), 1);
        let (project, entries) = &scan.projects[0];
        assert_eq!(project, "default");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].execution_id, "exec_a");
        assert_eq!(entries[0].destination, "https://example.com:443");
        let page = store.list_webhooks("default", None, 10, None).unwrap();
        assert_eq!(page.jobs.len(), 2);
        let dead = store.webhook("exec_b").unwrap().unwrap();
        assert_eq!(dead.status(), DeliveryStatus::Dead);
        let expires = dead.expires_at_ms.unwrap();
        assert_eq!(
            store.sweep_webhooks(expires - 1).unwrap(),
            0,
            "kept until then"
        );
        assert_eq!(store.sweep_webhooks(expires + 1).unwrap(), 1);
        assert!(store.webhook("exec_b").unwrap().is_none());
        assert_eq!(
            store
                .list_webhooks("default", None, 10, None)
                .unwrap()
                .jobs
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn a_pass_over_the_due_index_does_bounded_work_per_project() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let job = |id: String, project: &str, at: u64| {
            WebhookJob::new(
                &id,
                project,
                "https://a.example/h",
                "execution.completed".into(),
                at,
            )
        };
        // Project a: 1,000 due jobs to one busy destination, and delivered ones (not indexed).
        for i in 0..1000 {
            store
                .put_webhook(&job(format!("exec_a{i:04}"), "a", 100))
                .unwrap();
        }
        for i in 0..500 {
            let mut done = job(format!("exec_d{i:04}"), "a", 100);
            done.delivered_at_ms = Some(100);
            store.put_webhook(&done).unwrap();
        }
        // Project b: one due job and one due later.
        store.put_webhook(&job("exec_b1".into(), "b", 150)).unwrap();
        store
            .put_webhook(&job("exec_b2".into(), "b", 5_000))
            .unwrap();

        let mut examined = 0;
        let scan = store
            .due_webhooks(1_000, 16, |e| {
                examined += 1;
                e.project_id == "a"
            })
            .unwrap();
        assert!(examined <= 16 * 8 + 2, "examined {examined} entries");
        assert_eq!(scan.projects.len(), 1);
        assert_eq!(scan.projects[0].0, "b");
        assert_eq!(scan.projects[0].1[0].execution_id, "exec_b1");
        assert_eq!(scan.next_due_ms, Some(5_000));
    }

    #[test]
    fn the_destination_is_scheme_host_and_port() {
        assert_eq!(
            destination("https://Hooks.Example.com/a?b=1"),
            "https://hooks.example.com:443"
        );
        assert_eq!(
            destination("http://10.0.0.1:8080/x"),
            "http://10.0.0.1:8080"
        );
    }
}
