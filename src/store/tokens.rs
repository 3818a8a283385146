//! Single-use WebSocket tokens, bound to one project and one channel, stored by hash.

use serde::{Deserialize, Serialize};

use super::{hash_secret, Store};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WsTokenRecord {
    pub project_id: String,
    pub execution_id: String,
    pub channel: String,
    pub expires_at_ms: u64,
}

impl Store {
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
        Ok(self
            .ws_tokens
            .remove(hash_secret(token).as_bytes())?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }
}
