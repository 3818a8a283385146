//! Retention and storage cost on real HTTP and real sled: finished executions past
//! `retention.executions` are deleted in the background and answer 404 (running ones never
//! are), resuming their events says why, a big prompt is stored about once, and a restart
//! reads back only the unfinished executions.

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::fake_openai::{FakeOpenAi, Fault};
use crate::helpers::*;

/// `chat-default` answers at once; `slow` streams for about 20 s.
fn retention_config(keep: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
data_dir = "unused"

[retention]
executions = "{keep}"
sweep_interval = "100ms"

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = 4
mock_chunk_interval_ms = 1

[[providers]]
name = "slowmock"
kind = "mock"
mock_chunks = 400
mock_chunk_interval_ms = 50

[[models]]
slug = "chat-default"
routes = [{{ provider = "mock", model = "mock-1" }}]

[[models]]
slug = "slow"
routes = [{{ provider = "slowmock", model = "mock-slow" }}]
"#
    )
}

async fn wait_gone(app: &TestApp, id: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = app.get(&format!("/v1/executions/{id}"), ADMIN_KEY).await;
        if res.status() == 404 {
            return res;
        }
        assert!(
            Instant::now() < deadline,
            "execution {id} was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn deleted_metric(text: &str, kind: &str) -> u64 {
    let prefix = format!("switchyard_retention_deleted_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[actix_web::test]
async fn finished_executions_past_retention_answer_404_and_running_ones_stay() {
    let app = spawn_app_with(&retention_config("1s"), |_| {}).await;
    let done = app
        .submit(ADMIN_KEY, &chat_body("keep-1", "hello", "chat-default"))
        .await;
    let done_id = done["id"].as_str().unwrap().to_string();
    let running = app
        .submit(ADMIN_KEY, &chat_body("keep-2", "hello", "slow"))
        .await;
    let running_id = running["id"].as_str().unwrap().to_string();
    app.wait_terminal(ADMIN_KEY, &done_id).await;

    let res = wait_gone(&app, &done_id).await;
    let message = assert_error(res, 404, "not_found").await;
    assert!(message.contains("kept for 1s"), "{message}");
    for path in ["log", "events"] {
        let res = app
            .get(&format!("/v1/executions/{done_id}/{path}"), ADMIN_KEY)
            .await;
        assert_error(res, 404, "not_found").await;
    }

    // Running for longer than the retention, and untouched.
    let running = app.execution(ADMIN_KEY, &running_id).await;
    assert_eq!(running["status"], "processing", "{running}");
    let list: Value = app
        .get("/v1/executions", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [running_id.as_str()], "{list}");
    let completed: Value = app
        .get("/v1/executions?status=completed", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(completed["data"], json!([]), "{completed}");

    // The idempotency key went with it: the same key is a new execution.
    let again = app
        .post(
            "/v1/executions",
            ADMIN_KEY,
            &chat_body("keep-1", "hello", "chat-default"),
        )
        .await;
    assert_eq!(again.status(), 202);

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(deleted_metric(&metrics, "execution") >= 1, "{metrics}");

    let res = app
        .post(
            &format!("/v1/executions/{running_id}/cancel"),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn resuming_the_events_of_a_deleted_execution_says_they_are_gone() {
    let app = spawn_app_with(&retention_config("1s"), |_| {}).await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("resume-1", "hello", "chat-default"))
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    let events = app.sse_all(ADMIN_KEY, &id, None).await;
    let last = events.last().unwrap().id;
    assert!(last > 2);
    wait_gone(&app, &id).await;

    let res = app
        .client
        .get(app.url(&format!("/v1/executions/{id}/events")))
        .bearer_auth(ADMIN_KEY)
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    let message = assert_error(res, 404, "not_found").await;
    assert!(
        message.contains("cannot resume events after seq 2") && message.contains("kept for 1s"),
        "{message}"
    );
    let res = app
        .get(&format!("/v1/executions/{id}/events?after=1"), ADMIN_KEY)
        .await;
    let message = assert_error(res, 404, "not_found").await;
    assert!(message.contains("after seq 1"), "{message}");
}

#[actix_web::test]
async fn within_retention_nothing_is_deleted() {
    let app = spawn_app_with(&retention_config("1h"), |_| {}).await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("stay-1", "hello", "chat-default"))
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    app.wait_terminal(ADMIN_KEY, &id).await;
    // Several sweeps run meanwhile.
    tokio::time::sleep(Duration::from_millis(600)).await;
    app.execution(ADMIN_KEY, &id).await;
    let events = app.sse_all(ADMIN_KEY, &id, None).await;
    assert_gapless(&events, 1);
}

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[actix_web::test]
async fn a_big_prompt_is_not_copied_per_persist_or_attempt() {
    // Every execution's first try fails, so each logs the request body twice.
    let fake = FakeOpenAi::start().await.with_script(vec![
        Fault::status(500),
        Fault::None,
        Fault::status(500),
    ]);
    let app = spawn_with_fakes(&[&fake]).await;
    let warm = app
        .submit(ADMIN_KEY, &chat_body("big-warm", "hello", "chat-default"))
        .await;
    app.wait_terminal(ADMIN_KEY, warm["id"].as_str().unwrap())
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = disk_bytes(app.data_dir.path());

    const PROMPT: usize = 1024 * 1024;
    let prompt = "lorem ipsum ".repeat(PROMPT / 12);
    let mut ids = Vec::new();
    for i in 0..2 {
        let sub = app
            .submit(ADMIN_KEY, &chat_body(&format!("big-{i}"), &prompt, "fake"))
            .await;
        let id = sub["id"].as_str().unwrap().to_string();
        let exec = app.wait_terminal(ADMIN_KEY, &id).await;
        assert_eq!(exec["status"], "completed", "{exec}");
        assert_eq!(exec["attempts"].as_array().unwrap().len(), 2, "{exec}");
        ids.push(id);
    }
    // sled writes its log out within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let per_execution = disk_bytes(app.data_dir.path()).saturating_sub(before) / 2;
    // Before the request had its own tree: ~7x (record rewrites plus a copy per attempt).
    // Up to 2x remains: sled rewrites the leaf holding the request when it consolidates it
    // (README "Storage and retention").
    assert!(
        per_execution < 2 * PROMPT as u64,
        "{per_execution} bytes on disk per execution with a {PROMPT}-byte prompt"
    );

    // The debug log still shows the exact body sent, prompt included, for both attempts.
    let log: Value = app
        .get(&format!("/v1/executions/{}/log", ids[0]), ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let requests = fake.requests();
    for (i, attempt) in log["attempts"].as_array().unwrap().iter().enumerate() {
        let body = &attempt["entries"][0]["body"];
        assert_eq!(body["messages"][0]["content"], prompt.as_str());
        assert_eq!(*body, requests[i], "attempt {i}");
    }
}

#[actix_web::test]
async fn a_restart_reads_back_only_the_unfinished_executions() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("switchyard.toml");
    std::fs::write(&config_path, retention_config("30d")).unwrap();
    let data = dir.path().join("data");
    let mut server = spawn_process(&config_path, &data);
    let client = reqwest::Client::new();
    let submit = |key: String, model: &'static str| {
        let (client, address) = (client.clone(), server.address.clone());
        async move {
            let res = client
                .post(format!("{address}/v1/executions"))
                .bearer_auth(ADMIN_KEY)
                .json(&chat_body(&key, "hello", model))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            let body: Value = res.json().await.unwrap();
            body["id"].as_str().unwrap().to_string()
        }
    };
    let mut finished = Vec::new();
    for i in 0..40 {
        finished.push(submit(format!("done-{i}"), "chat-default").await);
    }
    let slow = [
        submit("slow-1".into(), "slow").await,
        submit("slow-2".into(), "slow").await,
    ];
    let wait_done = |id: String| {
        let (client, address) = (client.clone(), server.address.clone());
        async move {
            for _ in 0..500 {
                let exec: Value = client
                    .get(format!("{address}/v1/executions/{id}"))
                    .bearer_auth(ADMIN_KEY)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if exec["status"] == "completed" {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{id} did not complete");
        }
    };
    for id in &finished {
        wait_done(id.clone()).await;
    }
    server.sigkill();

    let mut settings = switchyard::settings::Settings::parse(&retention_config("30d")).unwrap();
    settings.data_dir = data.clone();
    settings.admin_key = Some(ADMIN_KEY.to_string());
    let app = switchyard::startup::Application::build(settings)
        .await
        .unwrap();
    assert_eq!(app.recovered(), slow.len());
    let address = format!("http://{}", app.address());
    let handle = app.server_handle();
    actix_web::rt::spawn(app.run_until_stopped());
    let list: Value = client
        .get(format!("{address}/v1/executions?status=processing"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = slow.iter().map(String::as_str).collect::<Vec<_>>();
    expected.sort_unstable();
    assert_eq!(ids, expected, "{list}");
    handle.stop(false).await;
}
