//! Fault-injecting fake of an OpenAI-compatible chat completions server.
//!
//! A real HTTP/1.1 server on `127.0.0.1:0` built directly on
//! `tokio::net::TcpListener` with a hand-written, minimal request parser, so
//! that faults can be injected at the byte / socket level (clean FIN
//! mid-stream, RST, stalls, malformed SSE events, HTTP error statuses, ...).
//!
//! The answer is always the same known word sequence (`"w0 "`, `"w1 "`, ...),
//! one word per SSE chunk, and requests that carry an assistant prefix made of
//! whole chunks are continued from where that prefix ends. A test can
//! therefore compare the final text with [`FakeOpenAi::full_text`] to prove
//! that nothing was repeated or lost across a failover.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long `StallAfter` / `NoResponse` hold a connection open at most.
const HOLD_OPEN: Duration = Duration::from_secs(600);
/// Fixed `created` timestamp of every response.
const CREATED: u64 = 1_700_000_000;
/// Largest accepted request head (request line + headers).
const MAX_HEAD: usize = 64 * 1024;

/// A fault applied to one chat completions request.
///
/// Chunk positions (`k`) count the content chunks of *this* response, i.e.
/// after a continuation offset was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Normal answer.
    None,
    /// Send `k` content chunks, then close the connection cleanly (FIN)
    /// without the terminating HTTP chunk, finish reason or `[DONE]`.
    CutAfter(usize),
    /// Send `k` content chunks, then reset the connection (RST).
    ResetAfter(usize),
    /// Send `k` content chunks, then send nothing more while keeping the
    /// connection open (until the client goes away, at most ~10 minutes).
    StallAfter(usize),
    /// After `k` content chunks send one event whose data is not valid JSON
    /// (`data: {not json`), then continue normally and complete the stream.
    MalformedAt(usize),
    /// After `k` content chunks send an in-stream error event
    /// (`{"error":{"message":"upstream overloaded",...}}`) and end the stream
    /// (terminating chunk, no finish reason, no `[DONE]`).
    ErrorEventAt(usize),
    /// Normal stream with finish reason (and usage if requested) but without
    /// `data: [DONE]`; the chunked body is terminated cleanly and the
    /// connection stays usable.
    NoDone,
    /// Answer with an HTTP error status and a JSON body
    /// (`content-type: application/json`, proper `content-length`).
    Status {
        code: u16,
        retry_after: Option<u64>,
        body: String,
    },
    /// 400 `unsupported_prefill` when the last message is an assistant
    /// message (prefill); any other request is answered normally.
    RejectsPrefill,
    /// Read the request, then reset the connection without writing anything.
    ResetBeforeHeaders,
    /// Read the request, then never answer (connection held open ~10 min).
    NoResponse,
    /// Wait this long before sending the response headers and first chunk,
    /// then answer normally.
    SlowFirstChunk(Duration),
}

impl Fault {
    /// Generic error status with an OpenAI-shaped `server_error` body.
    pub fn status(code: u16) -> Fault {
        let (message, kind) = match code {
            400 => ("Invalid request", "invalid_request_error"),
            401 => ("Unauthorized", "invalid_request_error"),
            403 => ("Forbidden", "invalid_request_error"),
            404 => ("Not found", "invalid_request_error"),
            429 => ("Rate limit reached", "requests"),
            500 => (
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            ),
            502 => ("Bad gateway", "server_error"),
            503 => (
                "The engine is currently overloaded, please try again later.",
                "server_error",
            ),
            504 => ("Gateway timeout", "server_error"),
            _ => ("Upstream error", "server_error"),
        };
        Fault::Status {
            code,
            retry_after: None,
            body: error_body(message, kind, None, None),
        }
    }

    /// Like [`Fault::status`] with a custom body.
    pub fn status_with_body(code: u16, body: impl Into<String>) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
            body: body.into(),
        }
    }

    /// 429 with OpenAI's rate limit body and, if given, `retry-after: secs`.
    pub fn rate_limited(retry_after: Option<u64>) -> Fault {
        Fault::Status {
            code: 429,
            retry_after,
            body: error_body(
                "Rate limit reached for requests. Please try again in 1s.",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
        }
    }

    /// 400 `context_length_exceeded` exactly as OpenAI words it.
    pub fn context_length() -> Fault {
        Fault::Status {
            code: 400,
            retry_after: None,
            body: error_body(
                "This model's maximum context length is 8192 tokens. However, your messages \
                 resulted in 9000 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
        }
    }

    /// 400 `content_filter` (prompt filtered by the content management policy).
    pub fn content_filter() -> Fault {
        Fault::Status {
            code: 400,
            retry_after: None,
            body: error_body(
                "The response was filtered due to the prompt triggering the content \
                 management policy. Please modify your prompt and retry.",
                "invalid_request_error",
                Some("prompt"),
                Some("content_filter"),
            ),
        }
    }

    /// 401 `invalid_api_key`.
    pub fn unauthorized() -> Fault {
        Fault::Status {
            code: 401,
            retry_after: None,
            body: error_body(
                "Incorrect API key provided. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
        }
    }

    /// 400 `unsupported_prefill`, applied only when the last message is an
    /// assistant message; other requests are answered normally.
    pub fn rejects_prefill() -> Fault {
        Fault::RejectsPrefill
    }

    /// The exact body sent for [`Fault::RejectsPrefill`].
    pub fn rejects_prefill_body() -> String {
        error_body(
            "assistant message prefill is not supported for this model",
            "invalid_request_error",
            Some("messages"),
            Some("unsupported_prefill"),
        )
    }
}

/// OpenAI-shaped error body: `{"error":{"message","type","param","code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> String {
    let mut error = serde_json::Map::new();
    error.insert("message".into(), Value::from(message));
    error.insert("type".into(), Value::from(kind));
    if let Some(param) = param {
        error.insert("param".into(), Value::from(param));
    }
    error.insert("code".into(), code.map(Value::from).unwrap_or(Value::Null));
    let mut root = serde_json::Map::new();
    root.insert("error".into(), Value::Object(error));
    Value::Object(root).to_string()
}

/// One request received on the chat completions path.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Request target without the query string.
    pub path: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Parsed JSON body, or `Value::String(raw)` if it was not valid JSON.
    pub body: Value,
    /// The fault that was applied to this request.
    pub fault: Fault,
    /// Index of the first content chunk this request was answered from
    /// (0 unless it was a recognised continuation).
    pub start_chunk: usize,
}

#[derive(Debug)]
struct Config {
    words: usize,
    chunk_delay: Duration,
    first_chunk_delay: Duration,
    script: VecDeque<Fault>,
    default_fault: Fault,
}

#[derive(Debug)]
struct Shared {
    addr: std::net::SocketAddr,
    config: Mutex<Config>,
    requests: Mutex<Vec<RecordedRequest>>,
    connections_accepted: AtomicUsize,
    open_connections: AtomicUsize,
    client_disconnects: AtomicUsize,
    completed_responses: AtomicUsize,
}

impl Shared {
    fn config(&self) -> MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to a running fake server. Cheap to clone; all clones share state.
#[derive(Clone, Debug)]
pub struct FakeOpenAi {
    shared: Arc<Shared>,
}

impl FakeOpenAi {
    /// Bind `127.0.0.1:0` and start serving with defaults: 20 words, no
    /// delays, empty script, default fault `Fault::None`.
    pub async fn start() -> FakeOpenAi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake openai: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake openai: local_addr");
        let shared = Arc::new(Shared {
            addr,
            config: Mutex::new(Config {
                words: 20,
                chunk_delay: Duration::ZERO,
                first_chunk_delay: Duration::ZERO,
                script: VecDeque::new(),
                default_fault: Fault::None,
            }),
            requests: Mutex::new(Vec::new()),
            connections_accepted: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
            client_disconnects: AtomicUsize::new(0),
            completed_responses: AtomicUsize::new(0),
        });
        let server = shared.clone();
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
        FakeOpenAi { shared }
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
    pub fn with_script(self, script: Vec<Fault>) -> Self {
        self.set_script(script);
        self
    }

    /// Fault used when the script is empty.
    pub fn with_default(self, fault: Fault) -> Self {
        self.set_default(fault);
        self
    }

    // ----- runtime configuration -----

    pub fn set_words(&self, n: usize) {
        self.shared.config().words = n;
    }

    pub fn set_chunk_delay(&self, delay: Duration) {
        self.shared.config().chunk_delay = delay;
    }

    pub fn set_first_chunk_delay(&self, delay: Duration) {
        self.shared.config().first_chunk_delay = delay;
    }

    pub fn set_script(&self, script: Vec<Fault>) {
        self.shared.config().script = script.into();
    }

    /// Append one fault to the end of the script.
    pub fn push_fault(&self, fault: Fault) {
        self.shared.config().script.push_back(fault);
    }

    /// Change the fault used when the script is empty.
    pub fn set_default(&self, fault: Fault) {
        self.shared.config().default_fault = fault;
    }

    /// Faults still waiting in the script.
    pub fn script_remaining(&self) -> usize {
        self.shared.config().script.len()
    }

    // ----- answer text -----

    /// The chunks of an `n`-word answer: `"w0 "`, `"w1 "`, ...
    pub fn words(n: usize) -> Vec<String> {
        (0..n).map(chunk_text).collect()
    }

    /// Concatenation of chunks `start..end`.
    pub fn text_range(start: usize, end: usize) -> String {
        (start..end).map(chunk_text).collect()
    }

    /// Number of words currently configured.
    pub fn word_count(&self) -> usize {
        self.shared.config().words
    }

    /// Full answer text for the configured word count.
    pub fn full_text(&self) -> String {
        Self::text_range(0, self.word_count())
    }

    /// The first `k` chunks of the answer (a valid continuation prefix).
    pub fn prefix(&self, k: usize) -> String {
        Self::text_range(0, k.min(self.word_count()))
    }

    // ----- addresses -----

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.shared.addr)
    }

    /// `http://127.0.0.1:PORT/v1/chat/completions`
    pub fn chat_url(&self) -> String {
        format!("{}/chat/completions", self.base_url())
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.shared.addr
    }

    // ----- inspection -----

    /// Every chat completions request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .requests()
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }

    /// Full records (method, path, headers, body, applied fault, start chunk).
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.shared.requests().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests().len()
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

    /// Chunk index each request was answered from (continuation offsets).
    pub fn start_chunks(&self) -> Vec<usize> {
        self.shared
            .requests()
            .iter()
            .map(|r| r.start_chunk)
            .collect()
    }

    /// Fault applied to each request, in order.
    pub fn applied_faults(&self) -> Vec<Fault> {
        self.shared
            .requests()
            .iter()
            .map(|r| r.fault.clone())
            .collect()
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections_accepted.load(Ordering::SeqCst)
    }

    /// TCP connections currently open (server side).
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// Responses the client abandoned: write failures mid-response, or the
    /// client closing while a `StallAfter` / `NoResponse` was being held.
    pub fn client_disconnects(&self) -> usize {
        self.shared.client_disconnects.load(Ordering::SeqCst)
    }

    /// Chat completions responses written to the end (any status).
    pub fn completed_responses(&self) -> usize {
        self.shared.completed_responses.load(Ordering::SeqCst)
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

    fn record(&self, i: usize) -> RecordedRequest {
        let requests = self.shared.requests();
        match requests.get(i) {
            Some(r) => r.clone(),
            None => panic!(
                "fake openai: no request #{i} (only {} received)",
                requests.len()
            ),
        }
    }
}

struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn chunk_text(i: usize) -> String {
    format!("w{i} ")
}

// ---------------------------------------------------------------------------
// HTTP/1.1 plumbing
// ---------------------------------------------------------------------------

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to do with the connection after a response.
enum After {
    KeepAlive,
    Close,
    /// Connection must be dropped right away (reset or already shut down).
    Drop,
}

async fn serve_connection(mut socket: TcpStream, shared: Arc<Shared>) {
    let _ = socket.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let request = match read_request(&mut socket, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        let after = match handle_request(&mut socket, &shared, request).await {
            Ok(after) => after,
            Err(_) => {
                shared.client_disconnects.fetch_add(1, Ordering::SeqCst);
                return;
            }
        };
        match after {
            After::KeepAlive => continue,
            After::Close => {
                let _ = socket.shutdown().await;
                return;
            }
            After::Drop => return,
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

    let path = target.split('?').next().unwrap_or_default().to_string();
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
        keep_alive,
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
        _ => "Status",
    }
}

async fn write_json_response(
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

/// Write one HTTP chunk (one SSE event) and flush.
async fn write_chunk(socket: &mut TcpStream, data: &str) -> io::Result<()> {
    let frame = format!("{:x}\r\n{data}\r\n", data.len());
    socket.write_all(frame.as_bytes()).await?;
    socket.flush().await
}

async fn write_last_chunk(socket: &mut TcpStream) -> io::Result<()> {
    socket.write_all(b"0\r\n\r\n").await?;
    socket.flush().await
}

/// RST the connection: SO_LINGER 0; the caller then drops the socket.
async fn reset_after_pause(socket: &mut TcpStream) -> io::Result<After> {
    // Give the peer a moment to consume what was already sent so the reset
    // arrives after the data rather than racing it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    #[allow(deprecated)]
    let _ = socket.set_linger(Some(Duration::ZERO));
    Ok(After::Drop)
}

/// Hold the connection open without answering until the client goes away
/// (counted as a client disconnect) or `HOLD_OPEN` passes.
async fn hold_open(socket: &mut TcpStream, shared: &Shared) -> After {
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
        shared.client_disconnects.fetch_add(1, Ordering::SeqCst);
    }
    After::Drop
}

// ---------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------

struct Plan {
    model: String,
    stream: bool,
    include_usage: bool,
    start: usize,
    words: usize,
    prompt_tokens: usize,
    chunk_delay: Duration,
    first_chunk_delay: Duration,
}

fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

fn messages(body: &Value) -> &[Value] {
    body.get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn last_is_assistant(body: &Value) -> bool {
    messages(body)
        .last()
        .is_some_and(|m| role(m) == "assistant")
}

/// The continuation offset: the number of whole chunks the relevant
/// assistant message already contains, or 0.
fn continuation_start(body: &Value, words: usize) -> usize {
    let msgs = messages(body);
    let assistant = match msgs {
        [.., last] if role(last) == "assistant" => Some(last),
        [.., a, last] if role(a) == "assistant" && role(last) == "user" => Some(a),
        _ => None,
    };
    let Some(assistant) = assistant else {
        return 0;
    };
    let content = message_text(assistant);
    let mut prefix = String::new();
    for k in 0..=words {
        if prefix == content {
            return k;
        }
        if prefix.len() >= content.len() {
            break;
        }
        prefix.push_str(&chunk_text(k));
    }
    0
}

async fn handle_request(
    socket: &mut TcpStream,
    shared: &Arc<Shared>,
    req: Request,
) -> io::Result<After> {
    let keep = if req.keep_alive {
        After::KeepAlive
    } else {
        After::Close
    };
    if req.method != "POST" || !req.path.ends_with("/chat/completions") {
        let body = error_body(
            &format!("Unknown request URL: {} {}", req.method, req.path),
            "invalid_request_error",
            None,
            Some("unknown_url"),
        );
        write_json_response(socket, 404, None, &body, req.keep_alive).await?;
        return Ok(keep);
    }

    let raw = String::from_utf8_lossy(&req.body).into_owned();
    let parsed: Option<Value> = serde_json::from_str(&raw).ok();
    let body = parsed.clone().unwrap_or(Value::String(raw));

    let (fault, plan) = {
        let mut cfg = shared.config();
        let fault = cfg
            .script
            .pop_front()
            .unwrap_or_else(|| cfg.default_fault.clone());
        let start = continuation_start(&body, cfg.words);
        let prompt_tokens: usize = messages(&body)
            .iter()
            .map(|m| message_text(m).split_whitespace().count())
            .sum();
        let plan = Plan {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("fake-model")
                .to_string(),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            start,
            words: cfg.words,
            prompt_tokens,
            chunk_delay: cfg.chunk_delay,
            first_chunk_delay: cfg.first_chunk_delay,
        };
        (fault, plan)
    };
    shared.requests().push(RecordedRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        body: body.clone(),
        fault: fault.clone(),
        start_chunk: plan.start,
    });

    let fault = match fault {
        Fault::RejectsPrefill if !last_is_assistant(&body) => Fault::None,
        other => other,
    };

    match &fault {
        Fault::Status {
            code,
            retry_after,
            body,
        } => {
            write_json_response(socket, *code, *retry_after, body, req.keep_alive).await?;
            shared.completed_responses.fetch_add(1, Ordering::SeqCst);
            return Ok(keep);
        }
        Fault::RejectsPrefill => {
            let body = Fault::rejects_prefill_body();
            write_json_response(socket, 400, None, &body, req.keep_alive).await?;
            shared.completed_responses.fetch_add(1, Ordering::SeqCst);
            return Ok(keep);
        }
        Fault::ResetBeforeHeaders => return reset_after_pause(socket).await,
        Fault::NoResponse => return Ok(hold_open(socket, shared).await),
        Fault::SlowFirstChunk(delay) => tokio::time::sleep(*delay).await,
        _ => {}
    }

    if parsed.is_none() {
        let body = error_body(
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
            None,
        );
        write_json_response(socket, 400, None, &body, req.keep_alive).await?;
        shared.completed_responses.fetch_add(1, Ordering::SeqCst);
        return Ok(keep);
    }

    let after = if plan.stream {
        stream_response(socket, shared, &plan, &fault, req.keep_alive).await?
    } else {
        plain_response(socket, shared, &plan, &fault, req.keep_alive).await?
    };
    if matches!(after, After::KeepAlive | After::Close) {
        shared.completed_responses.fetch_add(1, Ordering::SeqCst);
    }
    Ok(match (after, req.keep_alive) {
        (After::KeepAlive, false) => After::Close,
        (after, _) => after,
    })
}

fn json_str(s: &str) -> String {
    Value::from(s).to_string()
}

fn chunk_event(model: &str, delta: &str, finish_reason: Option<&str>) -> String {
    let finish = finish_reason.map(json_str).unwrap_or_else(|| "null".into());
    format!(
        "data: {{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":{CREATED},\
         \"model\":{},\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n",
        json_str(model)
    )
}

fn usage_json(prompt: usize, completion: usize) -> String {
    format!(
        "{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}",
        prompt + completion
    )
}

fn usage_event(model: &str, prompt: usize, completion: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":{CREATED},\
         \"model\":{},\"choices\":[],\"usage\":{}}}\n\n",
        json_str(model),
        usage_json(prompt, completion)
    )
}

const MALFORMED_EVENT: &str = "data: {not json\n\n";
const ERROR_EVENT: &str = "data: {\"error\":{\"message\":\"upstream overloaded\",\"type\":\"server_error\",\"code\":\"overloaded\"}}\n\n";
const DONE_EVENT: &str = "data: [DONE]\n\n";

async fn stream_response(
    socket: &mut TcpStream,
    shared: &Shared,
    plan: &Plan,
    fault: &Fault,
    keep_alive: bool,
) -> io::Result<After> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         transfer-encoding: chunked\r\n",
    );
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await?;
    socket.flush().await?;
    if !plan.first_chunk_delay.is_zero() {
        tokio::time::sleep(plan.first_chunk_delay).await;
    }

    let total = plan.words.saturating_sub(plan.start);
    let mut sent = 0usize;
    loop {
        // Faults that trigger once `sent` content chunks have gone out.
        match *fault {
            Fault::CutAfter(k) if k == sent => {
                socket.shutdown().await?;
                return Ok(After::Drop);
            }
            Fault::ResetAfter(k) if k == sent => return reset_after_pause(socket).await,
            Fault::StallAfter(k) if k == sent => return Ok(hold_open(socket, shared).await),
            Fault::ErrorEventAt(k) if k == sent => {
                write_chunk(socket, ERROR_EVENT).await?;
                write_last_chunk(socket).await?;
                return Ok(After::KeepAlive);
            }
            Fault::MalformedAt(k) if k == sent => {
                write_chunk(socket, MALFORMED_EVENT).await?;
            }
            _ => {}
        }
        if sent == total {
            break;
        }
        if sent > 0 && !plan.chunk_delay.is_zero() {
            tokio::time::sleep(plan.chunk_delay).await;
        }
        let word = json_str(&chunk_text(plan.start + sent));
        let delta = if sent == 0 {
            format!("{{\"role\":\"assistant\",\"content\":{word}}}")
        } else {
            format!("{{\"content\":{word}}}")
        };
        write_chunk(socket, &chunk_event(&plan.model, &delta, None)).await?;
        sent += 1;
    }

    // Faults positioned past the last content chunk still trigger before the
    // finish chunk.
    match *fault {
        Fault::CutAfter(k) if k > total => {
            socket.shutdown().await?;
            return Ok(After::Drop);
        }
        Fault::ResetAfter(k) if k > total => return reset_after_pause(socket).await,
        Fault::StallAfter(k) if k > total => return Ok(hold_open(socket, shared).await),
        Fault::ErrorEventAt(k) if k > total => {
            write_chunk(socket, ERROR_EVENT).await?;
            write_last_chunk(socket).await?;
            return Ok(After::KeepAlive);
        }
        Fault::MalformedAt(k) if k > total => {
            write_chunk(socket, MALFORMED_EVENT).await?;
        }
        _ => {}
    }

    if !plan.chunk_delay.is_zero() && sent > 0 {
        tokio::time::sleep(plan.chunk_delay).await;
    }
    let delta = if sent == 0 {
        "{\"role\":\"assistant\"}"
    } else {
        "{}"
    };
    write_chunk(socket, &chunk_event(&plan.model, delta, Some("stop"))).await?;
    if plan.include_usage {
        write_chunk(socket, &usage_event(&plan.model, plan.prompt_tokens, sent)).await?;
    }
    if *fault != Fault::NoDone {
        write_chunk(socket, DONE_EVENT).await?;
    }
    write_last_chunk(socket).await?;
    Ok(After::KeepAlive)
}

/// Non-streaming answer. Stream faults map onto the single JSON body:
/// `CutAfter`/`ResetAfter`/`StallAfter` send the headers and half the body
/// first, `MalformedAt` sends `{not json` as the body, `ErrorEventAt` sends a
/// 200 whose body is the error object.
async fn plain_response(
    socket: &mut TcpStream,
    shared: &Shared,
    plan: &Plan,
    fault: &Fault,
    keep_alive: bool,
) -> io::Result<After> {
    let total = plan.words.saturating_sub(plan.start);
    let pause = plan.first_chunk_delay + plan.chunk_delay * (total.saturating_sub(1) as u32);
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    let content = FakeOpenAi::text_range(plan.start, plan.words);
    let body = match fault {
        Fault::MalformedAt(_) => "{not json".to_string(),
        Fault::ErrorEventAt(_) => error_body(
            "upstream overloaded",
            "server_error",
            None,
            Some("overloaded"),
        ),
        _ => format!(
            "{{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion\",\"created\":{CREATED},\
             \"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\
             \"content\":{}}},\"finish_reason\":\"stop\"}}],\"usage\":{}}}",
            json_str(&plan.model),
            json_str(&content),
            usage_json(plan.prompt_tokens, total)
        ),
    };
    match fault {
        Fault::CutAfter(_) | Fault::ResetAfter(_) | Fault::StallAfter(_) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(&body.as_bytes()[..body.len() / 2]).await?;
            socket.flush().await?;
            match fault {
                Fault::CutAfter(_) => {
                    socket.shutdown().await?;
                    Ok(After::Drop)
                }
                Fault::ResetAfter(_) => reset_after_pause(socket).await,
                _ => Ok(hold_open(socket, shared).await),
            }
        }
        _ => {
            write_json_response(socket, 200, None, &body, keep_alive).await?;
            Ok(After::KeepAlive)
        }
    }
}
