//! The deliverer: one task that reads what is due from the outbox's due index and starts
//! deliveries round-robin across projects, within three limits (in flight overall, per
//! project, per destination), so that a receiver that never answers holds only its own
//! destination's few slots and other projects go first in turn. A second task deletes
//! finished jobs when their retention ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

use super::{backoff, egress, signature_header, Webhooks};
use crate::domain::now_ms;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::{DeliveryStatus, DueEntry, Store, WebhookJob};

/// The longest the loop sleeps with nothing due: a backstop for a missed wake-up, cheap since
/// a pass reads one index range per project with pending jobs.
const IDLE: Duration = Duration::from_secs(5);
/// How long a delivery holds its slot after the store failed to read or record it: its due
/// entry is unchanged, and without the pause it would be picked up again at once.
const STORE_PAUSE: Duration = Duration::from_secs(1);

pub struct Deliverer {
    store: Store,
    http: reqwest::Client,
    webhooks: Arc<Webhooks>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    /// In a cluster: tries are claimed first and outcomes shared.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Deliveries in flight, counted the ways the limits need.
#[derive(Default)]
struct Slots {
    ids: HashSet<String>,
    by_project: HashMap<String, usize>,
    by_destination: HashMap<String, usize>,
}

impl Slots {
    fn count(map: &HashMap<String, usize>, key: &str) -> usize {
        map.get(key).copied().unwrap_or(0)
    }

    fn take(&mut self, entry: &DueEntry) {
        self.ids.insert(entry.execution_id.clone());
        *self.by_project.entry(entry.project_id.clone()).or_default() += 1;
        *self
            .by_destination
            .entry(entry.destination.clone())
            .or_default() += 1;
    }

    fn release(&mut self, entry: &DueEntry) {
        self.ids.remove(&entry.execution_id);
        for (map, key) in [
            (&mut self.by_project, &entry.project_id),
            (&mut self.by_destination, &entry.destination),
        ] {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

impl Deliverer {
    pub fn start(
        store: Store,
        settings: Arc<Settings>,
        webhooks: Arc<Webhooks>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> anyhow::Result<()> {
        let repaired =
            store.reindex_webhooks(settings.retention.dead_webhooks.as_millis() as u64)?;
        if repaired > 0 {
            tracing::info!(jobs = repaired, "webhook outbox re-indexed");
        }
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_millis(settings.webhooks.timeout_ms))
            // A redirect could lead anywhere, the checks above included; a 3xx is a failure.
            .redirect(reqwest::redirect::Policy::none())
            // HTTP(S)_PROXY would connect for us, to wherever the proxy resolves the name.
            .no_proxy()
            .dns_resolver(Arc::new(egress::GuardedResolver {
                allow: webhooks.allow.clone(),
            }))
            .user_agent(concat!("Switchyard-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let deliverer = Arc::new(Deliverer {
            store,
            http,
            webhooks,
            settings,
            metrics,
            cluster,
        });
        tokio::spawn(deliverer.clone().run(wake));
        tokio::spawn(deliverer.sweep());
        Ok(())
    }

    async fn run(self: Arc<Self>, wake: Arc<Notify>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<DueEntry>();
        let mut slots = Slots::default();
        let mut last_served = String::new();
        loop {
            let next_due = self.dispatch(&mut slots, &mut last_served, &done_tx);
            let wait = next_due
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
                .unwrap_or(IDLE)
                .min(IDLE);
            tokio::select! {
                _ = wake.notified() => {}
                Some(done) = done_rx.recv() => slots.release(&done),
                _ = tokio::time::sleep(wait) => {}
            }
            while let Ok(done) = done_rx.try_recv() {
                slots.release(&done);
            }
        }
    }

    /// Starts what is due and fits the limits, one job per project per round, beginning after
    /// the project served last. Returns when the next not-yet-due job is due.
    fn dispatch(
        self: &Arc<Self>,
        slots: &mut Slots,
        last_served: &mut String,
        done: &mpsc::UnboundedSender<DueEntry>,
    ) -> Option<u64> {
        let s = &self.settings.webhooks;
        let (max, per_project, per_destination) = (
            s.max_in_flight,
            s.max_in_flight_per_project,
            s.max_in_flight_per_destination,
        );
        if slots.ids.len() >= max {
            return None;
        }
        if self.store.health.failure().is_some() {
            // A failed store records no outcome: every try would be repeated. Nothing starts
            // until the store is reopened (by a new engine, with its own deliverer).
            return None;
        }
        let scan = self.store.due_webhooks(now_ms(), per_project, |e| {
            slots.ids.contains(&e.execution_id)
                || Slots::count(&slots.by_destination, &e.destination) >= per_destination
        });
        let scan = match scan {
            Ok(scan) => scan,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the webhook outbox");
                return Some(now_ms() + IDLE.as_millis() as u64);
            }
        };
        let mut queues = scan.projects;
        let first = queues
            .iter()
            .position(|(p, _)| p.as_str() > last_served.as_str())
            .unwrap_or(0);
        queues.rotate_left(first);
        let mut queues: Vec<_> = queues
            .into_iter()
            .map(|(p, q)| (p, q.into_iter()))
            .collect();
        loop {
            let mut started = false;
            for (project, queue) in queues.iter_mut() {
                if slots.ids.len() >= max {
                    return scan.next_due_ms;
                }
                if Slots::count(&slots.by_project, project) >= per_project {
                    continue;
                }
                let next = queue.find(|e| {
                    Slots::count(&slots.by_destination, &e.destination) < per_destination
                });
                if let Some(entry) = next {
                    slots.take(&entry);
                    last_served.clone_from(project);
                    started = true;
                    let this = self.clone();
                    let release = Release(Some(entry), done.clone());
                    tokio::spawn(async move {
                        if let Some(entry) = &release.0 {
                            this.deliver(entry).await;
                        }
                    });
                }
            }
            if !started {
                return scan.next_due_ms;
            }
        }
    }

    async fn deliver(&self, entry: &DueEntry) {
        let job = match self.store.webhook(&entry.execution_id) {
            Ok(Some(job))
                if job.status() == DeliveryStatus::Pending
                    && job.next_at_ms == entry.due_at_ms
                    && job.project_id == entry.project_id =>
            {
                job
            }
            Ok(_) => {
                let _ = self.store.drop_due_entry(entry);
                return;
            }
            Err(_) => return tokio::time::sleep(STORE_PAUSE).await,
        };
        let record = match self.store.get_execution(&job.execution_id) {
            Ok(Some(record)) => record,
            Ok(None) => {
                // Its execution was deleted (retention): nothing left to announce.
                let _ = self.store.remove_webhook(&job.execution_id);
                return;
            }
            Err(_) => return tokio::time::sleep(STORE_PAUSE).await,
        };
        if let Some(cluster) = &self.cluster {
            let timeout = Duration::from_millis(self.settings.webhooks.timeout_ms);
            match cluster.claim_try(&job, timeout).await {
                Ok(crate::cluster::webhooks::Try::Mine) => {}
                Ok(crate::cluster::webhooks::Try::Theirs { until_ms }) => {
                    // Another node makes this try: look again once its outcome is due (the
                    // mirror brings it sooner; this write stays on this node).
                    let later = WebhookJob {
                        next_at_ms: until_ms,
                        ..job
                    };
                    let _ = self.store.update_webhook(&later, entry.due_at_ms);
                    return;
                }
                Err(err) => {
                    tracing::warn!(execution_id = %job.execution_id, error = %err, "cannot claim the webhook try");
                    return tokio::time::sleep(STORE_PAUSE).await;
                }
            }
        }
        let outcome = self.attempt(&job, &record).await;
        if self.record(job, entry.due_at_ms, outcome).is_err() {
            tokio::time::sleep(STORE_PAUSE).await;
        }
    }

    async fn attempt(&self, job: &WebhookJob, record: &crate::domain::ExecutionRecord) -> Outcome {
        // Literal addresses never reach the resolver, and the allow-list may have changed
        // since submit: the URL is checked again.
        if let Err(refused) = egress::check_url(&job.url, &self.webhooks.allow) {
            return Outcome::Refused(refused.0);
        }
        let cluster = self.cluster.as_deref();
        let secrets = match self
            .webhooks
            .secrets_in(&self.store, cluster, &job.project_id)
            .await
        {
            Ok(secrets) => secrets,
            Err(err) => return Outcome::Failed(format!("cannot read the signing secret: {err}")),
        };
        let event_id = format!("evt_{}", job.execution_id.trim_start_matches("exec_"));
        let created = now_ms() / 1000;
        #[derive(serde::Serialize)]
        struct Payload<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            created: u64,
            data: crate::domain::execution::ExecutionView<'a>,
        }
        let payload = Payload {
            id: &event_id,
            kind: &job.event_type,
            created,
            data: record.view(None),
        };
        let body = serde_json::to_string(&payload).expect("webhook payloads serialize");
        let signature = signature_header(&secrets.active(now_ms()), created, &body);
        let result = self
            .http
            .post(&job.url)
            .header("content-type", "application/json")
            .header("switchyard-signature", signature)
            .header("switchyard-event-id", &event_id)
            .body(body)
            .send()
            .await;
        match result {
            Ok(res) if res.status().is_success() => Outcome::Delivered,
            Ok(res) if res.status().is_redirection() => Outcome::Failed(format!(
                "answered {} (redirects are not followed)",
                res.status().as_u16()
            )),
            Ok(res) => Outcome::Failed(format!("answered {}", res.status().as_u16())),
            Err(err) => match egress::refusal_in(&err) {
                Some(refused) => Outcome::Refused(refused.0.clone()),
                None if err.is_timeout() => Outcome::Failed(format!(
                    "no answer within {} ms",
                    self.settings.webhooks.timeout_ms
                )),
                None if err.is_connect() => Outcome::Failed("could not connect".into()),
                None => Outcome::Failed("request failed".into()),
            },
        }
    }

    /// Stores the try's outcome: delivered, rescheduled, or given up.
    fn record(&self, mut job: WebhookJob, due_at_ms: u64, outcome: Outcome) -> sled::Result<()> {
        let now = now_ms();
        let retention = &self.settings.retention;
        job.attempts += 1;
        job.last_attempt_at_ms = Some(now);
        let label = match outcome {
            Outcome::Delivered => {
                job.delivered_at_ms = Some(now);
                job.expires_at_ms = Some(now + retention.executions.as_millis() as u64);
                tracing::info!(execution_id = %job.execution_id, attempts = job.attempts, "webhook delivered");
                "delivered"
            }
            Outcome::Refused(error) => {
                tracing::warn!(execution_id = %job.execution_id, %error, "webhook destination refused");
                job.dead = true;
                job.last_error = Some(error);
                job.expires_at_ms = Some(now + retention.dead_webhooks.as_millis() as u64);
                "refused"
            }
            Outcome::Failed(error) => {
                job.dead = job.attempts >= self.settings.webhooks.max_attempts;
                tracing::warn!(execution_id = %job.execution_id, attempts = job.attempts, dead = job.dead, %error, "webhook delivery failed");
                job.last_error = Some(error);
                if job.dead {
                    job.expires_at_ms = Some(now + retention.dead_webhooks.as_millis() as u64);
                } else {
                    let delay = backoff(self.settings.webhooks.retry_base_ms, job.attempts);
                    job.next_at_ms = now + delay.as_millis() as u64;
                }
                if job.dead {
                    "dead"
                } else {
                    "failed"
                }
            }
        };
        self.metrics.webhooks.with_label_values(&[label]).inc();
        if let Err(err) = self.store.update_webhook(&job, due_at_ms) {
            self.store.health.fail(&err);
            return Err(err);
        }
        if let Some(cluster) = &self.cluster {
            cluster.share_webhook(&job);
        }
        // Rides on the next group commit; after a crash before it, a delivery repeats.
        let _ = self.store.commit.ticket();
        Ok(())
    }

    /// Deletes delivered jobs with their executions' retention and dead ones after
    /// `retention.dead_webhooks`.
    async fn sweep(self: Arc<Self>) {
        let every = self.settings.retention.sweep_interval;
        loop {
            tokio::time::sleep(every).await;
            match self.store.sweep_webhooks(now_ms()) {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "expired webhook jobs deleted"),
                Err(err) => tracing::warn!(error = %err, "webhook retention sweep failed"),
            }
        }
    }
}

/// Gives a delivery's slot back when its task ends, however it ends (a panic included), so a
/// slot is never lost.
struct Release(Option<DueEntry>, mpsc::UnboundedSender<DueEntry>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(entry) = self.0.take() {
            let _ = self.1.send(entry);
        }
    }
}

enum Outcome {
    Delivered,
    Failed(String),
    /// The destination is not allowed (literal address, or what its name resolves to):
    /// recorded and not retried.
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ExecutionRecord, Status};

    fn finished(id: &str, url: &str) -> ExecutionRecord {
        ExecutionRecord {
            id: id.into(),
            project_id: "default".into(),
            status: Status::Completed,
            model: "chat-default".into(),
            idempotency_key: id.into(),
            fingerprint: "f".into(),
            metadata: Default::default(),
            webhook_url: Some(url.into()),
            channel_id: "ch_1".into(),
            output_text: Some("hello".into()),
            output_tool_calls: Vec::new(),
            error: None,
            finish_reason: Some("stop".into()),
            usage: None,
            attempts: Vec::new(),
            key_id: None,
            cost: None,
            created_at_ms: now_ms(),
            started_at_ms: None,
            completed_at_ms: Some(now_ms()),
            design: Default::default(),
        }
    }

    /// Whether a due job reaches a receiver within 500 ms, with the store failed or not.
    async fn reaches_receiver(store_failed: bool) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", receiver.local_addr().unwrap());
        let mut settings = Settings::embedded_default();
        settings.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
        let settings = Arc::new(settings);
        let wake = Arc::new(Notify::new());
        let webhooks = Arc::new(Webhooks::new(&settings.webhooks, &store, wake.clone()).unwrap());
        store.put_execution(&finished("exec_1", &url)).unwrap();
        let job = WebhookJob::new("exec_1", "default", &url, "execution.completed".into(), 0);
        store.put_webhook(&job).unwrap();
        if store_failed {
            store.health.fail(&"no space left on device");
        }
        let metrics = Arc::new(Metrics::new());
        Deliverer::start(store, settings, webhooks, metrics, wake, None).unwrap();
        tokio::time::timeout(Duration::from_millis(500), receiver.accept())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn nothing_is_tried_while_the_store_cannot_record_the_outcome() {
        assert!(
            reaches_receiver(false).await,
            "delivered on a healthy store"
        );
        assert!(
            !reaches_receiver(true).await,
            "a failed store would repeat it"
        );
    }
}
