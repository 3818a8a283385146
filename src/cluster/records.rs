//! Execution records and requests in KV. A record is written by its execution's lease holder
//! only; the writes go out in order through one task (publishes on one connection keep their
//! order, so a later record never lands before an earlier one) and their acknowledgements are
//! awaited beside it.

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::mpsc::UnboundedReceiver;

use super::Cluster;
use crate::domain::{ChatRequest, ExecutionRecord};

pub(super) struct RecordWrite {
    id: String,
    value: Bytes,
}

/// A record in KV: the writing node, a newline, the record's JSON (the node lets the mirror
/// skip its own writes).
fn encode(node: &str, record: &ExecutionRecord) -> Bytes {
    let mut out = Vec::with_capacity(node.len() + 512);
    out.extend_from_slice(node.as_bytes());
    out.push(b'\n');
    serde_json::to_writer(&mut out, record).expect("records serialize");
    out.into()
}

/// `(writing node, record)`, `None` for bytes that are not one.
pub(super) fn decode(value: &[u8]) -> Option<(&str, ExecutionRecord)> {
    let split = value.iter().position(|b| *b == b'\n')?;
    let node = std::str::from_utf8(&value[..split]).ok()?;
    Some((node, serde_json::from_slice(&value[split + 1..]).ok()?))
}

pub(super) async fn write_in_order(
    js: jetstream::Context,
    mut writes: UnboundedReceiver<RecordWrite>,
) {
    while let Some(write) = writes.recv().await {
        let subject = format!("$KV.switchyard_records.{}", write.id);
        match js.publish(subject, write.value).await {
            Ok(ack) => {
                tokio::spawn(async move {
                    if let Err(err) = ack.await {
                        tracing::warn!(execution_id = %write.id, error = %err, "shared record write failed; the next one carries it");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(execution_id = %write.id, error = %err, "shared record write failed; the next one carries it")
            }
        }
    }
}

impl Cluster {
    /// Queues the record for KV (in order with this node's other record writes).
    pub fn share_record(&self, record: &ExecutionRecord) {
        let _ = self.record_writes.send(RecordWrite {
            id: record.id.clone(),
            value: encode(&self.node, record),
        });
    }

    /// Writes the record and waits for KV to have it (at submit, before a lease names it).
    pub async fn put_record(&self, record: &ExecutionRecord) -> anyhow::Result<()> {
        self.records
            .put(&record.id, encode(&self.node, record))
            .await?;
        Ok(())
    }

    pub async fn record(&self, id: &str) -> anyhow::Result<Option<ExecutionRecord>> {
        if !super::valid_execution_id(id) {
            return Ok(None);
        }
        Ok(self
            .records
            .get(id)
            .await?
            .and_then(|v| decode(&v).map(|(_, r)| r)))
    }

    pub async fn put_request(&self, id: &str, request: &ChatRequest) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(request)?;
        if bytes.len() > self.max_payload() {
            anyhow::bail!(
                "the request is {} bytes, more than NATS' max_payload ({}): raise it in nats-server's config",
                bytes.len(),
                self.max_payload()
            );
        }
        self.requests.put(id, bytes.into()).await?;
        Ok(())
    }

    pub async fn request(&self, id: &str) -> anyhow::Result<Option<ChatRequest>> {
        Ok(match self.requests.get(id).await? {
            Some(bytes) => Some(serde_json::from_slice(&bytes)?),
            None => None,
        })
    }
}
