//! A submit in a cluster: claim the idempotency key, share the request and record, take the
//! lease, then (after the local write) append the `pending` event to the shared log before the
//! client is answered. Any node may then resume the execution should this one die.

use std::sync::Arc;

use super::claims::Claim;
use super::{Cluster, Lease, LogPosition};
use crate::domain::{ChatRequest, Event, ExecutionRecord};

pub enum Shared {
    /// The execution is new; this node holds its lease.
    New(Arc<Lease>),
    /// An earlier submit with the same idempotency key created `id`.
    Existing { id: String, same_body: bool },
}

impl Cluster {
    pub async fn share_submit(
        &self,
        record: &ExecutionRecord,
        request: &ChatRequest,
    ) -> anyhow::Result<Shared> {
        let claim = self
            .claim(
                &record.project_id,
                &record.idempotency_key,
                &record.id,
                &record.fingerprint,
            )
            .await?;
        if let Claim::Existing { id, same_body } = claim {
            return Ok(Shared::Existing { id, same_body });
        }
        // Request and record (side by side) before the lease: whoever finds the lease finds
        // both.
        futures_util::try_join!(
            self.put_request(&record.id, request),
            self.put_record(record)
        )?;
        Ok(Shared::New(self.lease_new(&record.id).await?))
    }

    /// Appends the new execution's first event; its position fences every later append.
    pub async fn share_first_event(&self, id: &str, first: Event) -> anyhow::Result<LogPosition> {
        let stream_seq = self.append(id, &[Arc::new(first)], 0).await?;
        Ok(LogPosition { seq: 1, stream_seq })
    }
}
