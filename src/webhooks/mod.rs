//! Webhooks: each terminal execution with a `webhook_url` gets `POST {"id", "type", "created",
//! "data": <execution>}` signed with its project's secret (`Switchyard-Signature:
//! t=<unix>,v1=<hex>` over `"<t>.<body>"`, one `v1` per active secret), retried with exponential
//! backoff until a 2xx — at least once, across restarts (the outbox is in sled).
//!
//! [`egress`] decides where a webhook may go; [`Deliverer`] drains the outbox fairly.

pub mod egress;
mod scheduler;

pub use scheduler::Deliverer;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

use crate::api::DEFAULT_PROJECT;
use crate::error::ApiError;
use crate::settings::WebhookSettings;
use crate::store::{SigningSecrets, Store};
use egress::AllowList;

const MAX_BACKOFF_MS: u64 = 10 * 60 * 1000;

/// What submit, delivery and the secret endpoints share: the egress allow-list and the seed of
/// the default project's first secret.
pub struct Webhooks {
    pub allow: Arc<AllowList>,
    /// `secret_env`, else the one global secret of earlier versions: the default project
    /// starts with it, so existing receivers keep verifying.
    default_seed: Option<String>,
    /// Wakes the deliverer when something became due now.
    pub wake: Arc<tokio::sync::Notify>,
}

impl Webhooks {
    pub fn new(
        settings: &WebhookSettings,
        store: &Store,
        wake: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<Webhooks> {
        let allow = AllowList::parse(&settings.allowed_hosts)
            .map_err(|e| anyhow::anyhow!("invalid config: webhooks.{e}"))?;
        let default_seed = match &settings.secret {
            Some(secret) => Some(secret.clone()),
            None => store.legacy_webhook_secret()?,
        };
        Ok(Webhooks {
            allow: Arc::new(allow),
            default_seed,
            wake,
        })
    }

    /// A submitted `webhook_url`: a 400 naming the field when refused.
    pub fn check_target(&self, url: &str) -> Result<(), ApiError> {
        egress::check_url(url, &self.allow)
            .map(|_| ())
            .map_err(|refused| ApiError::invalid(format!("webhook_url: {refused}")))
    }

    pub fn secrets(&self, store: &Store, project: &str) -> sled::Result<SigningSecrets> {
        store.webhook_secrets(project, self.seed_for(project))
    }

    /// [`Webhooks::secrets`], in a cluster created once for all nodes: two nodes signing a
    /// project's first delivery at the same moment sign with the same secret.
    pub async fn secrets_in(
        &self,
        store: &Store,
        cluster: Option<&crate::cluster::Cluster>,
        project: &str,
    ) -> anyhow::Result<SigningSecrets> {
        let Some(cluster) = cluster else {
            return Ok(self.secrets(store, project)?);
        };
        if let Some(secrets) = store.stored_webhook_secrets(project)? {
            return Ok(secrets);
        }
        let fresh = SigningSecrets::first(self.seed_for(project));
        let agreed = cluster.first_webhook_secrets(project, &fresh).await?;
        store.adopt_webhook_secrets(project, &agreed)?;
        Ok(agreed)
    }

    pub fn rotate(
        &self,
        store: &Store,
        project: &str,
        grace_ms: u64,
    ) -> sled::Result<SigningSecrets> {
        let now = crate::domain::now_ms();
        store.rotate_webhook_secret(project, self.seed_for(project), grace_ms, now)
    }

    fn seed_for(&self, project: &str) -> Option<&str> {
        (project == DEFAULT_PROJECT)
            .then_some(self.default_seed.as_deref())
            .flatten()
    }
}

/// `t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    signature_header(&[secret], timestamp, body)
}

/// `t=<unix>,v1=<sig>[,v1=<sig>…]`: one `v1` per secret, current first, so receivers holding
/// either secret verify during a rotation's grace period (as Stripe does).
pub fn signature_header(secrets: &[&str], timestamp: u64, body: &str) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length works");
        mac.update(format!("{timestamp}.{body}").as_bytes());
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

/// The next try after `attempts` failed ones: doubling from the base, capped, jittered.
pub fn backoff(base_ms: u64, attempts: u32) -> Duration {
    let ms = base_ms
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30))
        .min(MAX_BACKOFF_MS);
    crate::routing::jitter(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        // Reference computed independently with Python's hmac module.
        assert_eq!(
            signature("whsec_test", 1700000000, "{\"a\":1}"),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn a_grace_period_adds_a_second_v1_for_the_old_secret() {
        let both = signature_header(&["new", "whsec_test"], 1700000000, "{\"a\":1}");
        let (new, old) = both.rsplit_once(",v1=").unwrap();
        assert_eq!(new, signature("new", 1700000000, "{\"a\":1}"));
        assert_eq!(
            old,
            "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let d = |n| backoff(1000, n).as_millis();
        assert!((500..=1000).contains(&d(1)));
        assert!((1000..=2000).contains(&d(2)));
        assert!((300_000..=600_000).contains(&d(40)));
    }
}
