//! API keys: only a SHA-256 of each secret is stored; the secret is shown once.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Store;
use crate::domain::{ids, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// Manages the project's keys, and (in the `default` project) creates keys for new projects.
    Admin,
    /// Submits and reads executions.
    Member,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub project_id: String,
    pub name: Option<String>,
    pub role: KeyRole,
    /// The first characters of the secret, to recognise a key in a list.
    pub prefix: String,
    pub hash: String,
    pub created_at_ms: u64,
    pub rotated_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
    /// Overrides of the `[limits]` defaults for this key (`PATCH /v1/keys/{id}`).
    #[serde(default, skip_serializing_if = "KeyLimits::is_empty")]
    pub limits: KeyLimits,
    /// A `test` key runs only testing-mode executions (like a payment API's test keys).
    #[serde(default, skip_serializing_if = "KeyMode::is_live")]
    pub mode: KeyMode,
}

/// What a key may run: live executions (and testing ones), or testing ones only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    #[default]
    Live,
    Test,
}

impl KeyMode {
    pub fn is_live(&self) -> bool {
        *self == KeyMode::Live
    }
}

/// A key's own limits; `None` follows the `[limits]` default, 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_executions: Option<u64>,
    /// Stored and shown only: spending is not counted yet (balances are separate work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_spend_cap_micros: Option<u64>,
}

impl KeyLimits {
    pub fn is_empty(&self) -> bool {
        *self == KeyLimits::default()
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn display_prefix(secret: &str) -> String {
    secret.chars().take(10).collect()
}

fn decode(bytes: &[u8]) -> sled::Result<KeyRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| sled::Error::Unsupported(format!("corrupt key record: {e}")))
}

impl Store {
    /// Creates a key and returns its record and its secret (never stored).
    pub fn create_key(
        &self,
        project_id: &str,
        role: KeyRole,
        name: Option<String>,
        mode: KeyMode,
    ) -> sled::Result<(KeyRecord, String)> {
        let secret = ids::api_key_secret();
        let record = KeyRecord {
            id: ids::key_id(),
            project_id: project_id.to_string(),
            name,
            role,
            prefix: display_prefix(&secret),
            hash: hash_secret(&secret),
            created_at_ms: now_ms(),
            rotated_at_ms: None,
            revoked_at_ms: None,
            limits: KeyLimits::default(),
            mode,
        };
        self.put_key(&record)?;
        self.key_hashes
            .insert(record.hash.as_bytes(), record.id.as_bytes())?;
        Ok((record, secret))
    }

    fn put_key(&self, record: &KeyRecord) -> sled::Result<()> {
        self.keys.insert(
            record.id.as_bytes(),
            serde_json::to_vec(record).expect("key records serialize"),
        )?;
        Ok(())
    }

    /// The live (not revoked) key whose secret this is.
    pub fn key_by_secret(&self, secret: &str) -> sled::Result<Option<KeyRecord>> {
        let hash = hash_secret(secret);
        let Some(id) = self.key_hashes.get(hash.as_bytes())? else {
            return Ok(None);
        };
        let Some(record) = self.keys.get(&id)?.map(|b| decode(&b)).transpose()? else {
            return Ok(None);
        };
        Ok((record.revoked_at_ms.is_none() && record.hash == hash).then_some(record))
    }

    /// The key with this id, in any project, revoked or not.
    pub fn key_by_id(&self, id: &str) -> sled::Result<Option<KeyRecord>> {
        self.keys
            .get(id.as_bytes())?
            .map(|b| decode(&b))
            .transpose()
    }

    pub fn project_key(&self, project_id: &str, id: &str) -> sled::Result<Option<KeyRecord>> {
        Ok(self
            .keys
            .get(id.as_bytes())?
            .map(|b| decode(&b))
            .transpose()?
            .filter(|k| k.project_id == project_id))
    }

    pub fn list_keys(&self, project_id: &str) -> sled::Result<Vec<KeyRecord>> {
        let mut out = Vec::new();
        for item in self.keys.iter() {
            let (_, bytes) = item?;
            let record = decode(&bytes)?;
            if record.project_id == project_id {
                out.push(record);
            }
        }
        out.sort_by_key(|k| std::cmp::Reverse(k.created_at_ms));
        Ok(out)
    }

    /// Replaces the secret; the old one stops working at once.
    pub fn rotate_key(&self, mut record: KeyRecord) -> sled::Result<(KeyRecord, String)> {
        let secret = ids::api_key_secret();
        self.key_hashes.remove(record.hash.as_bytes())?;
        record.hash = hash_secret(&secret);
        record.prefix = display_prefix(&secret);
        record.rotated_at_ms = Some(now_ms());
        self.put_key(&record)?;
        self.key_hashes
            .insert(record.hash.as_bytes(), record.id.as_bytes())?;
        Ok((record, secret))
    }

    pub fn revoke_key(&self, mut record: KeyRecord) -> sled::Result<KeyRecord> {
        self.key_hashes.remove(record.hash.as_bytes())?;
        record.revoked_at_ms = Some(now_ms());
        self.put_key(&record)?;
        Ok(record)
    }

    /// Replaces a key's limit overrides.
    pub fn set_key_limits(
        &self,
        mut record: KeyRecord,
        limits: KeyLimits,
    ) -> sled::Result<KeyRecord> {
        record.limits = limits;
        self.put_key(&record)?;
        Ok(record)
    }

    /// Every live key with limit overrides: read once at start into the in-memory cache.
    pub fn key_limit_overrides(&self) -> sled::Result<Vec<(String, KeyLimits)>> {
        let mut out = Vec::new();
        for item in self.keys.iter() {
            let (_, bytes) = item?;
            let record = decode(&bytes)?;
            if record.revoked_at_ms.is_none() && !record.limits.is_empty() {
                out.push((record.id, record.limits));
            }
        }
        Ok(out)
    }

    /// Every project's own limits (`PATCH /v1/projects/{id}/limits`).
    pub fn project_limit_overrides(&self) -> sled::Result<Vec<(String, KeyLimits)>> {
        self.project_limits
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let limits = serde_json::from_slice(&v).map_err(|e| {
                    sled::Error::Unsupported(format!("corrupt project limits: {e}"))
                })?;
                Ok((String::from_utf8_lossy(&k).into_owned(), limits))
            })
            .collect()
    }

    pub fn project_limits(&self, project: &str) -> sled::Result<KeyLimits> {
        Ok(self
            .project_limits
            .get(project.as_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    /// Stores a project's limits (none left: the entry goes).
    pub fn put_project_limits(&self, project: &str, limits: &KeyLimits) -> sled::Result<()> {
        if limits.is_empty() {
            self.project_limits.remove(project.as_bytes())?;
        } else {
            let value = serde_json::to_vec(limits).expect("limits serialize");
            self.project_limits.insert(project.as_bytes(), value)?;
        }
        Ok(())
    }

    /// Whether the project has a live admin key (decides the first-start bootstrap).
    pub fn has_admin_key(&self, project_id: &str) -> sled::Result<bool> {
        Ok(self
            .list_keys(project_id)?
            .iter()
            .any(|k| k.role == KeyRole::Admin && k.revoked_at_ms.is_none()))
    }
}
