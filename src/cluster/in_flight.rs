//! Executions in flight per key and per project, counted across nodes: each limited scope is a
//! KV entry (`switchyard_in_flight`, `key.<id>` or `project.<hex id>`) listing its running
//! executions, changed only by compare-and-set, so N nodes admitting at once never let more in
//! than the limit. An execution leaves the list when it ends, on whichever node (or when a
//! takeover finds it ended). An id whose execution ended or never came to exist (its submit
//! failed after the admission, or its node died in between) is dropped when the list is full.

use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::domain::now_ms;
use crate::store::Store;

/// An admitted id this old without a record was never created.
const UNCREATED_AFTER_MS: u64 = 30_000;

#[derive(Serialize, Deserialize, Clone)]
struct Running {
    id: String,
    since_ms: u64,
}

/// Which count refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Key,
    Project,
}

fn scopes(
    key_id: &str,
    project: &str,
    (key_max, project_max): (u64, u64),
) -> Vec<(String, u64, Full)> {
    let mut out = Vec::new();
    if key_max > 0 {
        out.push((format!("key.{key_id}"), key_max, Full::Key));
    }
    if project_max > 0 {
        out.push((
            format!("project.{}", hex::encode(project)),
            project_max,
            Full::Project,
        ));
    }
    out
}

impl Cluster {
    /// Counts `execution_id` in flight for its key and project (`limits`: their maximums, 0 for
    /// none). `Err` inside: a count is full (nothing is counted then).
    pub async fn enter_in_flight(
        &self,
        store: &Store,
        key_id: &str,
        project: &str,
        execution_id: &str,
        limits: (u64, u64),
    ) -> anyhow::Result<Result<(), Full>> {
        let mut entered: Vec<String> = Vec::new();
        for (entry, max, full) in scopes(key_id, project, limits) {
            let admitted = self
                .change_running(&entry, |running| {
                    if running.len() as u64 >= max {
                        // Drop what ended or never started before refusing.
                        running.retain(|r| still_running(store, r));
                    }
                    if running.len() as u64 >= max {
                        return false;
                    }
                    running.push(Running {
                        id: execution_id.into(),
                        since_ms: now_ms(),
                    });
                    true
                })
                .await?;
            if !admitted {
                for entered in &entered {
                    self.change_running(entered, |r| remove(r, execution_id))
                        .await?;
                }
                return Ok(Err(full));
            }
            entered.push(entry);
        }
        Ok(Ok(()))
    }

    /// The execution ended (or was never created): it leaves its scopes' counts.
    pub async fn leave_in_flight(
        &self,
        key_id: &str,
        project: &str,
        execution_id: &str,
    ) -> anyhow::Result<()> {
        for entry in [
            format!("key.{key_id}"),
            format!("project.{}", hex::encode(project)),
        ] {
            self.change_running(&entry, |r| remove(r, execution_id))
                .await?;
        }
        Ok(())
    }

    /// Changes a scope's list with `change` (see `update_json`): `false` writes nothing.
    async fn change_running(
        &self,
        entry: &str,
        mut change: impl FnMut(&mut Vec<Running>) -> bool,
    ) -> anyhow::Result<bool> {
        let changed = super::update_json(&self.in_flight, entry, |running| {
            Ok::<bool, std::convert::Infallible>(change(running))
        });
        Ok(changed.await?.unwrap_or_else(|never| match never {}))
    }
}

fn remove(running: &mut Vec<Running>, id: &str) -> bool {
    let before = running.len();
    running.retain(|r| r.id != id);
    running.len() != before
}

/// Whether a listed execution still counts: it exists (here, through the mirror) and has not
/// ended, or it is too young to have been written yet.
fn still_running(store: &Store, r: &Running) -> bool {
    match store.get_execution(&r.id) {
        Ok(Some(record)) => !record.status.is_terminal(),
        Ok(None) => now_ms().saturating_sub(r.since_ms) < UNCREATED_AFTER_MS,
        Err(_) => true,
    }
}

/// An execution's place in its scopes' counts: given back when dropped (its execution ended,
/// or its submit failed), unless [`InFlightSlot::hand_over`] passed it on.
pub struct InFlightSlot {
    cluster: std::sync::Arc<Cluster>,
    key_id: String,
    project: String,
    id: String,
    armed: bool,
}

impl InFlightSlot {
    pub fn new(
        cluster: std::sync::Arc<Cluster>,
        key_id: &str,
        project: &str,
        id: &str,
    ) -> InFlightSlot {
        InFlightSlot {
            cluster,
            key_id: key_id.into(),
            project: project.into(),
            id: id.into(),
            armed: true,
        }
    }

    /// Another node drives the execution now: the place stays counted (it leaves the count
    /// when that node ends it, or when a full count finds it ended).
    pub fn hand_over(mut self) {
        self.armed = false;
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (cluster, key, project, id) = (
            self.cluster.clone(),
            std::mem::take(&mut self.key_id),
            std::mem::take(&mut self.project),
            std::mem::take(&mut self.id),
        );
        tokio::spawn(async move {
            while let Err(err) = cluster.leave_in_flight(&key, &project, &id).await {
                tracing::warn!(execution_id = %id, error = %err, "cannot leave the in-flight count yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
    }
}
