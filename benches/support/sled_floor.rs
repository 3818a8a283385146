//! The store's floor: what one durable request costs sled 0.34 alone on this machine, with
//! nothing of Switchyard's around it. One thread, in a loop: the writes one gateway request
//! makes (`src/store/write_count_tests.rs`: 24 inserts and removes, about 3.7 KB of keys and
//! values, over the same trees with time-ordered keys), then a commit exactly like the
//! gateway's group commit (sled `flush` + `fdatasync` of its file), waited for before the next
//! requests: `per_commit` requests' writes per commit (1: concurrency 1, every request durable
//! before it is answered; the gateway at concurrency 32 makes about 3 per commit).

use std::path::Path;
use std::time::{Duration, Instant};

pub struct SledFloor {
    pub requests: usize,
    pub commits: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub cpu_per_request: Duration,
    pub written_per_request: f64,
}

/// Runs the loop for `seconds` in a sled store under `dir` (created, removed after).
pub fn measure(dir: &Path, seconds: Duration, per_commit: u64) -> SledFloor {
    let path = dir.join(format!("sled-floor-{}", std::process::id()));
    let db = sled::Config::new()
        .path(&path)
        .flush_every_ms(Some(10))
        .cache_capacity(16 * 1024 * 1024)
        .open()
        .expect("sled floor store");
    let file = std::fs::File::open(path.join("db")).expect("sled's data file");
    let trees: Vec<sled::Tree> = [
        "executions",
        "requests",
        "events",
        "status_index",
        "unfinished",
        "finished",
        "idempotency",
        "project_index",
        "analytics",
        "attempt_log",
    ]
    .iter()
    .map(|name| db.open_tree(name).expect("tree"))
    .collect();
    let record = vec![b'r'; 1000];
    let request = vec![b'q'; 300];
    let events = vec![b'e'; 400];
    let debug = vec![b'd'; 700];
    let mut latencies = Vec::new();
    let (cpu0, io0) = (self_cpu(), self_written());
    let started = Instant::now();
    let mut n: u64 = 0;
    while started.elapsed() < seconds {
        let t = Instant::now();
        for _ in 0..per_commit {
            let id = format!("exec_{:016}", n);
            let key = |suffix: &str| format!("{id}\0{suffix}").into_bytes();
            let [executions, requests, ev, status, unfinished, finished, idem, project, analytics, log] =
                &trees[..]
            else {
                unreachable!()
            };
            unfinished.insert(id.as_bytes(), &[]).unwrap();
            requests.insert(id.as_bytes(), request.as_slice()).unwrap();
            executions.insert(id.as_bytes(), record.as_slice()).unwrap();
            ev.insert(key("1"), &events[..60]).unwrap();
            idem.insert(key("idem"), id.as_bytes()).unwrap();
            project.insert(key("p"), &[]).unwrap();
            status.insert(key("pending"), &[]).unwrap();
            executions.insert(id.as_bytes(), record.as_slice()).unwrap();
            status.insert(key("processing"), &[]).unwrap();
            status.remove(key("pending")).unwrap();
            for seq in 2..5 {
                ev.insert(key(&seq.to_string()), events.as_slice()).unwrap();
            }
            log.insert(key("log"), debug.as_slice()).unwrap();
            status.insert(key("completed"), &[]).unwrap();
            finished.insert(key("f"), &[]).unwrap();
            executions.insert(id.as_bytes(), record.as_slice()).unwrap();
            status.remove(key("processing")).unwrap();
            unfinished.remove(id.as_bytes()).unwrap();
            let minute = (n / 2000).to_be_bytes();
            for dimension in ["model", "key"] {
                analytics
                    .update_and_fetch([dimension.as_bytes(), &minute].concat(), |old| {
                        let count = old.map_or(0, |o| u64::from_be_bytes(o.try_into().unwrap()));
                        Some((count + 1).to_be_bytes().to_vec())
                    })
                    .unwrap();
            }
            n += 1;
        }
        db.flush().unwrap();
        file.sync_data().unwrap();
        latencies.push(t.elapsed());
    }
    let (cpu1, io1) = (self_cpu(), self_written());
    drop(trees);
    drop(db);
    let _ = std::fs::remove_dir_all(&path);
    latencies.sort_unstable();
    let commits = latencies.len();
    let requests = n.max(1) as usize;
    SledFloor {
        requests,
        commits,
        p50: super::percentile(&latencies, 0.50),
        p99: super::percentile(&latencies, 0.99),
        cpu_per_request: Duration::from_secs_f64((cpu1 - cpu0) / requests as f64),
        written_per_request: (io1.saturating_sub(io0)) as f64 / requests as f64,
    }
}

fn self_cpu() -> f64 {
    super::cpu_seconds(std::process::id())
}

fn self_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}
