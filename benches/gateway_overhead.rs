//! Gateway overhead: what Switchyard adds on top of the upstream it routes to (issue 5,
//! "Benchmark"), measured the way a user's load costs it (issue 16).
//!
//! In one run, on one machine:
//! - a fake OpenAI-compatible upstream in its own process (this bench's binary re-executed,
//!   raw tokio TCP on 2 threads, HTTP/1.1 keep-alive, TCP_NODELAY, no artificial delays),
//!   answering like a real provider: the 20-word answer as 20 `chat.completion.chunk` events, a
//!   usage event and `[DONE]` in chunked encoding, one write per event (22 writes); a
//!   non-stream upstream request gets a `chat.completion` JSON. The gateway always asks
//!   upstream for a stream, also for a non-stream client, so both of its modes receive the 22
//!   events (`OVERHEAD_NS_CHUNKS=1` makes the `ns` model answer in one event, as this bench
//!   did before issue 16: the least work a non-stream request can be, and 2.5× less CPU);
//! - the release `switchyard` binary as a separate process, one `openai` provider pointing at
//!   the fake, once with its data dir on disk and once on /dev/shm (the same fsync calls, but
//!   tmpfs makes them nearly free: the difference between the two is what durability costs);
//! - the floor: what the stack Switchyard is built on costs with nothing of Switchyard's in
//!   it, each floor a separate process (this bench's binary, re-executed) so it is measured
//!   exactly like the gateway:
//!   - `floor: sled` (`support/sled_floor.rs`): sled 0.34 alone, in this process, making one
//!     request's writes durable at a time (flush + `fdatasync`, like the gateway's commit):
//!     what the store costs with nothing of Switchyard's around it;
//!   - `floor: actix-web canned`: an actix-web server set up like the gateway's (default workers,
//!     TCP_NODELAY) whose `POST /v1/chat/completions` reads the body and answers with the bytes
//!     the gateway sends (the same `chat.completion` JSON; for a stream the same 22 SSE writes,
//!     `[DONE]` included), no upstream: the framework's own cost;
//!   - `floor: actix-web + reqwest pass-through`: the same server forwarding to the fake
//!     upstream with a reqwest client set up like the gateway's provider client, asking for a
//!     stream as the gateway always does; it relays the events of a stream and collects those
//!     of a non-stream answer into one `chat.completion` JSON, nothing persisted: the cost of
//!     the two HTTP hops;
//! - a hand-rolled closed-loop HTTP/1.1 load generator on 2 threads (keep-alive connections,
//!   TCP_NODELAY), 2 s of warm-up and 8 s measured per cell;
//! - a grown store: before anything is measured each gateway answers `OVERHEAD_PREFILL`
//!   (default 20,000) non-stream requests, so it measures a data dir that already holds that
//!   many finished executions, as a user's does.
//!
//! For {non-stream, stream (20 chunks)} × {concurrency 1, 32}: requests direct to the upstream
//! (the baseline), then through the floors and the gateway's `POST /v1/chat/completions`, every
//! answer checked the same way (status, all 20 words, `[DONE]`, no error event). Reported:
//! latency p50/p99, time to the first content chunk p50/p99 (streams), throughput, added
//! latency (server − direct), the server process's CPU time per request (utime + stime from
//! /proc/PID/stat), the gateway's group-commit flushes per request (from its `/metrics`), the
//! bytes it wrote per request (`write_bytes` of /proc/PID/io: pages dirtied, what the disk
//! gets) and its data dir's growth per request (allocated blocks), the data dir's size per
//! execution at the end, the server's peak memory (VmHWM), and the CPU other processes used
//! meanwhile (the box is
//! shared; it can also hold the kernel's loopback TCP work, softirq time charged to no
//! process: up to about half a core seen at these request rates). It also checks, by
//! duplicating the servers' sockets (pidfd_getfd), that the connections they accepted and the
//! ones they opened upstream have TCP_NODELAY set.
//!
//! `cargo bench --bench gateway_overhead`. Environment:
//! - `OVERHEAD_SECONDS` measured seconds per scenario and target (default 8),
//! - `OVERHEAD_WARMUP` warm-up seconds before each (default 2),
//! - `OVERHEAD_PREFILL` finished executions each gateway's store holds before the first
//!   measurement (default 20000; 0 for a fresh store),
//! - `OVERHEAD_NS_CHUNKS` events in the upstream's answer to the `ns` model: 20 (default) or 1,
//! - `OVERHEAD_LOAD_THREADS` load generator threads (default 2),
//! - `OVERHEAD_MAX_REQUESTS` cap per scenario and target (default none),
//! - `OVERHEAD_STORES` which gateways: `disk`, `shm`, and `admission` (on disk, with every
//!   client limit, an upstream quota and prices configured and a balance set, none of them
//!   tight enough to refuse: what admission control costs); default `disk,shm`, empty for no
//!   gateway,
//! - `OVERHEAD_FLOORS` which floors, of `sled`, `canned`, `proxy` (default: all three; they add
//!   about 30 s to the run), empty for none,
//! - `OVERHEAD_SCENARIOS` which of `ns1`, `ns32`, `s1`, `s32` (default: all; for profiling),
//! - `OVERHEAD_PROTOCOLS` which client APIs the gateways are measured on: `chat` (default),
//!   `responses` (OpenAI's Responses API), `messages` (Anthropic's Messages API), comma-separated;
//!   every answer is checked for its protocol's end marker and all 20 words,
//! - `SWITCHYARD_BIN` another gateway binary to measure (default: this build's),
//! - `OVERHEAD_RUST_LOG` the gateway's `RUST_LOG` (default: unset, i.e. the binary's `info`),
//! - `OVERHEAD_LIMITS` extra `[limits]` lines for the gateway's config, e.g. `store_cache_mb = 16`
//!   (default: none, the shipped defaults).

#[path = "support/host.rs"]
mod host;
#[path = "support/sled_floor.rs"]
mod sled_floor;

use bytes::{Buf, BytesMut};
use host::*;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ADMIN_KEY: &str = "bench-admin-key";
/// Words in every answer; `s20` streams one per chunk.
const WORDS: usize = 20;
const CONCURRENCY: [usize; 2] = [1, 32];

fn words() -> Vec<String> {
    (0..WORDS).map(|i| format!("w{i:02} ")).collect()
}

// ---- the fake upstream ----

mod upstream {
    use super::*;

    /// Every answer, precomputed: the bytes of each write.
    struct Answers {
        json: Vec<u8>,
        one_chunk: Vec<Vec<u8>>,
        twenty_chunks: Vec<Vec<u8>>,
    }

    fn chunk(model: &str, delta: &str, finish: &str) -> String {
        format!(
            r#"{{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":"{model}","system_fingerprint":null,"choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
        )
    }

    fn usage() -> &'static str {
        r#""usage":{"prompt_tokens":9,"completion_tokens":20,"total_tokens":29}"#
    }

    fn sse_writes(model: &str, pieces: &[String]) -> Vec<Vec<u8>> {
        let framed = |data: &str| {
            let payload = format!("data: {data}\n\n");
            format!("{:x}\r\n{payload}\r\n", payload.len()).into_bytes()
        };
        let mut writes = vec![b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()];
        for (i, piece) in pieces.iter().enumerate() {
            let delta = if i == 0 {
                format!(r#"{{"role":"assistant","content":"{piece}"}}"#)
            } else {
                format!(r#"{{"content":"{piece}"}}"#)
            };
            let finish = if i + 1 == pieces.len() {
                r#""stop""#
            } else {
                "null"
            };
            writes.push(framed(&chunk(model, &delta, finish)));
        }
        writes.push(framed(&format!(
            r#"{{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":"{model}","system_fingerprint":null,"choices":[],{}}}"#,
            usage()
        )));
        let mut done = framed("[DONE]");
        done.extend_from_slice(b"0\r\n\r\n");
        writes.push(done);
        writes
    }

    impl Answers {
        fn new() -> Answers {
            let words = words();
            let text = words.concat();
            // Like a real provider, `ns` streams its 20 words as 20 events (22 writes with the
            // usage event and `[DONE]`); `OVERHEAD_NS_CHUNKS=1` answers it in one event, as
            // this bench did before (the least work a non-stream request can be).
            let ns_pieces = match env_or("OVERHEAD_NS_CHUNKS", WORDS) {
                1 => vec![text.clone()],
                _ => words.clone(),
            };
            let body = format!(
                r#"{{"id":"chatcmpl-fake","object":"chat.completion","created":1700000000,"model":"ns","system_fingerprint":null,"choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],{}}}"#,
                usage()
            );
            let mut json = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            json.extend_from_slice(body.as_bytes());
            Answers {
                json,
                one_chunk: sse_writes("ns", &ns_pieces),
                twenty_chunks: sse_writes("s20", &words),
            }
        }
    }

    /// The environment variable that makes this bench's binary the fake upstream.
    pub const KIND: &str = "OVERHEAD_UPSTREAM";
    const READY: &str = "upstream listening on http://";

    /// Starts the fake as its own process (this bench's binary again), so that neither its
    /// CPU nor its scheduling shares a process with the load generator; it lives until `Child`
    /// is killed.
    pub fn start() -> (Child, SocketAddr) {
        let mut cmd = Command::new(std::env::current_exe().expect("the bench's binary"));
        cmd.env(KIND, "1").stderr(Stdio::inherit());
        spawn(cmd, READY)
    }

    /// The fake's process: a 2-thread runtime, like a small hyper server.
    pub fn serve() -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            println!("{READY}{}", listener.local_addr()?);
            let answers = Arc::new(Answers::new());
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve_conn(sock, answers.clone()));
            }
        })
    }

    fn content_length(head: &[u8]) -> Option<usize> {
        let head = std::str::from_utf8(head).ok()?;
        head.split("\r\n").find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
    }

    async fn serve_conn(mut sock: TcpStream, answers: Arc<Answers>) {
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
            let len = content_length(&buf[..head_end]).unwrap_or(0);
            while buf.len() < head_end + len {
                match sock.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
            }
            let body = &buf[head_end..head_end + len];
            let stream = find(body, b"\"stream\":true").is_some();
            let twenty = find(body, b"\"model\":\"s20\"").is_some();
            buf.advance(head_end + len);
            let writes: &[Vec<u8>] = match (stream, twenty) {
                (false, _) => std::slice::from_ref(&answers.json),
                (true, false) => &answers.one_chunk,
                (true, true) => &answers.twenty_chunks,
            };
            for w in writes {
                if sock.write_all(w).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---- the load generator ----

#[derive(Clone, Copy)]
struct Sample {
    total: Duration,
    /// Until the first event carrying answer text (streams).
    first: Option<Duration>,
}

struct Conn {
    addr: SocketAddr,
    sock: TcpStream,
    buf: BytesMut,
    body: Vec<u8>,
}

/// The API a request speaks: OpenAI's chat completions, OpenAI's Responses, Anthropic's Messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Chat,
    Responses,
    Messages,
}

impl Protocol {
    fn parse(name: &str) -> Protocol {
        match name {
            "chat" => Protocol::Chat,
            "responses" => Protocol::Responses,
            "messages" => Protocol::Messages,
            other => panic!("OVERHEAD_PROTOCOLS: unknown `{other}` (chat, responses, messages)"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Protocol::Chat => "",
            Protocol::Responses => " · /v1/responses",
            Protocol::Messages => " · /v1/messages",
        }
    }

    /// What precedes a text delta in this protocol's stream.
    fn content_mark(self) -> &'static [u8] {
        match self {
            Protocol::Chat => b"\"content\":\"",
            Protocol::Responses => b"\"delta\":\"",
            Protocol::Messages => b"\"text\":\"",
        }
    }
}

/// A request's mode and protocol.
#[derive(Clone, Copy)]
struct Shape {
    stream: bool,
    protocol: Protocol,
}

const MAX_CONTENT_MARK: usize = 11;

/// Whether `hay` holds a non-empty text delta (the gateway's first chat chunk has role only).
fn has_content(hay: &[u8], protocol: Protocol) -> bool {
    let mark = protocol.content_mark();
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

impl Conn {
    async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        Ok(Conn {
            addr,
            sock,
            buf: BytesMut::with_capacity(64 * 1024),
            body: Vec::with_capacity(64 * 1024),
        })
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.sock.read_buf(&mut self.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    async fn line_end(&mut self) -> io::Result<usize> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Ok(i);
            }
            self.fill().await?;
        }
    }

    /// One request/response exchange on the kept-alive connection.
    async fn call(&mut self, request: &[u8], shape: Shape) -> Result<Sample, String> {
        let stream = shape.stream;
        let started = Instant::now();
        self.sock
            .write_all(request)
            .await
            .map_err(|e| e.to_string())?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await.map_err(|e| e.to_string())?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        self.buf.advance(head_end);
        let status = head.get(9..12).unwrap_or("").to_string();
        let chunked = head.contains("\r\ntransfer-encoding: chunked");
        let length = head.split("\r\n").find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        self.body.clear();
        let mut first = None;
        if chunked {
            loop {
                let end = self.line_end().await.map_err(|e| e.to_string())?;
                let size_text = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                if size == 0 {
                    while self.buf.len() < end + 4 {
                        self.fill().await.map_err(|e| e.to_string())?;
                    }
                    self.buf.advance(end + 4);
                    break;
                }
                while self.buf.len() < end + 2 + size + 2 {
                    self.fill().await.map_err(|e| e.to_string())?;
                }
                let scanned = self.body.len().saturating_sub(MAX_CONTENT_MARK + 1);
                self.body
                    .extend_from_slice(&self.buf[end + 2..end + 2 + size]);
                self.buf.advance(end + 2 + size + 2);
                if stream && first.is_none() && has_content(&self.body[scanned..], shape.protocol) {
                    first = Some(started.elapsed());
                }
            }
        } else {
            let length = length.ok_or("response without length")?;
            while self.buf.len() < length {
                self.fill().await.map_err(|e| e.to_string())?;
            }
            self.body.extend_from_slice(&self.buf[..length]);
            self.buf.advance(length);
        }
        let total = started.elapsed();
        let body = String::from_utf8_lossy(&self.body);
        if status != "200" {
            return Err(format!("status {status}: {body}"));
        }
        let complete = body.contains("w00 ") && body.contains("w19 ");
        let well_formed = match (shape.protocol, stream) {
            (Protocol::Chat, true) => {
                body.ends_with("data: [DONE]\n\n") && !body.contains("\"error\"")
            }
            (Protocol::Chat, false) => body.contains("\"object\":\"chat.completion\""),
            (Protocol::Responses, true) => {
                body.contains("event: response.completed") && !body.contains("event: error")
            }
            (Protocol::Responses, false) => body.contains("\"status\":\"completed\""),
            (Protocol::Messages, true) => {
                body.contains("event: message_stop") && !body.contains("event: error")
            }
            (Protocol::Messages, false) => body.contains("\"stop_reason\":\"end_turn\""),
        };
        if !(complete && well_formed) {
            return Err(format!("unexpected answer: {body}"));
        }
        Ok(Sample { total, first })
    }
}

struct Phase {
    samples: Vec<Sample>,
    wall: Duration,
    errors: usize,
    first_error: Option<String>,
}

/// Runs requests on every connection until `duration` passes or `max` were started.
async fn phase(
    conns: Vec<Conn>,
    request: Arc<Vec<u8>>,
    shape: Shape,
    duration: Duration,
    max: usize,
) -> (Vec<Conn>, Phase) {
    let started = Instant::now();
    let deadline = started + duration;
    let issued = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (request, issued) = (request.clone(), issued.clone());
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(4096);
                let (mut errors, mut first_error) = (0, None);
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                    match conn.call(&request, shape).await {
                        Ok(s) => samples.push(s),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                            match Conn::connect(conn.addr).await {
                                Ok(c) => conn = c,
                                Err(_) => break,
                            }
                        }
                    }
                }
                (conn, samples, errors, first_error)
            })
        })
        .collect();
    let mut out = Phase {
        samples: Vec::new(),
        wall: Duration::ZERO,
        errors: 0,
        first_error: None,
    };
    let mut conns = Vec::new();
    for task in tasks {
        let (conn, samples, errors, first_error) = task.await.expect("load task");
        conns.push(conn);
        out.samples.extend(samples);
        out.errors += errors;
        if out.first_error.is_none() {
            out.first_error = first_error;
        }
    }
    out.wall = started.elapsed();
    (conns, out)
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
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3).unwrap_or(&0) - v.get(4).unwrap_or(&0);
    busy as f64 / clock_ticks()
}

/// Bytes the process caused to be written to storage (`write_bytes` in /proc/PID/io).
fn write_bytes(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Allocated bytes of every file under `dir` (what `du` counts).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The gateway's group-commit flushes so far and the seconds they took
/// (`switchyard_store_flush_seconds_count` and `_sum`), read with a plain blocking HTTP/1.0
/// GET of `/metrics`.
fn flush_totals(addr: SocketAddr) -> Option<(u64, f64)> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(sock, "GET /metrics HTTP/1.0\r\nhost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    sock.read_to_string(&mut text).ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    Some((
        value("switchyard_store_flush_seconds_count ")? as u64,
        value("switchyard_store_flush_seconds_sum ")?,
    ))
}

/// TCP_NODELAY on the gateway's sockets: (set, total) for the connections it accepted on
/// `listen_port` and for those it opened to `upstream_port`. None when the sockets cannot be
/// duplicated (no pidfd_getfd, or not allowed).
fn nodelay_of(pid: u32, listen_port: u16, upstream_port: u16) -> Option<[(usize, usize); 2]> {
    // inode → (local port, remote port) of established IPv4 connections.
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    let conns: std::collections::HashMap<String, (u16, u16)> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"01")).then_some(())?;
            Some((f.get(9)?.to_string(), (port(f[1])?, port(f[2])?)))
        })
        .collect();
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) } as i32;
    if pidfd < 0 {
        return None;
    }
    let mut out = [(0, 0); 2];
    let mut failed = false;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy().to_string();
        let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        else {
            continue;
        };
        let Some(&(local, remote)) = conns.get(inode) else {
            continue;
        };
        let slot = if local == listen_port {
            0
        } else if remote == upstream_port {
            1
        } else {
            continue;
        };
        let Ok(target) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) } as i32;
        if fd < 0 {
            failed = true;
            continue;
        }
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &mut value as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        unsafe { libc::close(fd) };
        if rc == 0 {
            out[slot].1 += 1;
            if value != 0 {
                out[slot].0 += 1;
            }
        }
    }
    unsafe { libc::close(pidfd) };
    (!failed || out.iter().any(|(_, n)| *n > 0)).then_some(out)
}

// ---- the floors: the fixed stack without Switchyard ----

/// Servers made of what Switchyard is built on and nothing of its own, run by re-executing this
/// bench's binary (so their CPU and memory are measured exactly like the gateway's):
/// - `canned`: an actix-web server set up like the gateway's that reads the body and answers
///   with the bytes the gateway would send (the framework's own cost);
/// - `proxy`: the same server forwarding every request to the fake upstream with a reqwest
///   client set up like the gateway's provider client, always asking for a stream as the
///   gateway does: it relays the events of a stream and collects those of a non-stream answer
///   into one JSON (the cost of the two HTTP hops).
mod floor {
    use super::*;
    use actix_web::{http::header, web, App, HttpResponse, HttpServer};
    use bytes::Bytes;
    use futures_util::stream::{self, StreamExt};
    use serde::Deserialize;
    use serde_json::value::RawValue;
    use std::borrow::Cow;
    use std::convert::Infallible;

    /// Set in a re-executed bench binary: which floor to serve.
    pub const KIND: &str = "OVERHEAD_FLOOR";
    /// The fake upstream's address, for the `proxy` floor.
    pub const UPSTREAM: &str = "OVERHEAD_FLOOR_UPSTREAM";
    /// What a floor prints once it listens.
    pub const READY: &str = "floor listening on http://";

    /// Ids as long as the gateway's (24 characters after the prefix).
    const EXECUTION: &str = "exec_0FLOOR000000000000000000";
    const ID: &str = "chatcmpl-0FLOOR000000000000000000";
    const CREATED: u64 = 1_800_000_000;
    const USAGE: &str = r#"{"completion_tokens":20,"prompt_tokens":9,"total_tokens":29}"#;

    /// A `chat.completion` with the gateway's fields, in its order; `content` is a JSON string.
    fn completion(model: &str, content: &str, finish: &str, usage: &str) -> String {
        format!(
            r#"{{"choices":[{{"finish_reason":"{finish}","index":0,"logprobs":null,"message":{{"content":{content},"refusal":null,"role":"assistant"}}}}],"created":{CREATED},"id":"{ID}","model":"{model}","object":"chat.completion","system_fingerprint":null,"usage":{usage},"x_switchyard":{{"attempts":1,"execution_id":"{EXECUTION}"}}}}"#
        )
    }

    /// What the gateway answers for the bench's two requests.
    struct Canned {
        json: Bytes,
        /// One item per write the gateway makes: the role chunk, 20 content chunks, then the
        /// finish chunk, the usage chunk and `[DONE]` together.
        events: Arc<[Bytes]>,
    }

    impl Canned {
        fn new() -> Canned {
            let words = words();
            let text = serde_json::to_string(&words.concat()).expect("a string");
            let json = completion("ns", &text, "stop", USAGE);
            let head = format!(
                r#""created":{CREATED},"id":"{ID}","model":"s20","object":"chat.completion.chunk","system_fingerprint":null"#
            );
            let mut events = vec![
                format!(
                    r#"data: {{"choices":[{{"delta":{{"content":"","role":"assistant"}},"finish_reason":null,"index":0,"logprobs":null}}],{head}}}"#
                ) + "\n\n",
            ];
            for word in &words {
                events.push(format!(
                    r#"data: {{"id":"{ID}","object":"chat.completion.chunk","created":{CREATED},"model":"s20","system_fingerprint":null,"choices":[{{"index":0,"delta":{{"content":"{word}"}},"logprobs":null,"finish_reason":null}}]}}"#
                ) + "\n\n");
            }
            events.push(format!(
                "data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"stop\",\"index\":0,\"logprobs\":null}}],{head}}}\n\ndata: {{\"choices\":[],{head},\"usage\":{USAGE}}}\n\ndata: [DONE]\n\n"
            ));
            Canned {
                json: Bytes::from(json),
                events: events.into_iter().map(Bytes::from).collect(),
            }
        }
    }

    fn ok() -> actix_web::HttpResponseBuilder {
        let mut res = HttpResponse::Ok();
        res.insert_header(("x-switchyard-execution-id", EXECUTION));
        res
    }

    fn event_stream(
        res: &mut actix_web::HttpResponseBuilder,
    ) -> &mut actix_web::HttpResponseBuilder {
        res.content_type("text/event-stream")
            .insert_header((header::CACHE_CONTROL, "no-cache"))
    }

    async fn canned(body: web::Bytes, canned: web::Data<Canned>) -> HttpResponse {
        if find(&body, b"\"stream\":true").is_none() {
            return ok()
                .content_type("application/json")
                .body(canned.json.clone());
        }
        // One write per event, as the gateway's (they leave as the upstream's arrive): ready all
        // at once, actix-web would coalesce them into one. The body's end goes with the last.
        let events = canned.events.clone();
        let body = stream::unfold(0, move |i| {
            let events = events.clone();
            async move {
                let event = events.get(i)?.clone();
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                Some((Ok::<_, Infallible>(event), i + 1))
            }
        });
        event_stream(&mut ok()).streaming(body)
    }

    /// The fake upstream's endpoint and a client set up like the gateway's provider client.
    struct Upstream {
        url: String,
        http: reqwest::Client,
    }

    #[derive(Deserialize)]
    struct Incoming<'a> {
        #[serde(borrow)]
        model: &'a RawValue,
        #[serde(borrow)]
        messages: &'a RawValue,
        #[serde(default)]
        stream: bool,
    }

    /// The upstream SSE body cut into whole events (`data: …\n\n`).
    fn events(resp: reqwest::Response) -> impl futures_util::Stream<Item = reqwest::Result<Bytes>> {
        let state = (resp.bytes_stream(), BytesMut::new());
        stream::unfold(state, |(mut body, mut buf)| async move {
            loop {
                if let Some(i) = find(&buf, b"\n\n") {
                    let event = buf.split_to(i + 2).freeze();
                    return Some((Ok(event), (body, buf)));
                }
                match body.next().await? {
                    Ok(bytes) => buf.extend_from_slice(&bytes),
                    Err(e) => return Some((Err(e), (body, buf))),
                }
            }
        })
    }

    #[derive(Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow)]
        model: Cow<'a, str>,
        #[serde(borrow)]
        choices: Vec<Choice<'a>>,
        #[serde(borrow, default)]
        usage: Option<&'a RawValue>,
    }

    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(borrow)]
        delta: Delta<'a>,
        #[serde(borrow, default)]
        finish_reason: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    struct Delta<'a> {
        #[serde(borrow, default)]
        content: Option<Cow<'a, str>>,
    }

    fn bad_gateway(message: impl std::fmt::Display) -> HttpResponse {
        HttpResponse::BadGateway()
            .json(serde_json::json!({"error": {"message": message.to_string()}}))
    }

    async fn proxy(body: web::Bytes, upstream: web::Data<Upstream>) -> HttpResponse {
        let incoming: Incoming = match serde_json::from_slice(&body) {
            Ok(i) => i,
            Err(e) => return HttpResponse::BadRequest().body(e.to_string()),
        };
        let request = format!(
            r#"{{"messages":{},"model":{},"stream":true,"stream_options":{{"include_usage":true}}}}"#,
            incoming.messages, incoming.model
        );
        let resp = match upstream
            .http
            .post(&upstream.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => resp,
            Ok(resp) => return bad_gateway(format!("upstream status {}", resp.status())),
            Err(e) => return bad_gateway(e),
        };
        if incoming.stream {
            return event_stream(&mut ok()).streaming(events(resp));
        }
        let (mut text, mut model, mut finish, mut usage) =
            (String::new(), String::new(), String::from("stop"), None);
        let mut events = std::pin::pin!(events(resp));
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => return bad_gateway(e),
            };
            let Some(data) = event.strip_prefix(b"data: ") else {
                continue;
            };
            let data = &data[..data.len() - 2];
            if data == b"[DONE]" {
                break;
            }
            let chunk: Chunk = match serde_json::from_slice(data) {
                Ok(c) => c,
                Err(e) => return bad_gateway(e),
            };
            if model.is_empty() {
                model = chunk.model.into_owned();
            }
            for choice in chunk.choices {
                text.push_str(choice.delta.content.as_deref().unwrap_or(""));
                if let Some(f) = choice.finish_reason {
                    finish = f.into_owned();
                }
            }
            if let Some(u) = chunk.usage {
                usage = Some(u.get().to_string());
            }
        }
        let content = serde_json::to_string(&text).expect("a string");
        let usage = usage.as_deref().unwrap_or("null");
        ok().content_type("application/json")
            .body(completion(&model, &content, &finish, usage))
    }

    /// What a floor's handler needs.
    #[derive(Clone)]
    enum Floor {
        Canned(web::Data<Canned>),
        Proxy(web::Data<Upstream>),
    }

    /// Serves the floor named by `kind` until killed (in the re-executed bench binary).
    pub fn serve(kind: &str) -> io::Result<()> {
        // Gone with the bench, whatever ends it.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        actix_web::rt::System::new().block_on(async move {
            let floor = match kind {
                "canned" => Floor::Canned(web::Data::new(Canned::new())),
                "proxy" => {
                    let addr = std::env::var(UPSTREAM).expect("the upstream's address");
                    // As the gateway's provider client (src/providers/mod.rs).
                    let http = reqwest::Client::builder()
                        .tcp_nodelay(true)
                        .connect_timeout(Duration::from_secs(5))
                        .pool_idle_timeout(Duration::from_secs(90))
                        .build()
                        .expect("reqwest client");
                    Floor::Proxy(web::Data::new(Upstream {
                        url: format!("http://{addr}/v1/chat/completions"),
                        http,
                    }))
                }
                other => panic!("{KIND}: unknown floor `{other}` (canned, proxy)"),
            };
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            // As the gateway's (src/startup.rs): default workers, TCP_NODELAY.
            let server = HttpServer::new(move || {
                let app = App::new();
                match &floor {
                    Floor::Canned(answers) => app
                        .app_data(answers.clone())
                        .route("/v1/chat/completions", web::post().to(canned)),
                    Floor::Proxy(upstream) => app
                        .app_data(upstream.clone())
                        .route("/v1/chat/completions", web::post().to(proxy)),
                }
            })
            .tcp_nodelay(true)
            .listen(listener)?
            .shutdown_timeout(1)
            .run();
            println!("{READY}{addr}");
            server.await
        })
    }
}

// ---- the measured server processes ----

/// A server process under measurement: the gateway, or a floor.
struct Server {
    label: &'static str,
    child: Child,
    addr: SocketAddr,
    /// The gateway's data dir and config (floors have none).
    dir: Option<tempfile::TempDir>,
    /// Whether it is the gateway (it has `/metrics` with its flushes).
    gateway: bool,
    requests: usize,
}

impl Server {
    fn gateway(
        label: &'static str,
        bin: &Path,
        parent: &Path,
        upstream: SocketAddr,
        admission: bool,
    ) -> Server {
        let dir = tempfile::tempdir_in(parent).expect("gateway temp dir");
        let config = dir.path().join("switchyard.toml");
        let mut limits = std::env::var("OVERHEAD_LIMITS").unwrap_or_default();
        // Every check on, none refusing: the cost of admission, not of refusals.
        let route = if admission {
            limits.push_str(
                "\nip_requests_per_minute = 1000000\nkey_requests_per_minute = 1000000\nproject_requests_per_minute = 1000000\nkey_tokens_per_minute = 1000000000\nkey_concurrent_executions = 100000\n",
            );
            ", input_per_mtok = 0.15, output_per_mtok = 0.6, requests_per_minute = 100000000, tokens_per_day = 1000000000000"
        } else {
            ""
        };
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:0"
data_dir = "unused"

[limits]
{limits}

[[providers]]
name = "fake"
kind = "openai"
base_url = "http://{upstream}/v1"

[[models]]
slug = "ns"
routes = [{{ provider = "fake", model = "ns"{route} }}]

[[models]]
slug = "s20"
routes = [{{ provider = "fake", model = "s20"{route} }}]
"#
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("SWITCHYARD_ADMIN_KEY", ADMIN_KEY)
            .env_remove("RUST_LOG")
            .stderr(log);
        if let Ok(filter) = std::env::var("OVERHEAD_RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        let (child, addr) = spawn(cmd, "switchyard listening on http://");
        if admission {
            // $1e9: every request holds against it and settles.
            top_up(addr, 1_000_000_000 * 1_000_000);
        }
        Server {
            label,
            child,
            addr,
            dir: Some(dir),
            gateway: true,
            requests: 0,
        }
    }

    /// This bench's own binary again, serving the floor `kind` (see `floor`).
    fn floor(label: &'static str, kind: &str, upstream: SocketAddr) -> Server {
        let mut cmd = Command::new(std::env::current_exe().expect("the bench's binary"));
        cmd.env(floor::KIND, kind)
            .env(floor::UPSTREAM, upstream.to_string())
            .stderr(Stdio::inherit());
        let (child, addr) = spawn(cmd, floor::READY);
        Server {
            label,
            child,
            addr,
            dir: None,
            gateway: false,
            requests: 0,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway's data dir.
    fn data(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("data"))
    }
}

/// Grows the gateway's store before anything is measured, as a user's has: `n` non-stream
/// requests (each a finished execution) at concurrency 32, untimed.
async fn prefill(gw: &mut Server, n: usize) {
    if n == 0 {
        return;
    }
    let started = Instant::now();
    let shape = Shape {
        stream: false,
        protocol: Protocol::Chat,
    };
    let mut conns = Vec::new();
    for _ in 0..32 {
        conns.push(Conn::connect(gw.addr).await.expect("connect"));
    }
    let request = Arc::new(request_bytes(gw.addr, shape, Some(ADMIN_KEY)));
    let (_, run) = phase(conns, request, shape, Duration::from_secs(3600), n).await;
    if let Some(e) = run.first_error {
        panic!("{}: prefill failed: {e}", gw.label);
    }
    gw.requests += run.samples.len() + run.errors;
    let bytes = gw.data().map_or(0, |d| dir_bytes(&d));
    println!(
        "{}: prefilled with {} executions in {:.1} s; data dir {:.1} MB ({:.1} KB per execution)",
        gw.label,
        run.samples.len(),
        started.elapsed().as_secs_f64(),
        bytes as f64 / 1e6,
        bytes as f64 / 1e3 / run.samples.len().max(1) as f64,
    );
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- scenarios and figures ----

fn request_bytes(addr: SocketAddr, shape: Shape, key: Option<&str>) -> Vec<u8> {
    let (path, body) = match (shape.protocol, shape.stream) {
        (Protocol::Chat, true) => (
            "/v1/chat/completions",
            r#"{"model":"s20","messages":[{"role":"user","content":"Say twenty words."}],"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (Protocol::Chat, false) => (
            "/v1/chat/completions",
            r#"{"model":"ns","messages":[{"role":"user","content":"Say twenty words."}]}"#,
        ),
        (Protocol::Responses, true) => (
            "/v1/responses",
            r#"{"model":"s20","input":"Say twenty words.","stream":true}"#,
        ),
        (Protocol::Responses, false) => (
            "/v1/responses",
            r#"{"model":"ns","input":"Say twenty words."}"#,
        ),
        (Protocol::Messages, true) => (
            "/v1/messages",
            r#"{"model":"s20","max_tokens":100,"messages":[{"role":"user","content":"Say twenty words."}],"stream":true}"#,
        ),
        (Protocol::Messages, false) => (
            "/v1/messages",
            r#"{"model":"ns","max_tokens":100,"messages":[{"role":"user","content":"Say twenty words."}]}"#,
        ),
    };
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct Figures {
    target: String,
    /// Warm-up requests (not in the figures, but executions all the same).
    warm: usize,
    n: usize,
    errors: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
    first50: Option<Duration>,
    first99: Option<Duration>,
    /// The server process's (gateway's or floor's) CPU time per request.
    cpu_per_req: Option<Duration>,
    /// Group-commit flushes (sled flush + fdatasync) per request, from the gateway's metrics.
    flushes_per_req: Option<f64>,
    /// The mean time of those flushes (stage write, sled flush and `fdatasync`).
    flush_mean: Option<Duration>,
    /// Bytes the server process had written to storage per request (`write_bytes` of
    /// /proc/PID/io: what reaches the block layer, 0 on tmpfs).
    written_per_req: Option<f64>,
    /// Growth of the gateway's data dir (allocated blocks) per request.
    grown_per_req: Option<f64>,
    /// The server process's VmHWM so far (it only grows: for the gateway, with the data, up to
    /// the store cache).
    peak_mb: Option<f64>,
    others_cores: f64,
}

#[derive(Clone, Copy)]
struct Settings {
    seconds: Duration,
    warmup: Duration,
    max: usize,
}

/// A server process to account for: its pid, whether it reports flushes (the gateway), and
/// its data dir (the gateway's), whose growth is counted.
#[derive(Clone)]
struct Process {
    pid: u32,
    gateway: bool,
    data: Option<PathBuf>,
}

/// Warm-up, then a measured phase against `addr`; `server` is whose CPU to count.
async fn measure(
    target: String,
    addr: SocketAddr,
    request: Vec<u8>,
    shape: Shape,
    concurrency: usize,
    settings: Settings,
    server: Option<Process>,
) -> (Figures, Vec<Conn>) {
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        conns.push(Conn::connect(addr).await.expect("connect"));
    }
    let request = Arc::new(request);
    let (conns, warm) = phase(conns, request.clone(), shape, settings.warmup, usize::MAX).await;
    if let Some(e) = warm.first_error {
        panic!("{target}: warm-up failed: {e}");
    }
    let self_pid = std::process::id().to_string();
    let gw_pid = server.as_ref().map(|p| p.pid.to_string());
    let gw_cpu = || gw_pid.as_deref().map_or(0.0, cpu_seconds);
    let gw_written = || gw_pid.as_deref().and_then(write_bytes);
    let data = server.as_ref().and_then(|p| p.data.clone());
    let grown = || data.as_deref().map(dir_bytes);
    let is_gateway = server.as_ref().is_some_and(|p| p.gateway);
    let flushes = || is_gateway.then(|| flush_totals(addr)).flatten();
    let (flushes0, written0, size0) = (flushes(), gw_written(), grown());
    let (busy0, self0, gw0) = (machine_busy_seconds(), cpu_seconds(&self_pid), gw_cpu());
    let (conns, run) = phase(conns, request, shape, settings.seconds, settings.max).await;
    // Work the server does right after answering (the gateway actor's last steps) is its own.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (busy1, self1, gw1) = (machine_busy_seconds(), cpu_seconds(&self_pid), gw_cpu());
    let (flushes1, written1, size1) = (flushes(), gw_written(), grown());
    let elapsed = run.wall + Duration::from_millis(20);
    if let Some(e) = &run.first_error {
        eprintln!("{target}: {} errors, first: {e}", run.errors);
    }
    let n = run.samples.len();
    let mut totals: Vec<Duration> = run.samples.iter().map(|s| s.total).collect();
    totals.sort_unstable();
    let mut firsts: Vec<Duration> = run.samples.iter().filter_map(|s| s.first).collect();
    firsts.sort_unstable();
    let others = (busy1 - busy0) - (self1 - self0) - (gw1 - gw0);
    let per_req = |a: Option<u64>, b: Option<u64>| {
        a.zip(b)
            .filter(|_| n > 0)
            .map(|(a, b)| (b as f64 - a as f64) / n as f64)
    };
    let figures = Figures {
        target,
        warm: warm.samples.len() + warm.errors,
        n,
        errors: run.errors,
        rps: n as f64 / run.wall.as_secs_f64(),
        p50: percentile(&totals, 0.50),
        p99: percentile(&totals, 0.99),
        first50: shape.stream.then(|| percentile(&firsts, 0.50)),
        first99: shape.stream.then(|| percentile(&firsts, 0.99)),
        cpu_per_req: server
            .as_ref()
            .filter(|_| n > 0)
            .map(|_| Duration::from_secs_f64((gw1 - gw0) / n as f64)),
        flushes_per_req: per_req(flushes0.map(|f| f.0), flushes1.map(|f| f.0)),
        flush_mean: flushes0
            .zip(flushes1)
            .filter(|(a, b)| b.0 > a.0)
            .map(|(a, b)| Duration::from_secs_f64((b.1 - a.1) / (b.0 - a.0) as f64)),
        written_per_req: per_req(written0, written1),
        grown_per_req: per_req(size0, size1),
        peak_mb: server
            .as_ref()
            .map(|p| vm_kb(p.pid, "VmHWM") as f64 / 1024.0),
        others_cores: (others / elapsed.as_secs_f64()).max(0.0),
    };
    (figures, conns)
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Bytes as KB (per request).
fn kb(bytes: f64) -> String {
    format!("{:.1} KB", bytes / 1e3)
}

fn signed_us(gw: Duration, direct: Duration) -> String {
    let delta = gw.as_secs_f64() - direct.as_secs_f64();
    let sign = if delta < 0.0 { "−" } else { "+" };
    format!("{sign}{}", us(Duration::from_secs_f64(delta.abs())))
}

/// Sets the `default` project's balance (the admin key's project) with one plain HTTP call.
fn top_up(addr: SocketAddr, micros: u64) {
    use std::io::{Read, Write};
    let body = format!("{{\"amount_micros\": {micros}}}");
    let mut sock = std::net::TcpStream::connect(addr).expect("connect for the top-up");
    write!(
        sock,
        "POST /v1/projects/default/balance HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send the top-up");
    let mut answer = String::new();
    sock.read_to_string(&mut answer)
        .expect("read the top-up answer");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "top-up refused: {answer}"
    );
}

fn main() {
    if let Ok(kind) = std::env::var(floor::KIND) {
        floor::serve(&kind).expect("floor server");
        return;
    }
    if std::env::var_os(upstream::KIND).is_some() {
        upstream::serve().expect("fake upstream");
        return;
    }
    let settings = Settings {
        seconds: Duration::from_secs_f64(env_or("OVERHEAD_SECONDS", 8.0)),
        warmup: Duration::from_secs_f64(env_or("OVERHEAD_WARMUP", 2.0)),
        max: env_or("OVERHEAD_MAX_REQUESTS", usize::MAX),
    };
    let stores = std::env::var("OVERHEAD_STORES").unwrap_or_else(|_| "disk,shm".into());
    let scenarios =
        std::env::var("OVERHEAD_SCENARIOS").unwrap_or_else(|_| "ns1,ns32,s1,s32".into());
    let wanted = |stream: bool, c: usize| {
        let name = format!("{}{c}", if stream { "s" } else { "ns" });
        scenarios.split(',').any(|s| s.trim() == name)
    };
    let bin = gateway_binary();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# gateway overhead ({cores} cores; load average before: {})",
        loadavg()
    );
    println!("gateway binary: {}", bin.display());

    let floors = std::env::var("OVERHEAD_FLOORS").unwrap_or_else(|_| "sled,canned,proxy".into());
    let protocols: Vec<Protocol> = std::env::var("OVERHEAD_PROTOCOLS")
        .unwrap_or_else(|_| "chat".into())
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Protocol::parse)
        .collect();

    let (mut upstream_process, upstream) = upstream::start();
    println!("fake upstream: pid {} on {upstream}", upstream_process.id());
    // The floors first, then the gateways: each scenario's rows in that order.
    let mut servers = Vec::new();
    for kind in floors.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        if kind == "sled" {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            std::fs::create_dir_all(&dir).expect("bench tmp dir");
            for per_commit in [1, 3] {
                let f = sled_floor::measure(&dir, settings.seconds, per_commit);
                println!(
                    "floor: sled 0.34 alone, {per_commit} request(s)' writes (24 each, 3.7 KB) per flush + fdatasync, one commit at a time, on disk: {} requests in {} commits, commit p50 {} µs, p99 {} µs; per request {} µs CPU and {:.1} KB written",
                    f.requests,
                    f.commits,
                    f.p50.as_micros(),
                    f.p99.as_micros(),
                    f.cpu_per_request.as_micros(),
                    f.written_per_request / 1024.0
                );
            }
            continue;
        }
        let label = match kind {
            "canned" => "floor: actix-web canned",
            "proxy" => "floor: actix-web + reqwest pass-through",
            other => panic!("OVERHEAD_FLOORS: unknown floor `{other}` (sled, canned, proxy)"),
        };
        let server = Server::floor(label, kind, upstream);
        println!("{label}: pid {} on {}", server.pid(), server.addr);
        servers.push(server);
    }
    for store in stores.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let disk = || PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let (label, parent, admission): (&'static str, PathBuf, bool) = match store {
            "disk" => ("gateway (disk)", disk(), false),
            "shm" => ("gateway (/dev/shm)", PathBuf::from("/dev/shm"), false),
            "admission" => ("gateway (disk, limits + quota + balance)", disk(), true),
            other => panic!("OVERHEAD_STORES: unknown store `{other}` (disk, shm, admission)"),
        };
        std::fs::create_dir_all(&parent).expect("data dir parent");
        let gw = Server::gateway(label, &bin, &parent, upstream, admission);
        println!("{label}: pid {} on {}", gw.pid(), gw.addr);
        servers.push(gw);
    }
    // Two load threads, like a closed-loop generator with one thread per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("OVERHEAD_LOAD_THREADS", 2))
        .enable_all()
        .build()
        .expect("load generator runtime");

    let mut rows: Vec<(String, usize, Vec<Figures>)> = Vec::new();
    let mut nodelay_lines = Vec::new();
    let prefilled = env_or("OVERHEAD_PREFILL", 20_000usize);
    rt.block_on(async {
        for gw in servers.iter_mut().filter(|s| s.gateway) {
            prefill(gw, prefilled).await;
        }
        for stream in [false, true] {
            for concurrency in CONCURRENCY {
                if !wanted(stream, concurrency) {
                    continue;
                }
                let mode = if stream {
                    "stream (20 chunks)"
                } else {
                    "non-stream"
                };
                let mut figures = Vec::new();
                let chat = Shape {
                    stream,
                    protocol: Protocol::Chat,
                };
                let (direct, conns) = measure(
                    "direct".into(),
                    upstream,
                    request_bytes(upstream, chat, None),
                    chat,
                    concurrency,
                    settings,
                    None,
                )
                .await;
                drop(conns);
                figures.push(direct);
                for gw in &mut servers {
                    // The floors speak chat completions only.
                    let protocols: &[Protocol] = if gw.gateway { &protocols } else { &[Protocol::Chat] };
                    for &protocol in protocols {
                        let shape = Shape { stream, protocol };
                        let process = Process {
                            pid: gw.pid(),
                            gateway: gw.gateway,
                            data: gw.data(),
                        };
                        let (f, conns) = measure(
                            format!("{}{}", gw.label, protocol.label()),
                            gw.addr,
                            request_bytes(gw.addr, shape, Some(ADMIN_KEY)),
                            shape,
                            concurrency,
                            settings,
                            Some(process),
                        )
                        .await;
                        gw.requests += f.warm + f.n + f.errors;
                        if concurrency > 1 && protocol == Protocol::Chat {
                            let line = match nodelay_of(gw.pid(), gw.addr.port(), upstream.port()) {
                                Some([(a, at), (u, ut)]) => format!(
                                    "{} ({mode}, c={concurrency}): TCP_NODELAY on {a}/{at} accepted client sockets, {u}/{ut} upstream sockets",
                                    gw.label
                                ),
                                None => format!("{}: TCP_NODELAY could not be read (pidfd_getfd)", gw.label),
                            };
                            nodelay_lines.push(line);
                        }
                        drop(conns);
                        figures.push(f);
                    }
                }
                rows.push((mode.to_string(), concurrency, figures));
            }
        }
    });

    println!();
    println!("| mode | c | target | requests | req/s | p50 | p99 | first chunk p50 | first chunk p99 | added p50 | added p99 | server CPU/req | flushes/req | flush mean | written/req | data dir growth/req | server peak memory | other load (cores) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (mode, concurrency, figures) in &rows {
        let direct = &figures[0];
        for f in figures {
            let is_direct = std::ptr::eq(f, direct);
            let added = |g: Duration, d: Duration| {
                if is_direct {
                    "—".to_string()
                } else {
                    signed_us(g, d)
                }
            };
            let opt = |d: Option<Duration>| d.map_or("—".to_string(), us);
            let errors = if f.errors > 0 {
                format!(" ({} errors)", f.errors)
            } else {
                String::new()
            };
            let rps = if is_direct {
                format!("{:.0}", f.rps)
            } else {
                format!("{:.0} ({:.0}%)", f.rps, 100.0 * f.rps / direct.rps)
            };
            println!(
                "| {mode} | {concurrency} | {} | {}{errors} | {rps} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                f.target,
                f.n,
                us(f.p50),
                us(f.p99),
                opt(f.first50),
                opt(f.first99),
                added(f.p50, direct.p50),
                added(f.p99, direct.p99),
                opt(f.cpu_per_req),
                f.flushes_per_req.map_or("—".to_string(), |n| format!("{n:.2}")),
                opt(f.flush_mean),
                f.written_per_req.map_or("—".to_string(), kb),
                f.grown_per_req.map_or("—".to_string(), kb),
                f.peak_mb.map_or("—".to_string(), |m| format!("{m:.1} MB")),
                f.others_cores,
            );
        }
    }
    println!();
    for gw in &servers {
        println!(
            "{}: peak memory (VmHWM) {:.1} MB, RSS at the end {:.1} MB, after {} requests",
            gw.label,
            vm_kb(gw.pid(), "VmHWM") as f64 / 1024.0,
            vm_kb(gw.pid(), "VmRSS") as f64 / 1024.0,
            gw.requests,
        );
        if let Some(data) = gw.data() {
            let bytes = dir_bytes(&data);
            println!(
                "{}: data dir {:.1} MB for {} executions: {:.1} KB per execution",
                gw.label,
                bytes as f64 / 1e6,
                gw.requests,
                bytes as f64 / 1e3 / gw.requests.max(1) as f64,
            );
        }
    }
    let _ = upstream_process.kill();
    let _ = upstream_process.wait();
    for line in nodelay_lines {
        println!("{line}");
    }
    println!("load average after: {}", loadavg());
}
