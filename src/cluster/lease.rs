//! Leases: the node that drives an execution holds its lease, a KV entry `{node, until_ms}`
//! renewed every third of `lease_ms` with a compare-and-set on its revision. Another node
//! takes an execution over only once `until_ms` has passed, with a compare-and-set too, so
//! exactly one taker wins.
//!
//! The holder stops trusting its lease a fifth of `lease_ms` before `until_ms` by its own clock
//! (counted from when the renewal was sent, not when it was answered), so a node cut off from
//! NATS stops appending before anyone may take over; nodes' clocks must agree to within that
//! margin (NTP does far better). The log's optimistic concurrency fences it as well.

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Cluster;
use crate::domain::now_ms;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LeaseValue {
    pub node: String,
    pub until_ms: u64,
}

pub struct Lease {
    pub id: String,
    revision: AtomicU64,
    /// Until when (this node's clock) the holder may act on the execution.
    trusted_until_ms: AtomicU64,
    lost: AtomicBool,
}

impl Lease {
    /// Whether this node may still append to the execution's log.
    pub fn valid(&self) -> bool {
        !self.lost.load(Ordering::Acquire)
            && now_ms() < self.trusted_until_ms.load(Ordering::Acquire)
    }
}

/// The leases this node holds, by execution id.
#[derive(Default)]
pub struct Held(DashMap<String, Arc<Lease>>);

impl Held {
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Cluster {
    fn lease_value(&self, sent_at: u64) -> bytes::Bytes {
        serde_json::to_vec(&LeaseValue {
            node: self.node.clone(),
            until_ms: sent_at + self.settings.lease_ms,
        })
        .expect("leases serialize")
        .into()
    }

    fn trust(&self, sent_at: u64) -> u64 {
        sent_at + self.settings.lease_ms - self.settings.lease_ms / 5
    }

    fn hold(&self, id: &str, revision: u64, sent_at: u64) -> Arc<Lease> {
        let lease = Arc::new(Lease {
            id: id.to_string(),
            revision: AtomicU64::new(revision),
            trusted_until_ms: AtomicU64::new(self.trust(sent_at)),
            lost: AtomicBool::new(false),
        });
        self.leases.0.insert(id.to_string(), lease.clone());
        lease
    }

    /// The lease of a new execution (its id is fresh: nobody else can hold it).
    pub async fn lease_new(&self, id: &str) -> anyhow::Result<Arc<Lease>> {
        let sent_at = now_ms();
        let revision = self.leases_kv.create(id, self.lease_value(sent_at)).await?;
        Ok(self.hold(id, revision, sent_at))
    }

    /// Takes the lease at `revision` (expired, or this node's from before a restart); `None`
    /// when another node was faster.
    pub(super) async fn lease_take(&self, id: &str, revision: u64) -> Option<Arc<Lease>> {
        let sent_at = now_ms();
        match self
            .leases_kv
            .update(id, self.lease_value(sent_at), revision)
            .await
        {
            Ok(revision) => Some(self.hold(id, revision, sent_at)),
            Err(_) => None,
        }
    }

    /// Gives the lease up: the execution is finished (or this node was fenced).
    pub async fn lease_release(&self, lease: &Lease, finished: bool) {
        self.leases.0.remove(&lease.id);
        lease.lost.store(true, Ordering::Release);
        if finished {
            let mut revision = lease.revision.load(Ordering::Acquire);
            // A renewal sent just before `lost` was set can land after `revision` was read: the
            // entry is then still this node's, one revision on, and must go too (left there, it
            // would run out and be "taken over" by a scan although the execution is finished).
            // Only one such renewal can be in flight, so a second try is enough.
            for retry in [true, false] {
                let Err(err) = self
                    .leases_kv
                    .purge_expect_revision(&lease.id, Some(revision))
                    .await
                else {
                    return;
                };
                match self.own_lease_revision(&lease.id).await {
                    Some(current) if retry && current != revision => revision = current,
                    _ => {
                        tracing::debug!(execution_id = %lease.id, error = %err, "lease already moved on");
                        return;
                    }
                }
            }
        }
    }

    /// The revision of the lease entry of `id` if it is this node's.
    async fn own_lease_revision(&self, id: &str) -> Option<u64> {
        let entry = self.leases_kv.entry(id).await.ok()??;
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return None;
        }
        let value: LeaseValue = serde_json::from_slice(&entry.value).ok()?;
        (value.node == self.node).then_some(entry.revision)
    }

    /// Renews every held lease, every third of `lease_ms`, for as long as the node runs.
    pub async fn renew_leases(self: Arc<Self>) {
        let every = Duration::from_millis(self.settings.lease_ms / 3);
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<Arc<Lease>> = self.leases.0.iter().map(|l| l.value().clone()).collect();
            for lease in held {
                if lease.lost.load(Ordering::Acquire) {
                    continue;
                }
                let sent_at = now_ms();
                let revision = lease.revision.load(Ordering::Acquire);
                match self
                    .leases_kv
                    .update(&lease.id, self.lease_value(sent_at), revision)
                    .await
                {
                    Ok(revision) => {
                        lease.revision.store(revision, Ordering::Release);
                        lease
                            .trusted_until_ms
                            .store(self.trust(sent_at), Ordering::Release);
                    }
                    Err(err) => {
                        use async_nats::jetstream::kv::UpdateErrorKind;
                        if err.kind() == UpdateErrorKind::WrongLastRevision {
                            tracing::warn!(execution_id = %lease.id, "lease taken by another node");
                            lease.lost.store(true, Ordering::Release);
                            self.leases.0.remove(&lease.id);
                        } else {
                            // NATS unreachable: the lease runs out by itself.
                            tracing::warn!(execution_id = %lease.id, error = %err, "cannot renew lease");
                        }
                    }
                }
            }
        }
    }
}
