//! Single-use WebSocket tokens, bound to one project and one channel, stored by hash.
//!
//! Three kinds of entry share the `ws_tokens` tree (a hash key is 64 hex digits, the others
//! contain a 0 byte, so they never collide):
//! - `sha256(token)` → [`WsTokenRecord`]: what [`Store::take_ws_token`] consumes;
//! - `exec ‖ 0 ‖ execution id` → the execution's unspent token, so an idempotent retry of the
//!   submit answers with the same token instead of minting another;
//! - `exp ‖ 0 ‖ expires_at BE ‖ sha256(token)` → the token's record again: the expiry index
//!   [`Store::remove_expired_ws_tokens`] walks.
//!
//! Every value in the tree parses as a [`WsTokenRecord`] with the entry's expiry, so a sweep
//! that scans the whole tree and deletes whatever expired stays correct for all three kinds.

use serde::{Deserialize, Serialize};

use super::{hash_secret, Store};
use crate::domain::ids;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WsTokenRecord {
    pub project_id: String,
    pub execution_id: String,
    pub channel: String,
    pub expires_at_ms: u64,
    /// The key that submitted (and its secret's hash then): revoking or rotating it refuses
    /// the token and closes a session it opened. `None` for `SWITCHYARD_ADMIN_KEY` and for
    /// tokens written before this field existed.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub key_hash: Option<String>,
}

/// The unspent token of one execution. The token itself is kept (not only its hash) so a retry
/// can be answered with it: it grants one channel of the project, less than the API key the
/// retry must present anyway, and lives only until `expires_at_ms`.
#[derive(Serialize, Deserialize)]
struct Issued {
    token: String,
    #[serde(flatten)]
    record: WsTokenRecord,
}

/// A token about to expire is not handed out again: the client needs time to connect.
const REUSE_MARGIN_MS: u64 = 30_000;

fn exec_key(execution_id: &str) -> Vec<u8> {
    super::joined("exec", execution_id.as_bytes())
}

fn expiry_key(expires_at_ms: u64, hash: &str) -> Vec<u8> {
    let mut tail = expires_at_ms.to_be_bytes().to_vec();
    tail.extend_from_slice(hash.as_bytes());
    super::joined("exp", &tail)
}

impl Store {
    /// The execution's token for `record`'s caller: its unspent one when the same key asks
    /// again well before expiry, else a fresh one (replacing an unspent one of another key).
    pub fn ws_token_for(&self, record: &WsTokenRecord, now_ms: u64) -> sled::Result<String> {
        let exec = exec_key(&record.execution_id);
        let previous: Option<Issued> = self
            .ws_tokens
            .get(&exec)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(previous) = previous {
            let hash = hash_secret(&previous.token);
            let unspent = self.ws_tokens.contains_key(hash.as_bytes())?;
            if unspent
                && previous.record.key_hash == record.key_hash
                && previous.record.expires_at_ms > now_ms + REUSE_MARGIN_MS
            {
                return Ok(previous.token);
            }
            self.remove_token(&hash, previous.record.expires_at_ms, None)?;
        }
        let token = ids::ws_token();
        let hash = hash_secret(&token);
        let bytes = serde_json::to_vec(record).expect("token records serialize");
        self.ws_tokens.insert(hash.as_bytes(), bytes.clone())?;
        self.ws_tokens
            .insert(expiry_key(record.expires_at_ms, &hash), bytes)?;
        let issued = Issued {
            token: token.clone(),
            record: record.clone(),
        };
        self.ws_tokens.insert(
            exec,
            serde_json::to_vec(&issued).expect("token records serialize"),
        )?;
        Ok(token)
    }

    /// Stores a token minted by the caller, as tokens were stored before [`Store::ws_token_for`]:
    /// the record alone, no reuse entry and no expiry index (only a scan of the tree, such as
    /// [`Store::remove_expired_ws_tokens_by_scan`], finds it once expired). For tests and tools.
    pub fn put_ws_token(&self, token: &str, record: &WsTokenRecord) -> sled::Result<()> {
        self.ws_tokens.insert(
            hash_secret(token).as_bytes(),
            serde_json::to_vec(record).expect("token records serialize"),
        )?;
        Ok(())
    }

    /// Removes and returns the token's record: a token works once, and a reused token is
    /// indistinguishable from an unknown one.
    pub fn take_ws_token(&self, token: &str) -> sled::Result<Option<WsTokenRecord>> {
        let hash = hash_secret(token);
        let Some(bytes) = self.ws_tokens.remove(hash.as_bytes())? else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<WsTokenRecord>(&bytes) else {
            return Ok(None);
        };
        self.remove_token(&hash, record.expires_at_ms, Some(&record.execution_id))?;
        Ok(Some(record))
    }

    /// Deletes up to `batch` tokens that expired before `cutoff_ms`, spent or not, with their
    /// index entries (the retention sweep calls it with `now - retention.ws_tokens`). Cost: a
    /// range scan of the expiry index, oldest first.
    pub fn remove_expired_ws_tokens(
        &self,
        cutoff_ms: u64,
        batch: usize,
    ) -> sled::Result<super::Swept> {
        let start = super::joined("exp", &[]);
        let end = super::joined("exp", &cutoff_ms.to_be_bytes());
        let mut removed = 0;
        for item in self.ws_tokens.range(start..end).take(batch) {
            let (key, value) = item?;
            let tail = &key[4..];
            let (expires, hash) = tail.split_at(8);
            let expires = u64::from_be_bytes(expires.try_into().expect("8 bytes"));
            let hash = String::from_utf8_lossy(hash).into_owned();
            let execution_id = serde_json::from_slice::<WsTokenRecord>(&value)
                .ok()
                .map(|r| r.execution_id);
            self.remove_token(&hash, expires, execution_id.as_deref())?;
            removed += 1;
        }
        Ok(super::Swept {
            deleted: removed,
            more: removed == batch,
        })
    }

    /// Deletes tokens that expired before `cutoff_ms` by reading every token record: for the
    /// tokens written before the expiry index existed (they were never deleted). One full scan
    /// of the tree; run once at start.
    pub fn remove_expired_ws_tokens_by_scan(&self, cutoff_ms: u64) -> sled::Result<usize> {
        let mut removed = 0;
        for item in self.ws_tokens.iter() {
            let (key, bytes) = item?;
            // Token records are keyed by a bare 64-hex-digit hash; index entries contain a 0.
            if key.len() != 64 || key.contains(&0) {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<WsTokenRecord>(&bytes) else {
                continue;
            };
            if record.expires_at_ms < cutoff_ms {
                let hash = String::from_utf8_lossy(&key).into_owned();
                self.remove_token(&hash, record.expires_at_ms, Some(&record.execution_id))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Drops a token's record, its expiry entry and (when it is still the execution's
    /// current token) the execution's entry.
    fn remove_token(
        &self,
        hash: &str,
        expires_at_ms: u64,
        execution_id: Option<&str>,
    ) -> sled::Result<()> {
        self.ws_tokens.remove(hash.as_bytes())?;
        self.ws_tokens.remove(expiry_key(expires_at_ms, hash))?;
        if let Some(id) = execution_id {
            let exec = exec_key(id);
            let current = self
                .ws_tokens
                .get(&exec)?
                .and_then(|b| serde_json::from_slice::<Issued>(&b).ok());
            if current.is_some_and(|c| hash_secret(&c.token) == hash) {
                self.ws_tokens.remove(exec)?;
            }
        }
        Ok(())
    }

    /// Entries in the token tree (tokens and their index entries), for tests of the sweep.
    pub fn ws_token_entries(&self) -> usize {
        self.ws_tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(exec: &str, expires_at_ms: u64, key: &str) -> WsTokenRecord {
        WsTokenRecord {
            project_id: "p".into(),
            execution_id: exec.into(),
            channel: format!("ai_response:p:{exec}"),
            expires_at_ms,
            key_id: Some("key_1".into()),
            key_hash: Some(key.into()),
        }
    }

    #[tokio::test]
    async fn retries_reuse_the_unspent_token_and_the_sweep_removes_expired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = 1_000_000;
        let first = store
            .ws_token_for(&record("e1", now + 300_000, "h"), now)
            .unwrap();
        let again = store
            .ws_token_for(&record("e1", now + 301_000, "h"), now + 1_000)
            .unwrap();
        assert_eq!(first, again, "an idempotent retry gets the same token");
        assert_eq!(store.ws_token_entries(), 3);
        let other_key = store
            .ws_token_for(&record("e1", now + 302_000, "h2"), now)
            .unwrap();
        assert_ne!(other_key, first, "another key gets its own token");
        assert!(store.take_ws_token(&first).unwrap().is_none(), "replaced");
        assert_eq!(store.ws_token_entries(), 3);
        // Spent: everything about it is gone, and the next retry mints a new one.
        assert!(store.take_ws_token(&other_key).unwrap().is_some());
        assert_eq!(store.ws_token_entries(), 0);
        let fresh = store
            .ws_token_for(&record("e1", now + 303_000, "h2"), now)
            .unwrap();
        assert_ne!(fresh, other_key);
        // Expired and never used: the sweep removes it with its index entries.
        store
            .ws_token_for(&record("e2", now + 10, "h"), now)
            .unwrap();
        assert_eq!(
            store
                .remove_expired_ws_tokens(now + 11, 64)
                .unwrap()
                .deleted,
            1
        );
        assert_eq!(store.ws_token_entries(), 3, "only e1's live token is left");
        assert_eq!(
            store
                .remove_expired_ws_tokens(now + 303_001, 64)
                .unwrap()
                .deleted,
            1
        );
        assert_eq!(store.ws_token_entries(), 0);
    }

    #[tokio::test]
    async fn every_entry_reads_as_a_token_record_with_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.ws_token_for(&record("e1", 5_000, "h"), 0).unwrap();
        let mut expiries = Vec::new();
        for item in store.ws_tokens.iter() {
            let (_, value) = item.unwrap();
            let r: WsTokenRecord = serde_json::from_slice(&value).unwrap();
            expiries.push(r.expires_at_ms);
        }
        assert_eq!(expiries, vec![5_000; 3]);
    }

    #[tokio::test]
    async fn the_scan_removes_expired_tokens_written_without_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let legacy = |token: &str, expires: u64| {
            store
                .put_ws_token(token, &record("old", expires, "h"))
                .unwrap()
        };
        legacy("wst_expired", 10);
        legacy("wst_live", 10_000);
        let current = store.ws_token_for(&record("new", 20, "h"), 0).unwrap();
        assert_eq!(
            store.remove_expired_ws_tokens(100, 64).unwrap().deleted,
            1,
            "only indexed"
        );
        assert_eq!(store.remove_expired_ws_tokens_by_scan(100).unwrap(), 1);
        assert!(store.take_ws_token("wst_expired").unwrap().is_none());
        assert!(store.take_ws_token("wst_live").unwrap().is_some());
        assert!(store.take_ws_token(&current).unwrap().is_none());
        assert_eq!(store.ws_token_entries(), 0);
    }
}
