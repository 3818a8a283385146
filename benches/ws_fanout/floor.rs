//! The floor server for `ws_fanout --floor`: the leanest fan-out server for the bench's client
//! and upstream, to tell what this machine can do at all from what Switchyard costs.
//!
//! It is this bench binary re-executed with [`ENV_UPSTREAM`] set (so it is a process of its
//! own, measured like the real server), and it speaks just enough of Switchyard's API for the
//! bench: `POST /v1/executions` answers `202` with a `websocket_channel` and starts the one
//! streaming request to the upstream, `GET /metrics` answers empty, and `GET /v1/ws` is a
//! WebSocket upgrade written by hand (the accept key from tungstenite's `derive_accept_key`,
//! the RFC's SHA-1 and base64). A connection's first frame must be the client's
//! `{"action":"join","channel":…,"after":n}`; it gets `joined`, then the channel's events after
//! `n` as the same JSON text frames Switchyard sends (`channel`, `event`, `seq`, `data`): status
//! `pending` (seq 1), status `processing` (seq 2, when the upstream's answer starts), one
//! `chunk` per SSE `data:` line with content, then `done`. Nothing after the join is read.
//!
//! Fan-out: the upstream task encodes each event's unmasked server frame once (a `Bytes`
//! shared by every socket) and passes it to the shards, each a current-thread tokio runtime on
//! a thread of its own owning a share of the sockets. A shard writes the frame to each of its
//! sockets with one non-blocking `send` (`try_write`): no task, wake-up or allocation per
//! subscriber. Frames that queued while a shard was still busy with an earlier one are joined
//! (once per shard) and leave in one write per socket, as a session's queued frames do in
//! Switchyard; a shard that keeps up writes each frame on its own. Only a socket whose send
//! buffer is full gets a backlog (its own `Vec`, flushed when the socket is writable again,
//! later frames queued behind it); so does every socket as it joins, whose replayed history
//! waits until the shard's reactor has seen it writable. Joins travel in the same queue as
//! frames, so a shard replays its history to a new socket at the point it joined and the
//! socket misses and repeats nothing.
//!
//! One shard per core by default, each a current-thread runtime: the quickest of the three
//! set-ups tried at 10,000 subscribers on the 2-core box with nothing else running (p99 lag, the
//! median of the runs): a current-thread runtime per core 92 ms (8 runs: 84–105 ms, one 230),
//! a single shard 104 ms (7 runs: 92–123 ms; its send loop takes ~70 ms of one core per chunk
//! while the client lags on the other), one multi-thread runtime with a worker per core 137 ms
//! (3 runs: 96–156 ms; presumably because both shard tasks, woken by the one upstream task,
//! often run one after the other on one worker). The front (accept, handshakes, the upstream
//! request) is a current-thread runtime on the main thread, idle while streaming.
//!
//! There is no store, no fsync and no routing: what it costs is the kernel's send path (on
//! loopback, also the client's TCP receive and wake-up) and a loop.

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use serde::Deserialize;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Set (to the upstream's address) in the floor server's environment: `main` branches on it.
pub const ENV_UPSTREAM: &str = "WS_FANOUT_FLOOR_UPSTREAM";
/// Shards (threads with a current-thread runtime each, or tasks in `multi`); default: one
/// per core.
pub const ENV_SHARDS: &str = "WS_FANOUT_FLOOR_SHARDS";
/// `per-core` (default: a current-thread runtime per shard thread) or `multi` (the shards and
/// the front as tasks on one multi-thread runtime with a worker per shard).
pub const ENV_RUNTIME: &str = "WS_FANOUT_FLOOR_RUNTIME";

const EXECUTION_ID: &str = "exec_floor";
const CHANNEL: &str = "ai_response:floor:ch_floor";

/// In the floor server's process: serves until killed. `None` in the bench's own process.
pub fn main_if_floor() -> Option<anyhow::Result<()>> {
    let upstream = std::env::var(ENV_UPSTREAM).ok()?;
    Some(serve(&upstream))
}

fn serve(upstream: &str) -> anyhow::Result<()> {
    let upstream: SocketAddr = upstream.parse().context("upstream address")?;
    let shards = match std::env::var(ENV_SHARDS) {
        Ok(v) => v.parse::<usize>().context(ENV_SHARDS)?.max(1),
        Err(_) => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let multi = match std::env::var(ENV_RUNTIME).as_deref() {
        Ok("multi") => true,
        Ok("per-core") | Err(_) => false,
        Ok(other) => bail!("{ENV_RUNTIME}: `{other}` (expected per-core or multi)"),
    };
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
    let front = Arc::new(Front {
        upstream,
        shards: senders,
        next_shard: AtomicUsize::new(0),
        started: AtomicBool::new(false),
    });
    if multi {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(shards)
            .enable_all()
            .build()?;
        for rx in receivers {
            rt.spawn(shard(rx));
        }
        return rt.block_on(accept(front));
    }
    for (i, rx) in receivers.into_iter().enumerate() {
        std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("shard runtime")
                    .block_on(shard(rx))
            })?;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(accept(front))
}

/// What the connection tasks share.
struct Front {
    upstream: SocketAddr,
    shards: Vec<mpsc::UnboundedSender<ShardMsg>>,
    /// Round-robin over the shards for joined sockets.
    next_shard: AtomicUsize,
    /// The one execution has been submitted.
    started: AtomicBool,
}

enum ShardMsg {
    /// A joined socket (`joined` already sent) and the last seq its client has.
    Join {
        sock: std::net::TcpStream,
        after: u64,
    },
    /// The next event's wire frame.
    Frame(Bytes),
}

async fn accept(front: Arc<Front>) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    // The bench waits for this line (Switchyard's own).
    println!("switchyard listening on http://{}", listener.local_addr()?);
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, most likely: the client will see its connect fail.
                eprintln!("floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let front = front.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(front, sock).await {
                eprintln!("floor: connection: {e:#}");
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 requests on one connection, until one upgrades it
// ---------------------------------------------------------------------------------------------

async fn connection(front: Arc<Front>, mut sock: TcpStream) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if sock.read_buf(&mut buf).await? == 0 {
                return Ok(()); // the client closed its keep-alive connection
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).context("request head")?;
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_string();
        let target = request_line.next().unwrap_or("");
        let path = target.split('?').next().unwrap_or("").to_string();
        let (mut body_len, mut ws_key) = (0usize, None);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                body_len = value.parse().context("content-length")?;
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                ws_key = Some(value.to_string());
            }
        }
        while buf.len() < head_end + body_len {
            if sock.read_buf(&mut buf).await? == 0 {
                bail!("closed inside a request body");
            }
        }
        buf.drain(..head_end + body_len);
        match (method.as_str(), path.as_str(), ws_key) {
            ("GET", "/v1/ws", Some(key)) => return websocket(&front, sock, buf, &key).await,
            ("POST", "/v1/executions", _) => {
                if !front.started.swap(true, Ordering::AcqRel) {
                    let front = front.clone();
                    tokio::spawn(async move {
                        if let Err(e) = execution(&front).await {
                            eprintln!("floor: upstream: {e:#}");
                        }
                    });
                }
                let body = format!(
                    r#"{{"id":"{EXECUTION_ID}","object":"execution","status":"pending","websocket_channel":"{CHANNEL}"}}"#
                );
                respond(&mut sock, "202 Accepted", "application/json", &body).await?;
            }
            ("GET", "/metrics", _) => respond(&mut sock, "200 OK", "text/plain", "").await?,
            _ => respond(&mut sock, "404 Not Found", "text/plain", "").await?,
        }
    }
}

async fn respond(sock: &mut TcpStream, status: &str, kind: &str, body: &str) -> anyhow::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(response.as_bytes()).await?;
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// WebSocket: the upgrade, the join, the hand-over to a shard
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Join<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(default)]
    after: u64,
}

async fn websocket(
    front: &Front,
    mut sock: TcpStream,
    mut buf: Vec<u8>,
    key: &str,
) -> anyhow::Result<()> {
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    );
    sock.write_all(response.as_bytes()).await?;
    let after = loop {
        let Some((opcode, payload, used)) = client_frame(&buf)? else {
            if sock.read_buf(&mut buf).await? == 0 {
                return Ok(()); // closed before joining
            }
            continue;
        };
        buf.drain(..used);
        match opcode {
            OP_TEXT => {}
            OP_CLOSE => return Ok(()),
            _ => continue, // a ping or pong before the join: nothing to answer for the bench
        }
        match serde_json::from_slice::<Join>(&payload) {
            Ok(join) if join.action == "join" && join.channel == CHANNEL => break join.after,
            _ => {
                let error = format!(
                    r#"{{"event":"error","data":{{"code":"not_found","message":"the floor server has one channel: {CHANNEL}"}}}}"#
                );
                sock.write_all(&text_frame(error.as_bytes())).await?;
            }
        }
    };
    let joined = format!(r#"{{"channel":"{CHANNEL}","event":"joined"}}"#);
    sock.write_all(&text_frame(joined.as_bytes())).await?;
    let i = front.next_shard.fetch_add(1, Ordering::Relaxed) % front.shards.len();
    front.shards[i]
        .send(ShardMsg::Join {
            sock: sock.into_std()?,
            after,
        })
        .map_err(|_| anyhow!("shard {i} is gone"))?;
    Ok(())
}

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;

/// A complete client frame at the start of `b`: opcode, unmasked payload, bytes used.
fn client_frame(b: &[u8]) -> anyhow::Result<Option<(u8, Vec<u8>, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[0] & 0x80 == 0 {
        bail!("a fragmented client frame");
    }
    if b[1] & 0x80 == 0 {
        bail!("an unmasked client frame");
    }
    let (len, mut at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (
            usize::try_from(u64::from_be_bytes(b[2..10].try_into()?))?,
            10,
        ),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if b.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    at += 4;
    let payload = b[at..at + len]
        .iter()
        .zip(mask.iter().cycle())
        .map(|(byte, m)| byte ^ m)
        .collect();
    Ok(Some((b[0] & 0x0f, payload, at + len)))
}

/// A final, unmasked server text frame.
fn text_frame(payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | OP_TEXT);
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame.into()
}

// ---------------------------------------------------------------------------------------------
// A shard: its sockets, the events so far, one send per socket per frame
// ---------------------------------------------------------------------------------------------

struct Member {
    sock: TcpStream,
    /// Bytes the socket's send buffer did not take; empty (and unallocated) normally.
    backlog: Vec<u8>,
    alive: bool,
}

impl Member {
    /// Sends `frame` now, or queues it behind the backlog. True if the socket has a backlog.
    fn push(&mut self, frame: &[u8]) -> bool {
        if !self.alive {
            return false;
        }
        if !self.backlog.is_empty() {
            self.backlog.extend_from_slice(frame);
            return true;
        }
        match self.sock.try_write(frame) {
            Ok(n) if n == frame.len() => return false,
            Ok(n) => self.backlog.extend_from_slice(&frame[n..]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.backlog.extend_from_slice(frame)
            }
            Err(_) => self.alive = false, // the client went away
        }
        self.alive
    }

    /// Sends what the backlog holds as far as the socket takes it. True if some is left.
    fn flush(&mut self) -> bool {
        while self.alive && !self.backlog.is_empty() {
            match self.sock.try_write(&self.backlog) {
                Ok(n) => drop(self.backlog.drain(..n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => self.alive = false,
            }
        }
        if self.backlog.is_empty() {
            // Back to the fast path; a backlog is rare, its memory is not kept.
            self.backlog = Vec::new();
        }
        false
    }
}

async fn shard(mut rx: mpsc::UnboundedReceiver<ShardMsg>) {
    let mut members: Vec<Member> = Vec::new();
    let mut history: Vec<Bytes> = Vec::new();
    let mut backlogged = false;
    // A join taken from the queue while collecting frames, handled next.
    let mut held: Option<ShardMsg> = None;
    loop {
        let msg = if let Some(msg) = held.take() {
            Some(msg)
        } else if backlogged {
            tokio::select! {
                msg = rx.recv() => msg,
                () = any_writable(&members) => {
                    backlogged = false;
                    for m in members.iter_mut().filter(|m| !m.backlog.is_empty()) {
                        backlogged |= m.flush();
                    }
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(msg) = msg else {
            return;
        };
        match msg {
            ShardMsg::Frame(frame) => {
                // Frames that queued while this shard was busy leave together, one write per
                // socket (as a session's queued frames do in Switchyard); when the shard keeps
                // up, that is one frame per write.
                let first = history.len();
                history.push(frame);
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        ShardMsg::Frame(frame) => history.push(frame),
                        join => {
                            held = Some(join);
                            break;
                        }
                    }
                }
                let wire = match &history[first..] {
                    [one] => one.clone(),
                    several => several.concat().into(),
                };
                for m in &mut members {
                    backlogged |= m.push(&wire);
                }
            }
            ShardMsg::Join { sock, after } => {
                let sock = match TcpStream::from_std(sock) {
                    Ok(sock) => sock,
                    Err(e) => {
                        eprintln!("floor: registering a socket: {e}");
                        continue;
                    }
                };
                let mut m = Member {
                    sock,
                    backlog: Vec::new(),
                    alive: true,
                };
                // Seqs start at 1: history[k] is seq k + 1.
                for frame in history.iter().skip(after as usize) {
                    backlogged |= m.push(frame);
                }
                members.push(m);
            }
        }
    }
}

/// Resolves once some socket with a backlog can take more (never, when none has one).
async fn any_writable(members: &[Member]) {
    let waits: Vec<_> = members
        .iter()
        .filter(|m| m.alive && !m.backlog.is_empty())
        .map(|m| Box::pin(m.sock.writable()))
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    let _ = futures_util::future::select_all(waits).await;
}

// ---------------------------------------------------------------------------------------------
// The execution: one streaming request to the upstream, each event encoded once
// ---------------------------------------------------------------------------------------------

/// Numbers the channel's events and passes each one's frame to every shard.
struct Emitter<'a> {
    front: &'a Front,
    seq: u64,
}

impl Emitter<'_> {
    fn emit(&mut self, event: &str, data: &str) {
        self.seq += 1;
        let payload = format!(
            r#"{{"channel":"{CHANNEL}","event":"{event}","seq":{},"data":{data}}}"#,
            self.seq
        );
        let frame = text_frame(payload.as_bytes());
        for shard in &self.front.shards {
            let _ = shard.send(ShardMsg::Frame(frame.clone()));
        }
    }
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

async fn execution(front: &Front) -> anyhow::Result<()> {
    let mut out = Emitter { front, seq: 0 };
    out.emit("status", r#"{"seq":1,"status":"pending"}"#);

    let mut sock = TcpStream::connect(front.upstream).await?;
    sock.set_nodelay(true)?;
    let body = r#"{"model":"bench-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"fan out"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         accept: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        front.upstream,
        body.len()
    );
    sock.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if sock.read_buf(&mut buf).await? == 0 {
            bail!("the upstream closed before answering");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!(
            "the upstream answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    let chunked = head.contains("transfer-encoding: chunked");
    buf.drain(..head_end);
    out.emit(
        "status",
        r#"{"seq":2,"status":"processing","provider":"upstream","model":"bench-1"}"#,
    );

    // The body, de-chunked, then cut into SSE lines.
    let mut body = Body::new(chunked);
    let mut sse: Vec<u8> = Vec::with_capacity(4096);
    let mut text = String::new();
    let mut usage = serde_json::Value::Null;
    loop {
        let more = body.take(&mut buf, &mut sse)?;
        let mut used = 0;
        while let Some(nl) = sse[used..].iter().position(|&b| b == b'\n') {
            let line = &sse[used..used + nl];
            used += nl + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue; // blank separators, comments, other fields
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if data == b"[DONE]" {
                let done = serde_json::json!({
                    "id": EXECUTION_ID,
                    "object": "execution",
                    "status": "completed",
                    "model": "bench",
                    "output": {"text": text},
                    "finish_reason": "stop",
                    "usage": usage,
                });
                out.emit("done", &done.to_string());
                return Ok(());
            }
            let chunk: Chunk = serde_json::from_slice(data).context("an upstream chunk")?;
            if let Some(u) = chunk.usage {
                usage = u;
            }
            let content = chunk
                .choices
                .into_iter()
                .filter_map(|c| c.delta.and_then(|d| d.content))
                .find(|c| !c.is_empty());
            if let Some(content) = content {
                text.push_str(&content);
                let data = format!(
                    r#"{{"seq":{},"delta":{}}}"#,
                    out.seq + 1,
                    serde_json::to_string(&content)?
                );
                out.emit("chunk", &data);
            }
        }
        sse.drain(..used);
        if !more {
            bail!("the upstream's stream ended without [DONE]");
        }
        if sock.read_buf(&mut buf).await? == 0 {
            bail!("the upstream closed the stream without [DONE]");
        }
    }
}

/// An HTTP/1.1 response body: chunked, or everything until the connection closes.
struct Body {
    chunked: bool,
    /// Bytes left in the current chunk, then its CRLF.
    in_chunk: usize,
    ended: bool,
}

impl Body {
    fn new(chunked: bool) -> Body {
        Body {
            chunked,
            in_chunk: 0,
            ended: false,
        }
    }

    /// Moves the body bytes `raw` holds into `out`. False once the last chunk was read.
    fn take(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> anyhow::Result<bool> {
        if !self.chunked {
            out.append(raw);
            return Ok(true);
        }
        let mut at = 0;
        while !self.ended {
            if self.in_chunk > 0 {
                let n = self.in_chunk.min(raw.len() - at);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&raw[at..at + n]);
                at += n;
                self.in_chunk -= n;
                continue;
            }
            // A chunk's size line (after the previous chunk's CRLF).
            let rest = &raw[at..];
            let rest_at = if rest.starts_with(b"\r\n") { 2 } else { 0 };
            let Some(eol) = find(&rest[rest_at..], b"\r\n") else {
                break;
            };
            let size = std::str::from_utf8(&rest[rest_at..rest_at + eol])?;
            let size = size.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).context("a chunk size")?;
            at += rest_at + eol + 2;
            if size == 0 {
                self.ended = true;
            }
            self.in_chunk = size;
        }
        raw.drain(..at);
        Ok(!self.ended)
    }
}
