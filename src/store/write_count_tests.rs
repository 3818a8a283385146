//! A submit costs the same number of writes however much history the store holds (issue 16):
//! one request's whole life at the store level — submit with its WebSocket token, `processing`,
//! the attempt's debug log, 20 chunks, the terminal record, analytics — counted in sled writes
//! (every insert, removal and successful compare-and-swap, on every tree, from sled's own
//! subscribers) on an empty store and on one grown to 100,000 finished executions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::executions::encode;
use super::executions::tests::{record, request};
use super::{indexes, AttemptLog, LogEntry, Store, WsTokenRecord};
use crate::domain::{Event, ExecutionRecord, Status};

const GROWN: u64 = 100_000;
const CHUNKS: u64 = 20;

/// A subscriber on every tree: writes are counted by tree name.
struct WriteCounter(Vec<(String, sled::Subscriber)>);

impl WriteCounter {
    fn watch(store: &Store) -> WriteCounter {
        let names = store.db.tree_names();
        WriteCounter(
            names
                .into_iter()
                .map(|name| {
                    let tree = store.db.open_tree(&name).unwrap();
                    let name = String::from_utf8_lossy(&name).into_owned();
                    (name, tree.watch_prefix(Vec::new()))
                })
                .collect(),
        )
    }

    /// Writes since the last call, by tree (trees with none left out), and the bytes of the
    /// keys and values they wrote (what a request stores before sled's own overhead).
    fn take(&mut self) -> (BTreeMap<String, usize>, usize) {
        let mut out = BTreeMap::new();
        let mut bytes = 0;
        for (name, sub) in &mut self.0 {
            let mut n = 0;
            while let Ok(event) = sub.next_timeout(Duration::from_millis(1)) {
                n += 1;
                bytes += match event {
                    sled::Event::Insert { key, value } => key.len() + value.len(),
                    sled::Event::Remove { key } => key.len(),
                };
            }
            if n > 0 {
                out.insert(name.clone(), n);
            }
        }
        (out, bytes)
    }
}

/// `n` finished executions written as the server leaves them, in bulk (one batch per tree):
/// record, request, events, idempotency claim, listing and status entries, `finished` entry.
fn grow(store: &Store, n: u64) {
    let mut trees: BTreeMap<&str, sled::Batch> = BTreeMap::new();
    let request = serde_json::to_vec(&request()).unwrap();
    for i in 0..n {
        let mut r = finished(&format!("exec_old{i:012}"), &format!("old-{i}"), i);
        r.output_text = Some("some words ".repeat(CHUNKS as usize));
        let id = r.id.as_bytes().to_vec();
        let mut put = |tree: &'static str, key: Vec<u8>, value: Vec<u8>| {
            trees.entry(tree).or_default().insert(key, value);
        };
        put("executions", id.clone(), encode(&r));
        put("requests", id.clone(), request.clone());
        // Its first and last events (what the count could depend on is the number of
        // executions, not their length).
        let first = Event::status(1, Status::Pending);
        put(
            "events",
            Store::event_key(&r.id, 1),
            first.encode().to_vec(),
        );
        let last = Event::status(CHUNKS + 3, Status::Completed);
        put(
            "events",
            Store::event_key(&r.id, CHUNKS + 3),
            last.encode().to_vec(),
        );
        let idem = super::joined(&r.project_id, r.idempotency_key.as_bytes());
        put(
            "idempotency",
            idem,
            super::joined(&r.id, r.fingerprint.as_bytes()),
        );
        put("project_index", indexes::project_key(&r), Vec::new());
        put(
            "status_index",
            indexes::status_key(&r, r.status),
            Vec::new(),
        );
        let at = indexes::finished_at_ms(&r);
        put("finished", indexes::finished_key(at, &r.id), Vec::new());
    }
    for (name, batch) in trees {
        store
            .db
            .open_tree(name)
            .unwrap()
            .apply_batch(batch)
            .unwrap();
    }
}

fn finished(id: &str, key: &str, i: u64) -> ExecutionRecord {
    let mut r = record(id, key, "f");
    r.created_at_ms = 1_000_000 + i;
    r.completed_at_ms = Some(1_000_100 + i);
    r.status = Status::Completed;
    r
}

/// One request's life as the execution actor and the submit handler write it.
async fn one_request(store: &Store, id: &str) {
    let mut r = record(id, &format!("key-{id}"), "f");
    r.created_at_ms = 2_000_000;
    let outcome = store
        .create_execution(&r, &request(), &Event::status(1, Status::Pending))
        .unwrap();
    assert!(matches!(outcome, super::SubmitOutcome::Created));
    let token = WsTokenRecord {
        project_id: r.project_id.clone(),
        execution_id: r.id.clone(),
        channel: "ch".into(),
        expires_at_ms: 2_300_000,
        key_id: Some("key_x".into()),
        key_hash: Some("h".repeat(64)),
    };
    store.ws_token_for(&token, 2_000_000).unwrap();
    store.commit.sync().await.unwrap();

    // The actor stages its events; a group commit writes each execution's staged events as
    // one value. Here: `processing` and the first half of the chunks in one commit, the rest
    // in another, the terminal event in a third.
    r.status = Status::Processing;
    store.put_execution(&r).unwrap();
    store.stage_event(id, &Event::status(2, Status::Processing));
    let log = AttemptLog::new(store.clone(), id, 0, Arc::new(request()));
    log.record(LogEntry::Response {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
    });
    for seq in 3..3 + CHUNKS {
        let raw = format!(r#"{{"choices":[{{"delta":{{"content":"w{seq} "}}}}]}}"#);
        log.record(LogEntry::Chunk { data: &raw });
        store.stage_event(id, &Event::chunk(seq, &format!("w{seq} ")));
        if seq == 3 + CHUNKS / 2 {
            store.commit.sync().await.unwrap();
        }
    }
    store.commit.sync().await.unwrap();
    drop(log);
    r.status = Status::Completed;
    r.output_text = Some("w ".repeat(CHUNKS as usize));
    r.completed_at_ms = Some(2_000_050);
    store.put_execution(&r).unwrap();
    store.stage_event(id, &Event::status(3 + CHUNKS, Status::Completed));
    store.count_in_analytics(&r);
    store.commit.sync().await.unwrap();
}

#[tokio::test]
async fn a_store_grown_to_100k_executions_answers_a_submit_with_the_same_writes() {
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = Store::open(empty_dir.path()).unwrap();
    let grown_dir = tempfile::tempdir().unwrap();
    let grown = Store::open(grown_dir.path()).unwrap();
    grow(&grown, GROWN);
    grown.commit.sync().await.unwrap();
    assert_eq!(grown.executions.len(), GROWN as usize);

    let mut counts = Vec::new();
    let mut bytes = Vec::new();
    for store in [&empty, &grown] {
        // The first request opens analytics' minute; the second is the steady state.
        one_request(store, "exec_new000000000001").await;
        let mut counter = WriteCounter::watch(store);
        one_request(store, "exec_new000000000002").await;
        let (count, written) = counter.take();
        counts.push(count);
        bytes.push(written);
    }
    let total = |c: &BTreeMap<String, usize>| c.values().sum::<usize>();
    println!(
        "writes per request: {} {:?}; {} bytes of keys and values",
        total(&counts[0]),
        counts[0],
        bytes[0]
    );
    assert_eq!(counts[0], counts[1], "empty store vs 100,000 executions");
    assert!(total(&counts[0]) > 0);
    // The log: the first event, then one value per commit.
    assert_eq!(counts[0]["events"], 4);
}
