//! Upstream quotas per route: routes out of quota are skipped, `auto` moves on, no headroom
//! anywhere is a 503 with `Retry-After`, day counters survive a restart, a provider's 429 with
//! rate-limit headers cools only its route, and routing status shows the headroom.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const MOCK: &str = r#"listen = "127.0.0.1:0"
data_dir = "unused"

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = 3
mock_chunk_interval_ms = 0
"#;

fn with_models(models: &str) -> String {
    format!("{MOCK}\n{models}")
}

/// The upstream model of the execution's only attempt.
async fn answered_by(app: &TestApp, key: &str, model: &str) -> String {
    let sub = app
        .submit(ADMIN_KEY, &chat_body(key, "Hello there", model))
        .await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed", "{exec}");
    let attempts = exec["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "a route out of quota is skipped, not tried"
    );
    attempts[0]["model"].as_str().unwrap().to_string()
}

async fn routing_status(app: &TestApp) -> Value {
    let res = app.get("/v1/routing/status", ADMIN_KEY).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// The routing status of `provider`/`model` under `slug`.
fn route_status<'a>(status: &'a Value, slug: &str, model: &str) -> &'a Value {
    let m = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["slug"] == slug)
        .unwrap();
    m["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == model)
        .unwrap()
}

/// A 503 `provider_unavailable` with a `Retry-After` of at least a second.
async fn assert_no_headroom(res: reqwest::Response) {
    let retry_after: u64 = res
        .headers()
        .get("retry-after")
        .expect("Retry-After is set")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_error(res, 503, "provider_unavailable").await;
}

#[actix_web::test]
async fn a_route_out_of_daily_requests_or_tokens_is_skipped_and_the_next_route_answers() {
    let app = spawn_app_with(
        &with_models(
            r#"
[[models]]
slug = "requests"
routes = [{ provider = "mock", model = "capped", requests_per_day = 1 },
          { provider = "mock", model = "spare" }]

[[models]]
slug = "tokens"
routes = [{ provider = "mock", model = "thin", tokens_per_day = 5 },
          { provider = "mock", model = "spare" }]
"#,
        ),
        |_| {},
    )
    .await;
    assert_eq!(answered_by(&app, "r1", "requests").await, "capped");
    assert_eq!(answered_by(&app, "r2", "requests").await, "spare");
    assert_eq!(answered_by(&app, "t1", "tokens").await, "thin");
    assert_eq!(answered_by(&app, "t2", "tokens").await, "spare");

    let status = routing_status(&app).await;
    let capped = route_status(&status, "requests", "capped");
    assert_eq!(capped["admitted"], false);
    assert_eq!(capped["not_admitted_reason"], "quota_requests_per_day");
    let day = &capped["quota"]["day"];
    assert_eq!(day["requests_used"], 1);
    assert_eq!(day["requests_remaining"], 0);
    assert!(day["resets_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(capped["quota"]["limits"]["requests_per_day"], 1);
    let thin = route_status(&status, "tokens", "thin");
    assert_eq!(thin["not_admitted_reason"], "quota_tokens_per_day");
    // Corrected to the provider's usage: the mock's prompt words plus its three chunks.
    assert!(thin["quota"]["day"]["tokens_used"].as_u64().unwrap() >= 5);
    let spare = route_status(&status, "requests", "spare");
    assert_eq!(spare["admitted"], true);
    assert_eq!(spare["not_admitted_reason"], Value::Null);
    assert_eq!(spare["quota"]["day"]["requests_remaining"], Value::Null);

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"switchyard_route_headroom_requests{model="capped",provider="mock",window="day"} 0"#
        ),
        "{metrics}"
    );
}

#[actix_web::test]
async fn auto_moves_to_the_next_model_and_with_no_headroom_anywhere_answers_503() {
    let app = spawn_app_with(
        &with_models(
            r#"
[[models]]
slug = "one"
routes = [{ provider = "mock", model = "one-up", requests_per_day = 1 }]

[[models]]
slug = "two"
routes = [{ provider = "mock", model = "two-up", requests_per_minute = 1 }]
"#,
        ),
        |_| {},
    )
    .await;
    let first = answered_by(&app, "a1", "auto").await;
    let second = answered_by(&app, "a2", "auto").await;
    let mut both = [first, second];
    both.sort();
    assert_eq!(
        both,
        ["one-up", "two-up"],
        "auto moved to the model with quota"
    );

    for model in ["auto", "one", "two"] {
        let res = app
            .post(
                "/v1/executions",
                ADMIN_KEY,
                &chat_body(&format!("x-{model}"), "Hello", model),
            )
            .await;
        assert_no_headroom(res).await;
    }
}

#[actix_web::test]
async fn daily_counters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        with_models(
            r#"
[[models]]
slug = "daily"
routes = [{ provider = "mock", model = "once", requests_per_day = 1 }]
"#,
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();
    let submit = |address: String, key: &'static str| {
        let client = client.clone();
        async move {
            client
                .post(format!("{address}/v1/executions"))
                .bearer_auth(ADMIN_KEY)
                .json(&chat_body(key, "Hello", "daily"))
                .send()
                .await
                .unwrap()
        }
    };

    let mut first = spawn_process(&cfg, &data);
    let res = submit(first.address.clone(), "d1").await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..1000 {
        let exec: Value = client
            .get(format!("{}/v1/executions/{id}", first.address))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if exec["status"] == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_no_headroom(submit(first.address.clone(), "d2").await).await;
    assert!(first.sigterm().success());

    let second = spawn_process(&cfg, &data);
    assert_no_headroom(submit(second.address.clone(), "d3").await).await;
}

/// An OpenAI-compatible server that answers requests for `hot` with a 429 carrying OpenAI's
/// rate-limit headers (its `retry-after` outlasts the requests reset, so the cooldown is what
/// binds) and every other model with a short stream carrying its own headroom.
///
/// Requests for `claude-capped` get an Anthropic stream whose headers say no output tokens
/// remain for a minute.
///
/// Requests for `later` get a 429 saying no requests remain for 1.5 s (no `retry-after`) until
/// 1.5 s after the first of them, then the stream.
struct RateLimitingFake {
    address: String,
    requests: Arc<AtomicUsize>,
}

/// How long `later` stays rate limited after its first request.
const LATER_MS: u64 = 1_500;

impl RateLimitingFake {
    async fn start() -> RateLimitingFake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let first_later = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(socket, first_later.clone()));
            }
        });
        RateLimitingFake { address, requests }
    }
}

async fn answer(
    mut socket: tokio::net::TcpStream,
    first_later: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            break text[end + 4..].to_string();
        }
    };
    let error = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    let later_left = body.contains(r#""model":"later""#).then(|| {
        let mut first = first_later.lock().unwrap();
        let first = *first.get_or_insert_with(std::time::Instant::now);
        std::time::Duration::from_millis(LATER_MS).saturating_sub(first.elapsed())
    });
    let response = if let Some(left) = later_left.filter(|l| !l.is_zero()) {
        format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
             x-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: {}ms\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{error}",
            left.as_millis().max(1),
            error.len()
        )
    } else if body.contains(r#""model":"claude-capped""#) {
        anthropic_answer()
    } else if body.contains(r#""model":"hot""#) {
        format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
             x-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: 20s\r\n\
             x-ratelimit-remaining-tokens: 100\r\nx-ratelimit-reset-tokens: 20ms\r\n\
             retry-after: 30\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{error}",
            error.len()
        )
    } else {
        let delta = |d: &str| {
            format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"cool\",\"choices\":[{d}]}}\n\n")
        };
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
             x-ratelimit-remaining-requests: 99\r\nx-ratelimit-reset-requests: 1m0s\r\n\
             x-ratelimit-remaining-tokens: 5000\r\nx-ratelimit-reset-tokens: 6m0s\r\n\
             connection: close\r\n\r\n{}{}data: [DONE]\n\n",
            delta(r#"{"index":0,"delta":{"role":"assistant","content":"cool answer"}}"#),
            delta(r#"{"index":0,"delta":{},"finish_reason":"stop"}"#),
        )
    };
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// A short Anthropic Messages stream; its headers report 10 requests and no output tokens left
/// for the next minute.
fn anthropic_answer() -> String {
    let reset = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(60),
    );
    let events = [
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-capped","content":[],"stop_reason":null,"usage":{"input_tokens":5,"output_tokens":1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"capped answer"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];
    let body: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
         anthropic-ratelimit-requests-remaining: 10\r\nanthropic-ratelimit-requests-reset: {reset}\r\n\
         anthropic-ratelimit-output-tokens-remaining: 0\r\nanthropic-ratelimit-output-tokens-reset: {reset}\r\n\
         connection: close\r\n\r\n{body}"
    )
}

#[actix_web::test]
async fn anthropic_headers_saying_no_tokens_remain_skip_the_route_until_their_reset() {
    let fake = RateLimitingFake::start().await;
    let app = spawn_app_with(
        &format!(
            r#"{MOCK}
[[providers]]
name = "anth"
kind = "anthropic"
base_url = "{}"

[[models]]
slug = "claude"
routes = [{{ provider = "anth", model = "claude-capped" }}, {{ provider = "mock", model = "spare" }}]
"#,
            fake.address
        ),
        |_| {},
    )
    .await;
    assert_eq!(answered_by(&app, "c1", "claude").await, "claude-capped");
    let status = routing_status(&app).await;
    let capped = route_status(&status, "claude", "claude-capped");
    assert_eq!(capped["admitted"], false);
    assert_eq!(capped["not_admitted_reason"], "provider_tokens_exhausted");
    let provider = &capped["quota"]["provider"];
    assert_eq!(provider["tokens_remaining"], 0);
    assert_eq!(provider["requests_remaining"], 10);
    assert!(provider["tokens_reset_at"].is_string());
    assert_eq!(answered_by(&app, "c2", "claude").await, "spare");
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
}

#[actix_web::test]
async fn a_provider_429_cools_only_its_route_and_its_headers_show_in_routing_status() {
    let fake = RateLimitingFake::start().await;
    let app = spawn_app_with(
        &format!(
            r#"{MOCK}
[[providers]]
name = "tier"
kind = "openai"
base_url = "{}"
max_attempts = 1

[[models]]
slug = "hot"
routes = [{{ provider = "tier", model = "hot" }}]

[[models]]
slug = "cool"
routes = [{{ provider = "tier", model = "cool" }}]
"#,
            fake.address
        ),
        |_| {},
    )
    .await;
    let sub = app.submit(ADMIN_KEY, &chat_body("h1", "Hi", "hot")).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "failed");
    assert_eq!(exec["error"]["code"], "rate_limited");

    let status = routing_status(&app).await;
    let hot = route_status(&status, "hot", "hot");
    assert_eq!(hot["admitted"], false);
    assert_eq!(hot["not_admitted_reason"], "provider_rate_limited");
    let cooldown = hot["quota"]["cooldown_remaining_ms"].as_u64().unwrap();
    assert!(cooldown > 0 && cooldown <= 30_000, "{hot}");
    assert_eq!(hot["quota"]["provider"]["requests_remaining"], 0);
    assert!(hot["quota"]["provider"]["requests_reset_at"].is_string());

    // Never tried again before its reset: the submit is refused with when to come back.
    let res = app
        .post("/v1/executions", ADMIN_KEY, &chat_body("h2", "Hi", "hot"))
        .await;
    assert_no_headroom(res).await;
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);

    // The provider's other model is not cooled down.
    let sub = app.submit(ADMIN_KEY, &chat_body("c1", "Hi", "cool")).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed", "{exec}");
    assert_eq!(exec["output"]["text"], "cool answer");
    let status = routing_status(&app).await;
    let cool = route_status(&status, "cool", "cool");
    assert_eq!(cool["admitted"], true);
    assert_eq!(cool["quota"]["provider"]["requests_remaining"], 99);
    assert_eq!(cool["quota"]["provider"]["tokens_remaining"], 5000);
    assert_eq!(json!(cool["quota"]["cooldown_remaining_ms"]), json!(0));
}

#[actix_web::test]
async fn an_accepted_execution_with_no_route_left_waits_for_the_reset_instead_of_retrying() {
    let fake = RateLimitingFake::start().await;
    let app = spawn_app_with(
        &format!(
            r#"{MOCK}
[[providers]]
name = "tier"
kind = "openai"
base_url = "{}"
max_attempts = 3

[[models]]
slug = "later"
routes = [{{ provider = "tier", model = "later" }}]
"#,
            fake.address
        ),
        |_| {},
    )
    .await;
    let sub = app.submit(ADMIN_KEY, &chat_body("l1", "Hi", "later")).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed", "{exec}");
    // The 429 said when requests come back: the retry waited for it (a retry on the usual
    // 100 ms backoff would have met another 429).
    assert_eq!(fake.requests.load(Ordering::SeqCst), 2);
    assert_eq!(exec["attempts"].as_array().unwrap().len(), 2);
}
