//! This node's copy of what other nodes do: every batch of the shared event stream goes into
//! the local store (the node's own batches are there already) and to the live feed of anyone
//! here following that execution; every record written to KV by another node replaces the
//! local one. Readers then work exactly as on one node: a cursor over the local log, switched
//! to a live feed once caught up.

use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Cluster, EVENTS_PREFIX, NODE_HEADER};
use crate::actors::live::{LiveFeed, Subscription};
use crate::channels::ProjectFeed;
use crate::domain::{EventKind, SharedEvent, Status};
use crate::store::Store;

/// Live feeds of executions driven elsewhere that someone here follows.
#[derive(Default)]
pub struct RemoteFeeds(Mutex<HashMap<String, LiveFeed>>);

impl RemoteFeeds {
    /// A live subscription to an execution another node drives. Under the same lock as the
    /// mirror's publication, so the feed's durable seq and the local log agree: what the
    /// mirror wrote before is in the log, what it writes after comes through the feed.
    pub fn follow(&self, store: &Store, id: &str) -> Subscription {
        let mut feeds = self.0.lock().expect("feeds lock");
        feeds
            .entry(id.to_string())
            .or_insert_with(|| LiveFeed::new(store.last_seq(id).unwrap_or(0)))
            .subscribe()
    }

    fn publish(&self, id: &str, batch: Vec<SharedEvent>) {
        let mut feeds = self.0.lock().expect("feeds lock");
        let Some(feed) = feeds.get(id) else { return };
        let done = batch.last().is_some_and(|e| e.kind == EventKind::Done);
        feed.publish(batch);
        if done || !feed.has_readers() {
            // Dropping the feed ends its subscriptions; readers finish from the log.
            feeds.remove(id);
        }
    }
}

impl Cluster {
    /// Mirrors the shared event stream into `store`, from where this node left off, for as long
    /// as the node runs (resubscribing after NATS outages).
    pub async fn mirror_events(self: Arc<Self>, store: Store, project_feed: Arc<ProjectFeed>) {
        let mut position = store.cluster_mirror_position().unwrap_or(0);
        loop {
            match self.mirror_from(&store, &project_feed, &mut position).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, position, "event mirror interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn mirror_from(
        &self,
        store: &Store,
        project_feed: &ProjectFeed,
        position: &mut u64,
    ) -> anyhow::Result<()> {
        let mut events = self.events.clone();
        let end = events.info().await?.state.last_sequence;
        if *position >= end {
            self.caught_up.store(true, Ordering::Release);
        }
        let mut messages = super::follow(&events, format!("{EVENTS_PREFIX}>"), *position).await?;
        let mut saved_at = std::time::Instant::now();
        while let Some(message) = messages.next().await {
            let message = message?;
            let stream_seq = super::stream_seq(&message)?;
            let Some(id) = message.subject.as_str().strip_prefix(EVENTS_PREFIX) else {
                continue;
            };
            let ours = message
                .headers
                .as_ref()
                .and_then(|h| h.get(NODE_HEADER))
                .is_some_and(|n| n.as_str() == self.node);
            let batch: Vec<SharedEvent> = super::log::decode_batch(&message.payload)
                .into_iter()
                .map(Arc::new)
                .collect();
            let last = batch.last().map_or(0, |e| e.seq);
            if !ours {
                // Another node's events replace whatever this node has at those seqs.
                for event in &batch {
                    store.append_event(id, event)?;
                }
                if batch.last().is_some_and(|e| e.kind == EventKind::Done) {
                    // Nothing follows `done`: drop any tail this node never shared.
                    store.truncate_log(id, last)?;
                }
                announce(store, project_feed, id, &batch);
            } else if !self.leases.contains(id) && store.last_seq(id)? < last {
                // This node's own batch that it dropped when it was fenced (appended, but
                // the acknowledgement never came back). While it drives the execution its log
                // has the batch already: no read on that path.
                for event in &batch {
                    store.append_event(id, event)?;
                }
            }
            self.feeds.publish(id, batch);
            *position = stream_seq;
            if stream_seq >= end {
                self.caught_up.store(true, Ordering::Release);
            }
            if saved_at.elapsed() > Duration::from_secs(1) {
                // Replaying from an older position only rewrites the same events.
                store.set_cluster_mirror_position(*position)?;
                saved_at = std::time::Instant::now();
            }
        }
        Ok(())
    }

    /// Mirrors records other nodes write into `store`, for as long as the node runs.
    pub async fn mirror_records(self: Arc<Self>, store: Store) {
        loop {
            if let Err(err) = self.mirror_records_once(&store).await {
                tracing::warn!(error = %err, "record mirror interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    async fn mirror_records_once(&self, store: &Store) -> anyhow::Result<()> {
        let mut watch = self.records.watch_with_history(">").await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                continue;
            }
            let Some((node, record)) = super::records::decode(&entry.value) else {
                continue;
            };
            // This node's own writes, and records of executions it drives, are newer here.
            if node == self.node || self.leases.contains(&record.id) {
                continue;
            }
            self.adopt_record(store, &record)?;
        }
        Ok(())
    }

    /// Brings one execution's local log up to the shared one (after this node was fenced, its
    /// own batches that the mirror passed while it still held the lease), retrying until NATS
    /// answers.
    pub async fn resync(self: Arc<Self>, store: Store, id: String) {
        loop {
            match self.resync_once(&store, &id).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::debug!(execution_id = %id, error = %err, "resync waits for NATS");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn resync_once(&self, store: &Store, id: &str) -> anyhow::Result<()> {
        let position = self.position(id).await?;
        let have = store.last_seq(id)?;
        if have < position.seq {
            for event in self.read_log(id, position).await? {
                if event.seq > have {
                    store.append_event(id, &event)?;
                }
            }
        }
        Ok(())
    }

    /// Writes a record read from KV into the local store, unless the local one is further on.
    pub fn adopt_record(
        &self,
        store: &Store,
        record: &crate::domain::ExecutionRecord,
    ) -> anyhow::Result<()> {
        let local = store.get_execution(&record.id)?;
        let was_terminal = local.as_ref().is_some_and(|l| l.status.is_terminal());
        // A restarted node's mirror brings back every record it already has: nothing to write.
        if (was_terminal && !record.status.is_terminal()) || local.as_ref() == Some(record) {
            return Ok(());
        }
        store.put_execution(record)?;
        if record.status.is_terminal() && !was_terminal {
            // Every node's analytics count every execution, once: the node that finished it
            // counted it then, the others as its end reaches them.
            store.count_in_analytics(record);
        }
        Ok(())
    }
}

/// Tells this node's project channels about status changes another node made.
fn announce(store: &Store, project_feed: &ProjectFeed, id: &str, batch: &[SharedEvent]) {
    #[derive(serde::Deserialize)]
    struct Payload {
        status: Status,
    }
    for event in batch {
        if !matches!(event.kind, EventKind::Status | EventKind::Done) {
            continue;
        }
        let Ok(Payload { status }) = serde_json::from_slice::<Payload>(&event.data) else {
            continue;
        };
        if status == Status::Pending {
            continue;
        }
        if let Ok(Some(record)) = store.get_execution(id) {
            project_feed.publish(&record.project_id, id, &record.model, status);
        }
    }
}
