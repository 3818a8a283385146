//! Submit latency under a steady open-loop load: `POST /v1/executions` at a fixed rate against
//! the server running in-process (port 0, temp data dir, mock provider), reporting the
//! latency percentiles of submit → 202 and the rate achieved.
//!
//! Sends are scheduled on a timer and never wait for earlier ones, so a slow response delays
//! nothing else; latency is measured from each request's *scheduled* time, so client-side
//! delays count against it too (no coordinated omission), including tokio's 1 ms timer
//! granularity; the latency from the actual send is printed beside it. The load generator
//! runs on its own thread, as an outside client would.
//!
//! Run: `cargo bench --bench submit_latency`. The temp store follows `TMPDIR`:
//! `TMPDIR=/dev/shm` takes the disk (the flush behind every 202) out of the measurement.

use serde_json::json;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

use switchyard::settings::Settings;
use switchyard::startup::Application;

const RATE_PER_SEC: u64 = 500;
const DURATION: Duration = Duration::from_secs(5);
/// Unmeasured submits first, to open connections and warm the store.
const WARMUP: usize = 200;
/// Time for the last executions to finish before the server stops.
const SETTLE: Duration = Duration::from_millis(500);
const ADMIN_KEY: &str = "bench-admin-key";
/// The mock answers in a few short chunks, so executions come and go during the run.
const CONFIG: &str = r#"listen = "127.0.0.1:0"
data_dir = "unused"

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = 8
mock_chunk_interval_ms = 2

[[models]]
slug = "chat-default"
routes = [{ provider = "mock", model = "mock-1" }]
"#;

/// Group-commit flushes so far, from the server's `/metrics`.
#[derive(Default, Clone, Copy)]
struct Flushes {
    count: f64,
    seconds: f64,
}

/// What the load generator measured.
struct Load {
    /// Every measured submit, in schedule order.
    results: Vec<Result<Sample, String>>,
    /// From the first scheduled send to the last response.
    span: Duration,
    /// Flushes during the measured window (after the warm-up).
    flushes: Flushes,
}

/// One submit's timings.
struct Sample {
    /// From the scheduled send time to the full 202 body.
    latency: Duration,
    /// From the actual send to the full 202 body (what the server and the socket took).
    service: Duration,
}

fn main() {
    // `cargo bench` passes `--bench`; there are no options to parse.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::parse(CONFIG).expect("bench settings are valid");
    settings.data_dir = dir.path().to_path_buf();
    settings.admin_key = Some(ADMIN_KEY.to_string());

    let system = actix::System::new();
    let (address, handle) = system.block_on(async {
        let app = Application::build(settings).await.expect("server starts");
        let address = format!("http://{}", app.address());
        let handle = app.server_handle();
        actix::spawn(app.run_until_stopped());
        (address, handle)
    });

    let before = Usage::now(libc::RUSAGE_SELF);
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let load = rt.block_on(load(address));
        // This thread is the whole client (its runtime is current-thread): its CPU is not
        // the server's.
        let client_cpu = Usage::now(libc::RUSAGE_THREAD).cpu;
        let _ = result_tx.send((load, client_cpu));
    });
    // The server's actors run on this thread's system until the client is done.
    let (load, client_cpu) = system.block_on(async {
        let result = result_rx.await.expect("the load generator finished");
        // Executions still running when the runtime is dropped would start inside the drop
        // and panic without a reactor: let the last ones (a few ms of mock chunks) finish.
        tokio::time::sleep(SETTLE).await;
        handle.stop(true).await;
        result
    });
    client.join().expect("client thread");
    let process = Usage::now(libc::RUSAGE_SELF).since(&before);
    report(
        load,
        process.cpu.saturating_sub(client_cpu),
        process.involuntary_switches,
    );
}

/// Warms up, then fires `RATE_PER_SEC` submits a second for `DURATION`.
async fn load(address: String) -> Load {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    let url = format!("{address}/v1/executions");
    for i in 0..WARMUP {
        if let Err(err) = submit(&client, &url, &format!("warmup-{i}"), Instant::now()).await {
            panic!("warm-up submit {err}");
        }
    }

    let total = (RATE_PER_SEC * DURATION.as_secs()) as usize;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SEC));
    // A late tick fires at once and the schedule stays on its original grid.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut in_flight = Vec::with_capacity(total);
    let flushes_before = flushes(&client, &address).await;
    let first = ticker.tick().await.into_std();
    let mut scheduled = first;
    for i in 0..total {
        if i > 0 {
            scheduled = ticker.tick().await.into_std();
        }
        let (client, url) = (client.clone(), url.clone());
        in_flight.push(tokio::spawn(async move {
            submit(&client, &url, &format!("bench-{i}"), scheduled).await
        }));
    }
    let mut results = Vec::with_capacity(total);
    for task in in_flight {
        results.push(task.await.expect("submit task"));
    }
    let span = first.elapsed();
    let after = flushes(&client, &address).await;
    Load {
        results,
        span,
        flushes: Flushes {
            count: after.count - flushes_before.count,
            seconds: after.seconds - flushes_before.seconds,
        },
    }
}

/// Reads the group-commit flush histogram from `/metrics` (count and total seconds).
async fn flushes(client: &reqwest::Client, address: &str) -> Flushes {
    let text = client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Flushes {
        count: value("switchyard_store_flush_seconds_count"),
        seconds: value("switchyard_store_flush_seconds_sum"),
    }
}

/// One submit; anything but a 202 is an error, reported rather than fatal so that a run
/// under trouble still prints what it measured.
async fn submit(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    scheduled: Instant,
) -> Result<Sample, String> {
    let body = json!({
        "model": "chat-default",
        "idempotency_key": key,
        "messages": [{"role": "user", "content": "measure the submit path"}],
    });
    let sent = Instant::now();
    let res = client
        .post(url)
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    let status = res.status();
    let bytes = res.bytes().await.map_err(|e| format!("body failed: {e}"))?;
    if status != 202 {
        return Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let done = Instant::now();
    Ok(Sample {
        latency: done - scheduled,
        service: done - sent,
    })
}

fn report(load: Load, server_cpu: Duration, preemptions: i64) {
    let Load {
        results,
        span,
        flushes,
    } = load;
    let count = results.len();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let samples: Vec<&Sample> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut latency: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    let mut service: Vec<Duration> = samples.iter().map(|s| s.service).collect();
    latency.sort_unstable();
    service.sort_unstable();
    println!(
        "submit_latency: {count} submits, target {RATE_PER_SEC}/s, achieved {:.1}/s over {:.2} s, \
         {} failed",
        count as f64 / span.as_secs_f64(),
        span.as_secs_f64(),
        errors.len(),
    );
    for err in errors.iter().take(3) {
        println!("submit_latency: failed submit: {err}");
    }
    // Includes the warm-up submits and the executions they start: an upper bound per submit.
    println!(
        "submit_latency: server CPU {:.0} µs per submit ({} submits incl. warm-up), \
         {preemptions} involuntary context switches",
        server_cpu.as_secs_f64() * 1e6 / (count + WARMUP) as f64,
        count + WARMUP,
    );
    // Executions' events take tickets too, so a flush covers submits and chunks alike.
    println!(
        "submit_latency: {:.0} group-commit flushes ({:.0}/s, {:.1} submits each, mean {:.3} ms)",
        flushes.count,
        flushes.count / span.as_secs_f64(),
        count as f64 / flushes.count.max(1.0),
        flushes.seconds * 1e3 / flushes.count.max(1.0),
    );
    if samples.is_empty() {
        return;
    }
    for (name, sorted) in [("from schedule", &latency), ("from send", &service)] {
        println!(
            "submit_latency ({name}): p50 {} p90 {} p99 {} max {}",
            ms(percentile(sorted, 0.50)),
            ms(percentile(sorted, 0.90)),
            ms(percentile(sorted, 0.99)),
            ms(sorted[sorted.len() - 1]),
        );
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// CPU time and preemptions so far, of the process or of the calling thread (`getrusage`).
struct Usage {
    cpu: Duration,
    involuntary_switches: i64,
}

impl Usage {
    fn now(who: libc::c_int) -> Usage {
        // SAFETY: getrusage only writes the struct it is given.
        let ru = unsafe {
            let mut ru = std::mem::zeroed::<libc::rusage>();
            libc::getrusage(who, &mut ru);
            ru
        };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        Usage {
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            involuntary_switches: ru.ru_nivcsw,
        }
    }

    fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            involuntary_switches: self.involuntary_switches - earlier.involuntary_switches,
        }
    }
}
