//! The webhook outbox: one entry per terminal execution with a `webhook_url`, written with the
//! terminal record (so it is durable exactly when the `done` event is), removed once a 2xx
//! acknowledges it.

use serde::{Deserialize, Serialize};

use super::Store;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookJob {
    pub execution_id: String,
    pub url: String,
    /// `execution.completed`, `execution.failed`, …
    pub event_type: String,
    pub attempts: u32,
    pub next_at_ms: u64,
    pub last_error: Option<String>,
    /// Given up after the last retry; kept for inspection.
    pub dead: bool,
}

impl Store {
    pub fn put_webhook(&self, job: &WebhookJob) -> sled::Result<()> {
        self.webhooks.insert(
            job.execution_id.as_bytes(),
            serde_json::to_vec(job).expect("webhook jobs serialize"),
        )?;
        Ok(())
    }

    pub fn remove_webhook(&self, execution_id: &str) -> sled::Result<()> {
        self.webhooks.remove(execution_id.as_bytes())?;
        Ok(())
    }

    /// Jobs due at `now_ms`, oldest first, at most `limit`.
    pub fn due_webhooks(&self, now_ms: u64, limit: usize) -> sled::Result<Vec<WebhookJob>> {
        let mut due = Vec::new();
        for item in self.webhooks.iter() {
            let (_, bytes) = item?;
            if let Ok(job) = serde_json::from_slice::<WebhookJob>(&bytes) {
                if !job.dead && job.next_at_ms <= now_ms {
                    due.push(job);
                }
            }
        }
        due.sort_by_key(|j| j.next_at_ms);
        due.truncate(limit);
        Ok(due)
    }

    pub fn webhook(&self, execution_id: &str) -> sled::Result<Option<WebhookJob>> {
        Ok(self
            .webhooks
            .get(execution_id.as_bytes())?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// The signing secret, created once and kept in the store (unless configured from env).
    pub fn webhook_secret(&self) -> sled::Result<String> {
        if let Some(s) = self.meta.get(b"webhook_secret")? {
            return Ok(String::from_utf8_lossy(&s).into_owned());
        }
        let secret = format!("whsec_{}", crate::domain::ids::random_token(40));
        match self.meta.compare_and_swap(
            b"webhook_secret",
            None as Option<&[u8]>,
            Some(secret.as_bytes()),
        )? {
            Ok(()) => Ok(secret),
            Err(current) => {
                Ok(String::from_utf8_lossy(&current.current.unwrap_or_default()).into_owned())
            }
        }
    }
}
