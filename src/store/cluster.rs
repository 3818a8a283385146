//! What cluster mode keeps in the local store besides the mirrored logs and records: how far
//! the event mirror got, and requests of executions taken over from other nodes.

use super::Store;
use crate::domain::ChatRequest;

const MIRROR_POSITION: &[u8] = b"cluster_mirror_position";

impl Store {
    /// The last stream sequence of the shared event stream applied here (0: none).
    pub fn cluster_mirror_position(&self) -> sled::Result<u64> {
        Ok(self
            .meta
            .get(MIRROR_POSITION)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    pub fn set_cluster_mirror_position(&self, position: u64) -> sled::Result<()> {
        self.meta.insert(MIRROR_POSITION, &position.to_be_bytes())?;
        Ok(())
    }

    /// Writes an execution's request (taken over: its submit was made on another node).
    pub fn put_request(&self, id: &str, request: &ChatRequest) -> sled::Result<()> {
        self.requests.insert(
            id.as_bytes(),
            serde_json::to_vec(request).expect("requests serialize"),
        )?;
        Ok(())
    }
}
