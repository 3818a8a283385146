//! The background retention sweep: every `retention.sweep_interval`, deletes what is older
//! than its `[retention]` setting, in batches of [`BATCH`] on the blocking pool with a pause
//! between batches, so a backlog (a first start after an upgrade, a long pause) drains without
//! holding up the hot path. What it deletes and in which order is `store::retention`.
//!
//! Pending and delivered webhook jobs go with their execution; dead ones are the outbox's own
//! sweep's (`retention.dead_webhooks`).

use std::sync::Arc;
use std::time::Duration;

use crate::domain::now_ms;
use crate::metrics::Metrics;
use crate::settings::Retention;
use crate::store::{Store, Swept};

/// Items per batch: small enough that one batch is a few milliseconds of store work.
const BATCH: usize = 64;
/// Between two batches of one sweep: room for the hot path's writes and flushes.
const PAUSE: Duration = Duration::from_millis(5);

pub struct Sweeper {
    store: Store,
    retention: Retention,
    metrics: Arc<Metrics>,
}

/// One kind of retained state: its metric label and its batch delete at a given time.
type Sweep = (
    &'static str,
    fn(&Store, &Retention, u64) -> sled::Result<Swept>,
);

const SWEEPS: &[Sweep] = &[
    ("execution", |store, r, now| {
        store.sweep_executions(before(now, r.executions), BATCH)
    }),
    ("debug_log", |store, r, now| {
        store.sweep_debug_logs(before(now, r.debug_logs), BATCH)
    }),
    ("analytics_minute", |store, r, now| {
        store.sweep_analytics(before(now, r.analytics) / 1000, BATCH)
    }),
    ("ws_token", |store, r, now| {
        store.remove_expired_ws_tokens(before(now, r.ws_tokens), BATCH)
    }),
];

fn before(now_ms: u64, keep: Duration) -> u64 {
    now_ms.saturating_sub(keep.as_millis() as u64)
}

impl Sweeper {
    /// Starts the sweep on the current tokio runtime: one right away, then one per interval.
    pub fn start(store: Store, retention: Retention, metrics: Arc<Metrics>) {
        let sweeper = Arc::new(Sweeper {
            store,
            retention,
            metrics,
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweeper.retention.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // A failed store takes no more writes; the application built to reopen it
                // starts a sweeper of its own, and this one lets go of the old store.
                if sweeper.store.health.failure().is_some() {
                    return;
                }
                sweeper.clone().sweep().await;
            }
        });
    }

    /// Runs every kind's sweep until it finds no more to delete (or fails).
    async fn sweep(self: Arc<Self>) {
        for &(kind, sweep) in SWEEPS {
            loop {
                let this = self.clone();
                let batch = tokio::task::spawn_blocking(move || {
                    sweep(&this.store, &this.retention, now_ms())
                })
                .await;
                match batch {
                    Ok(Ok(swept)) => {
                        self.metrics
                            .retention_deleted
                            .with_label_values(&[kind])
                            .inc_by(swept.deleted as u64);
                        if !swept.more {
                            break;
                        }
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(kind, error = %err, "retention sweep failed, retrying next interval");
                        break;
                    }
                    Err(err) => {
                        tracing::error!(kind, error = %err, "retention sweep panicked");
                        break;
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
        }
    }
}
