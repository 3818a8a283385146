//! Revocation broadcast: rotating or revoking a key ends every stream the key opened.
//!
//! Each open stream (SSE, the streaming OpenAI-compatible answer, a WebSocket) holds a
//! [`Revoked`] receiver for the key that authorised it and selects on it beside its events.
//! Keys are watched lazily: a key nobody streams with costs nothing, and one that does costs one
//! `watch` channel shared by all its streams, so a revocation wakes exactly those streams.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

#[derive(Default)]
pub struct Revocations {
    /// A std mutex: held for a map lookup, never across an await.
    inner: Mutex<Watched>,
}

#[derive(Default)]
struct Watched {
    /// key id → flag flipped to `true` once.
    keys: HashMap<String, watch::Sender<bool>>,
    /// Size after the last pruning: the next one waits until the map has doubled, so pruning
    /// costs O(1) per stream opened, amortized.
    pruned_at: usize,
}

/// Resolves once the watched key is revoked or rotated.
pub struct Revoked(Option<watch::Receiver<bool>>);

impl Revocations {
    /// A receiver for `key_id`. Subscribe *before* checking that the key is still valid: a
    /// revocation after the subscription is seen, one before it is caught by the check.
    pub fn watch(&self, key_id: &str) -> Revoked {
        let mut watched = self.inner.lock().expect("revocations lock");
        // Forget keys whose streams have all ended, so the map follows the open streams.
        if watched.keys.len() > 64.max(2 * watched.pruned_at) {
            watched.keys.retain(|_, tx| tx.receiver_count() > 0);
            watched.pruned_at = watched.keys.len();
        }
        let tx = watched
            .keys
            .entry(key_id.to_string())
            .or_insert_with(|| watch::channel(false).0);
        Revoked(Some(tx.subscribe()))
    }

    /// Ends every stream watching `key_id` (called on revoke and on rotate).
    pub fn revoke(&self, key_id: &str) {
        let tx = self
            .inner
            .lock()
            .expect("revocations lock")
            .keys
            .remove(key_id);
        if let Some(tx) = tx {
            tx.send_replace(true);
        }
    }

    /// Keys with at least one open stream (for tests and metrics).
    pub fn watched(&self) -> usize {
        let watched = self.inner.lock().expect("revocations lock");
        watched
            .keys
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }
}

impl Revoked {
    /// A receiver that never fires: for credentials that cannot be revoked
    /// (`SWITCHYARD_ADMIN_KEY`).
    pub fn never() -> Revoked {
        Revoked(None)
    }

    /// A receiver that has already fired: the key was revoked before the stream started.
    pub fn already() -> Revoked {
        Revoked(Some(watch::channel(true).1))
    }

    /// Whether the key is already revoked.
    pub fn is_fired(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Waits until the key is revoked; pending forever for a key that never is.
    pub async fn fired(mut self) {
        if let Some(rx) = self.0.as_mut() {
            if rx.wait_for(|revoked| *revoked).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_revocation_wakes_only_the_streams_of_that_key() {
        let r = Revocations::default();
        let a = r.watch("key_a");
        let b = r.watch("key_b");
        assert_eq!(r.watched(), 2);
        r.revoke("key_a");
        tokio::time::timeout(Duration::from_secs(5), a.fired())
            .await
            .expect("key_a's stream is told");
        let still = tokio::time::timeout(Duration::from_millis(50), b.fired()).await;
        assert!(still.is_err(), "key_b's stream must stay open");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), Revoked::never().fired())
                .await
                .is_err()
        );
        tokio::time::timeout(Duration::from_secs(5), Revoked::already().fired())
            .await
            .unwrap();
    }

    #[test]
    fn keys_whose_streams_ended_are_forgotten() {
        let r = Revocations::default();
        for i in 0..1_000 {
            drop(r.watch(&format!("key_{i}")));
        }
        let kept = r.watch("key_open");
        let size = r.inner.lock().unwrap().keys.len();
        assert!(size <= 130, "the map follows the open streams: {size}");
        assert_eq!(r.watched(), 1);
        drop(kept);
    }
}
