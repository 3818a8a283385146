//! WebSocket fan-out: one execution streaming 200 chunks to many subscribers of its channel.
//!
//! ```text
//! cargo bench --bench ws_fanout            # both scenarios
//! cargo bench --bench ws_fanout -- 1k      # 1,000 subscribers at 50 chunks/s
//! cargo bench --bench ws_fanout -- 10k     # 10,000 subscribers at 10 chunks/s
//! cargo bench --bench ws_fanout -- --subscribers 2000 --rate 25 --chunks 50
//! cargo bench --bench ws_fanout -- --floor 10k   # any of the above against the floor server
//! ```
//!
//! - The server is a separate process (the `switchyard` binary cargo builds for this bench, in
//!   the release profile; `SWITCHYARD_BIN` overrides it), so its memory is its own in
//!   `/proc/PID/status` and it has its own open-file limit.
//! - The upstream is a tiny OpenAI-compatible server inside this process, on its own thread and
//!   runtime so the load client cannot disturb its pacing: chunked SSE, each chunk's text is the
//!   time it was written (µs since the UNIX epoch) and a space, paced on an absolute schedule. It
//!   answers the request with headers at once and holds the first chunk until every subscriber
//!   has joined.
//! - The load client is one task per subscriber on a runtime with a thread per core, with a
//!   minimal WebSocket client of its own (an upgrade by hand, frames parsed in place from one read
//!   buffer): the machine is shared with the server, so the client should cost what an efficient
//!   real client costs. Each read's frames get that read's receive time.
//! - `--floor` runs the scenarios against the floor server instead of Switchyard (module
//!   `floor`, `benches/ws_fanout/floor.rs`): the leanest fan-out server one can write for this
//!   client and upstream, to tell what the machine allows any server from what Switchyard costs.
//!   Plain tokio (a current-thread runtime per core), the HTTP upgrade and RFC 6455 server
//!   framing by hand, the chunks read from the same upstream over one streaming request, each
//!   event's frame encoded once and written to every socket with one `send`, no store, no
//!   allocation per subscriber. It speaks the same protocol (submit, `join`, `joined`, the same
//!   JSON frames with `channel`, `event`, `seq`, `data`, one `done`), so the same checks apply.
//!   It is this binary re-executed with `WS_FANOUT_FLOOR_UPSTREAM` set (`main` branches on it
//!   first): a process of its own, measured exactly like Switchyard. Its `/metrics` is empty, so
//!   the store-flush row reads `–`. `WS_FANOUT_FLOOR_SHARDS=N` and
//!   `WS_FANOUT_FLOOR_RUNTIME=multi` change its threads.
//!
//! Checked: every subscriber gets seq 1, 2, 3, … without gap or duplicate, exactly the 200
//! chunks the upstream wrote (by content, in order) and one `done`. Measured: per-delivery lag
//! (the first subscriber to receive a chunk → each other subscriber), emit → receive latency,
//! server RSS per subscriber (after all joined − before the first connected), deliveries per
//! second, and the CPU time of both processes while streaming.

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use std::borrow::Cow;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const ADMIN_KEY: &str = "bench-admin-key";
const DEFAULT_CHUNKS: usize = 200;
/// WebSocket handshakes in flight while joining.
const CONNECTS_IN_FLIGHT: usize = 128;
const MEMORY_TARGET_KIB: f64 = 16.0;
/// Open files beyond the sockets (listeners, store files, pipes, the runtime).
const SPARE_FILES: u64 = 256;

#[derive(Clone)]
struct Scenario {
    subscribers: usize,
    /// Chunks per second.
    rate: u32,
    chunks: usize,
    /// p99 lag target in ms, when the scenario has one.
    lag_target_ms: Option<f64>,
    target: Target,
}

impl Scenario {
    fn title(&self) -> String {
        format!(
            "{} subs @ {}/s{}",
            thousands(self.subscribers as u64),
            self.rate,
            match self.target {
                Target::Switchyard => "",
                Target::Floor => " (floor)",
            }
        )
    }
}

#[path = "ws_fanout/floor.rs"]
mod floor;

fn main() -> anyhow::Result<()> {
    // Re-executed as the floor server (`--floor`): that and nothing else.
    if let Some(served) = floor::main_if_floor() {
        return served;
    }
    let Options {
        scenarios,
        chunks,
        target,
    } = parse_args()?;
    let needed = scenarios.iter().map(|s| s.subscribers).max().unwrap_or(0) as u64 + SPARE_FILES;
    let limit = raise_open_file_limit(needed);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server = match target {
        Target::Switchyard => std::env::var("SWITCHYARD_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchyard").to_string()),
        Target::Floor => format!(
            "floor (this binary, {} shards, {} runtime)",
            std::env::var(floor::ENV_SHARDS).unwrap_or_else(|_| cores.to_string()),
            std::env::var(floor::ENV_RUNTIME).unwrap_or_else(|_| "per-core".into())
        ),
    };
    println!(
        "ws_fanout: server {server}, {cores} cores, open-file limit {limit} per process, \
         {chunks} chunks per run"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for scenario in &scenarios {
        println!("\n== {} ==", scenario.title());
        let report =
            run(&runtime, scenario).with_context(|| format!("scenario {}", scenario.title()))?;
        reports.push((scenario.clone(), report));
        // Let the closed sockets' TIME_WAIT and the server's exit settle before the next run.
        std::thread::sleep(Duration::from_secs(1));
    }
    print_table(&reports);
    Ok(())
}

/// Which server the scenarios run against.
#[derive(Clone, Copy)]
enum Target {
    Switchyard,
    /// The leanest fan-out server ([`floor`]), for what the machine can do at all.
    Floor,
}

struct Options {
    scenarios: Vec<Scenario>,
    chunks: usize,
    target: Target,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut names = Vec::new();
    let (mut subscribers, mut rate, mut chunks) = (None, None, DEFAULT_CHUNKS);
    let mut target = Target::Switchyard;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            let v = args.next().ok_or_else(|| anyhow!("{name} needs a value"))?;
            v.parse().map_err(|_| anyhow!("{name}: not a number: {v}"))
        };
        match arg.as_str() {
            "1k" | "10k" => names.push(arg),
            "--floor" => target = Target::Floor,
            "--subscribers" => subscribers = Some(value("--subscribers")? as usize),
            "--rate" => rate = Some(value("--rate")? as u32),
            "--chunks" => chunks = value("--chunks")? as usize,
            other => bail!(
                "unknown argument `{other}` (expected 1k, 10k, --subscribers N --rate R, \
                 --chunks N, --floor)"
            ),
        }
    }
    let one_k = Scenario {
        subscribers: 1_000,
        rate: 50,
        chunks,
        lag_target_ms: Some(20.0),
        target,
    };
    let ten_k = Scenario {
        subscribers: 10_000,
        rate: 10,
        chunks,
        lag_target_ms: Some(100.0),
        target,
    };
    let mut scenarios = Vec::new();
    if let (Some(subscribers), Some(rate)) = (subscribers, rate) {
        if rate == 0 || subscribers == 0 {
            bail!("--subscribers and --rate must be greater than 0");
        }
        scenarios.push(Scenario {
            subscribers,
            rate,
            chunks,
            lag_target_ms: None,
            target,
        });
    } else if subscribers.is_some() || rate.is_some() {
        bail!("--subscribers and --rate go together");
    }
    for name in &names {
        scenarios.push(if name == "1k" {
            one_k.clone()
        } else {
            ten_k.clone()
        });
    }
    if scenarios.is_empty() {
        scenarios = vec![one_k, ten_k];
    }
    Ok(Options {
        scenarios,
        chunks,
        target,
    })
}

/// Raises the soft open-file limit to the hard one (the server inherits it). Returns the limit.
fn raise_open_file_limit(needed: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            eprintln!("warning: getrlimit(RLIMIT_NOFILE) failed");
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                eprintln!("warning: could not raise the open-file limit");
            }
        }
    }
    if lim.rlim_max < needed {
        eprintln!(
            "warning: the hard open-file limit is {}, but the largest scenario needs about {} \
             per process: connections beyond it will fail",
            lim.rlim_max, needed
        );
    }
    lim.rlim_cur
}

// ---------------------------------------------------------------------------------------------
// One scenario
// ---------------------------------------------------------------------------------------------

struct Report {
    subscribers: usize,
    chunks: usize,
    failed_joins: usize,
    complete: usize,
    seq_errors: u64,
    bad_frames: u64,
    lagged_notices: u64,
    closed_early: usize,
    join_secs: f64,
    lag_ms: Option<Percentiles>,
    latency_ms: Option<Percentiles>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    deliveries: u64,
    deliveries_per_sec: f64,
    wall_secs: f64,
    server_sched: Sched,
    client_sched: Sched,
    flushes: Flushes,
}

impl Report {
    fn kib_per_subscriber(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.subscribers as f64
    }
}

fn run(rt: &tokio::runtime::Runtime, s: &Scenario) -> anyhow::Result<Report> {
    let upstream = Upstream::start(s.chunks, s.rate)?;
    let dir = tempfile::tempdir()?;
    let command = match s.target {
        Target::Switchyard => {
            let bin = std::env::var("SWITCHYARD_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchyard").to_string());
            let config = dir.path().join("switchyard.toml");
            std::fs::write(&config, server_config(upstream.addr))?;
            let mut command = Command::new(bin);
            command
                .arg("--config")
                .arg(config)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--listen")
                .arg("127.0.0.1:0")
                .env("SWITCHYARD_ADMIN_KEY", ADMIN_KEY)
                .env("RUST_LOG", "warn");
            command
        }
        Target::Floor => {
            let mut command = Command::new(std::env::current_exe()?);
            command.env(floor::ENV_UPSTREAM, upstream.addr.to_string());
            command
        }
    };
    let server = Server::spawn(command)?;
    let result = rt.block_on(drive(s, &server, &upstream));
    let result = result.and_then(|report| {
        server.stop()?;
        Ok(report)
    });
    upstream.stop();
    result
}

fn server_config(upstream: SocketAddr) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
data_dir = "unused"

[[providers]]
name = "upstream"
kind = "openai"
base_url = "http://{upstream}/v1"
# The first chunk is held until every subscriber has joined.
first_chunk_timeout_ms = 600000
idle_timeout_ms = 60000
max_attempts = 1

[[models]]
slug = "bench"
routes = [{{ provider = "upstream", model = "bench-1" }}]

# Every subscriber connects from 127.0.0.1: no per-address connection cap.
[limits]
ip_max_connections = 0
"#
    )
}

async fn drive(s: &Scenario, server: &Server, upstream: &Upstream) -> anyhow::Result<Report> {
    // Submit: the execution starts, the upstream answers with headers and holds the first chunk.
    // A fresh connection per request: the few REST calls here are seconds apart, and a pooled
    // connection the server closes as idle just as it is reused fails the scrape (seen with
    // the server under callgrind, `benches/ws_instructions.sh`).
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let res = http
        .post(format!("{}/v1/executions", server.address))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({
            "model": "bench",
            "idempotency_key": format!("ws-fanout-{}", s.subscribers),
            "messages": [{"role": "user", "content": "fan out"}],
        }))
        .send()
        .await?;
    if res.status() != 202 {
        bail!("submit answered {}: {}", res.status(), res.text().await?);
    }
    let submitted: serde_json::Value = res.json().await?;
    let channel = submitted["websocket_channel"]
        .as_str()
        .ok_or_else(|| anyhow!("no websocket_channel in {submitted}"))?
        .to_string();
    let mut requests = upstream.requests.clone();
    tokio::time::timeout(Duration::from_secs(10), requests.wait_for(|n| *n >= 1))
        .await
        .context("the upstream got no request within 10 s")??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = server.rss_kib()?;

    // Connect and join every subscriber.
    let shared = Arc::new(Shared {
        host: server.address.trim_start_matches("http://").to_string(),
        path: format!("/v1/ws?api_key={ADMIN_KEY}"),
        channel,
        chunks: s.chunks,
        connecting: Semaphore::new(CONNECTS_IN_FLIGHT),
        joined: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        reported: AtomicUsize::new(0),
    });
    let (abort, abort_rx) = watch::channel(false);
    let started_joining = Instant::now();
    let handles: Vec<_> = (0..s.subscribers)
        .map(|i| tokio::spawn(subscriber(shared.clone(), i, abort_rx.clone())))
        .collect();
    let join_deadline = Instant::now() + Duration::from_secs(300);
    let mut last_print = Instant::now();
    loop {
        let (j, f) = (
            shared.joined.load(Ordering::Acquire),
            shared.failed.load(Ordering::Acquire),
        );
        if j + f >= s.subscribers {
            break;
        }
        if Instant::now() > join_deadline {
            bail!("only {j} of {} subscribers joined in 300 s", s.subscribers);
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("  joined {j}/{} …", s.subscribers);
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let join_secs = started_joining.elapsed().as_secs_f64();
    let failed_joins = shared.failed.load(Ordering::Acquire);
    println!(
        "  {} joined in {join_secs:.1} s ({failed_joins} failed)",
        shared.joined.load(Ordering::Acquire)
    );
    // Let the joins' replays drain, then sample the server's memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = server.rss_kib()?;

    // Stream.
    let flushes_start = store_flushes(&http, &server.address).await?;
    let server_start = schedstat(server.pid)?;
    let client_start = schedstat(std::process::id())?;
    let wall = Instant::now();
    upstream.go.send_replace(true);
    let expected = Duration::from_secs_f64(s.chunks as f64 / s.rate as f64);
    let deadline = tokio::time::Instant::now() + expected + Duration::from_secs(60);
    let mut subs = Vec::with_capacity(s.subscribers);
    for handle in handles {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut handle = handle;
        let result = match tokio::time::timeout(remaining, &mut handle).await {
            Ok(r) => r,
            Err(_) => {
                abort.send_replace(true);
                handle.await
            }
        };
        subs.push(result?);
    }
    let wall_secs = wall.elapsed().as_secs_f64();
    let server_sched = schedstat(server.pid)?.since(server_start);
    let client_sched = schedstat(std::process::id())?.since(client_start);
    let flushes = store_flushes(&http, &server.address)
        .await?
        .since(&flushes_start);
    let emitted = upstream.emitted.lock().expect("emitted").clone();

    Ok(analyse(
        s,
        subs,
        &emitted,
        Measured {
            failed_joins,
            join_secs,
            rss_before_kib,
            rss_after_kib,
            wall_secs,
            server_sched,
            client_sched,
            flushes,
        },
    ))
}

struct Measured {
    failed_joins: usize,
    join_secs: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    wall_secs: f64,
    server_sched: Sched,
    client_sched: Sched,
    flushes: Flushes,
}

fn analyse(s: &Scenario, subs: Vec<Sub>, emitted: &[u64], m: Measured) -> Report {
    let complete: Vec<&Sub> = subs
        .iter()
        .filter(|sub| {
            sub.done
                && sub.seq_errors == 0
                && sub.bad_frames == 0
                && emitted.len() == s.chunks
                && sub.emit == emitted
        })
        .collect();
    let deliveries: u64 = subs.iter().map(|sub| sub.recv.len() as u64).sum();
    let mut lags = Vec::with_capacity(complete.len() * s.chunks);
    let mut latencies = Vec::with_capacity(complete.len() * s.chunks);
    if !complete.is_empty() {
        for k in 0..s.chunks {
            let first = complete.iter().map(|sub| sub.recv[k]).min().unwrap_or(0);
            for sub in &complete {
                lags.push(sub.recv[k] - first);
                latencies.push(sub.recv[k].saturating_sub(sub.emit[k]));
            }
        }
    }
    let first_emit = emitted.first().copied().unwrap_or(0);
    let last_recv = subs
        .iter()
        .filter_map(|sub| sub.recv.last())
        .max()
        .copied()
        .unwrap_or(first_emit);
    let window = (last_recv.saturating_sub(first_emit)) as f64 / 1e6;
    Report {
        subscribers: s.subscribers,
        chunks: s.chunks,
        failed_joins: m.failed_joins,
        complete: complete.len(),
        seq_errors: subs.iter().map(|sub| sub.seq_errors).sum(),
        bad_frames: subs.iter().map(|sub| sub.bad_frames).sum(),
        lagged_notices: subs.iter().map(|sub| sub.lagged).sum(),
        closed_early: subs.iter().filter(|sub| sub.closed && !sub.done).count(),
        join_secs: m.join_secs,
        lag_ms: Percentiles::of(lags),
        latency_ms: Percentiles::of(latencies),
        rss_before_kib: m.rss_before_kib,
        rss_after_kib: m.rss_after_kib,
        deliveries,
        deliveries_per_sec: if window > 0.0 {
            deliveries as f64 / window
        } else {
            0.0
        },
        wall_secs: m.wall_secs,
        server_sched: m.server_sched,
        client_sched: m.client_sched,
        flushes: m.flushes,
    }
}

// ---------------------------------------------------------------------------------------------
// The load client
// ---------------------------------------------------------------------------------------------

/// What one subscriber saw.
struct Sub {
    next_seq: u64,
    /// Receive time of each chunk (µs since the epoch), in arrival order.
    recv: Vec<u64>,
    /// The emit time each chunk carried, in arrival order.
    emit: Vec<u64>,
    done: bool,
    closed: bool,
    seq_errors: u64,
    bad_frames: u64,
    lagged: u64,
}

impl Sub {
    fn new(chunks: usize) -> Sub {
        Sub {
            next_seq: 1,
            recv: Vec::with_capacity(chunks),
            emit: Vec::with_capacity(chunks),
            done: false,
            closed: false,
            seq_errors: 0,
            bad_frames: 0,
            lagged: 0,
        }
    }

    fn on_text(&mut self, text: &[u8], now: u64) {
        let Ok(frame) = serde_json::from_slice::<Frame>(text) else {
            self.bad_frames += 1;
            return;
        };
        match frame.event.as_ref() {
            "joined" | "pong" => return,
            "lagged" => {
                self.lagged += 1;
                return;
            }
            _ => {}
        }
        let Some(seq) = frame.seq else {
            self.bad_frames += 1;
            return;
        };
        if seq < self.next_seq {
            self.seq_errors += 1; // a duplicate
            return;
        }
        if seq > self.next_seq {
            self.seq_errors += 1; // a gap
        }
        self.next_seq = seq + 1;
        match frame.event.as_ref() {
            "status" => {}
            "chunk" => {
                let emit = frame
                    .data
                    .and_then(|d| d.delta)
                    .and_then(|d| d.trim_end().parse::<u64>().ok());
                match emit {
                    Some(emit) => {
                        self.emit.push(emit);
                        self.recv.push(now);
                    }
                    None => self.bad_frames += 1,
                }
            }
            "done" => self.done = true,
            // failover or error: not expected from a healthy upstream
            _ => self.bad_frames += 1,
        }
    }
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    data: Option<FrameData<'a>>,
}

#[derive(Deserialize)]
struct FrameData<'a> {
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
}

/// One subscriber's WebSocket, as lean as an efficient client makes it: a plain TCP stream, one
/// read buffer that frames are parsed from in place (no per-frame allocation, no zero-filling),
/// and replies to pings. The server's frames are unmasked; ours are masked, as RFC 6455 wants.
struct WsClient {
    sock: TcpStream,
    /// Bytes read and not yet consumed; `pos` is where the next frame starts.
    buf: Vec<u8>,
    pos: usize,
}

/// A server frame, its payload a range of the read buffer.
struct WsFrame {
    opcode: u8,
    fin: bool,
    payload: std::ops::Range<usize>,
}

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// Room for a few chunk frames (~150 bytes each); the final `done` frame grows it as needed.
const READ_BUFFER: usize = 2 * 1024;

impl WsClient {
    /// The HTTP upgrade by hand; the accept key is checked as any client does.
    async fn connect(host: &str, path: &str) -> anyhow::Result<WsClient> {
        let mut sock = TcpStream::connect(host).await?;
        sock.set_nodelay(true)?;
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        sock.write_all(request.as_bytes()).await?;
        let mut client = WsClient {
            sock,
            buf: Vec::with_capacity(READ_BUFFER),
            pos: 0,
        };
        let head_end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if client.fill().await? == 0 {
                bail!("closed during the handshake");
            }
        };
        let head = String::from_utf8_lossy(&client.buf[..head_end]).to_ascii_lowercase();
        let accept = derive_accept_key(key.as_bytes()).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101")
            || !head.contains(&format!("sec-websocket-accept: {accept}\r\n"))
        {
            bail!("handshake refused: {}", head.lines().next().unwrap_or(""));
        }
        client.pos = head_end;
        Ok(client)
    }

    /// Reads what the socket has (0: closed), after dropping the bytes already parsed.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(READ_BUFFER / 2);
        self.sock.read_buf(&mut self.buf).await
    }

    /// The next complete frame in the buffer, if any.
    fn next_frame(&mut self) -> anyhow::Result<Option<WsFrame>> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[1] & 0x80 != 0 {
            bail!("a masked frame from the server");
        }
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let len = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
                (usize::try_from(len)?, 10)
            }
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if b.len() < header + len {
            return Ok(None);
        }
        let start = self.pos + header;
        let frame = WsFrame {
            opcode: b[0] & 0x0f,
            fin: b[0] & 0x80 != 0,
            payload: start..start + len,
        };
        self.pos = start + len;
        Ok(Some(frame))
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask: [u8; 4] = rand::random();
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.sock.write_all(&frame).await
    }
}

/// Connects, joins `channel` from the start and waits for the `joined` acknowledgement.
async fn connect_and_join(host: &str, path: &str, channel: &str) -> anyhow::Result<WsClient> {
    let mut ws = WsClient::connect(host, path).await?;
    let join = serde_json::json!({"action": "join", "channel": channel, "after": 0});
    ws.send(OP_TEXT, join.to_string().as_bytes()).await?;
    let joined = async {
        loop {
            while let Some(frame) = ws.next_frame()? {
                let payload = &ws.buf[frame.payload];
                if frame.opcode != OP_TEXT {
                    continue;
                }
                let reply: serde_json::Value = serde_json::from_slice(payload)?;
                if reply["event"] == "joined" {
                    return Ok(());
                }
                bail!("expected `joined`, got {reply}");
            }
            if ws.fill().await? == 0 {
                bail!("closed before `joined`");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), joined)
        .await
        .map_err(|_| anyhow!("no `joined` within 30 s"))??;
    Ok(ws)
}

/// What every subscriber task shares.
struct Shared {
    host: String,
    path: String,
    channel: String,
    chunks: usize,
    /// Limits the handshakes in flight while joining.
    connecting: Semaphore,
    joined: AtomicUsize,
    failed: AtomicUsize,
    /// Connection errors printed so far (a few are enough).
    reported: AtomicUsize,
}

/// One subscriber: connects and joins, then reads its socket until `done`, a close, or `abort`.
/// Every frame taken from one read gets that read's receive time.
async fn subscriber(shared: Arc<Shared>, i: usize, mut abort: watch::Receiver<bool>) -> Sub {
    let mut sub = Sub::new(shared.chunks);
    let permit = shared.connecting.acquire().await.expect("never closed");
    let joined = connect_and_join(&shared.host, &shared.path, &shared.channel).await;
    drop(permit);
    let mut ws = match joined {
        Ok(ws) => ws,
        Err(e) => {
            if shared.reported.fetch_add(1, Ordering::AcqRel) < 3 {
                eprintln!("  subscriber {i}: {e:#}");
            }
            sub.closed = true;
            shared.failed.fetch_add(1, Ordering::AcqRel);
            return sub;
        }
    };
    shared.joined.fetch_add(1, Ordering::AcqRel);
    // The read that brought `joined` may have brought more.
    if let Err(e) = read_frames(&mut ws, &mut sub, now_us()).await {
        eprintln!("  subscriber {i}: {e:#}");
        sub.closed = true;
    }
    // The `Ref` the wait returns is not `Send`: drop it inside.
    let aborted = async move { abort.wait_for(|a| *a).await.is_ok() };
    tokio::pin!(aborted);
    while !sub.done && !sub.closed {
        let read = tokio::select! {
            biased;
            read = ws.fill() => read,
            _ = &mut aborted => break,
        };
        match read {
            Ok(n) if n > 0 => {
                if let Err(e) = read_frames(&mut ws, &mut sub, now_us()).await {
                    eprintln!("  subscriber {i}: {e:#}");
                    sub.closed = true;
                }
            }
            _ => sub.closed = true,
        }
    }
    sub
}

/// Handles every complete frame in the buffer.
async fn read_frames(ws: &mut WsClient, sub: &mut Sub, now: u64) -> anyhow::Result<()> {
    while let Some(frame) = ws.next_frame()? {
        match frame.opcode {
            OP_TEXT if frame.fin => sub.on_text(&ws.buf[frame.payload], now),
            OP_PING => {
                let payload = ws.buf[frame.payload].to_vec();
                ws.send(OP_PONG, &payload).await?;
            }
            OP_PONG => {}
            OP_CLOSE => sub.closed = !sub.done,
            _ => sub.bad_frames += 1,
        }
    }
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// CPU time and time spent runnable but waiting for a CPU, summed over a process's threads
/// (`/proc/PID/task/*/schedstat`, ns).
#[derive(Clone, Copy, Default)]
struct Sched {
    cpu_ns: u64,
    wait_ns: u64,
}

impl Sched {
    fn since(self, start: Sched) -> Sched {
        Sched {
            cpu_ns: self.cpu_ns.saturating_sub(start.cpu_ns),
            wait_ns: self.wait_ns.saturating_sub(start.wait_ns),
        }
    }
}

fn schedstat(pid: u32) -> anyhow::Result<Sched> {
    let mut total = Sched::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        let mut fields = text
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        total.cpu_ns += fields.next().unwrap_or(0);
        total.wait_ns += fields.next().unwrap_or(0);
    }
    Ok(total)
}

/// The server's group-commit flush histogram (`switchyard_store_flush_seconds`): every event is
/// published to subscribers only once a flush (write + fsync) covers it.
#[derive(Clone, Default)]
struct Flushes {
    /// (upper bound in s, cumulative count)
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Flushes {
    fn since(&self, start: &Flushes) -> Flushes {
        Flushes {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| {
                    let before = start.buckets.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                    (le, n.saturating_sub(before))
                })
                .collect(),
            sum: self.sum - start.sum,
            count: self.count.saturating_sub(start.count),
        }
    }

    /// The smallest bucket bound that holds 99 % of the flushes.
    fn p99_bound(&self) -> Option<f64> {
        let needed = (self.count as f64 * 0.99).ceil() as u64;
        self.buckets
            .iter()
            .find(|&&(_, n)| n >= needed)
            .map(|&(le, _)| le)
    }
}

async fn store_flushes(http: &reqwest::Client, address: &str) -> anyhow::Result<Flushes> {
    let text = http
        .get(format!("{address}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut flushes = Flushes::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("switchyard_store_flush_seconds") else {
            continue;
        };
        let Some((name, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if let Some(le) = name
            .strip_prefix("_bucket{le=\"")
            .and_then(|l| l.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            flushes.buckets.push((le, value.parse()?));
        } else if name == "_sum" {
            flushes.sum = value.parse()?;
        } else if name == "_count" {
            flushes.count = value.parse()?;
        }
    }
    Ok(flushes)
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

struct Server {
    child: Mutex<Child>,
    pid: u32,
    address: String,
}

impl Server {
    /// Starts the server; it prints `switchyard listening on http://ADDR` when it is ready.
    fn spawn(mut command: Command) -> anyhow::Result<Server> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("the server exited before printing its address");
            };
            if let Some(addr) = line?.strip_prefix("switchyard listening on ") {
                break addr.to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        println!("  server pid {}, listening on {address}", child.id());
        Ok(Server {
            pid: child.id(),
            child: Mutex::new(child),
            address,
        })
    }

    fn status_field(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no {field} in /proc/{}/status", self.pid))
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_field("VmRSS:")
    }

    /// SIGTERM, then SIGKILL if it is still there after 10 s.
    fn stop(&self) -> anyhow::Result<()> {
        let mut child = self.child.lock().expect("child");
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream: an OpenAI-compatible chat completions stream with emit timestamps
// ---------------------------------------------------------------------------------------------

struct Upstream {
    addr: SocketAddr,
    /// Chat completion requests received so far.
    requests: watch::Receiver<usize>,
    /// Releases the held first chunk.
    go: watch::Sender<bool>,
    /// The emit time of every chunk written, in order.
    emitted: Arc<Mutex<Vec<u64>>>,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Upstream {
    fn start(chunks: usize, rate: u32) -> anyhow::Result<Upstream> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (requests_tx, requests) = watch::channel(0usize);
        let (go, go_rx) = watch::channel(false);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let emitted = Arc::new(Mutex::new(Vec::with_capacity(chunks)));
        let log = emitted.clone();
        let thread = std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                rt.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                    let _ = addr_tx.send(listener.local_addr().expect("local addr"));
                    let accept = async {
                        loop {
                            let Ok((sock, _)) = listener.accept().await else {
                                continue;
                            };
                            let (requests, go, log) =
                                (requests_tx.clone(), go_rx.clone(), log.clone());
                            tokio::spawn(async move {
                                if let Err(e) = serve(sock, requests, go, log, chunks, rate).await {
                                    eprintln!("upstream: {e:#}");
                                }
                            });
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stop_rx => {}
                    }
                });
            })?;
        let addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
        Ok(Upstream {
            addr,
            requests,
            go,
            emitted,
            stop,
            thread,
        })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

async fn serve(
    mut sock: TcpStream,
    requests: watch::Sender<usize>,
    mut go: watch::Receiver<bool>,
    emitted: Arc<Mutex<Vec<u64>>>,
    chunks: usize,
    rate: u32,
) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    // The request: head, then a content-length body (read and ignored).
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            bail!("connection closed before a request");
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body_len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse())
        .transpose()?
        .unwrap_or(0);
    while buf.len() < head_end + body_len {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            bail!("connection closed inside the request body");
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    if !(head.starts_with("post ") && head.contains("/chat/completions")) {
        sock.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    requests.send_modify(|n| *n += 1);
    sock.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
          transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )
    .await?;
    go.wait_for(|go| *go).await?;

    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    for i in 0..chunks {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let at = now_us();
        write_event(
            &mut sock,
            &format!(
                r#"{{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench-1","choices":[{{"index":0,"delta":{{"content":"{at} "}},"finish_reason":null}}]}}"#
            ),
        )
        .await?;
        emitted.lock().expect("emitted").push(at);
    }
    write_event(
        &mut sock,
        r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench-1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    )
    .await?;
    write_event(
        &mut sock,
        &format!(
            r#"{{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench-1","choices":[],"usage":{{"prompt_tokens":2,"completion_tokens":{chunks},"total_tokens":{}}}}}"#,
            chunks + 2
        ),
    )
    .await?;
    write_event(&mut sock, "[DONE]").await?;
    sock.write_all(b"0\r\n\r\n").await?;
    sock.flush().await?;
    Ok(())
}

/// One SSE event as one HTTP chunk, in one write.
async fn write_event(sock: &mut TcpStream, data: &str) -> std::io::Result<()> {
    let event = format!("data: {data}\n\n");
    let framed = format!("{:x}\r\n{event}\r\n", event.len());
    sock.write_all(framed.as_bytes()).await
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of µs samples, in ms.
    fn of(mut us: Vec<u64>) -> Option<Percentiles> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let rank = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
        Some(Percentiles {
            p50: rank(0.50) as f64 / 1e3,
            p99: rank(0.99) as f64 / 1e3,
            max: *us.last().expect("not empty") as f64 / 1e3,
        })
    }

    fn show(p: Option<Percentiles>) -> String {
        match p {
            Some(p) => format!("{:.1} / {:.1} / {:.1} ms", p.p50, p.p99, p.max),
            None => "–".into(),
        }
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_table(reports: &[(Scenario, Report)]) {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Scenario, &Report) -> String| {
        rows.push((name.into(), reports.iter().map(|(s, r)| f(s, r)).collect()));
    };
    row("complete (seq 1.., all chunks, done)", &|_, r| {
        format!(
            "{}/{} ({:.1} %)",
            thousands(r.complete as u64),
            thousands(r.subscribers as u64),
            100.0 * r.complete as f64 / r.subscribers as f64
        )
    });
    row("failed joins / closed early", &|_, r| {
        format!("{} / {}", r.failed_joins, r.closed_early)
    });
    row("seq errors / bad frames / lagged", &|_, r| {
        format!("{} / {} / {}", r.seq_errors, r.bad_frames, r.lagged_notices)
    });
    row("lag p50 / p99 / max", &|_, r| Percentiles::show(r.lag_ms));
    row("emit → receive p50 / p99 / max", &|_, r| {
        Percentiles::show(r.latency_ms)
    });
    row("server RSS before → after join", &|_, r| {
        format!(
            "{:.1} → {:.1} MiB",
            r.rss_before_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0
        )
    });
    row("server memory per subscriber", &|_, r| {
        format!("{:.1} KiB", r.kib_per_subscriber())
    });
    row("chunk deliveries", &|_, r| {
        format!(
            "{} (expected {})",
            thousands(r.deliveries),
            thousands((r.subscribers * r.chunks) as u64)
        )
    });
    row("deliveries / s", &|_, r| {
        thousands(r.deliveries_per_sec.round() as u64)
    });
    let pct = |ns: u64, r: &Report| 100.0 * ns as f64 / 1e9 / r.wall_secs;
    row("streaming: server CPU / waiting for CPU", &|_, r| {
        format!(
            "{:.0} % / {:.0} %",
            pct(r.server_sched.cpu_ns, r),
            pct(r.server_sched.wait_ns, r)
        )
    });
    row("streaming: client CPU / waiting for CPU", &|_, r| {
        format!(
            "{:.0} % / {:.0} %",
            pct(r.client_sched.cpu_ns, r),
            pct(r.client_sched.wait_ns, r)
        )
    });
    let per = |ns: u64, r: &Report| ns as f64 / 1e3 / r.deliveries.max(1) as f64;
    row("CPU per delivery: server / client", &|_, r| {
        format!(
            "{:.1} / {:.1} µs",
            per(r.server_sched.cpu_ns, r),
            per(r.client_sched.cpu_ns, r)
        )
    });
    row("store flushes while streaming: n, mean, p99", &|_, r| {
        let f = &r.flushes;
        if f.count == 0 {
            return "–".into();
        }
        let p99 = match f.p99_bound() {
            Some(b) if b.is_finite() => {
                let ms = format!("{:.3}", b * 1e3);
                format!("≤ {} ms", ms.trim_end_matches('0').trim_end_matches('.'))
            }
            _ => "> 10 s".into(),
        };
        format!("{}, {:.1} ms, {p99}", f.count, 1e3 * f.sum / f.count as f64)
    });
    row("time to connect and join all", &|_, r| {
        format!("{:.1} s", r.join_secs)
    });
    row("target: 100 % complete", &|_, r| {
        verdict(r.complete == r.subscribers)
    });
    row(
        "target: lag p99",
        &|s, r| match (s.lag_target_ms, r.lag_ms) {
            (Some(t), Some(p)) => format!("≤ {t:.0} ms: {}", verdict(p.p99 <= t)),
            (Some(t), None) => format!("≤ {t:.0} ms: FAIL"),
            (None, _) => "–".into(),
        },
    );
    row("target: ≤ 16 KiB per subscriber", &|_, r| {
        verdict(r.kib_per_subscriber() <= MEMORY_TARGET_KIB)
    });

    let name_w = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let col_w: Vec<usize> = (0..reports.len())
        .map(|i| {
            rows.iter()
                .map(|(_, v)| v[i].chars().count())
                .chain([reports[i].0.title().chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    println!();
    let mut header = pad("", name_w);
    for (i, (s, _)) in reports.iter().enumerate() {
        header.push_str(" | ");
        header.push_str(&pad(&s.title(), col_w[i]));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count()));
    for (name, values) in &rows {
        let mut line = pad(name, name_w);
        for (i, v) in values.iter().enumerate() {
            line.push_str(" | ");
            line.push_str(&pad(v, col_w[i]));
        }
        println!("{line}");
    }
}

fn verdict(ok: bool) -> String {
    if ok { "PASS" } else { "FAIL" }.into()
}
