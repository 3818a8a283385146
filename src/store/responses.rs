//! What the Responses API adds to an execution: the request as that protocol has it (the
//! fields its response object echoes, its input items), written once beside the execution
//! and deleted with it. An execution without one reads as a plain, non-background response.

use super::Store;
use crate::domain::ExecutionRecord;

impl Store {
    /// Stores the Responses-side request of execution `id` (opaque JSON to the store).
    pub fn put_response_meta(&self, id: &str, meta: &[u8]) -> sled::Result<()> {
        self.responses.insert(id.as_bytes(), meta)?;
        Ok(())
    }

    pub fn response_meta(&self, id: &str) -> sled::Result<Option<sled::IVec>> {
        self.responses.get(id.as_bytes())
    }

    /// Deletes a finished execution now, with everything retention would delete with it
    /// (`DELETE /v1/responses/{id}`).
    pub fn delete_finished_execution(&self, record: &ExecutionRecord) -> sled::Result<()> {
        self.delete_execution(record)
    }
}
