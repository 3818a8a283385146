//! Joining the cluster: connect to NATS (waiting for it at start), then find or create the
//! stream and buckets, refusing to start when they exist with settings this node disagrees
//! with.

use async_nats::jetstream::{self, stream};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::{Cluster, EVENTS_PREFIX, EVENTS_STREAM};
use crate::settings::ClusterSettings;

pub type WebhookQueue = tokio::sync::mpsc::UnboundedReceiver<(String, bytes::Bytes)>;

/// KV buckets, by purpose (`switchyard_<name>`).
const BUCKETS: [&str; 9] = [
    "records",
    "requests",
    "claims",
    "leases",
    "state",
    "webhooks",
    "holds",
    "key_months",
    "in_flight",
];

impl Cluster {
    /// Connects (retrying until NATS answers: the node is not ready meanwhile, and says why in
    /// its log) and checks or creates the shared streams and buckets. Also answers the
    /// receiving end of the webhook job queue (for `forward_webhooks`).
    ///
    /// What belongs to executions (their logs, records, requests, idempotency claims, webhook
    /// jobs) is kept `retention.executions` after its last write, as each node's store keeps
    /// it; the ledger, keys and the other shared trees are kept.
    pub async fn join(
        settings: &ClusterSettings,
        retention: &crate::settings::Retention,
    ) -> anyhow::Result<(Cluster, WebhookQueue)> {
        let kept = retention.executions;
        let client = connect(settings).await;
        let js = jetstream::ContextBuilder::new()
            // A write that takes longer than this fails the request that made it (503) instead
            // of holding it: NATS is down or partitioned from this node.
            .timeout(Duration::from_secs(2))
            .build(client.clone());
        let max_payload = client.server_info().max_payload;
        let events = ensure_stream(
            &js,
            stream::Config {
                name: EVENTS_STREAM.into(),
                subjects: vec![format!("{EVENTS_PREFIX}>")],
                num_replicas: settings.replicas,
                storage: stream::StorageType::File,
                max_age: kept,
                ..Default::default()
            },
        )
        .await?;
        let mut kv = Vec::new();
        for name in BUCKETS {
            let max_age = match name {
                "records" | "requests" | "claims" | "webhooks" => kept,
                _ => Duration::ZERO,
            };
            kv.push(ensure_bucket(&js, name, settings.replicas, max_age).await?);
        }
        let tokens = ensure_bucket(&js, "tokens", settings.replicas, retention.ws_tokens).await?;
        // A day's count matters for that day; two days cover every time zone's clock skew.
        let quota_days = ensure_bucket(
            &js,
            "quota_days",
            settings.replicas,
            Duration::from_secs(2 * 86_400),
        )
        .await?;
        let [records, requests, claims, leases_kv, state, webhooks, holds, key_months, in_flight] =
            kv.try_into().expect("nine buckets");
        let ledger = ensure_stream(
            &js,
            stream::Config {
                name: super::ledger::LEDGER_STREAM.into(),
                subjects: vec![format!("{}>", super::ledger::LEDGER_PREFIX)],
                num_replicas: settings.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        // Claims of webhook tries matter for minutes; a week is plenty.
        let deliveries = ensure_bucket(
            &js,
            "deliveries",
            settings.replicas,
            Duration::from_secs(7 * 24 * 3600),
        )
        .await?;
        let (webhook_writes, webhook_queue) = tokio::sync::mpsc::unbounded_channel();
        let (record_writes, writes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(super::records::write_in_order(js.clone(), writes));
        tracing::info!(node = %settings.node_id, nats = %settings.nats_url, max_payload, "joined the cluster");
        let cluster = Cluster {
            node: settings.node_id.clone(),
            settings: settings.clone(),
            client,
            js,
            events,
            ledger,
            holds,
            key_months,
            in_flight,
            quota_days,
            records,
            requests,
            claims,
            leases_kv,
            tokens,
            state,
            webhooks,
            deliveries,
            webhook_writes,
            shared_acked: tokio::sync::watch::Sender::new(0),
            state_caught_up: AtomicBool::new(false),
            leases: Default::default(),
            record_writes,
            feeds: Default::default(),
            caught_up: AtomicBool::new(false),
        };
        Ok((cluster, webhook_queue))
    }

    /// The largest message NATS takes: a request body above it cannot be shared.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }
}

async fn connect(settings: &ClusterSettings) -> async_nats::Client {
    let mut wait = Duration::from_millis(100);
    loop {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("switchyard {}", settings.node_id))
            .connection_timeout(Duration::from_secs(2))
            // After the first connection, NATS outages are ridden out: reconnect forever.
            .max_reconnects(None);
        if let Some(creds) = &settings.credentials {
            options = match creds.split_once(':') {
                Some((user, password)) => options.user_and_password(user.into(), password.into()),
                None => options.token(creds.clone()),
            };
        }
        match options.connect(settings.nats_url.as_str()).await {
            Ok(client) => return client,
            Err(err) => {
                tracing::warn!(nats = %settings.nats_url, error = %err, retry_in_ms = wait.as_millis() as u64, "cannot reach NATS: not ready");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The stream as configured, created if absent; an existing one must agree on what this
/// node relies on.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> anyhow::Result<stream::Stream> {
    let existing = match js.get_stream(&config.name).await {
        Ok(stream) => Some(stream),
        Err(_) => match js.create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            // Another node created it meanwhile: check it like any existing one.
            Err(_) => Some(
                js.get_stream(&config.name)
                    .await
                    .map_err(|e| anyhow::anyhow!("cluster: stream {}: {e}", config.name))?,
            ),
        },
    };
    let mut stream = existing.expect("set above");
    let actual = stream.info().await?.config.clone();
    let name = &config.name;
    if actual.num_replicas != config.num_replicas {
        anyhow::bail!(
            "cluster: stream {name} has {} replicas but cluster.replicas = {}: use the same value on every node",
            actual.num_replicas,
            config.num_replicas
        );
    }
    if actual.subjects != config.subjects {
        anyhow::bail!(
            "cluster: stream {name} takes subjects {:?}, this node needs {:?}: it was created by something else",
            actual.subjects,
            config.subjects
        );
    }
    if actual.storage != config.storage {
        anyhow::bail!("cluster: stream {name} is not on file storage: events would not survive a NATS restart");
    }
    // 0 and -1 both mean no limit (NATS answers -1 for a 0 it was given).
    let per_subject = |n: i64| n.max(0);
    if per_subject(actual.max_messages_per_subject) != per_subject(config.max_messages_per_subject)
    {
        anyhow::bail!(
            "cluster: stream {name} keeps {} messages per subject, this node needs {}",
            actual.max_messages_per_subject,
            config.max_messages_per_subject
        );
    }
    Ok(stream)
}

/// A KV bucket with one revision per key. Made as its backing stream directly: the client's
/// own bucket creation asks for account details that NATS 2.9 (Debian bookworm's) answers in a
/// shape it cannot read, while the bucket itself is the same.
/// `max_age`: how long an entry is kept (zero: forever).
async fn ensure_bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
    max_age: Duration,
) -> anyhow::Result<jetstream::kv::Store> {
    let bucket = format!("switchyard_{name}");
    ensure_stream(
        js,
        stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            max_age,
            ..Default::default()
        },
    )
    .await?;
    js.get_key_value(&bucket)
        .await
        .map_err(|e| anyhow::anyhow!("cluster: bucket {bucket}: {e}"))
}
