//! Cluster mode: peers that share NATS JetStream (`[cluster]`).
//!
//! The one idea carries over unchanged: each execution's event log is the truth, and in a
//! cluster that log is a JetStream subject (`switchyard.events.<id>`) whose appends are fenced
//! by JetStream's optimistic concurrency. Each node keeps its sled store as its local copy:
//! the owner writes there first (its own readers stay on the local fast path), every other node
//! mirrors the stream into it, so a reader anywhere is a cursor over the same log.
//!
//! What lives where (and why):
//! - `SWITCHYARD_EVENTS` stream: the event logs, one message per group-committed batch (see
//!   [`log`]).
//! - KV `switchyard_records`: execution records, last writer per execution = its lease holder;
//!   mirrored into each node's store so reads and listings stay local.
//! - KV `switchyard_requests`: each execution's request, written once at submit, read on takeover.
//! - KV `switchyard_claims`: idempotency claims, created only if absent (see [`claims`]).
//! - KV `switchyard_leases`: who drives each running execution (see [`lease`], [`takeover`]).
//! - KV `switchyard_tokens`: one-time WebSocket tokens, spent by compare-and-set (see `tokens`).
//! - `SWITCHYARD_LEDGER` stream and KV `switchyard_holds`, `switchyard_key_months`: project
//!   balances and keys' monthly spend caps, exact across nodes (see [`ledger`]).
//! - KV `switchyard_in_flight`: executions in flight per limited key and project (see
//!   [`in_flight`]).
//! - KV `switchyard_quota_days`: upstream day caps per route, taken in blocks (see `quota`).
//! - KV `switchyard_webhooks` and `switchyard_deliveries`: the webhook outbox and the claim of
//!   each try (see [`webhooks`]).
//! - KV `switchyard_state`: the small shared trees — keys, project limits, structures and
//!   workflows, webhook signing secrets, the Responses API's side of requests (see
//!   `shared_state`).

pub mod claims;
mod connect;
pub mod in_flight;
pub mod lease;
pub mod ledger;
pub mod log;
pub mod mirror;
mod quota;
mod records;
pub mod shared_state;
pub mod submit;
pub mod takeover;
mod tokens;
pub mod webhooks;

use async_nats::jetstream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::settings::ClusterSettings;

pub use connect::WebhookQueue;
pub use lease::Lease;
pub use log::{AppendError, LogPosition};

/// Stream of execution events.
pub const EVENTS_STREAM: &str = "SWITCHYARD_EVENTS";
const EVENTS_PREFIX: &str = "switchyard.events.";

/// Header naming the node that appended a batch or wrote a record.
const NODE_HEADER: &str = "Switchyard-Node";

pub struct Cluster {
    pub node: String,
    settings: ClusterSettings,
    client: async_nats::Client,
    js: jetstream::Context,
    events: jetstream::stream::Stream,
    /// Project ledgers (see [`ledger`]).
    ledger: jetstream::stream::Stream,
    /// Open holds, by execution id.
    holds: jetstream::kv::Store,
    /// Capped keys' spend per month.
    key_months: jetstream::kv::Store,
    /// Executions in flight per limited key and project (see [`in_flight`]).
    in_flight: jetstream::kv::Store,
    /// Upstream day counts per route (see `quota`).
    quota_days: jetstream::kv::Store,
    records: jetstream::kv::Store,
    requests: jetstream::kv::Store,
    claims: jetstream::kv::Store,
    leases_kv: jetstream::kv::Store,
    tokens: jetstream::kv::Store,
    /// The shared trees' entries (see `shared_state`).
    state: jetstream::kv::Store,
    /// How far the forwarder of shared writes got (a write's queue position).
    shared_acked: tokio::sync::watch::Sender<u64>,
    /// Set once the shared trees here hold what KV held at start.
    state_caught_up: AtomicBool,
    /// Webhook jobs, by execution id (see `webhooks`).
    webhooks: jetstream::kv::Store,
    /// Claims of webhook tries.
    deliveries: jetstream::kv::Store,
    /// Shared job writes, sent in order by one task.
    webhook_writes: tokio::sync::mpsc::UnboundedSender<(String, bytes::Bytes)>,
    /// The leases this node holds.
    pub leases: lease::Held,
    /// Record writes, sent in order by one task.
    record_writes: tokio::sync::mpsc::UnboundedSender<records::RecordWrite>,
    /// Live feeds of executions other nodes drive, fed by the mirror.
    pub feeds: mirror::RemoteFeeds,
    /// Set once this node's store mirrors the whole stream as it stood at start.
    caught_up: AtomicBool,
}

impl Cluster {
    fn subject(id: &str) -> String {
        format!("{EVENTS_PREFIX}{id}")
    }

    pub fn lease_ms(&self) -> u64 {
        self.settings.lease_ms
    }

    /// Whether the node can use the cluster now (for `/readyz`): connected to NATS, and its
    /// store has caught up with the shared log.
    pub fn ready(&self) -> Result<(), String> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(format!(
                "not connected to NATS at {}",
                self.settings.nats_url
            ));
        }
        if !self.caught_up.load(Ordering::Acquire) || !self.state_caught_up.load(Ordering::Acquire)
        {
            return Err("catching up with the shared event log".into());
        }
        Ok(())
    }
}

/// The messages of `stream` on `filter`, in order, from just after stream sequence `after`
/// (0: from the first), then live.
async fn follow(
    stream: &jetstream::stream::Stream,
    filter: String,
    after: u64,
) -> anyhow::Result<jetstream::consumer::pull::Ordered> {
    use jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            deliver_policy: match after {
                0 => DeliverPolicy::All,
                p => DeliverPolicy::ByStartSequence {
                    start_sequence: p + 1,
                },
            },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// Changes the JSON value under `key` (its default when absent) by compare-and-set, again
/// from the new value whenever another node changed it first. `change` answers whether to
/// write; an `Err` from it stops with nothing written. Answers whether it wrote.
async fn update_json<T, E>(
    bucket: &jetstream::kv::Store,
    key: &str,
    mut change: impl FnMut(&mut T) -> Result<bool, E>,
) -> anyhow::Result<Result<bool, E>>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Default,
{
    use jetstream::kv::Operation;
    loop {
        let current = bucket.entry(key).await?;
        let (mut value, revision) = match &current {
            Some(e) if e.operation == Operation::Put => {
                (serde_json::from_slice::<T>(&e.value)?, Some(e.revision))
            }
            _ => (T::default(), None),
        };
        match change(&mut value) {
            Err(refused) => return Ok(Err(refused)),
            Ok(false) => return Ok(Ok(false)),
            Ok(true) => {}
        }
        let bytes: bytes::Bytes = serde_json::to_vec(&value)?.into();
        let written = match revision {
            Some(r) => bucket.update(key, bytes, r).await.is_ok(),
            None => bucket.create(key, bytes).await.is_ok(),
        };
        if written {
            return Ok(Ok(true));
        }
    }
}

/// A delivered message's place in its stream.
fn stream_seq(message: &jetstream::Message) -> anyhow::Result<u64> {
    Ok(message
        .info()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .stream_sequence)
}

/// An execution id as it may appear in a subject or a KV key: what `ids::execution_id` makes.
pub fn valid_execution_id(id: &str) -> bool {
    crate::domain::ids::valid_name(id)
}

pub type SharedCluster = Arc<Cluster>;
