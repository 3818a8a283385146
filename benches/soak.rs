//! Soak: the real binary under steady load for minutes, with providers that fail on cue, and a
//! short retention so the store turns over many times. Every execution is read back over SSE
//! (a tenth of them reconnecting mid-stream with `Last-Event-ID`) and checked: no lost or
//! duplicated event (seqs exactly 1..=n), the final text exactly the provider's answer. RSS
//! and the data dir's allocated bytes are sampled throughout and must level off.
//!
//! `SOAK_SECS=600 cargo bench --bench soak` (default 600 s; not part of CI)

#[path = "../tests/api/fake_http.rs"]
mod fake_http;
#[path = "../tests/api/fake_openai.rs"]
mod fake_openai;

use eventsource_stream::Eventsource;
use fake_openai::{FakeOpenAi, Fault};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "soak-admin";
const CLIENTS: usize = 16;
const WORDS: usize = 40;
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// A small xorshift: the fault mix needs variety, not cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The primary fails a third of its requests, in every way the fake knows; the fallback
/// rarely (then the execution continues on it again, up to the switch cap).
fn primary_fault(rng: &mut Rng) -> Fault {
    let k = 1 + rng.below(WORDS as u64 - 2) as usize;
    match rng.below(30) {
        0..=1 => Fault::CutAfter(k),
        2..=3 => Fault::ResetAfter(k),
        4 => Fault::StallAfter(k),
        5..=6 => Fault::MalformedAt(k),
        7 => Fault::ErrorEventAt(k),
        8 => Fault::status(500),
        9 => Fault::rate_limited(Some(1)),
        _ => Fault::None,
    }
}

fn fallback_fault(rng: &mut Rng) -> Fault {
    match rng.below(50) {
        0 => Fault::CutAfter(1 + rng.below(WORDS as u64 - 2) as usize),
        _ => Fault::None,
    }
}

#[derive(Default)]
struct Tally {
    completed: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    events: AtomicU64,
    lost_or_duplicated: AtomicU64,
    wrong_text: AtomicU64,
    errors: AtomicU64,
}

fn main() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    // The fake providers get their own threads, like a real upstream.
    let upstream = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (primary, fallback) = upstream.block_on(async {
        let primary = FakeOpenAi::start()
            .await
            .with_words(WORDS)
            .with_chunk_delay(Duration::from_millis(3));
        let fallback = FakeOpenAi::start()
            .await
            .with_words(WORDS)
            .with_chunk_delay(Duration::from_millis(3));
        (primary, fallback)
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("soak.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
data_dir = "unused"

[retention]
executions = "30s"
debug_logs = "15s"
ws_tokens = "30s"
sweep_interval = "5s"

[limits]
ws_token_ttl_ms = 60000

[[providers]]
name = "primary"
kind = "openai"
base_url = "{}"
max_attempts = 1
first_chunk_timeout_ms = 2000
idle_timeout_ms = 300

[[providers]]
name = "fallback"
kind = "openai"
base_url = "{}"
first_chunk_timeout_ms = 2000
idle_timeout_ms = 300

[[models]]
slug = "soak"
routes = [{{ provider = "primary", model = "p" }}, {{ provider = "fallback", model = "f" }}]
"#,
            primary.base_url(),
            fallback.base_url()
        ),
    )
    .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--config", config.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap()])
        .env("SWITCHYARD_ADMIN_KEY", KEY)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .unwrap();
        if let Some(a) = line.strip_prefix("switchyard listening on ") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let pid = server.id();

    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let expected: Arc<str> = primary.full_text().into();
    let samples = load.block_on(async {
        // Keeps both fakes' fault scripts topped up for the whole run.
        let (p, f) = (primary.clone(), fallback.clone());
        upstream.spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            loop {
                while p.script_remaining() < 256 {
                    p.push_fault(primary_fault(&mut rng));
                }
                while f.script_remaining() < 256 {
                    f.push_fault(fallback_fault(&mut rng));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(secs);
        let client = reqwest::Client::new();
        let mut workers = Vec::new();
        for worker in 0..CLIENTS {
            let (client, address, tally, expected) = (
                client.clone(),
                address.clone(),
                tally.clone(),
                expected.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let reconnect = n % 10 == 3;
                    let key = format!("soak-{worker}-{n}");
                    if let Err(err) =
                        one_execution(&client, &address, &key, reconnect, &tally, &expected).await
                    {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("soak: {key}: {err}");
                    }
                    n += 1;
                }
            }));
        }
        let started = Instant::now();
        let mut samples = Vec::new();
        println!(
            "{:>6} {:>10} {:>8} {:>10} {:>10} {:>10}",
            "t (s)", "completed", "failed", "RSS MB", "disk MB", "swept"
        );
        while Instant::now() < deadline {
            tokio::time::sleep(SAMPLE_EVERY.min(deadline - Instant::now())).await;
            let sample = (
                started.elapsed().as_secs(),
                rss_bytes(pid),
                allocated_bytes(&data),
            );
            let swept = swept_executions(&client, &address).await;
            println!(
                "{:>6} {:>10} {:>8} {:>10.1} {:>10.1} {:>10}",
                sample.0,
                tally.completed.load(Ordering::Relaxed),
                tally.failed.load(Ordering::Relaxed),
                sample.1 as f64 / 1e6,
                sample.2 as f64 / 1e6,
                swept
            );
            samples.push(sample);
        }
        for w in workers {
            w.await.unwrap();
        }
        samples
    });
    let _ = server.kill();
    let _ = server.wait();
    // What the store holds at the end (sled recovers the killed server's store as after a
    // crash), against the file holding it.
    let live = live_bytes(&data.join("db"));
    if std::env::var_os("SOAK_KEEP").is_some() {
        println!("data dir kept: {}", data.display());
        std::mem::forget(dir);
    }

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (completed, failed) = (get(&tally.completed), get(&tally.failed));
    println!(
        "\n{secs} s, {CLIENTS} clients: {completed} completed, {failed} failed, {:.1} executions/s, \
         {} events read, {} SSE reconnects; lost or duplicated events: {}, wrong final texts: {}, \
         client errors: {}",
        (completed + failed) as f64 / secs as f64,
        get(&tally.events),
        get(&tally.reconnects),
        get(&tally.lost_or_duplicated),
        get(&tally.wrong_text),
        get(&tally.errors),
    );
    println!(
        "upstream requests: primary {}, fallback {}",
        primary.request_count(),
        fallback.request_count()
    );
    assert_eq!(
        get(&tally.lost_or_duplicated),
        0,
        "events lost or duplicated"
    );
    assert_eq!(get(&tally.wrong_text), 0, "wrong final text");
    assert_eq!(get(&tally.errors), 0, "client-side errors");
    // Level after warm-up: the last sample against the one a third of the way in, once the
    // retention window (30 s) has turned over a few times.
    if samples.len() >= 6 {
        let third = samples[samples.len() / 3];
        let last = *samples.last().unwrap();
        let growth = |a: u64, b: u64| b as f64 / a.max(1) as f64;
        println!(
            "from t={} s to t={} s: RSS x{:.2}, disk x{:.2}",
            third.0,
            last.0,
            growth(third.1, last.1),
            growth(third.2, last.2)
        );
        assert!(growth(third.1, last.1) < 1.5, "memory keeps growing");
        assert!(growth(third.2, last.2) < 1.5, "disk keeps growing");
    }
    if let Some(&(_, _, disk)) = samples.last() {
        println!(
            "live data at the end: {:.1} MB (keys and values in all trees); disk {:.1} MB",
            live as f64 / 1e6,
            disk as f64 / 1e6
        );
        // sled keeps up to half of each segment dead before cleaning it, plus page rewrites
        // not yet reclaimed: a few times the live data, never the history.
        assert!(
            disk < 4 * live + (64 << 20),
            "disk holds the history, not the live data"
        );
    }
}

/// Submits, reads the whole event stream (reconnecting once when asked), checks it.
async fn one_execution(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    reconnect: bool,
    tally: &Tally,
    expected: &str,
) -> Result<(), String> {
    let body = json!({"model": "soak", "idempotency_key": key,
                      "messages": [{"role": "user", "content": "soak"}]});
    let res = client
        .post(format!("{address}/v1/executions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status() != 202 {
        return Err(format!("submit: {}", res.status()));
    }
    let sub: Value = res.json().await.map_err(|e| e.to_string())?;
    let id = sub["id"].as_str().ok_or("no id")?.to_string();
    let mut seqs = Vec::new();
    let mut text = String::new();
    let mut status = None;
    let mut last = None::<u64>;
    let mut cut_after = reconnect.then_some(5usize);
    while status.is_none() {
        let mut req = client
            .get(format!("{address}/v1/executions/{id}/events"))
            .bearer_auth(KEY);
        if let Some(seq) = last {
            req = req.header("last-event-id", seq.to_string());
            tally.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let res = req.send().await.map_err(|e| e.to_string())?;
        if res.status() != 200 {
            return Err(format!("events: {}", res.status()));
        }
        let mut events = res.bytes_stream().eventsource();
        let mut cut = false;
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| e.to_string())?;
            let data: Value = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
            let seq = event.id.parse::<u64>().map_err(|e| e.to_string())?;
            seqs.push(seq);
            last = Some(seq);
            match event.event.as_str() {
                "chunk" => text.push_str(data["delta"].as_str().unwrap_or("")),
                "done" => status = data["status"].as_str().map(str::to_string),
                _ => {}
            }
            if status.is_some() {
                break;
            }
            if let Some(n) = cut_after.as_mut() {
                *n -= 1;
                if *n == 0 {
                    cut_after = None;
                    cut = true;
                    break;
                }
            }
        }
        if status.is_none() && !cut {
            return Err("the event stream ended before done".into());
        }
    }
    tally.events.fetch_add(seqs.len() as u64, Ordering::Relaxed);
    if seqs.iter().copied().ne(1..=seqs.len() as u64) {
        tally.lost_or_duplicated.fetch_add(1, Ordering::Relaxed);
        eprintln!("soak: {id}: seqs {seqs:?}");
    }
    match status.as_deref() {
        Some("completed") => {
            tally.completed.fetch_add(1, Ordering::Relaxed);
            if text != expected {
                tally.wrong_text.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: {id}: wrong text {text:?}");
            }
        }
        _ => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            // A failed answer may be short, never anything but the start of the answer.
            if !expected.starts_with(&text) {
                tally.wrong_text.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: {id}: failed with foreign text {text:?}");
            }
        }
    }
    Ok(())
}

/// Bytes of keys and values in every tree of the sled store at `path`.
fn live_bytes(path: &Path) -> u64 {
    let db = sled::open(path).unwrap();
    let mut total = 0;
    for name in db.tree_names() {
        for item in db.open_tree(name).unwrap().iter() {
            let (k, v) = item.unwrap();
            total += (k.len() + v.len()) as u64;
        }
    }
    total
}

/// Executions the retention sweep has deleted so far, from the server's own counter.
async fn swept_executions(client: &reqwest::Client, address: &str) -> u64 {
    let Ok(res) = client.get(format!("{address}/metrics")).send().await else {
        return 0;
    };
    let text = res.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("switchyard_retention_deleted_total{kind=\"execution\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Bytes the files under `dir` occupy on disk (sparse files count what is allocated).
fn allocated_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
