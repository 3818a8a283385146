//! All state, in sled trees behind typed functions; nothing else touches sled.
//!
//! Trees: `executions` (id → record, without its request), `requests` (id → the request,
//! written once), `events` (id ‖ 0 ‖ first seq BE → an event or a batch, see `events`), `idempotency` (project ‖ 0 ‖ key → id ‖ 0 ‖
//! fingerprint), `project_index` (project ‖ 0 ‖ !created BE ‖ id → ()), `status_index`,
//! `unfinished` and `finished` (see `indexes`), `keys` (key id → key record), `key_hashes`
//! (sha256(secret) → key id), `project_limits` (project → its limits), `ws_tokens` (sha256(token) → token record), `attempt_log` (id ‖ 0 ‖
//! attempt ‖ first entry → debug entries), `webhooks` (id → outbox entry) with its indexes and `webhook_secrets` (see `webhooks.rs`), `analytics` (project ‖
//! 0 ‖ dimension ‖ minute BE ‖ group → aggregate), `ledger` and `key_spend` (see
//! `ledger.rs`), `route_days` (provider ‖ 0 ‖ model → the route's upstream quota use today),
//! `responses` (id → the Responses API's side of the request, see `responses.rs`), `meta` (with
//! the layout version, see `layout`).

mod analytics;
mod attempt_log;
mod catalog;
mod cluster;
mod commit;
#[cfg(test)]
mod disk_tests;
mod event_stage;
mod events;
mod executions;
mod health;
mod indexes;
mod keys;
mod layout;
mod ledger;
mod request_refs;
mod responses;
mod retention;
mod route_days;
mod shared;
mod tokens;
mod webhooks;
#[cfg(test)]
mod write_count_tests;

pub use analytics::{Aggregate, Dimension, Histogram, Series, MINUTE};
pub use attempt_log::{redacted_headers, AttemptLog, LogEntry};
pub use catalog::{CatalogEntry, CatalogKind};
pub use commit::{GroupCommit, StoreFailed};
pub use events::EventLog;
#[cfg(test)]
pub(crate) use executions::tests as tests_support;
pub use executions::{ListPage, SubmitOutcome};
pub use health::{Refusal, StoreHealth};
pub use keys::{hash_secret, KeyLimits, KeyMode, KeyRecord, KeyRole};
pub use layout::LAYOUT_VERSION;
pub(crate) use ledger::{decode_entry, encode_entry};
pub use ledger::{EntryKind, HoldRecord, LedgerEntry};
pub use retention::Swept;
pub use route_days::RouteDay;
pub use shared::{Replication, SharedTree, SharedWrite};
pub use tokens::WsTokenRecord;
pub use webhooks::{DeliveryStatus, DueEntry, SigningSecrets, WebhookJob};

use std::path::Path;
use std::sync::Arc;

/// How often sled's flusher thread runs. Durability does not depend on it (group commits
/// flush explicitly); disk space does: the flusher is the only place sled 0.34 relocates live
/// pages out of mostly-dead segments, and it finishes at most one segment per run
/// (`SegmentCleaner::pop` answers `None` once a segment's pages are all relocated, which ends
/// the run). A segment is freed only when nothing in it is live any more, so once every
/// segment holds a little longer-lived data (WebSocket tokens, kept an hour, are written with
/// every submit) each one waits for the cleaner: at one run a second, 512 KB/s were
/// reclaimed while the soak writes 4.6 MB/s, and the file grew without bound. 100 runs a
/// second reclaim up to 50 MB/s; an idle run costs a wake-up and an `fsync` of a clean file
/// (measured: 0.6 % of a core, 50 µs). README "Storage and retention" has the figures.
pub const SLED_FLUSH_EVERY_MS: u64 = 10;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    executions: sled::Tree,
    /// Each execution's request, apart from its record: written once at submit, never
    /// rewritten when the record is.
    requests: sled::Tree,
    status_index: sled::Tree,
    unfinished: sled::Tree,
    finished: sled::Tree,
    events: sled::Tree,
    /// Running executions' events on their way to `events` with the next group commit.
    stage: Arc<event_stage::EventStage>,
    idempotency: sled::Tree,
    project_index: sled::Tree,
    keys: SharedTree,
    key_hashes: SharedTree,
    project_limits: SharedTree,
    ws_tokens: sled::Tree,
    attempt_log: sled::Tree,
    /// Debug entries of running attempts not yet written to `attempt_log`.
    live_logs: Arc<attempt_log::LiveLogs>,
    webhooks: webhooks::WebhookTrees,
    analytics: sled::Tree,
    /// Finished executions' counts on their way to `analytics` with the next group commit.
    analytics_stage: Arc<analytics::AnalyticsStage>,
    ledger: sled::Tree,
    key_spend: sled::Tree,
    /// Upstream quota counters per route and UTC day (see `route_days`).
    route_days: sled::Tree,
    /// The Responses API's side of an execution (see `responses`).
    responses: SharedTree,
    /// Named, versioned structures and workflows (see `catalog`).
    catalog: SharedTree,
    meta: sled::Tree,
    /// Where writes to the shared trees go in a cluster (see `shared`).
    pub replication: Arc<Replication>,
    /// Durability barrier shared by every writer: see [`GroupCommit`].
    pub commit: GroupCommit,
    /// Whether writes can succeed (no failure, free space above the floor).
    pub health: StoreHealth,
}

impl Store {
    /// Opens (or creates) the store under `dir` with the default page cache. Must run inside a
    /// tokio runtime: group commits flush on its blocking pool.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        let cache_mb = crate::settings::Limits::default().store_cache_mb;
        Store::open_with(dir, cache_mb * 1024 * 1024, 0)
    }

    /// [`Store::open`] with a page cache of `cache_bytes` (`limits.store_cache_mb`) and a
    /// free-space floor under which new work is refused (`limits.min_free_disk_mb`).
    pub fn open_with(dir: &Path, cache_bytes: u64, floor_mb: u64) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", dir.display()))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            // Durability comes from explicit group commits; sled's flusher thread is what cleans
            // segments, and it runs often enough to keep up (see `SLED_FLUSH_EVERY_MS`).
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS))
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| anyhow::anyhow!("cannot open store in {}: {e}", dir.display()))?;
        let tree = |name: &str| db.open_tree(name);
        let replication = Arc::<Replication>::default();
        let health = StoreHealth::new(dir, floor_mb);
        health.start_monitor(db.clone());
        let events = tree("events")?;
        let stage = Arc::new(event_stage::EventStage::new(events.clone()));
        let analytics = tree("analytics")?;
        let analytics_stage = Arc::new(analytics::AnalyticsStage::new(analytics.clone()));
        let store = Store {
            executions: tree("executions")?,
            requests: tree("requests")?,
            status_index: tree("status_index")?,
            unfinished: tree("unfinished")?,
            finished: tree("finished")?,
            events: events.clone(),
            stage: stage.clone(),
            idempotency: tree("idempotency")?,
            project_index: tree("project_index")?,
            keys: SharedTree::open(&db, "keys", &replication)?,
            key_hashes: SharedTree::open(&db, "key_hashes", &replication)?,
            project_limits: SharedTree::open(&db, "project_limits", &replication)?,
            ws_tokens: tree("ws_tokens")?,
            attempt_log: tree("attempt_log")?,
            live_logs: Arc::default(),
            webhooks: webhooks::WebhookTrees::open(&db, &replication)?,
            analytics,
            analytics_stage: analytics_stage.clone(),
            ledger: tree("ledger")?,
            key_spend: tree("key_spend")?,
            route_days: tree("route_days")?,
            responses: SharedTree::open(&db, "responses", &replication)?,
            catalog: SharedTree::open(&db, "catalog", &replication)?,
            meta: tree("meta")?,
            replication,
            commit: GroupCommit::start(
                db.clone(),
                std::fs::File::open(dir.join("db").join("db")).ok(),
                health.clone(),
                vec![stage, analytics_stage],
            ),
            health,
            db,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Makes everything written so far durable, staged events included (used at shutdown).
    pub fn flush(&self) -> sled::Result<usize> {
        self.commit.write_staged()?;
        self.db.flush()
    }

    /// Bytes on disk, for readiness and metrics.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The trees a cluster shares, by name.
    pub fn shared_trees(&self) -> [&SharedTree; 6] {
        [
            &self.keys,
            &self.key_hashes,
            &self.project_limits,
            &self.catalog,
            &self.responses,
            &self.webhooks.secrets,
        ]
    }

    /// Whether the store answers reads and can take writes.
    pub fn is_writable(&self) -> bool {
        self.meta.get(b"probe").is_ok() && self.health.failure().is_none()
    }
}

/// `a ‖ 0 ‖ b`: composite keys whose first part is a prefix for scans.
fn joined(a: &str, b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + 1 + b.len());
    key.extend_from_slice(a.as_bytes());
    key.push(0);
    key.extend_from_slice(b);
    key
}
