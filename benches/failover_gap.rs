//! The failover gap: a primary provider cuts its stream mid-answer; how long until the first
//! continuation chunk reaches a subscriber, compared with the fallback's own time to first
//! chunk. Real HTTP on 127.0.0.1 for everything: fake providers, the gateway, an SSE client.
//!
//! `cargo bench --bench failover_gap`

#[path = "../tests/api/fake_http.rs"]
mod fake_http;
#[path = "../tests/api/fake_openai.rs"]
mod fake_openai;

use eventsource_stream::Eventsource;
use fake_openai::{FakeOpenAi, Fault};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use switchyard::settings::Settings;
use switchyard::startup::Application;

const RUNS: usize = 40;
const KEY: &str = "bench-admin";

fn main() {
    actix_web::rt::System::new().block_on(run());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p50 = percentile(&xs, 0.5);
    println!(
        "{name:<48} p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms",
        ms(p50),
        ms(percentile(&xs, 0.99)),
        ms(*xs.last().unwrap())
    );
    p50
}

async fn run() {
    let primary = FakeOpenAi::start()
        .await
        .with_words(40)
        .with_default(Fault::CutAfter(5));
    let fallback = FakeOpenAi::start().await.with_words(40);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"listen = "127.0.0.1:0"
data_dir = "{}"
[[providers]]
name = "primary"
kind = "openai"
base_url = "{}"
max_attempts = 1
[[providers]]
name = "fallback"
kind = "openai"
base_url = "{}"
[[models]]
slug = "m"
routes = [{{ provider = "primary", model = "p" }}, {{ provider = "fallback", model = "f" }}]
"#,
        dir.path().display(),
        primary.base_url(),
        fallback.base_url()
    );
    let mut settings = Settings::parse(&toml).unwrap();
    settings.admin_key = Some(KEY.into());
    let app = Application::build(settings).await.unwrap();
    let base = format!("http://{}", app.address());
    actix_web::rt::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();

    // The fallback's own time to first chunk, for the same continuation request.
    let continuation = json!({"model": "f", "stream": true, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": FakeOpenAi::text_range(0, 5)},
        {"role": "user", "content": switchyard::routing::CONTINUE_INSTRUCTION}]});
    let mut direct = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let res = client
            .post(fallback.chat_url())
            .json(&continuation)
            .send()
            .await
            .unwrap();
        let mut events = res.bytes_stream().eventsource();
        while let Some(Ok(ev)) = events.next().await {
            let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
            if v["choices"][0]["delta"]["content"].is_string() {
                direct.push(started.elapsed());
                break;
            }
        }
        while events.next().await.is_some() {}
    }

    let (mut after_failover, mut after_last_chunk) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let body = json!({"model": "m", "idempotency_key": format!("gap-{i}"),
                          "messages": [{"role": "user", "content": "Hi"}]});
        let sub: Value = client
            .post(format!("{base}/v1/executions"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = sub["id"].as_str().unwrap();
        let res = client
            .get(format!("{base}/v1/executions/{id}/events"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        let mut events = res.bytes_stream().eventsource();
        let (mut last_chunk, mut failover, mut text) = (None, None, String::new());
        while let Some(Ok(ev)) = events.next().await {
            let at = Instant::now();
            let data: Value = serde_json::from_str(&ev.data).unwrap();
            match ev.event.as_str() {
                "failover" => failover = Some(at),
                "chunk" if failover.is_some() && after_failover.len() == i => {
                    after_failover.push(at - failover.unwrap());
                    after_last_chunk.push(at - last_chunk.unwrap());
                    text.push_str(data["delta"].as_str().unwrap());
                }
                "chunk" => {
                    last_chunk = Some(at);
                    text.push_str(data["delta"].as_str().unwrap());
                }
                _ => {}
            }
        }
        assert_eq!(text, fallback.full_text(), "the continued answer is exact");
    }

    println!("failover gap over {RUNS} runs (primary cut after 5 of 40 chunks, FIN):");
    let ttfc = summary("fallback's own time to first chunk (direct)", direct);
    let gap = summary("failover event -> first continuation chunk", after_failover);
    summary(
        "last primary chunk -> first continuation chunk",
        after_last_chunk,
    );
    let over = gap.as_secs_f64() * 1e3 - ttfc.as_secs_f64() * 1e3;
    println!("gap beyond the fallback's own time to first chunk (p50): {over:.3} ms");
}
