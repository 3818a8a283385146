//! Reading an execution that may have been submitted on another node of a cluster: the local
//! store first (the mirror keeps it current), then the shared record, which is written into
//! the local store so the reads that follow (its log, its listing) are local again.

use super::AppState;
use crate::domain::ExecutionRecord;
use crate::error::ApiError;

/// The project's execution, wherever it was submitted (a foreign id is an unknown one).
pub async fn project_execution(
    state: &AppState,
    project: &str,
    id: &str,
) -> Result<Option<ExecutionRecord>, ApiError> {
    if let Some(record) = state.store.get_execution(id)? {
        return Ok(Some(record).filter(|r| r.project_id == project));
    }
    let Some(cluster) = &state.cluster else {
        return Ok(None);
    };
    let record = cluster
        .record(id)
        .await
        .map_err(ApiError::cluster_unavailable)?;
    adopt(state, record).map(|r| r.filter(|r| r.project_id == project))
}

/// The execution an idempotency claim names, waiting briefly for a claim another node is still
/// writing.
pub async fn claimed_execution(
    state: &AppState,
    id: &str,
) -> Result<Option<ExecutionRecord>, ApiError> {
    if let Some(record) = state.store.get_execution(id)? {
        return Ok(Some(record));
    }
    let Some(cluster) = &state.cluster else {
        return Ok(None);
    };
    let record = cluster
        .claimed_record(id)
        .await
        .map_err(ApiError::cluster_unavailable)?;
    adopt(state, record)
}

fn adopt(
    state: &AppState,
    record: Option<ExecutionRecord>,
) -> Result<Option<ExecutionRecord>, ApiError> {
    if let (Some(cluster), Some(record)) = (&state.cluster, &record) {
        cluster
            .adopt_record(&state.store, record)
            .map_err(ApiError::internal)?;
    }
    Ok(record)
}
