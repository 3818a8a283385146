//! Idempotency claims across nodes: KV `create` succeeds for exactly one writer, so a key raced
//! on two nodes runs once. A claim is made before its execution's record; a claim whose
//! record never appears (its node died in between) is taken over once it is older than
//! [`ORPHAN_AFTER_MS`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

use super::Cluster;
use crate::domain::now_ms;

/// A claim this old without its record was left by a node that died while submitting.
const ORPHAN_AFTER_MS: u64 = 30_000;

#[derive(Serialize, Deserialize)]
struct ClaimValue {
    id: String,
    fingerprint: String,
    at_ms: u64,
}

pub enum Claim {
    /// The key is this submit's.
    Won,
    /// An earlier submit has it.
    Existing { id: String, same_body: bool },
}

/// KV keys take a limited alphabet: the claim's key is a digest of project and key.
fn claim_key(project: &str, key: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(project.as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    hex::encode(hash.finalize())
}

impl Cluster {
    pub async fn claim(
        &self,
        project: &str,
        key: &str,
        id: &str,
        fingerprint: &str,
    ) -> anyhow::Result<Claim> {
        let kv_key = claim_key(project, key);
        let value = serde_json::to_vec(&ClaimValue {
            id: id.into(),
            fingerprint: fingerprint.into(),
            at_ms: now_ms(),
        })?;
        if self
            .claims
            .create(&kv_key, value.clone().into())
            .await
            .is_ok()
        {
            return Ok(Claim::Won);
        }
        let entry = self
            .claims
            .entry(&kv_key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("idempotency claim vanished"))?;
        let existing: ClaimValue = serde_json::from_slice(&entry.value)?;
        if now_ms().saturating_sub(existing.at_ms) > ORPHAN_AFTER_MS
            && self.record(&existing.id).await?.is_none()
        {
            self.claims
                .update(&kv_key, value.into(), entry.revision)
                .await?;
            return Ok(Claim::Won);
        }
        Ok(Claim::Existing {
            same_body: existing.fingerprint == fingerprint,
            id: existing.id,
        })
    }

    /// The record a claim names, waiting a little for the claiming node to write it.
    pub async fn claimed_record(
        &self,
        id: &str,
    ) -> anyhow::Result<Option<crate::domain::ExecutionRecord>> {
        for _ in 0..50 {
            if let Some(record) = self.record(id).await? {
                return Ok(Some(record));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    }
}
