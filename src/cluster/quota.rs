//! Upstream day caps across nodes: each route's day count is a KV entry
//! (`switchyard_quota_days`, `<hex provider>.<hex model>.<day>`: requests and tokens taken),
//! raised only by compare-and-set. A node takes a block (a sixteenth of the cap) when its
//! allowance runs low and starts attempts only out of what it took (`routing::quota`), so the
//! cluster as a whole never sends a route more than its day caps. The cost: a node may hold up
//! to a block it does not use that day. Minute windows stay per node (approximate across
//! nodes, as documented).

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use super::Cluster;
use crate::domain::now_ms;
use crate::routing::quota::Want;
use crate::routing::QuotaBoard;

/// How often a node looks for allowances running low.
const REFILL_EVERY: Duration = Duration::from_millis(100);

#[derive(Serialize, Deserialize, Default)]
struct Taken {
    requests: u64,
    tokens: u64,
}

impl Cluster {
    /// Keeps this node's day allowances topped up, for as long as the node runs (the board
    /// must have been switched to allowances first: `QuotaBoard::share_days`).
    pub async fn share_quotas(self: Arc<Self>, board: Arc<QuotaBoard>) {
        loop {
            for want in board.wants(now_ms()) {
                match self.take_quota(&want).await {
                    Ok((requests, tokens, spent)) => board.grant(&want, requests, tokens, spent),
                    Err(err) => {
                        tracing::warn!(provider = %want.provider, model = %want.model, error = %err, "cannot take upstream quota");
                    }
                }
            }
            tokio::time::sleep(REFILL_EVERY).await;
        }
    }

    /// Takes up to what `want` asks from the route's shared day count: (requests, tokens,
    /// whether the count has nothing left).
    async fn take_quota(&self, want: &Want) -> anyhow::Result<(u64, u64, bool)> {
        let entry = format!(
            "{}.{}.{}",
            hex::encode(&want.provider),
            hex::encode(&want.model),
            want.day
        );
        let l = &want.limits;
        let share = |cap: u64, used: u64, asked: u64| match cap {
            0 => 0,
            cap => asked.min(cap.saturating_sub(used)),
        };
        let mut took = (0, 0, false);
        let taken = super::update_json(&self.quota_days, &entry, |taken: &mut Taken| {
            let requests = share(l.requests_per_day, taken.requests, want.requests);
            let tokens = share(l.tokens_per_day, taken.tokens, want.tokens);
            let spent = (l.requests_per_day > 0 && want.requests > 0 && requests == 0)
                || (l.tokens_per_day > 0 && want.tokens > 0 && tokens == 0);
            took = (requests, tokens, spent);
            taken.requests += requests;
            taken.tokens += tokens;
            Ok::<bool, std::convert::Infallible>(requests > 0 || tokens > 0)
        });
        match taken.await?.unwrap_or_else(|never| match never {}) {
            true => Ok(took),
            false => Ok((0, 0, took.2)),
        }
    }
}
