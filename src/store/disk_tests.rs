//! The store's file stops growing once retention deletes as fast as the server writes, even
//! while longer-lived data (WebSocket tokens, kept an hour past expiry) keeps a little live
//! data in every segment sled writes: see `SLED_FLUSH_EVERY_MS` for why that used to defeat
//! sled's segment cleaning. The old failure needs writes faster than the old cleaner's
//! 512 KB/s, which even the debug build manages (about 2 MB/s here).

use super::executions::tests::{record, request};
use super::{Store, WsTokenRecord};
use crate::domain::{Event, Status};

const IN_FLIGHT: usize = 16;
const EVENTS: u64 = 30;
/// Executions are swept once this many rounds old.
const KEEP_ROUNDS: u64 = 20;

/// One round the way the server writes: `IN_FLIGHT` executions created (each with its
/// WebSocket token), their events appended interleaved with a group commit per round of
/// events, their terminal records and analytics written, then everything older than
/// `KEEP_ROUNDS` rounds swept. Tokens are never swept: their retention outlasts the test.
async fn round(store: &Store, round: u64) {
    let now_ms = 1_000_000 + round * 10;
    let batch: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let id = format!("exec_{round:010}_{i:02}");
            let mut r = record(&id, &format!("k{round}_{i}"), "f");
            r.created_at_ms = now_ms;
            r
        })
        .collect();
    for r in &batch {
        store
            .create_execution(r, &request(), &Event::status(1, Status::Pending))
            .unwrap();
        let token = WsTokenRecord {
            project_id: r.project_id.clone(),
            execution_id: r.id.clone(),
            channel: "ch".into(),
            expires_at_ms: now_ms + 300_000,
            key_id: Some("key_x".into()),
            key_hash: Some("h".repeat(64)),
        };
        store.ws_token_for(&token, now_ms).unwrap();
    }
    store.commit.sync().await.unwrap();
    for seq in 2..EVENTS {
        for r in &batch {
            store
                .append_event(&r.id, &Event::chunk(seq, "some words of text "))
                .unwrap();
        }
        store.commit.sync().await.unwrap();
    }
    for mut r in batch {
        r.status = Status::Completed;
        r.output_text = Some("some words of text ".repeat(EVENTS as usize));
        r.completed_at_ms = Some(now_ms);
        store.put_execution(&r).unwrap();
        store.count_in_analytics(&r);
    }
    store.commit.sync().await.unwrap();
    let cutoff = now_ms.saturating_sub(KEEP_ROUNDS * 10);
    while store.sweep_executions(cutoff, 64).unwrap().more {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_stops_growing_under_steady_churn() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rounds: u64 = std::env::var("CHURN_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut sizes = Vec::new();
    for r in 0..rounds {
        round(&store, r).await;
        if (r + 1) % (rounds / 6) == 0 {
            sizes.push(store.size_on_disk());
        }
    }
    let mb = |b: &u64| b >> 20;
    // Before the fix the file grew by everything written (46 MB here, about 7 times the live
    // data); after it, it stays within a small multiple of what is live.
    let live = live_bytes(&store);
    let last = *sizes.last().unwrap();
    assert!(
        last <= 3 * live + (4 << 20),
        "the file keeps growing: {:?} MB, with {} MB live",
        sizes.iter().map(mb).collect::<Vec<_>>(),
        mb(&live)
    );
}

/// Keys and values in every tree.
fn live_bytes(store: &Store) -> u64 {
    let mut total = 0;
    for name in store.db.tree_names() {
        for item in store.db.open_tree(name).unwrap().iter() {
            let (k, v) = item.unwrap();
            total += (k.len() + v.len()) as u64;
        }
    }
    total
}
