//! The webhook outbox across nodes. Every job is shared (KV `switchyard_webhooks`, by
//! execution id, written by the node that enqueued or last tried it) and mirrored into every
//! node's outbox, so a job outlives the node that finished its execution. Each try is claimed
//! first (KV `switchyard_deliveries`, `<execution>.<attempts>.<due ms>`, created only if
//! absent), so exactly one node makes it; the others wait for its outcome through the mirror.
//! A claim whose node died mid-try runs out after twice the webhook timeout and is taken over
//! with a compare-and-set: the receiver may then see that try twice, as after a crash on one
//! node (at-least-once, with the same event id).

use async_nats::jetstream::kv::{CreateErrorKind, Operation};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use super::Cluster;
use crate::domain::now_ms;
use crate::store::{Store, WebhookJob};

#[derive(Serialize, Deserialize)]
struct DeliveryClaim {
    node: String,
    until_ms: u64,
}

/// Whether this node makes the try.
pub enum Try {
    Mine,
    /// Another node makes it; its outcome is expected by then (ms).
    Theirs {
        until_ms: u64,
    },
}

impl Cluster {
    /// Shares the job as this node just wrote it (enqueued, tried, requeued).
    pub fn share_webhook(&self, job: &WebhookJob) {
        let mut value = self.node.as_bytes().to_vec();
        value.push(b'\n');
        serde_json::to_writer(&mut value, job).expect("jobs serialize");
        let _ = self
            .webhook_writes
            .send((job.execution_id.clone(), value.into()));
    }

    pub async fn forward_webhooks(
        self: Arc<Self>,
        mut writes: tokio::sync::mpsc::UnboundedReceiver<(String, bytes::Bytes)>,
    ) {
        while let Some((id, value)) = writes.recv().await {
            while let Err(err) = self.webhooks.put(&id, value.clone()).await {
                tracing::warn!(execution_id = %id, error = %err, "shared webhook write failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// Claims the job's next try for this node (`timeout`: the webhook timeout).
    pub async fn claim_try(&self, job: &WebhookJob, timeout: Duration) -> anyhow::Result<Try> {
        let key = format!("{}.{}.{}", job.execution_id, job.attempts, job.next_at_ms);
        let until_ms = now_ms() + 2 * timeout.as_millis() as u64 + 1_000;
        let value = serde_json::to_vec(&DeliveryClaim {
            node: self.node.clone(),
            until_ms,
        })?;
        match self.deliveries.create(&key, value.clone().into()).await {
            Ok(_) => return Ok(Try::Mine),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let Some(entry) = self.deliveries.entry(&key).await? else {
            return Ok(Try::Theirs { until_ms });
        };
        let claim: DeliveryClaim = serde_json::from_slice(&entry.value)?;
        if claim.until_ms >= now_ms() {
            return Ok(Try::Theirs {
                until_ms: claim.until_ms,
            });
        }
        // Its node died mid-try: take the try over.
        Ok(
            match self
                .deliveries
                .update(&key, value.into(), entry.revision)
                .await
            {
                Ok(_) => Try::Mine,
                Err(_) => Try::Theirs { until_ms },
            },
        )
    }

    /// Applies other nodes' job writes to this node's outbox, for as long as the node runs.
    pub async fn mirror_webhooks(self: Arc<Self>, store: Store, wake: Arc<tokio::sync::Notify>) {
        loop {
            if let Err(err) = self.mirror_webhooks_once(&store, &wake).await {
                tracing::warn!(error = %err, "webhook mirror interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    async fn mirror_webhooks_once(
        &self,
        store: &Store,
        wake: &tokio::sync::Notify,
    ) -> anyhow::Result<()> {
        let mut watch = self.webhooks.watch_with_history(">").await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            if entry.operation != Operation::Put {
                continue;
            }
            let Some(split) = entry.value.iter().position(|b| *b == b'\n') else {
                continue;
            };
            if &entry.value[..split] == self.node.as_bytes() {
                continue;
            }
            let Ok(job) = serde_json::from_slice::<WebhookJob>(&entry.value[split + 1..]) else {
                continue;
            };
            store.apply_webhook(&job)?;
            wake.notify_one();
        }
        Ok(())
    }
}
