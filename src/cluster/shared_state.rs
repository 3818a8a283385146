//! The shared trees (see `store::shared`: keys, project limits, the catalog, webhook signing
//! secrets, the Responses API's side of requests) on KV bucket `switchyard_state`, one entry
//! per tree entry (`<tree>.<hex key>`).
//!
//! Writes leave in the order they were made, through one forwarder; an API call that changed
//! shared state waits (`AppState::durable`) until KV has its writes, so what a client was told
//! is done holds on every node. Every node (the writer too) applies every entry in KV order, so
//! two nodes writing the same entry end with the same value: the last one KV took.

use async_nats::jetstream::kv::Operation;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

use super::Cluster;
use crate::store::{KeyRecord, SharedWrite, Store};

/// How long an API call waits for its shared writes before answering 503.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(3);

impl Cluster {
    /// Sends this node's shared writes to KV in order, retrying each until KV takes it.
    pub async fn forward_shared(self: Arc<Self>, mut queue: UnboundedReceiver<SharedWrite>) {
        while let Some(write) = queue.recv().await {
            let key = format!("{}.{}", write.tree, hex::encode(&write.key));
            loop {
                let sent = match &write.value {
                    Some(value) => self
                        .state
                        .put(&key, value.to_vec().into())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => self.state.delete(&key).await.map_err(|e| e.to_string()),
                };
                match sent {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(entry = %key, error = %err, "shared write failed; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            self.shared_acked.send_replace(write.seq);
        }
    }

    /// Resolves once KV has every shared write queued up to `queued`.
    pub async fn shared_barrier(&self, queued: u64) -> anyhow::Result<()> {
        let mut acked = self.shared_acked.subscribe();
        tokio::time::timeout(BARRIER_TIMEOUT, acked.wait_for(|a| *a >= queued))
            .await
            .map_err(|_| anyhow::anyhow!("shared state not acknowledged in time"))??;
        Ok(())
    }

    /// Applies every node's shared writes to `store`, for as long as the node runs;
    /// `changed` hears of each entry that changed here (tree, key, before, after), so what this
    /// node keeps in memory follows (revocations, key and project limits).
    pub async fn mirror_shared(self: Arc<Self>, store: Store, changed: Arc<SharedChange>) {
        loop {
            if let Err(err) = self.mirror_shared_once(&store, changed.as_ref()).await {
                tracing::warn!(error = %err, "shared state mirror interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    async fn mirror_shared_once(
        &self,
        store: &Store,
        changed: &SharedChange,
    ) -> anyhow::Result<()> {
        let empty = self
            .js
            .get_stream("KV_switchyard_state")
            .await?
            .info()
            .await?
            .state
            .messages
            == 0;
        if empty {
            self.state_caught_up.store(true, Ordering::Release);
        }
        let mut watch = self.state.watch_with_history(">").await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            let Some((tree_name, hex_key)) = entry.key.split_once('.') else {
                continue;
            };
            let (Some(tree), Ok(key)) = (
                store
                    .shared_trees()
                    .into_iter()
                    .find(|t| t.name() == tree_name),
                hex::decode(hex_key),
            ) else {
                continue;
            };
            let tree = tree.raw();
            let previous = match entry.operation {
                Operation::Put => tree.insert(&key, entry.value.to_vec())?,
                Operation::Delete | Operation::Purge => tree.remove(&key)?,
            };
            let after = tree.get(&key)?;
            if previous != after {
                changed(tree_name, &key, previous.as_deref(), after.as_deref());
            }
            if entry.delta == 0 {
                self.state_caught_up.store(true, Ordering::Release);
            }
        }
        Ok(())
    }
}

impl Cluster {
    /// A project's first webhook signing secrets, agreed across nodes: `fresh` if this node
    /// creates them first (create-if-absent), else the ones another node created.
    pub async fn first_webhook_secrets(
        &self,
        project: &str,
        fresh: &crate::store::SigningSecrets,
    ) -> anyhow::Result<crate::store::SigningSecrets> {
        use async_nats::jetstream::kv::CreateErrorKind;
        let entry = format!("webhook_secrets.{}", hex::encode(project));
        match self
            .state
            .create(&entry, serde_json::to_vec(fresh)?.into())
            .await
        {
            Ok(_) => Ok(fresh.clone()),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let value = self
                    .state
                    .get(&entry)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("webhook secrets vanished"))?;
                Ok(serde_json::from_slice(&value)?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Told of a shared entry that changed on this node: (tree, key, before, after).
pub type SharedChange = dyn Fn(&str, &[u8], Option<&[u8]>, Option<&[u8]>) + Send + Sync;

/// The id of a key whose record changed from live to revoked, or whose secret was rotated.
pub fn ended_key(before: Option<&[u8]>, after: Option<&[u8]>) -> Option<String> {
    let parse = |b: Option<&[u8]>| b.and_then(|b| serde_json::from_slice::<KeyRecord>(b).ok());
    let (before, after) = (parse(before), parse(after)?);
    let revoked =
        after.revoked_at_ms.is_some() && before.as_ref().is_none_or(|b| b.revoked_at_ms.is_none());
    let rotated = before.is_some_and(|b| b.hash != after.hash);
    (revoked || rotated).then_some(after.id)
}
