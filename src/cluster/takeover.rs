//! Takeover: every quarter of `lease_ms` each node looks for leases that ran out (their node
//! died or lost NATS) and for its own leases from before a restart, takes each with a
//! compare-and-set (one node wins), brings its local copy of the execution up to the shared
//! log, and resumes it through the same path as crash recovery on one node: the continuation
//! machinery picks up after the text already emitted.

use actix::Addr;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

use super::lease::LeaseValue;
use super::{Cluster, Lease, LogPosition};
use crate::actors::{Registry, StartExecution};
use crate::domain::{now_ms, Status};
use crate::store::Store;

/// What an execution's driver needs to append to the shared log.
pub struct Replica {
    pub cluster: Arc<Cluster>,
    pub lease: Arc<Lease>,
    /// Where the shared log ends: the next append's fence.
    pub position: LogPosition,
    /// Its place among its key's and project's executions in flight, when they are limited.
    pub slot: Option<super::in_flight::InFlightSlot>,
}

impl Cluster {
    /// Scans for executions to take over, for as long as the node runs.
    pub async fn take_over_loop(
        self: Arc<Self>,
        store: Store,
        registry: Addr<Registry>,
        takeovers: prometheus::IntCounter,
    ) {
        let started = now_ms();
        let every = Duration::from_millis((self.settings.lease_ms / 4).max(50));
        loop {
            if let Err(err) = self.scan(&store, &registry, started, &takeovers).await {
                tracing::warn!(error = %err, "lease scan failed");
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn scan(
        self: &Arc<Self>,
        store: &Store,
        registry: &Addr<Registry>,
        started: u64,
        takeovers: &prometheus::IntCounter,
    ) -> anyhow::Result<()> {
        let mut keys = self.leases_kv.keys().await?;
        let mut candidates = Vec::new();
        while let Some(key) = keys.next().await {
            let id = key?;
            if !self.leases.contains(&id) {
                candidates.push(id);
            }
        }
        for id in candidates {
            let Some(entry) = self.leases_kv.entry(&id).await? else {
                continue;
            };
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                continue;
            }
            let Ok(value) = serde_json::from_slice::<LeaseValue>(&entry.value) else {
                continue;
            };
            // This node's own lease from before it restarted: the old process is gone.
            let mine_from_before = value.node == self.node && entry.created_ms() < started;
            if !mine_from_before && now_ms() <= value.until_ms {
                continue;
            }
            let Some(lease) = self.lease_take(&id, entry.revision).await else {
                continue;
            };
            tracing::info!(execution_id = %id, from = %value.node, "taking over execution");
            takeovers.inc();
            if let Err(err) = self.adopt(store, registry, lease.clone()).await {
                tracing::error!(execution_id = %id, error = %err, "takeover failed; the lease runs out for another node");
                self.lease_release(&lease, false).await;
            }
        }
        Ok(())
    }

    /// Brings the local copy up to the shared log and record, then resumes the execution.
    async fn adopt(
        self: &Arc<Self>,
        store: &Store,
        registry: &Addr<Registry>,
        lease: Arc<Lease>,
    ) -> anyhow::Result<()> {
        let id = lease.id.clone();
        let (Some(mut record), Some(request)) = (self.record(&id).await?, self.request(&id).await?)
        else {
            tracing::warn!(execution_id = %id, "lease without record or request; dropped");
            self.lease_release(&lease, true).await;
            return Ok(());
        };
        // The local copy becomes the shared log exactly: what is missing is fetched, and what
        // only this node has (written before a crash, never appended) is dropped — it was
        // never published, and the resumed execution continues after the shared log's end.
        let position = self.position(&id).await?;
        store.truncate_log(&id, position.seq)?;
        if store.last_seq(&id)? < position.seq {
            for event in self.read_log(&id, position).await? {
                store.append_event(&id, &event)?;
            }
        }
        if position.seq == 0 {
            // Its node died before the first event was shared: the resumed execution starts
            // with it, as a submit writes it.
            store.append_event(&id, &crate::domain::Event::status(1, Status::Pending))?;
        }
        if record.status.is_terminal() || store.is_finished_log(&id)? {
            // Its node died between the end and the settle: the hold ends here.
            let cost = crate::ledger::settled_cost(&record);
            self.close_hold(&id, cost).await?;
            self.lease_release(&lease, true).await;
            return Ok(());
        }
        if record.status == Status::Pending && position.seq > 1 {
            // The old owner got further than its last record write.
            record.status = Status::Processing;
        }
        store.put_request(&id, &request)?;
        store.put_execution(&record)?;
        let replica = Replica {
            cluster: self.clone(),
            lease,
            position,
            slot: None,
        };
        registry.do_send(StartExecution::new(record, Arc::new(request)).replicated(replica));
        Ok(())
    }
}

trait CreatedMs {
    fn created_ms(&self) -> u64;
}

impl CreatedMs for async_nats::jetstream::kv::Entry {
    fn created_ms(&self) -> u64 {
        (self.created.unix_timestamp_nanos() / 1_000_000) as u64
    }
}
