//! The core every fake provider shares: a real HTTP/1.1 server on `127.0.0.1:0` built directly
//! on `tokio::net::TcpListener` with a hand-written, minimal request parser, so that faults can
//! be injected at the byte / socket level (clean FIN mid-stream, RST, stalls, malformed events,
//! HTTP error statuses, ...).
//!
//! Each wire format ([`Wire`]) only answers requests; the handle ([`Fake`]) configures the
//! answer — always the same known word sequence (`"w0 "`, `"w1 "`, ...), one word per event —
//! scripts faults, and records every request. A test can therefore compare the final text with
//! [`Fake::full_text`] to prove that nothing was repeated or lost across a failover.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long `StallAfter` / `NoResponse` style faults hold a connection open at most.
const HOLD_OPEN: Duration = Duration::from_secs(600);
/// Largest accepted request head (request line + headers).
const MAX_HEAD: usize = 64 * 1024;

/// One provider wire format spoken by a fake.
pub trait Wire: Sized + Send + Sync + 'static {
    type Fault: Clone + fmt::Debug + PartialEq + Send + Sync + 'static;
    /// For messages: "fake openai".
    const NAME: &'static str;
    /// The path the configured `base_url` ends with ("/v1").
    const BASE_PATH: &'static str;
    /// The fault applied when the script is empty and none was set.
    fn no_fault() -> Self::Fault;
    /// Answers one request on the connection.
    fn handle<'a>(
        core: Arc<Core<Self>>,
        socket: &'a mut TcpStream,
        req: Request,
    ) -> BoxFuture<'a, io::Result<After>>;
}

/// One request received on the provider's answering path.
#[derive(Clone, Debug)]
pub struct RecordedRequest<F> {
    pub method: String,
    /// Request target without the query string.
    pub path: String,
    /// The query string, without `?` (empty when there was none).
    pub query: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Parsed JSON body, or `Value::String(raw)` if it was not valid JSON.
    pub body: Value,
    /// The fault that was applied to this request.
    pub fault: F,
    /// Index of the first content chunk this request was answered from
    /// (0 unless it was a recognised continuation).
    pub start_chunk: usize,
    /// When the whole request had been read.
    pub received: Instant,
}

/// What the next answer looks like.
#[derive(Debug, Clone)]
pub struct Plan<F> {
    pub fault: F,
    pub words: usize,
    pub chunk_delay: Duration,
    pub first_chunk_delay: Duration,
}

#[derive(Debug)]
struct Config<F> {
    words: usize,
    chunk_delay: Duration,
    first_chunk_delay: Duration,
    script: VecDeque<F>,
    default_fault: F,
}

/// The state a fake's connections share.
pub struct Core<W: Wire> {
    addr: std::net::SocketAddr,
    config: Mutex<Config<W::Fault>>,
    requests: Mutex<Vec<RecordedRequest<W::Fault>>>,
    connections_accepted: AtomicUsize,
    open_connections: AtomicUsize,
    client_disconnects: AtomicUsize,
    completed_responses: AtomicUsize,
}

impl<W: Wire> Core<W> {
    fn config(&self) -> MutexGuard<'_, Config<W::Fault>> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest<W::Fault>>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next scripted fault (or the default) with the current answer settings.
    pub fn next_plan(&self) -> Plan<W::Fault> {
        let mut cfg = self.config();
        let fault = cfg
            .script
            .pop_front()
            .unwrap_or_else(|| cfg.default_fault.clone());
        Plan {
            fault,
            words: cfg.words,
            chunk_delay: cfg.chunk_delay,
            first_chunk_delay: cfg.first_chunk_delay,
        }
    }

    pub fn record(&self, request: RecordedRequest<W::Fault>) {
        self.requests().push(request);
    }

    /// A response was written to its end (any status).
    pub fn completed(&self) {
        self.completed_responses.fetch_add(1, Ordering::SeqCst);
    }

    /// Holds the connection open without answering until the client goes away (counted as a
    /// client disconnect) or `HOLD_OPEN` passes.
    pub async fn hold_open(&self, socket: &mut TcpStream) -> After {
        let mut sink = [0u8; 1024];
        let wait = async {
            loop {
                match socket.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(HOLD_OPEN, wait).await.is_ok() {
            self.client_disconnects.fetch_add(1, Ordering::SeqCst);
        }
        After::Drop
    }
}

/// Handle to a running fake server. Cheap to clone; all clones share state.
pub struct Fake<W: Wire> {
    core: Arc<Core<W>>,
}

impl<W: Wire> Clone for Fake<W> {
    fn clone(&self) -> Self {
        Fake {
            core: self.core.clone(),
        }
    }
}

impl<W: Wire> fmt::Debug for Fake<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", W::NAME, self.core.addr)
    }
}

impl<W: Wire> Fake<W> {
    /// Bind `127.0.0.1:0` and start serving with defaults: 20 words, no
    /// delays, empty script, default fault `W::no_fault()`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{}: bind 127.0.0.1:0: {e}", W::NAME));
        let addr = listener.local_addr().expect("local_addr");
        let core = Arc::new(Core::<W> {
            addr,
            config: Mutex::new(Config {
                words: 20,
                chunk_delay: Duration::ZERO,
                first_chunk_delay: Duration::ZERO,
                script: VecDeque::new(),
                default_fault: W::no_fault(),
            }),
            requests: Mutex::new(Vec::new()),
            connections_accepted: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
            client_disconnects: AtomicUsize::new(0),
            completed_responses: AtomicUsize::new(0),
        });
        let server = core.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((socket, _)) => {
                        server.connections_accepted.fetch_add(1, Ordering::SeqCst);
                        server.open_connections.fetch_add(1, Ordering::SeqCst);
                        let conn = server.clone();
                        tokio::spawn(async move {
                            let _guard = OpenGuard(conn.clone());
                            serve_connection(socket, conn).await;
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        });
        Fake { core }
    }

    // ----- builder-style configuration (consumes and returns the handle) -----

    /// Number of words (content chunks) in the answer.
    pub fn with_words(self, n: usize) -> Self {
        self.set_words(n);
        self
    }

    /// Delay between consecutive content chunks.
    pub fn with_chunk_delay(self, delay: Duration) -> Self {
        self.set_chunk_delay(delay);
        self
    }

    /// Delay between the response headers and the first chunk.
    pub fn with_first_chunk_delay(self, delay: Duration) -> Self {
        self.set_first_chunk_delay(delay);
        self
    }

    /// Replace the fault script (consumed one fault per request).
    pub fn with_script(self, script: Vec<W::Fault>) -> Self {
        self.set_script(script);
        self
    }

    /// Fault used when the script is empty.
    pub fn with_default(self, fault: W::Fault) -> Self {
        self.set_default(fault);
        self
    }

    // ----- runtime configuration -----

    pub fn set_words(&self, n: usize) {
        self.core.config().words = n;
    }

    pub fn set_chunk_delay(&self, delay: Duration) {
        self.core.config().chunk_delay = delay;
    }

    pub fn set_first_chunk_delay(&self, delay: Duration) {
        self.core.config().first_chunk_delay = delay;
    }

    pub fn set_script(&self, script: Vec<W::Fault>) {
        self.core.config().script = script.into();
    }

    /// Append one fault to the end of the script.
    pub fn push_fault(&self, fault: W::Fault) {
        self.core.config().script.push_back(fault);
    }

    /// Change the fault used when the script is empty.
    pub fn set_default(&self, fault: W::Fault) {
        self.core.config().default_fault = fault;
    }

    /// Faults still waiting in the script.
    pub fn script_remaining(&self) -> usize {
        self.core.config().script.len()
    }

    // ----- answer text -----

    /// The chunks of an `n`-word answer: `"w0 "`, `"w1 "`, ...
    pub fn words(n: usize) -> Vec<String> {
        (0..n).map(chunk_text).collect()
    }

    /// Concatenation of chunks `start..end`.
    pub fn text_range(start: usize, end: usize) -> String {
        text_range(start, end)
    }

    /// Number of words currently configured.
    pub fn word_count(&self) -> usize {
        self.core.config().words
    }

    /// Full answer text for the configured word count.
    pub fn full_text(&self) -> String {
        text_range(0, self.word_count())
    }

    /// The first `k` chunks of the answer (a valid continuation prefix).
    pub fn prefix(&self, k: usize) -> String {
        text_range(0, k.min(self.word_count()))
    }

    // ----- addresses -----

    /// `http://127.0.0.1:PORT` followed by the wire's base path.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.core.addr, W::BASE_PATH)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.core.addr
    }

    // ----- inspection -----

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.core
            .requests()
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }

    /// Full records (method, path, query, headers, body, applied fault, start chunk).
    pub fn recorded(&self) -> Vec<RecordedRequest<W::Fault>> {
        self.core.requests().clone()
    }

    pub fn request_count(&self) -> usize {
        self.core.requests().len()
    }

    /// Body of request `i`. Panics if there is no such request.
    pub fn request(&self, i: usize) -> Value {
        self.record(i).body
    }

    /// Headers of request `i` (names lowercased; repeated headers joined with
    /// `", "`). Panics if there is no such request.
    pub fn request_headers(&self, i: usize) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = HashMap::new();
        for (name, value) in self.record(i).headers {
            map.entry(name)
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        map
    }

    /// One header of request `i` (name matched case-insensitively).
    pub fn request_header(&self, i: usize, name: &str) -> Option<String> {
        self.request_headers(i).remove(&name.to_ascii_lowercase())
    }

    /// When request `i` had been read in full. Panics if there is no such request.
    pub fn received_at(&self, i: usize) -> Instant {
        self.record(i).received
    }

    /// Chunk index each request was answered from (continuation offsets).
    pub fn start_chunks(&self) -> Vec<usize> {
        self.core.requests().iter().map(|r| r.start_chunk).collect()
    }

    /// Fault applied to each request, in order.
    pub fn applied_faults(&self) -> Vec<W::Fault> {
        self.core
            .requests()
            .iter()
            .map(|r| r.fault.clone())
            .collect()
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.core.connections_accepted.load(Ordering::SeqCst)
    }

    /// TCP connections currently open (server side).
    pub fn open_connections(&self) -> usize {
        self.core.open_connections.load(Ordering::SeqCst)
    }

    /// Responses the client abandoned: write failures mid-response, or the
    /// client closing while a stall or a missing response was being held.
    pub fn client_disconnects(&self) -> usize {
        self.core.client_disconnects.load(Ordering::SeqCst)
    }

    /// Responses written to the end (any status).
    pub fn completed_responses(&self) -> usize {
        self.core.completed_responses.load(Ordering::SeqCst)
    }

    /// Wait until `request_count() >= n`, polling; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.request_count() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn record(&self, i: usize) -> RecordedRequest<W::Fault> {
        let requests = self.core.requests();
        match requests.get(i) {
            Some(r) => r.clone(),
            None => panic!(
                "{}: no request #{i} (only {} received)",
                W::NAME,
                requests.len()
            ),
        }
    }
}

struct OpenGuard<W: Wire>(Arc<Core<W>>);

impl<W: Wire> Drop for OpenGuard<W> {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// The answer text
// ---------------------------------------------------------------------------

pub fn chunk_text(i: usize) -> String {
    format!("w{i} ")
}

pub fn text_range(start: usize, end: usize) -> String {
    (start..end).map(chunk_text).collect()
}

/// How many whole chunks `content` is (it must be exactly chunks `0..k`), if any.
pub fn chunk_prefix(content: &str, words: usize) -> Option<usize> {
    let mut prefix = String::new();
    for k in 0..=words {
        if prefix == content {
            return Some(k);
        }
        if prefix.len() >= content.len() {
            break;
        }
        prefix.push_str(&chunk_text(k));
    }
    None
}

/// Whether a fault placed after `k` content chunks fires once `sent` of `total` went out; one
/// placed past the end fires before the closing events.
pub fn due(k: usize, sent: usize, total: usize) -> bool {
    k == sent || (k > total && sent == total)
}

/// The usual prompt token count of the fakes: whitespace-separated words.
pub fn word_tokens(text: &str) -> usize {
    text.split_whitespace().count()
}

pub fn json_str(s: &str) -> String {
    Value::from(s).to_string()
}

// ---------------------------------------------------------------------------
// HTTP/1.1 plumbing
// ---------------------------------------------------------------------------

pub struct Request {
    pub method: String,
    /// Target without the query string.
    pub path: String,
    /// The query string without `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub keep_alive: bool,
    /// When the whole request had been read.
    pub received: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// What to do after a complete answer, given the request's `connection` wish.
    pub fn keep(&self) -> After {
        if self.keep_alive {
            After::KeepAlive
        } else {
            After::Close
        }
    }
}

/// What to do with the connection after a response.
pub enum After {
    KeepAlive,
    Close,
    /// Connection must be dropped right away (reset or already shut down).
    Drop,
}

async fn serve_connection<W: Wire>(mut socket: TcpStream, core: Arc<Core<W>>) {
    let _ = socket.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let request = match read_request(&mut socket, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        let keep_alive = request.keep_alive;
        let after = match W::handle(core.clone(), &mut socket, request).await {
            Ok(after) => after,
            Err(_) => {
                core.client_disconnects.fetch_add(1, Ordering::SeqCst);
                return;
            }
        };
        match (after, keep_alive) {
            (After::KeepAlive, true) => continue,
            (After::KeepAlive | After::Close, _) => {
                let _ = socket.shutdown().await;
                return;
            }
            (After::Drop, _) => return,
        }
    }
}

fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Read more bytes into `buf`; `Ok(false)` on EOF.
async fn fill(socket: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut tmp = [0u8; 8192];
    let n = socket.read(&mut tmp).await?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n > 0)
}

fn bad_data(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Read one request. `Ok(None)` on a clean EOF between requests.
/// Bytes past the request stay in `buf` for the next one.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(pos) = find_subslice(buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad_data("request head too large"));
        }
        if !fill(socket, buf).await? {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(bad_data("eof inside request head"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);

    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let version = parts.next().unwrap_or("HTTP/1.1").to_string();
    let mut headers = Vec::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v): &(String, String)| v.to_ascii_lowercase())
    };
    let connection = get("connection").unwrap_or_default();
    let keep_alive = if version.eq_ignore_ascii_case("HTTP/1.0") {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    if get("expect").is_some_and(|v| v.contains("100-continue")) {
        socket.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }

    let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunked_body(socket, buf).await?
    } else {
        let len: usize = match get("content-length") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| bad_data("bad content-length"))?,
            None => 0,
        };
        while buf.len() < len {
            if !fill(socket, buf).await? {
                return Err(bad_data("eof inside request body"));
            }
        }
        buf.drain(..len).collect()
    };

    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_string(), query.to_string()),
        None => (target, String::new()),
    };
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        body,
        keep_alive,
        received: Instant::now(),
    }))
}

async fn read_chunked_body(socket: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(pos) = find_subslice(buf, b"\r\n") {
                break pos;
            }
            if !fill(socket, buf).await? {
                return Err(bad_data("eof inside chunk size"));
            }
        };
        let size_line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        buf.drain(..line_end + 2);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad_data("bad chunk size"))?;
        if size == 0 {
            // Skip optional trailers up to the empty line.
            loop {
                let end = loop {
                    if let Some(pos) = find_subslice(buf, b"\r\n") {
                        break pos;
                    }
                    if !fill(socket, buf).await? {
                        return Err(bad_data("eof inside trailers"));
                    }
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(body);
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(socket, buf).await? {
                return Err(bad_data("eof inside chunk"));
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Status",
    }
}

/// A complete JSON answer (`content-type: application/json`, proper `content-length`).
pub async fn write_json_response(
    socket: &mut TcpStream,
    code: u16,
    retry_after: Option<u64>,
    body: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        reason_phrase(code),
        body.len()
    );
    if let Some(secs) = retry_after {
        head.push_str(&format!("retry-after: {secs}\r\n"));
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    head.push_str(body);
    socket.write_all(head.as_bytes()).await?;
    socket.flush().await
}

/// The head of a chunked `text/event-stream` answer.
pub async fn write_sse_head(socket: &mut TcpStream, keep_alive: bool) -> io::Result<()> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         transfer-encoding: chunked\r\n",
    );
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await?;
    socket.flush().await
}

/// Write one HTTP chunk (one SSE event) and flush.
pub async fn write_chunk(socket: &mut TcpStream, data: &str) -> io::Result<()> {
    let frame = format!("{:x}\r\n{data}\r\n", data.len());
    socket.write_all(frame.as_bytes()).await?;
    socket.flush().await
}

/// The terminating chunk: the body ends cleanly, the connection stays usable.
pub async fn write_last_chunk(socket: &mut TcpStream) -> io::Result<()> {
    socket.write_all(b"0\r\n\r\n").await?;
    socket.flush().await
}

/// Close the connection cleanly (FIN) in the middle of a body.
pub async fn cut(socket: &mut TcpStream) -> io::Result<After> {
    socket.shutdown().await?;
    Ok(After::Drop)
}

/// RST the connection: SO_LINGER 0; the caller then drops the socket.
pub async fn reset_after_pause(socket: &mut TcpStream) -> io::Result<After> {
    // Give the peer a moment to consume what was already sent so the reset
    // arrives after the data rather than racing it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    #[allow(deprecated)]
    let _ = socket.set_linger(Some(Duration::ZERO));
    Ok(After::Drop)
}
