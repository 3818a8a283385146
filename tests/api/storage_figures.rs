//! The storage figures in README "Storage and retention", measured on the real binary:
//! bytes on disk per small execution and per 1 MB prompt, start-up time and one
//! `?status=` listing with many executions in the store. Slow, so ignored; run with
//! `cargo test --release --test api storage_figures -- --ignored --nocapture`
//! (`FIGURES_N` sets the number of executions, 20,000 by default).

use futures_util::stream::{self, StreamExt};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::helpers::*;

const CONFIG: &str = r#"listen = "127.0.0.1:0"
data_dir = "unused"

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = 12
mock_chunk_interval_ms = 0

[[models]]
slug = "chat-default"
routes = [{ provider = "mock", model = "mock-1" }]
"#;

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// Resident memory of a process, from `/proc` (0 where there is none).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Every file under `dir` with its size (what the figures are made of).
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(format!("{} {}", entry.path().display(), meta.len()));
        }
    }
    out
}

struct Server {
    process: ServerProcess,
    client: reqwest::Client,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.process.address)
    }

    async fn submit(&self, key: String, prompt: &str) -> String {
        let res = self
            .client
            .post(self.url("/v1/executions"))
            .bearer_auth(ADMIN_KEY)
            .json(&chat_body(&key, prompt, "chat-default"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.unwrap();
        body["id"].as_str().unwrap().to_string()
    }

    async fn finish(&self, id: &str) {
        loop {
            let exec: Value = self
                .client
                .get(self.url(&format!("/v1/executions/{id}")))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !matches!(exec["status"].as_str(), Some("pending" | "processing")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Submits `n` executions with `prompt`, 32 at a time, and waits for all of them.
    async fn run(&self, tag: &str, n: usize, prompt: &str) {
        stream::iter(0..n)
            .for_each_concurrent(32, |i| async move {
                let id = self.submit(format!("{tag}-{i}"), prompt).await;
                self.finish(&id).await;
            })
            .await;
    }

    /// Stops the process (SIGTERM: the store is flushed) and returns the bytes on disk.
    fn stop(mut self, data: &Path) -> u64 {
        self.process.sigterm();
        disk_bytes(data)
    }
}

fn start(config: &Path, data: &Path) -> (Server, Duration) {
    let started = Instant::now();
    let process = spawn_process(config, data);
    let took = started.elapsed();
    let server = Server {
        process,
        client: reqwest::Client::new(),
    };
    (server, took)
}

#[actix_web::test]
#[ignore = "slow: prints the storage figures for README"]
async fn storage_figures() {
    let n: usize = std::env::var("FIGURES_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, CONFIG).unwrap();

    // Bytes per small execution and per 1 MB prompt, each in a fresh store.
    let data = dir.path().join("small");
    let (server, _) = start(&config, &data);
    server.run("warm", 50, "hello").await;
    let base = server.stop(&data);
    let (server, _) = start(&config, &data);
    server.run("small", 1_000, "Say something short.").await;
    let small = (server.stop(&data).saturating_sub(base)) as f64 / 1_000.0;

    let data = dir.path().join("big");
    let (server, _) = start(&config, &data);
    server.run("warm", 50, "hello").await;
    let base = server.stop(&data);
    let (server, _) = start(&config, &data);
    let prompt = "lorem ipsum ".repeat(1024 * 1024 / 12);
    server.run("big", 10, &prompt).await;
    let big = (server.stop(&data).saturating_sub(base)) as f64 / 10.0;
    if std::env::var("FIGURES_FILES").is_ok() {
        for entry in walk(&data) {
            println!("{entry}");
        }
    }

    // Start-up and a `?status=` listing with `n` finished executions in the store.
    let data = dir.path().join("many");
    let (server, _) = start(&config, &data);
    server.run("many", n / 10, "Say something short.").await;
    let rss_tenth = rss_bytes(server.process.child.id());
    server.run("more", n - n / 10, "Say something short.").await;
    let rss_all = rss_bytes(server.process.child.id());
    let on_disk = server.stop(&data);
    let (server, startup) = start(&config, &data);
    let mut listing = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let res = server
            .client
            .get(server.url("/v1/executions?status=processing&limit=20"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        listing = listing.min(t.elapsed());
    }
    let rss_restarted = rss_bytes(server.process.child.id());
    server.stop(&data);

    println!("bytes on disk per small execution: {small:.0}");
    println!("bytes on disk per execution with a 1 MB prompt: {big:.0}");
    println!(
        "{n} executions: {:.1} MB on disk, start-up {startup:.2?}, `?status=processing` listing {listing:.2?}",
        on_disk as f64 / 1e6
    );
    println!(
        "resident memory: {:.1} MB after {} executions, {:.1} MB after {n} ({:.0} bytes per execution in between), {:.1} MB after the restart",
        rss_tenth as f64 / 1e6,
        n / 10,
        rss_all as f64 / 1e6,
        (rss_all as f64 - rss_tenth as f64) / (n - n / 10) as f64,
        rss_restarted as f64 / 1e6
    );
}

/// What deleting does to the file: rounds of executions, each deleted by retention before the
/// next. sled never shrinks its file; freed space is reused, so the size levels off.
#[actix_web::test]
#[ignore = "slow: prints the storage figures for README"]
async fn storage_reuse_figures() {
    let rounds = 8;
    let per_round = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    let retained = CONFIG.replace(
        "[[providers]]",
        "[retention]\nexecutions = \"1s\"\nsweep_interval = \"200ms\"\n\n[[providers]]",
    );
    std::fs::write(&config, retained).unwrap();
    let data = dir.path().join("data");
    let (server, _) = start(&config, &data);
    let mut sizes = Vec::new();
    let mut rss = Vec::new();
    for round in 0..rounds {
        server
            .run(&format!("round{round}"), per_round, "Say something short.")
            .await;
        // Past the retention and a few sweeps.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let list: Value = server
            .client
            .get(server.url("/v1/executions?limit=1"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["data"], serde_json::json!([]), "all swept: {list}");
        sizes.push(disk_bytes(&data));
        rss.push(rss_bytes(server.process.child.id()));
    }
    server.stop(&data);
    let mb = |bytes: &[u64]| {
        bytes
            .iter()
            .map(|b| format!("{:.1}", *b as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "after each round of {per_round} executions deleted by retention: {} MB on disk, {} MB resident",
        mb(&sizes),
        mb(&rss)
    );
}
