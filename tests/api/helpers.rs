//! Spawning apps (in-process or as a real process) and talking to them like a client would.

#![allow(dead_code)]

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use switchyard::settings::Settings;
use switchyard::startup::Application;

use crate::fake_openai::FakeOpenAi;

pub const ADMIN_KEY: &str = "test-admin-key";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    pub handle: actix_web::dev::ServerHandle,
}

/// A config whose `chat-default` is the mock (fast) and whose `fake` routes to `fake`s.
pub fn config(fakes: &[&FakeOpenAi]) -> String {
    let mut toml = String::from(
        r#"listen = "127.0.0.1:0"
data_dir = "unused"

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = 12
mock_chunk_interval_ms = 2
"#,
    );
    for (i, fake) in fakes.iter().enumerate() {
        toml.push_str(&format!(
            r#"
[[providers]]
name = "fake{i}"
kind = "openai"
base_url = "{}"
first_chunk_timeout_ms = 2000
idle_timeout_ms = 500
"#,
            fake.base_url()
        ));
    }
    toml.push_str(
        r#"
[[models]]
slug = "chat-default"
routes = [{ provider = "mock", model = "mock-1" }]
"#,
    );
    if !fakes.is_empty() {
        let routes: Vec<String> = (0..fakes.len())
            .map(|i| format!(r#"{{ provider = "fake{i}", model = "up-{i}" }}"#))
            .collect();
        toml.push_str(&format!(
            "\n[[models]]\nslug = \"fake\"\nroutes = [{}]\n",
            routes.join(", ")
        ));
    }
    toml
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&config(&[]), |_| {}).await
}

pub async fn spawn_with_fakes(fakes: &[&FakeOpenAi]) -> TestApp {
    spawn_app_with(&config(fakes), |_| {}).await
}

/// Starts the server in this test's actix system on port 0 with a fresh data dir.
pub async fn spawn_app_with(toml: &str, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::parse(toml).unwrap();
    settings.data_dir = data_dir.path().to_path_buf();
    settings.admin_key = Some(ADMIN_KEY.to_string());
    tweak(&mut settings);
    let app = Application::build(settings).await.unwrap();
    let address = format!("http://{}", app.address());
    let handle = app.server_handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        data_dir,
        handle,
    }
}

pub fn chat_body(key: &str, prompt: &str, model: &str) -> Value {
    json!({"model": model, "idempotency_key": key,
           "messages": [{"role": "user", "content": prompt}]})
}

/// Checks an error answer: its status, and a body of exactly
/// `{"error": {"code", "message", "retryable"}}` with this `code`. Returns the message.
pub async fn assert_error(res: reqwest::Response, status: u16, code: &str) -> String {
    let actual = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(actual, status, "unexpected status, body: {text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let outer = body.as_object().expect("error body is an object");
    assert_eq!(outer.len(), 1, "only `error` at the top level: {text}");
    let error = outer["error"].as_object().expect("`error` is an object");
    let mut fields: Vec<_> = error.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["code", "message", "retryable"],
        "error fields: {text}"
    );
    assert_eq!(error["code"], code, "error code: {text}");
    assert!(
        error["retryable"].is_boolean(),
        "retryable is a bool: {text}"
    );
    // Asking again unchanged cannot succeed for these.
    let permanent = [
        "invalid_request",
        "payload_too_large",
        "unauthorized",
        "forbidden",
        "not_found",
        "conflict",
        "idempotency_conflict",
    ];
    if permanent.contains(&code) {
        assert_eq!(error["retryable"], false, "{code} is not retryable: {text}");
    }
    let message = error["message"].as_str().expect("message is a string");
    assert!(!message.is_empty(), "message is not empty: {text}");
    message.to_string()
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Creates a key with `admin` and returns (id, secret).
    pub async fn create_key_by(&self, admin: &str, project: &str, role: &str) -> (String, String) {
        let res = self
            .post(
                "/v1/keys",
                admin,
                &json!({"project_id": project, "role": role}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// Submits and returns the 202 body.
    pub async fn submit(&self, key: &str, body: &Value) -> Value {
        let res = self.post("/v1/executions", key, body).await;
        assert_eq!(res.status(), 202, "submit failed");
        res.json().await.unwrap()
    }

    pub async fn execution(&self, key: &str, id: &str) -> Value {
        let res = self.get(&format!("/v1/executions/{id}"), key).await;
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Polls until the execution is terminal.
    pub async fn wait_terminal(&self, key: &str, id: &str) -> Value {
        for _ in 0..1000 {
            let exec = self.execution(key, id).await;
            let status = exec["status"].as_str().unwrap().to_string();
            if !matches!(status.as_str(), "pending" | "processing") {
                return exec;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("execution {id} did not finish");
    }

    /// Creates a key as the env admin and returns its secret.
    pub async fn create_key(&self, project: &str, role: &str) -> String {
        self.create_key_by(ADMIN_KEY, project, role).await.1
    }

    /// Opens the SSE stream (with `Last-Event-ID` when given).
    pub async fn sse(&self, key: &str, id: &str, last_event_id: Option<u64>) -> SseStream {
        sse_open(&self.client, &self.address, key, id, last_event_id).await
    }

    /// All events until the stream ends.
    pub async fn sse_all(&self, key: &str, id: &str, last_event_id: Option<u64>) -> Vec<SseEvent> {
        self.sse(key, id, last_event_id).await.collect_all().await
    }
}

pub struct SseStream {
    inner: std::pin::Pin<Box<dyn futures_util::Stream<Item = SseEvent> + Send>>,
}

pub async fn sse_open(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    id: &str,
    last_event_id: Option<u64>,
) -> SseStream {
    let mut req = client
        .get(format!("{address}/v1/executions/{id}/events"))
        .bearer_auth(key);
    if let Some(last) = last_event_id {
        req = req.header("last-event-id", last.to_string());
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let inner = res
        .bytes_stream()
        .eventsource()
        .filter_map(|ev| async move {
            let ev = ev.ok()?;
            Some(SseEvent {
                id: ev.id.parse().unwrap(),
                event: ev.event,
                data: serde_json::from_str(&ev.data).unwrap(),
            })
        })
        .boxed();
    SseStream { inner }
}

impl SseStream {
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(Duration::from_secs(20), self.inner.next())
            .await
            .expect("sse event within 20 s")
    }

    /// Every event up to and including the `n`th chunk.
    pub async fn until_chunks(&mut self, n: usize) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        while seen
            .iter()
            .filter(|e: &&SseEvent| e.event == "chunk")
            .count()
            < n
        {
            seen.push(self.next().await.expect("events before the stream ends"));
        }
        seen
    }

    pub async fn collect_all(mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(ev) = self.next().await {
            out.push(ev);
        }
        out
    }
}

/// Checks the contract's sequence rules: seq 1, 2, 3, … (from `first`), one `done`, last.
pub fn assert_gapless(events: &[SseEvent], first: u64) {
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(
            ev.id,
            first + i as u64,
            "seq gap or duplicate at {i}: {events:?}"
        );
    }
    assert_eq!(events.last().unwrap().event, "done");
    assert_eq!(events.iter().filter(|e| e.event == "done").count(), 1);
}

pub fn chunk_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "chunk")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect()
}

/// The server as a real process (for SIGKILL and restart tests).
pub struct ServerProcess {
    pub child: Child,
    pub address: String,
}

pub fn spawn_process(config_path: &std::path::Path, data_dir: &std::path::Path) -> ServerProcess {
    spawn_command(
        Command::new(env!("CARGO_BIN_EXE_switchyard")),
        config_path,
        data_dir,
    )
}

/// [`spawn_process`] with the open-file soft limit lowered to `soft` before the server starts
/// (as a shell's common `ulimit -n 1024` leaves it).
pub fn spawn_process_with_fd_limit(
    config_path: &std::path::Path,
    data_dir: &std::path::Path,
    soft: u64,
) -> ServerProcess {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = soft.min(limit.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    spawn_command(command, config_path, data_dir)
}

/// `command` set up as a test server: the config, a data dir, port 0, the test admin key.
pub fn server_args<'a>(
    command: &'a mut Command,
    config_path: &std::path::Path,
    data_dir: &std::path::Path,
) -> &'a mut Command {
    command
        .arg("--config")
        .arg(config_path)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("SWITCHYARD_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "warn")
}

fn spawn_command(
    mut command: Command,
    config_path: &std::path::Path,
    data_dir: &std::path::Path,
) -> ServerProcess {
    let mut child = server_args(&mut command, config_path, data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        if let Some(addr) = line.strip_prefix("switchyard listening on ") {
            break addr.to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ServerProcess { child, address }
}

impl ServerProcess {
    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tool calls carried by an event log's chunks, in order.
pub fn tool_calls_in(events: &[SseEvent]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e.event == "chunk")
        .filter_map(|e| e.data["tool_calls"].as_array())
        .flatten()
        .collect()
}

/// Checks an OpenAI-shaped error answer's status; returns its message.
pub async fn openai_error_message(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status().as_u16(), status);
    let error: Value = res.json().await.unwrap();
    error["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {error}"))
        .to_string()
}
