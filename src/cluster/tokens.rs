//! One-time WebSocket tokens across nodes: a token issued on one node opens a session on any,
//! once. KV holds each token's record under the hash of its secret; using it replaces the
//! record with a spent marker by compare-and-set on its revision, so of two nodes racing with
//! the same token exactly one wins. The marker (not a deletion) keeps a spent token from being
//! shared again; the bucket forgets entries after `retention.ws_tokens`.

use async_nats::jetstream::kv::{CreateErrorKind, Operation};

use super::Cluster;
use crate::store::{hash_secret, WsTokenRecord};

const SPENT: &[u8] = b"spent";

impl Cluster {
    /// Shares a token issued here. `false`: it was spent already (on any node), so the caller
    /// mints another.
    pub async fn share_token(&self, token: &str, record: &WsTokenRecord) -> anyhow::Result<bool> {
        let key = hash_secret(token);
        let value = serde_json::to_vec(record)?;
        match self.tokens.create(&key, value.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                // Issued before (a retried submit gets its unspent token again).
                let entry = self.tokens.get(&key).await?;
                Ok(entry.is_some_and(|v| v.as_ref() != SPENT))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Spends the token: its record the first time, `None` after (or for an unknown token).
    pub async fn take_token(&self, token: &str) -> anyhow::Result<Option<WsTokenRecord>> {
        let key = hash_secret(token);
        let Some(entry) = self.tokens.entry(&key).await? else {
            return Ok(None);
        };
        if entry.operation != Operation::Put || entry.value.as_ref() == SPENT {
            return Ok(None);
        }
        let Ok(record) = serde_json::from_slice::<WsTokenRecord>(&entry.value) else {
            return Ok(None);
        };
        match self.tokens.update(&key, SPENT.into(), entry.revision).await {
            Ok(_) => Ok(Some(record)),
            // Another node spent it first.
            Err(_) => Ok(None),
        }
    }
}
