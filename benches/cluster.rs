//! Cluster mode (NATS JetStream) measured the way a user's load looks, next to one node on
//! sled, all on one machine.
//!
//! Set-ups, each started fresh (its own data dirs, its own `nats-server -js`):
//! - `1 node · sled`: one gateway, no `[cluster]`;
//! - `1 node · JetStream`: one gateway with `[cluster]` on its own nats-server;
//! - `3 nodes · JetStream`: three gateways sharing one nats-server.
//!
//! The upstream is the fake of benches/gateway_overhead.rs, in its own process (this bench's
//! binary re-executed, raw tokio TCP on 2 threads, keep-alive, TCP_NODELAY, no delays): the
//! 20-word answer as 20 `chat.completion.chunk` events, a usage event and `[DONE]` (22 writes).
//! The load generator is a closed loop of keep-alive HTTP/1.1 connections on 2 threads
//! (TCP_NODELAY); worker `i` talks to node `i mod n`, so the load is spread round-robin.
//!
//! Workloads (per set-up, warm-up then a measured phase):
//! - `async c=32`: `POST /v1/executions` (`{"model", "messages", "idempotency_key"}` with a
//!   fresh key each time, 202 expected), then that execution followed over SSE
//!   (`GET /v1/executions/{id}/events`) on the *next* node (`i+1 mod n`: another node when there
//!   are three, so a follower reads the mirrored log) until `done`, which must say `completed`
//!   and hold all 20 words. A follower that asks before the node knows the execution (404) asks
//!   again 2 ms later (counted). Reported: submit latency (until the 202), time from the submit
//!   to the first `chunk` event at the follower, time from the submit to `done` at the
//!   follower, and completed executions per second.
//! - `stream c=32` and `stream c=1`: `POST /v1/chat/completions` with `"stream": true`: time to
//!   the first content chunk, total latency, throughput; `direct` rows are the same request
//!   sent straight to the upstream (the baseline for the added latency).
//!
//! For every cell: CPU time per completed request of the gateways (all nodes together) and of
//! nats-server (utime + stime from /proc/PID/stat), the other load on the machine meanwhile (in
//! cores: the upstream, the load generator, the kernel's loopback work), and peak memory
//! (VmHWM) of the largest gateway and of nats-server.
//!
//! Takeover gap (`3 nodes · JetStream`, per lease in `CLUSTER_LEASES`): a slow upstream (the
//! tests' FakeOpenAi, 200 words 20 ms apart, continuing from an assistant prefix), an execution
//! submitted on node A and followed over SSE on node B; after `CLUSTER_KILL_AFTER` chunks have
//! reached B, A is SIGKILLed. Reported: kill → `failover` event at B, kill → first
//! continuation chunk at B; each run checks that the text B saw is exactly the 200 words, the
//! seq numbers are gapless from 1, there is exactly one `failover`, and `done` says
//! `completed`. A is restarted (same node id and data dir) before the next run.
//!
//! At the end, the WARN/ERROR lines of every node's log are counted and the distinct messages
//! printed (fenced appends, failed appends, takeovers).
//!
//! `cargo bench --bench cluster`. Needs `nats-server` (2.9 works). Environment:
//! - `CLUSTER_SECONDS` measured seconds per cell (default 8),
//! - `CLUSTER_WARMUP` warm-up seconds before each (default 2),
//! - `CLUSTER_CONCURRENCY` concurrency of the async and the c=32 stream cells (default 32),
//! - `CLUSTER_SETUPS` which of `sled`, `js1`, `js3` (default all three),
//! - `CLUSTER_WORKLOADS` which of `async`, `stream`, `stream1` (default all three),
//! - `CLUSTER_LEASES` lease_ms values for the takeover gap (default `1000,5000`; empty: none),
//! - `CLUSTER_TAKEOVER_RUNS` runs per lease (default 5),
//! - `CLUSTER_KILL_AFTER` chunks at B before A is killed (default 40),
//! - `CLUSTER_LOAD_THREADS` load generator threads (default 2),
//! - `SWITCHYARD_BIN` another gateway binary (default: this build's),
//! - `CLUSTER_RUST_LOG` the gateways' `RUST_LOG` (default unset: the binary's `info`),
//! - `CLUSTER_KEEP_LOGS` a directory to copy every node's log into (default: none).

#[path = "../tests/api/fake_http.rs"]
mod fake_http;
#[path = "../tests/api/fake_openai.rs"]
mod fake_openai;
#[path = "../tests/api/nats_server.rs"]
mod nats_server;
use nats_server::Nats;

#[path = "support/host.rs"]
mod host;

use bytes::{Buf, BytesMut};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use host::*;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ADMIN_KEY: &str = "bench-admin-key";
const WORDS: usize = 20;
const SLOW_WORDS: usize = 200;
const SLOW_DELAY: Duration = Duration::from_millis(20);

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

// ---- the fake upstream (as in gateway_overhead.rs: its own process, 22 writes) ----

mod upstream {
    use super::*;

    pub const KIND: &str = "CLUSTER_UPSTREAM";
    const READY: &str = "upstream listening on http://";

    fn writes() -> Vec<Vec<u8>> {
        let chunk = |delta: &str, finish: &str| {
            format!(
                r#"{{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":"s20","system_fingerprint":null,"choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
            )
        };
        let framed = |data: &str| {
            let payload = format!("data: {data}\n\n");
            format!("{:x}\r\n{payload}\r\n", payload.len()).into_bytes()
        };
        let mut out = vec![b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()];
        for i in 0..WORDS {
            let piece = format!("w{i:02} ");
            let delta = if i == 0 {
                format!(r#"{{"role":"assistant","content":"{piece}"}}"#)
            } else {
                format!(r#"{{"content":"{piece}"}}"#)
            };
            let finish = if i + 1 == WORDS { r#""stop""# } else { "null" };
            out.push(framed(&chunk(&delta, finish)));
        }
        out.push(framed(
            r#"{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":"s20","system_fingerprint":null,"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":20,"total_tokens":29}}"#,
        ));
        let mut done = framed("[DONE]");
        done.extend_from_slice(b"0\r\n\r\n");
        out.push(done);
        out
    }

    pub fn start() -> (Child, SocketAddr) {
        let mut cmd = Command::new(std::env::current_exe().expect("the bench's binary"));
        cmd.env(KIND, "1").stderr(Stdio::inherit());
        spawn(cmd, READY)
    }

    fn content_length(head: &[u8]) -> usize {
        let head = String::from_utf8_lossy(head);
        head.split("\r\n")
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0)
    }

    pub fn serve() -> io::Result<()> {
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            println!("{READY}{}", listener.local_addr()?);
            let writes = Arc::new(writes());
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let writes = writes.clone();
                tokio::spawn(async move {
                    let mut buf = BytesMut::with_capacity(16 * 1024);
                    loop {
                        let head_end = loop {
                            if let Some(i) = find(&buf, b"\r\n\r\n") {
                                break i + 4;
                            }
                            match sock.read_buf(&mut buf).await {
                                Ok(n) if n > 0 => {}
                                _ => return,
                            }
                        };
                        let len = content_length(&buf[..head_end]);
                        while buf.len() < head_end + len {
                            match sock.read_buf(&mut buf).await {
                                Ok(n) if n > 0 => {}
                                _ => return,
                            }
                        }
                        buf.advance(head_end + len);
                        for w in writes.iter() {
                            if sock.write_all(w).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        })
    }
}

// ---- processes ----

/// One gateway process; its config, data dir and log live in `dir`.
struct Node {
    name: String,
    child: Option<Child>,
    addr: SocketAddr,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
}

impl Node {
    fn start(
        parent: &Path,
        name: &str,
        upstream: SocketAddr,
        slow: Option<&str>,
        cluster: Option<(&str, u64)>,
    ) -> Node {
        let config = parent.join(format!("{name}.toml"));
        let mut toml = format!(
            r#"listen = "127.0.0.1:0"
data_dir = "unused"

[[providers]]
name = "fast"
kind = "openai"
base_url = "http://{upstream}/v1"

[[models]]
slug = "s20"
routes = [{{ provider = "fast", model = "s20" }}]
"#
        );
        if let Some(url) = slow {
            toml.push_str(&format!(
                r#"
[[providers]]
name = "slow"
kind = "openai"
base_url = "{url}"

[[models]]
slug = "slow"
routes = [{{ provider = "slow", model = "slow" }}]
"#
            ));
        }
        if let Some((nats, lease_ms)) = cluster {
            toml.push_str(&format!(
                "\n[cluster]\nnats_url = \"{nats}\"\nnode_id = \"{name}\"\nlease_ms = {lease_ms}\n"
            ));
        }
        std::fs::write(&config, toml).expect("write config");
        let mut node = Node {
            name: name.to_string(),
            child: None,
            addr: "127.0.0.1:1".parse().unwrap(),
            config,
            data: parent.join(format!("{name}-data")),
            log: parent.join(format!("{name}.log")),
        };
        node.run();
        node
    }

    /// Starts (or restarts) the process and waits for `/readyz`.
    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(gateway_binary());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("SWITCHYARD_ADMIN_KEY", ADMIN_KEY)
            .env_remove("RUST_LOG")
            .stderr(log);
        if let Ok(filter) = std::env::var("CLUSTER_RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        let (child, addr) = spawn(cmd, "switchyard listening on http://");
        self.child = Some(child);
        self.addr = addr;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if http_status(addr, "/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node {} never became ready", self.name);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status of a plain blocking GET.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(sock, "GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    sock.read_to_string(&mut text).ok()?;
    text.get(9..12)?.parse().ok()
}

/// A set-up under measurement: its nodes and its nats-server.
struct Setup {
    label: &'static str,
    nodes: Vec<Node>,
    nats: Option<Nats>,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn start(
        label: &'static str,
        nodes: usize,
        cluster: bool,
        lease_ms: u64,
        upstream: SocketAddr,
        slow: Option<&str>,
    ) -> Setup {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("set-up temp dir");
        let nats = cluster.then(Nats::launch);
        let url = nats.as_ref().map(Nats::url);
        let nodes = ["a", "b", "c"][..nodes]
            .iter()
            .map(|name| {
                Node::start(
                    dir.path(),
                    name,
                    upstream,
                    slow,
                    url.as_deref().map(|u| (u, lease_ms)),
                )
            })
            .collect();
        Setup {
            label,
            nodes,
            nats,
            _dir: dir,
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// The WARN and ERROR lines of every node's log: (count, distinct messages with counts).
    fn log_report(&self) -> Vec<String> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            if let Ok(keep) = std::env::var("CLUSTER_KEEP_LOGS") {
                let name =
                    format!("{}-{}.log", self.label, node.name).replace([' ', '·', '(', ')'], "");
                let _ = std::fs::create_dir_all(&keep);
                let _ = std::fs::write(Path::new(&keep).join(name), &text);
            }
            let mut distinct: Vec<(String, usize)> = Vec::new();
            let (mut count, mut takeovers) = (0, 0);
            for line in text.lines() {
                let plain = strip_ansi(line);
                if plain.contains("taking over execution") {
                    takeovers += 1;
                }
                let Some(level) = ["WARN", "ERROR"].into_iter().find(|l| plain.contains(l)) else {
                    continue;
                };
                count += 1;
                // The message without the timestamp and the varying fields.
                let at = plain.find(level).unwrap_or(0);
                let message: String = plain[at..]
                    .split_whitespace()
                    .filter(|w| !w.contains("exec_") && !w.contains('='))
                    .collect::<Vec<_>>()
                    .join(" ");
                let message: String = message.chars().take(160).collect();
                match distinct.iter_mut().find(|(m, _)| *m == message) {
                    Some((_, n)) => *n += 1,
                    None => distinct.push((message, 1)),
                }
            }
            out.push(format!(
                "{} node {}: {} log lines, {count} WARN/ERROR, {takeovers} takeovers",
                self.label,
                node.name,
                text.lines().count()
            ));
            for (message, n) in distinct.iter().take(12) {
                out.push(format!("    {n}× {message}"));
            }
        }
        out
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---- the load generator ----

struct Conn {
    addr: SocketAddr,
    sock: TcpStream,
    buf: BytesMut,
    /// The connection cannot be reused (the answer ended with the connection).
    closed: bool,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
    /// When `mark` was first seen in the body (from the call's start).
    first: Option<Duration>,
}

/// Whether `hay` holds a non-empty `"content":"…"` (the gateway's first chat chunk has role
/// only).
fn has_content(hay: &[u8]) -> bool {
    let mark = b"\"content\":\"";
    let mut from = 0;
    while let Some(i) = find(&hay[from..], mark) {
        let at = from + i + mark.len();
        match hay.get(at) {
            Some(b'"') => from = at,
            Some(_) => return true,
            None => return false,
        }
    }
    false
}

#[derive(Clone, Copy)]
enum Mark {
    None,
    /// A non-empty chat content delta.
    Content,
    /// An `event: chunk` of the events SSE.
    ChunkEvent,
}

impl Mark {
    fn seen(self, hay: &[u8]) -> bool {
        match self {
            Mark::None => false,
            Mark::Content => has_content(hay),
            Mark::ChunkEvent => find(hay, b"event: chunk\n").is_some(),
        }
    }
}

impl Conn {
    async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        Ok(Conn {
            addr,
            sock,
            buf: BytesMut::with_capacity(64 * 1024),
            closed: false,
        })
    }

    async fn fill(&mut self) -> Result<usize, String> {
        self.sock
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| e.to_string())
    }

    async fn fill_some(&mut self) -> Result<(), String> {
        match self.fill().await? {
            0 => Err("connection closed".into()),
            _ => Ok(()),
        }
    }

    async fn line_end(&mut self) -> Result<usize, String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Ok(i);
            }
            self.fill_some().await?;
        }
    }

    /// One exchange on the kept-alive connection (reconnecting first if the last one closed).
    async fn call(&mut self, request: &[u8], mark: Mark) -> Result<Reply, String> {
        if self.closed {
            *self = Conn::connect(self.addr).await.map_err(|e| e.to_string())?;
        }
        let started = Instant::now();
        self.sock
            .write_all(request)
            .await
            .map_err(|e| e.to_string())?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill_some().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        self.buf.advance(head_end);
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let chunked = head.contains("\r\ntransfer-encoding: chunked");
        let length = head.split("\r\n").find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        let mut body = Vec::new();
        let mut first = None;
        if chunked {
            loop {
                let end = self.line_end().await?;
                let size_text = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                if size == 0 {
                    while self.buf.len() < end + 4 {
                        self.fill_some().await?;
                    }
                    self.buf.advance(end + 4);
                    break;
                }
                while self.buf.len() < end + 2 + size + 2 {
                    self.fill_some().await?;
                }
                let scanned = body.len().saturating_sub(16);
                body.extend_from_slice(&self.buf[end + 2..end + 2 + size]);
                self.buf.advance(end + 2 + size + 2);
                if first.is_none() && mark.seen(&body[scanned..]) {
                    first = Some(started.elapsed());
                }
            }
        } else if let Some(length) = length {
            while self.buf.len() < length {
                self.fill_some().await?;
            }
            body.extend_from_slice(&self.buf[..length]);
            self.buf.advance(length);
        } else {
            // Until the connection ends.
            while self.fill().await? > 0 {}
            body.extend_from_slice(&self.buf);
            self.buf.clear();
            self.closed = true;
        }
        if head.contains("\r\nconnection: close") {
            self.closed = true;
        }
        Ok(Reply {
            status,
            body,
            first,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// `POST /v1/executions`, followed over SSE on the next node until `done`.
    Async,
    /// `POST /v1/chat/completions` with `"stream": true`.
    Stream,
}

#[derive(Clone, Copy, Default)]
struct Sample {
    /// Until the 202 (async).
    submit: Option<Duration>,
    /// Until the first content (stream) or the first `chunk` event at the follower (async).
    first: Option<Duration>,
    /// Until the end of the stream (stream) or `done` at the follower (async).
    total: Duration,
}

#[derive(Default)]
struct Outcome {
    samples: Vec<Sample>,
    errors: usize,
    first_error: Option<String>,
    /// Follows answered 404 (the node did not know the execution yet) and asked again.
    not_yet: usize,
}

fn post(addr: SocketAddr, path: &str, body: &str, key: bool) -> Vec<u8> {
    let auth = if key {
        format!("authorization: Bearer {ADMIN_KEY}\r\n")
    } else {
        String::new()
    };
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const STREAM_BODY: &str =
    r#"{"model":"s20","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

fn check_words(body: &str) -> bool {
    (0..WORDS).all(|i| body.contains(&format!("w{i:02} ")))
}

/// One worker: the connection(s) it keeps and what it does each round.
struct Worker {
    submit: Conn,
    follow: Option<Conn>,
    /// For the direct baseline: no key.
    direct: bool,
    tag: String,
    n: usize,
}

impl Worker {
    async fn round(&mut self, workload: Workload, out: &mut Outcome) -> Result<Sample, String> {
        let started = Instant::now();
        match workload {
            Workload::Stream => {
                let request = post(
                    self.submit.addr,
                    "/v1/chat/completions",
                    STREAM_BODY,
                    !self.direct,
                );
                let reply = self.submit.call(&request, Mark::Content).await?;
                let total = started.elapsed();
                let body = String::from_utf8_lossy(&reply.body);
                if reply.status != 200
                    || !body.ends_with("data: [DONE]\n\n")
                    || body.contains("\"error\"")
                    || !check_words(&body)
                {
                    return Err(format!("status {}: {body}", reply.status));
                }
                Ok(Sample {
                    submit: None,
                    first: reply.first,
                    total,
                })
            }
            Workload::Async => {
                self.n += 1;
                let body = format!(
                    r#"{{"model":"s20","messages":[{{"role":"user","content":"hi"}}],"idempotency_key":"{}-{}"}}"#,
                    self.tag, self.n
                );
                let request = post(self.submit.addr, "/v1/executions", &body, true);
                let reply = self.submit.call(&request, Mark::None).await?;
                let submit = started.elapsed();
                let text = String::from_utf8_lossy(&reply.body);
                if reply.status != 202 {
                    return Err(format!("submit: status {}: {text}", reply.status));
                }
                let id = text
                    .split_once(r#""id":""#)
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(id, _)| id.to_string())
                    .ok_or_else(|| format!("submit: no id in {text}"))?;
                let follow = self.follow.as_mut().expect("a follow connection");
                let get = format!(
                    "GET /v1/executions/{id}/events HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {ADMIN_KEY}\r\naccept: text/event-stream\r\n\r\n",
                    follow.addr
                );
                let mut tries = 0;
                let reply = loop {
                    let since = Instant::now();
                    let reply = follow.call(get.as_bytes(), Mark::ChunkEvent).await?;
                    if reply.status == 404 && tries < 500 {
                        tries += 1;
                        out.not_yet += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    // The first chunk's time from the submit, not from this GET.
                    let first = reply.first.map(|f| since - started + f);
                    break Reply { first, ..reply };
                };
                let total = started.elapsed();
                let events = String::from_utf8_lossy(&reply.body);
                if reply.status != 200
                    || !events.contains("event: done\n")
                    || !events.contains(r#""status":"completed""#)
                    || !check_words(&events)
                {
                    return Err(format!("follow {id}: status {}: {events}", reply.status));
                }
                Ok(Sample {
                    submit: Some(submit),
                    first: reply.first,
                    total,
                })
            }
        }
    }
}

/// Runs rounds on every worker until `duration` passes.
async fn phase(
    workers: Vec<Worker>,
    workload: Workload,
    duration: Duration,
) -> (Vec<Worker>, Outcome, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            tokio::spawn(async move {
                let mut out = Outcome::default();
                while Instant::now() < deadline {
                    match worker.round(workload, &mut out).await {
                        Ok(s) => out.samples.push(s),
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(e);
                            // Fresh connections after an error.
                            worker.submit.closed = true;
                            if let Some(f) = worker.follow.as_mut() {
                                f.closed = true;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (worker, out)
            })
        })
        .collect();
    let mut all = Outcome::default();
    let mut workers = Vec::new();
    for task in tasks {
        let (worker, out) = task.await.expect("load task");
        workers.push(worker);
        all.samples.extend(out.samples);
        all.errors += out.errors;
        all.not_yet += out.not_yet;
        if all.first_error.is_none() {
            all.first_error = out.first_error;
        }
    }
    (workers, all, started.elapsed())
}

// ---- /proc ----

/// Busy seconds of the whole machine, all cores (from /proc/stat).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3).unwrap_or(&0) - v.get(4).unwrap_or(&0);
    busy as f64 / clock_ticks()
}

// ---- a cell ----

struct Figures {
    setup: String,
    workload: String,
    concurrency: usize,
    n: usize,
    errors: usize,
    not_yet: usize,
    rate: f64,
    submit: Option<(Duration, Duration)>,
    first: Option<(Duration, Duration)>,
    total: (Duration, Duration),
    gateway_cpu: Option<Duration>,
    nats_cpu: Option<Duration>,
    others_cores: f64,
    gateway_peak: Option<f64>,
    nats_peak: Option<f64>,
}

#[derive(Clone, Copy)]
struct Settings {
    seconds: Duration,
    warmup: Duration,
}

fn p50_p99(mut xs: Vec<Duration>) -> Option<(Duration, Duration)> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_unstable();
    Some((percentile(&xs, 0.5), percentile(&xs, 0.99)))
}

/// Warm-up, then a measured phase: worker `i` on node `i mod n` (following on `i+1 mod n`).
#[allow(clippy::too_many_arguments)]
async fn measure(
    setup: &str,
    addrs: &[SocketAddr],
    gateways: &[u32],
    nats: Option<u32>,
    workload: Workload,
    concurrency: usize,
    settings: Settings,
    direct: bool,
) -> Figures {
    let mut workers = Vec::new();
    let run = std::process::id();
    for i in 0..concurrency {
        let addr = addrs[i % addrs.len()];
        let follow = match workload {
            Workload::Async => Some(
                Conn::connect(addrs[(i + 1) % addrs.len()])
                    .await
                    .expect("connect"),
            ),
            Workload::Stream => None,
        };
        workers.push(Worker {
            submit: Conn::connect(addr).await.expect("connect"),
            follow,
            direct,
            tag: format!("bench-{run}-{}-{i}", setup.replace(' ', "")),
            n: 0,
        });
    }
    let (workers, warm, _) = phase(workers, workload, settings.warmup).await;
    if let Some(e) = warm.first_error {
        eprintln!("{setup}: warm-up: {} errors, first: {e}", warm.errors);
    }
    let self_pid = std::process::id();
    let gw_cpu = || gateways.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    let nats_cpu = || nats.map_or(0.0, cpu_seconds);
    let (busy0, self0, gw0, nats0) = (
        machine_busy_seconds(),
        cpu_seconds(self_pid),
        gw_cpu(),
        nats_cpu(),
    );
    let (workers, out, wall) = phase(workers, workload, settings.seconds).await;
    // Work the servers do right after answering is theirs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (busy1, self1, gw1, nats1) = (
        machine_busy_seconds(),
        cpu_seconds(self_pid),
        gw_cpu(),
        nats_cpu(),
    );
    drop(workers);
    let elapsed = wall + Duration::from_millis(50);
    if let Some(e) = &out.first_error {
        eprintln!("{setup}: {} errors, first: {e}", out.errors);
    }
    let n = out.samples.len();
    let per = |s: f64| (n > 0).then(|| Duration::from_secs_f64(s / n as f64));
    let others = (busy1 - busy0) - (self1 - self0) - (gw1 - gw0) - (nats1 - nats0);
    let label = match (workload, direct) {
        (Workload::Async, _) => "async: submit + follow to done",
        (Workload::Stream, false) => "stream: /v1/chat/completions",
        (Workload::Stream, true) => "stream: direct to upstream",
    };
    Figures {
        setup: setup.to_string(),
        workload: label.to_string(),
        concurrency,
        n,
        errors: out.errors,
        not_yet: out.not_yet,
        rate: n as f64 / wall.as_secs_f64(),
        submit: p50_p99(out.samples.iter().filter_map(|s| s.submit).collect()),
        first: p50_p99(out.samples.iter().filter_map(|s| s.first).collect()),
        total: p50_p99(out.samples.iter().map(|s| s.total).collect()).unwrap_or_default(),
        gateway_cpu: (!gateways.is_empty()).then(|| per(gw1 - gw0)).flatten(),
        nats_cpu: nats.and_then(|_| per(nats1 - nats0)),
        others_cores: (others / elapsed.as_secs_f64()).max(0.0),
        gateway_peak: gateways
            .iter()
            .map(|&p| vm_kb(p, "VmHWM") as f64 / 1024.0)
            .reduce(f64::max),
        nats_peak: nats.map(|p| vm_kb(p, "VmHWM") as f64 / 1024.0),
    }
}

fn ms(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn pair(p: Option<(Duration, Duration)>) -> String {
    p.map_or("—".into(), |(a, b)| format!("{} / {}", ms(a), ms(b)))
}

fn cpu(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.0} µs", d.as_secs_f64() * 1e6))
}

// ---- the takeover gap ----

struct Gap {
    to_failover: Duration,
    to_continuation: Duration,
    killed_at_chunk: usize,
    events: usize,
}

/// One run: submit on A (node 0), follow on B (node 1), SIGKILL A after `kill_after` chunks
/// reached B, then check what B saw.
async fn takeover_run(
    setup: &mut Setup,
    http: &reqwest::Client,
    run: usize,
    kill_after: usize,
    expected: &str,
) -> Result<Gap, String> {
    let (a, b) = (setup.nodes[0].addr, setup.nodes[1].addr);
    let body = serde_json::json!({
        "model": "slow",
        "messages": [{"role": "user", "content": "hi"}],
        "idempotency_key": format!("takeover-{}-{run}", std::process::id()),
    });
    let res = http
        .post(format!("http://{a}/v1/executions"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status() != 202 {
        return Err(format!("submit: {}", res.status()));
    }
    let sub: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
    let id = sub["id"].as_str().ok_or("no id")?.to_string();
    let mut tries = 0;
    let res = loop {
        let res = http
            .get(format!("http://{b}/v1/executions/{id}/events"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if res.status() == 404 && tries < 500 {
            tries += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        break res;
    };
    if res.status() != 200 {
        return Err(format!("follow: {}", res.status()));
    }
    let mut events = res.bytes_stream().eventsource();
    let mut seen: Vec<(u64, String, serde_json::Value, Instant)> = Vec::new();
    let mut killed: Option<Instant> = None;
    let mut killed_at_chunk = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .map_err(|_| format!("no event for 30 s ({} seen)", seen.len()))?;
        let Some(event) = next else { break };
        let event = event.map_err(|e| e.to_string())?;
        let at = Instant::now();
        let id: u64 = event.id.parse().map_err(|_| "event without id")?;
        let data: serde_json::Value =
            serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
        let done = event.event == "done";
        seen.push((id, event.event, data, at));
        let chunks = seen.iter().filter(|e| e.1 == "chunk").count();
        if killed.is_none() && chunks >= kill_after {
            setup.nodes[0].kill();
            killed = Some(Instant::now());
            killed_at_chunk = chunks;
        }
        if done {
            break;
        }
    }
    let killed = killed.ok_or("the stream ended before the kill")?;
    // Checks: gapless from 1, the exact text, one failover, completed.
    for (i, e) in seen.iter().enumerate() {
        if e.0 != i as u64 + 1 {
            return Err(format!(
                "seq {} at position {} (a gap or a repeat)",
                e.0,
                i + 1
            ));
        }
    }
    let text: String = seen
        .iter()
        .filter(|e| e.1 == "chunk")
        .filter_map(|e| e.2["delta"].as_str())
        .collect();
    if text != expected {
        return Err(format!(
            "text differs: {} chars seen, {} expected",
            text.len(),
            expected.len()
        ));
    }
    let failovers: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, e)| e.1 == "failover")
        .map(|(i, _)| i)
        .collect();
    if failovers.len() != 1 {
        return Err(format!("{} failover events", failovers.len()));
    }
    let last = seen.last().ok_or("no events")?;
    if last.1 != "done" || last.2["status"] != "completed" {
        return Err(format!("ended with {} {}", last.1, last.2));
    }
    let failover = &seen[failovers[0]];
    let continuation = seen[failovers[0]..]
        .iter()
        .find(|e| e.1 == "chunk")
        .ok_or("no chunk after the failover")?;
    Ok(Gap {
        to_failover: failover.3.saturating_duration_since(killed),
        to_continuation: continuation.3.saturating_duration_since(killed),
        killed_at_chunk,
        events: seen.len(),
    })
}

fn main() {
    if std::env::var_os(upstream::KIND).is_some() {
        upstream::serve().expect("fake upstream");
        return;
    }
    let settings = Settings {
        seconds: Duration::from_secs_f64(env_or("CLUSTER_SECONDS", 8.0)),
        warmup: Duration::from_secs_f64(env_or("CLUSTER_WARMUP", 2.0)),
    };
    let concurrency = env_or("CLUSTER_CONCURRENCY", 32usize);
    let setups = env_list("CLUSTER_SETUPS", "sled,js1,js3");
    let workloads = env_list("CLUSTER_WORKLOADS", "async,stream,stream1");
    let leases: Vec<u64> = env_list("CLUSTER_LEASES", "1000,5000")
        .iter()
        .map(|l| l.parse().expect("CLUSTER_LEASES: numbers"))
        .collect();
    let runs = env_or("CLUSTER_TAKEOVER_RUNS", 5usize);
    let kill_after = env_or("CLUSTER_KILL_AFTER", 40usize);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# cluster mode ({cores} cores; load average before: {})",
        loadavg()
    );
    println!("gateway binary: {}", gateway_binary().display());
    let nats_version = Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("nats-server not found: {e}"));
    println!("{nats_version}");

    let (mut upstream_process, upstream) = upstream::start();
    println!("fake upstream: pid {} on {upstream}", upstream_process.id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("CLUSTER_LOAD_THREADS", 2))
        .enable_all()
        .build()
        .expect("load generator runtime");

    let mut rows: Vec<Figures> = Vec::new();
    let mut log_lines = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let (workload, c) = match w.as_str() {
            "async" => continue,
            "stream" => (Workload::Stream, concurrency),
            "stream1" => (Workload::Stream, 1),
            other => panic!("CLUSTER_WORKLOADS: unknown `{other}` (async, stream, stream1)"),
        };
        if workloads[..i].iter().any(|x| x == w) {
            continue;
        }
        let f = rt.block_on(measure(
            "direct",
            &[upstream],
            &[],
            None,
            workload,
            c,
            settings,
            true,
        ));
        rows.push(f);
    }
    for name in &setups {
        let (label, nodes, cluster) = match name.as_str() {
            "sled" => ("1 node · sled", 1, false),
            "js1" => ("1 node · JetStream", 1, true),
            "js3" => ("3 nodes · JetStream", 3, true),
            other => panic!("CLUSTER_SETUPS: unknown `{other}` (sled, js1, js3)"),
        };
        let setup = Setup::start(label, nodes, cluster, 5_000, upstream, None);
        println!(
            "{label}: gateways {:?}, nats-server {:?}",
            setup
                .nodes
                .iter()
                .map(|n| format!("pid {} on {}", n.pid(), n.addr))
                .collect::<Vec<_>>(),
            setup.nats.as_ref().map(Nats::pid)
        );
        let pids: Vec<u32> = setup.nodes.iter().map(Node::pid).collect();
        for w in &workloads {
            let (workload, c) = match w.as_str() {
                "async" => (Workload::Async, concurrency),
                "stream" => (Workload::Stream, concurrency),
                _ => (Workload::Stream, 1),
            };
            let f = rt.block_on(measure(
                label,
                &setup.addrs(),
                &pids,
                setup.nats.as_ref().map(Nats::pid),
                workload,
                c,
                settings,
                false,
            ));
            rows.push(f);
        }
        log_lines.extend(setup.log_report());
    }

    println!();
    println!("| set-up | workload | c | completed | errors | per s | submit p50 / p99 | first chunk p50 / p99 | total p50 / p99 | gateways CPU/req | nats-server CPU/req | other load (cores) | peak RSS gateway / nats |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in &rows {
        let errors = if f.not_yet > 0 {
            format!(
                "{} ({} follows asked again after a 404)",
                f.errors, f.not_yet
            )
        } else {
            f.errors.to_string()
        };
        let peak = match (f.gateway_peak, f.nats_peak) {
            (None, _) => "—".to_string(),
            (Some(g), None) => format!("{g:.0} MB"),
            (Some(g), Some(n)) => format!("{g:.0} MB / {n:.0} MB"),
        };
        println!(
            "| {} | {} | {} | {} | {errors} | {:.0} | {} | {} | {} | {} | {} | {:.2} | {peak} |",
            f.setup,
            f.workload,
            f.concurrency,
            f.n,
            f.rate,
            pair(f.submit),
            pair(f.first),
            pair(Some(f.total)),
            cpu(f.gateway_cpu),
            cpu(f.nats_cpu),
            f.others_cores,
        );
    }
    let direct1 = rows
        .iter()
        .find(|f| f.setup == "direct" && f.concurrency == 1);
    if let Some(d) = direct1 {
        println!();
        for f in rows
            .iter()
            .filter(|f| f.setup != "direct" && f.concurrency == 1)
        {
            let added = |g: Option<(Duration, Duration)>, d: Option<(Duration, Duration)>| {
                g.zip(d)
                    .map_or("—".to_string(), |((g50, g99), (d50, d99))| {
                        format!(
                            "p50 +{} / p99 +{}",
                            ms(g50.saturating_sub(d50)),
                            ms(g99.saturating_sub(d99))
                        )
                    })
            };
            println!(
                "added latency at c=1, {}: first chunk {}, total {}",
                f.setup,
                added(f.first, d.first),
                added(Some(f.total), Some(d.total)),
            );
        }
    }

    // The takeover gap.
    if !leases.is_empty() {
        let fake_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fake provider runtime");
        let fake = fake_rt.block_on(async {
            fake_openai::FakeOpenAi::start()
                .await
                .with_words(SLOW_WORDS)
                .with_chunk_delay(SLOW_DELAY)
        });
        let expected = fake.full_text();
        let http = reqwest::Client::new();
        println!();
        println!(
            "## takeover gap: 3 nodes · JetStream, {SLOW_WORDS} words {} ms apart, submit on A, follow on B over SSE, SIGKILL A after {kill_after} chunks at B",
            SLOW_DELAY.as_millis()
        );
        let mut summary = Vec::new();
        for &lease in &leases {
            let mut setup = Setup::start(
                "3 nodes · JetStream (takeover)",
                3,
                true,
                lease,
                upstream,
                Some(&fake.base_url()),
            );
            let mut gaps = Vec::new();
            for run in 0..runs {
                match rt.block_on(takeover_run(&mut setup, &http, run, kill_after, &expected)) {
                    Ok(gap) => {
                        println!(
                            "lease_ms {lease}, run {run}: killed at chunk {}; kill → failover event {}, kill → first continuation chunk {}; {} events, gapless, text exact, 1 failover",
                            gap.killed_at_chunk,
                            ms(gap.to_failover),
                            ms(gap.to_continuation),
                            gap.events
                        );
                        gaps.push(gap);
                    }
                    Err(e) => println!("lease_ms {lease}, run {run}: FAILED: {e}"),
                }
                // A comes back (same node id, same data dir) for the next run.
                if setup.nodes[0].child.is_none() {
                    setup.nodes[0].run();
                }
            }
            let mut to_cont: Vec<Duration> = gaps.iter().map(|g| g.to_continuation).collect();
            to_cont.sort_unstable();
            let mut to_fail: Vec<Duration> = gaps.iter().map(|g| g.to_failover).collect();
            to_fail.sort_unstable();
            if !to_cont.is_empty() {
                summary.push(format!(
                    "| {lease} | {}/{runs} | {} | {} | {} / {} / {} |",
                    gaps.len(),
                    ms(percentile(&to_fail, 0.5)),
                    ms(percentile(&to_cont, 0.5)),
                    ms(to_cont[0]),
                    ms(percentile(&to_cont, 0.5)),
                    ms(*to_cont.last().unwrap()),
                ));
            }
            log_lines.extend(setup.log_report());
        }
        println!();
        println!("| lease_ms | runs passed | kill → failover p50 | kill → first continuation chunk p50 | min / p50 / max |");
        println!("|---|---|---|---|---|");
        for line in summary {
            println!("{line}");
        }
    }

    println!();
    println!("## node logs");
    for line in log_lines {
        println!("{line}");
    }
    let _ = upstream_process.kill();
    let _ = upstream_process.wait();
    println!("load average after: {}", loadavg());
}
