//! Takeover: every quarter of `lease_ms` each node looks for leases that ran out (their node
//! died or lost NATS) and for its own leases from before a restart, takes each with a
//! compare-and-set (one node wins), brings its local copy of the execution up to the shared
//! log, and resumes it through the same path as crash recovery on one node: the continuation
//! machinery picks up after the text already emitted.

use actix::Addr;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    /// Scans for executions to take over, for as long as the node runs. The leases are
    /// followed through a KV watch (pushed by NATS as they are renewed), so a scan reads
    /// nothing from the network; only a take is a request.
    pub async fn take_over_loop(
        self: Arc<Self>,
        store: Store,
        registry: Addr<Registry>,
        takeovers: prometheus::IntCounter,
    ) {
        let started = now_ms();
        let seen: Arc<Mutex<HashMap<String, SeenLease>>> = Arc::default();
        tokio::spawn(self.clone().watch_leases(seen.clone()));
        let every = Duration::from_millis((self.settings.lease_ms / 4).max(50));
        // The first scan soon after start (the watch has delivered the bucket by then): a node
        // restarted with its id takes its own executions back at once.
        let mut wait = STARTUP_SCAN.min(every);
        loop {
            tokio::time::sleep(wait).await;
            wait = every;
            let due: Vec<(String, SeenLease)> = {
                let now = now_ms();
                let seen = seen.lock().expect("lease view");
                seen.iter()
                    .filter(|(id, _)| !self.leases.contains(id))
                    .filter(|(_, l)| {
                        // This node's own lease from before it restarted: the old process is gone.
                        let mine_from_before = l.node == self.node && l.created_ms < started;
                        mine_from_before || now > l.until_ms
                    })
                    .map(|(id, l)| (id.clone(), l.clone()))
                    .collect()
            };
            for (id, lease) in due {
                let Some(taken) = self.lease_take(&id, lease.revision).await else {
                    continue;
                };
                tracing::info!(execution_id = %id, from = %lease.node, "taking over execution");
                takeovers.inc();
                if let Err(err) = self.adopt(&store, &registry, taken.clone()).await {
                    tracing::error!(execution_id = %id, error = %err, "takeover failed; the lease runs out for another node");
                    self.lease_release(&taken, false).await;
                }
            }
        }
    }

    /// Keeps `seen` equal to the leases bucket, for as long as the node runs.
    async fn watch_leases(self: Arc<Self>, seen: Arc<Mutex<HashMap<String, SeenLease>>>) {
        loop {
            if let Err(err) = self.watch_leases_once(&seen).await {
                tracing::warn!(error = %err, "lease watch interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    async fn watch_leases_once(
        &self,
        seen: &Mutex<HashMap<String, SeenLease>>,
    ) -> anyhow::Result<()> {
        let mut watch = self.leases_kv.watch_with_history(">").await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            let mut seen = seen.lock().expect("lease view");
            let value = serde_json::from_slice::<LeaseValue>(&entry.value);
            match (entry.operation, value) {
                (async_nats::jetstream::kv::Operation::Put, Ok(value)) => {
                    seen.insert(
                        entry.key.clone(),
                        SeenLease {
                            node: value.node,
                            until_ms: value.until_ms,
                            revision: entry.revision,
                            created_ms: entry.created_ms(),
                        },
                    );
                }
                _ => {
                    seen.remove(&entry.key);
                }
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

/// When the first scan runs after start.
const STARTUP_SCAN: Duration = Duration::from_millis(300);

/// A lease as the watch last saw it.
#[derive(Clone)]
struct SeenLease {
    node: String,
    until_ms: u64,
    revision: u64,
    created_ms: u64,
}

trait CreatedMs {
    fn created_ms(&self) -> u64;
}

impl CreatedMs for async_nats::jetstream::kv::Entry {
    fn created_ms(&self) -> u64 {
        (self.created.unix_timestamp_nanos() / 1_000_000) as u64
    }
}
