//! Submit → complete, idempotency (including the race), cancel, expiry, provider rejection.

use serde_json::json;
use std::time::Duration;

use crate::fake_openai::{FakeOpenAi, Fault};
use crate::helpers::*;

#[actix_web::test]
async fn a_submitted_execution_completes_with_the_providers_exact_text() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&fake]).await;
    let mut body = chat_body("k1", "Hello there", "fake");
    body["params"] = json!({"temperature": 0.2, "max_tokens": 64});
    body["metadata"] = json!({"user_id": "u_1"});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let id = sub["id"].as_str().unwrap();
    assert!(id.starts_with("exec_"));
    assert_eq!(sub["status"], "pending");
    assert_eq!(sub["events_url"], format!("/v1/executions/{id}/events"));
    assert!(sub["websocket_channel"]
        .as_str()
        .unwrap()
        .starts_with("ai_response:default:"));
    assert!(sub["ws_token"].as_str().unwrap().len() > 20);

    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "completed");
    assert_eq!(exec["output"]["text"], fake.full_text());
    assert_eq!(exec["metadata"]["user_id"], "u_1");
    assert_eq!(exec["usage"]["completion_tokens"], 20);
    assert_eq!(
        exec["usage"]["total_tokens"],
        exec["usage"]["prompt_tokens"].as_u64().unwrap() + 20
    );
    assert!(exec["duration_ms"].as_u64().is_some());
    let attempts = exec["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["provider"], "fake0");
    assert_eq!(attempts[0]["model"], "up-0");
    assert_eq!(attempts[0]["outcome"], "succeeded");
    assert_eq!(attempts[0]["chunks_delivered"], 20);

    // What the provider was sent: OpenAI's streaming request with usage, our params.
    let sent = &fake.requests()[0];
    assert_eq!(sent["model"], "up-0");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["messages"][0]["content"], "Hello there");
}

#[actix_web::test]
async fn the_built_in_mock_answers_without_any_provider_key() {
    let app = spawn_app().await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("m1", "Hello!", "chat-default"))
        .await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed");
    assert_eq!(
        exec["output"]["text"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        12
    );
    assert_eq!(exec["usage"]["completion_tokens"], 12);
}

#[actix_web::test]
async fn the_same_key_and_body_returns_the_original_without_a_second_provider_call() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&fake]).await;
    let body = chat_body("dup", "Hi", "fake");
    let first = app.submit(ADMIN_KEY, &body).await;
    let id = first["id"].as_str().unwrap();
    app.wait_terminal(ADMIN_KEY, id).await;
    let again = app.post("/v1/executions", ADMIN_KEY, &body).await;
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], id);
    assert_eq!(again["status"], "completed");
    assert_eq!(fake.request_count(), 1);
}

#[actix_web::test]
async fn sixteen_racing_identical_submits_make_one_execution_and_one_provider_call() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&fake]).await;
    let body = chat_body("race", "Hi", "fake");
    let sends = (0..16).map(|_| {
        let client = app.client.clone();
        let url = app.url("/v1/executions");
        let body = body.clone();
        async move {
            let res = client
                .post(url)
                .bearer_auth(ADMIN_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let v: serde_json::Value = res.json().await.unwrap();
            (status, v["id"].as_str().unwrap().to_string())
        }
    });
    let results = futures_util::future::join_all(sends).await;
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 202).count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 200).count(),
        15,
        "{results:?}"
    );
    let id = &results[0].1;
    assert!(results.iter().all(|(_, i)| i == id));
    app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(fake.request_count(), 1);
    let list: serde_json::Value = app
        .get("/v1/executions", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn the_same_key_with_another_body_is_a_conflict() {
    let app = spawn_app().await;
    app.submit(ADMIN_KEY, &chat_body("c1", "one", "chat-default"))
        .await;
    let res = app
        .post(
            "/v1/executions",
            ADMIN_KEY,
            &chat_body("c1", "two", "chat-default"),
        )
        .await;
    assert_eq!(res.status(), 409);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "idempotency_conflict");
    assert_eq!(v["error"]["retryable"], false);
}

#[actix_web::test]
async fn cancel_mid_stream_drops_the_provider_stream_and_ends_the_events() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(200)
        .with_chunk_delay(Duration::from_millis(20));
    let app = spawn_with_fakes(&[&fake]).await;
    let sub = app.submit(ADMIN_KEY, &chat_body("cx", "Hi", "fake")).await;
    let id = sub["id"].as_str().unwrap();
    let mut sse = app.sse(ADMIN_KEY, id, None).await;
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|e: &&SseEvent| e.event == "chunk")
        .count()
        < 3
    {
        seen.push(sse.next().await.unwrap());
    }
    let res = app
        .post(
            &format!("/v1/executions/{id}/cancel"),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let cancelled: serde_json::Value = res.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["attempts"][0]["outcome"], "cancelled");

    while let Some(ev) = sse.next().await {
        seen.push(ev);
    }
    assert_gapless(&seen, 1);
    let done = seen.last().unwrap();
    assert_eq!(done.data["status"], "cancelled");
    assert_eq!(done.data["output"]["text"], chunk_text(&seen));

    // The provider's connection is dropped, not drained.
    for _ in 0..200 {
        if fake.client_disconnects() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fake.client_disconnects() >= 1);
    let again = app
        .post(
            &format!("/v1/executions/{id}/cancel"),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    assert_eq!(again.status(), 409);
    let exec = app.execution(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "cancelled");
}

#[actix_web::test]
async fn an_execution_past_its_maximum_duration_expires() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(100)
        .with_chunk_delay(Duration::from_millis(30));
    let app = spawn_app_with(&config(&[&fake]), |s| s.limits.max_execution_ms = 300).await;
    let sub = app.submit(ADMIN_KEY, &chat_body("exp", "Hi", "fake")).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "expired");
    assert_eq!(exec["error"]["code"], "provider_timeout");
    let text = exec["output"]["text"].as_str().unwrap();
    assert!(fake.full_text().starts_with(text));
    let events = app
        .sse_all(ADMIN_KEY, sub["id"].as_str().unwrap(), None)
        .await;
    assert_gapless(&events, 1);
    assert_eq!(events[events.len() - 2].event, "error");
}

#[actix_web::test]
async fn a_provider_rejection_fails_the_execution_with_a_normalized_code() {
    let fake = FakeOpenAi::start()
        .await
        .with_default(Fault::unauthorized());
    let app = spawn_with_fakes(&[&fake]).await;
    let sub = app.submit(ADMIN_KEY, &chat_body("rej", "Hi", "fake")).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "failed");
    assert_eq!(exec["error"]["code"], "provider_error");
    assert_eq!(exec["error"]["retryable"], false);
    assert_eq!(exec["attempts"][0]["error_code"], "provider_error");
    assert_eq!(
        fake.request_count(),
        1,
        "a 401 from the provider is not retried"
    );
}

#[actix_web::test]
async fn the_list_is_newest_first_and_filters_by_status() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let sub = app
            .submit(
                ADMIN_KEY,
                &chat_body(&format!("l{i}"), "Hi", "chat-default"),
            )
            .await;
        ids.push(sub["id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for id in &ids {
        app.wait_terminal(ADMIN_KEY, id).await;
    }
    let list: serde_json::Value = app
        .get("/v1/executions?status=completed", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, want);
    let none: serde_json::Value = app
        .get("/v1/executions?status=failed", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert!(none["data"].as_array().unwrap().is_empty());
    assert_eq!(none["has_more"], false);
}

#[actix_web::test]
async fn the_debug_log_shows_the_request_response_and_raw_chunks_with_secrets_redacted() {
    let fake = FakeOpenAi::start().await.with_words(5);
    let toml = config(&[&fake]).replace(
        "idle_timeout_ms = 500\n",
        "idle_timeout_ms = 500\napi_key_env = \"SWITCHYARD_TEST_FAKE_KEY_LOG\"\n",
    );
    let app = spawn_app_with(&toml, |s| {
        s.providers[1].api_key = Some("sk-very-secret".into());
    })
    .await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("log1", "Hi", "fake"))
        .await;
    let id = sub["id"].as_str().unwrap();
    app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(
        fake.request_header(0, "authorization").as_deref(),
        Some("Bearer sk-very-secret")
    );

    let res = app
        .get(&format!("/v1/executions/{id}/log"), ADMIN_KEY)
        .await;
    assert_eq!(res.status(), 200);
    let log: serde_json::Value = res.json().await.unwrap();
    assert!(
        !log.to_string().contains("sk-very-secret"),
        "secrets are redacted"
    );
    let attempt = &log["attempts"][0];
    assert_eq!(attempt["provider"], "fake0");
    let entries = attempt["entries"].as_array().unwrap();
    assert_eq!(entries[0]["type"], "request");
    assert_eq!(entries[0]["body"], fake.requests()[0]);
    let auth = entries[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "authorization")
        .unwrap();
    assert_eq!(auth[1], "[redacted]");
    assert_eq!(entries[1]["type"], "response");
    assert_eq!(entries[1]["status"], 200);
    let chunks: Vec<&serde_json::Value> = entries.iter().filter(|e| e["type"] == "chunk").collect();
    // 5 words, the finish chunk, the usage chunk and [DONE], each as received.
    assert_eq!(chunks.len(), 8);
    assert_eq!(chunks.last().unwrap()["data"], "[DONE]");
    assert!(chunks[0]["data"].as_str().unwrap().contains("\"w0 \""));
    assert!(entries.iter().all(|e| e["elapsed_ms"].as_f64().is_some()));

    let unknown = app.get("/v1/executions/exec_nope/log", ADMIN_KEY).await;
    assert_eq!(unknown.status(), 404);
}

#[actix_web::test]
async fn the_list_shows_the_start_of_each_prompt() {
    let app = spawn_app().await;
    let long = "word ".repeat(40);
    app.submit(
        ADMIN_KEY,
        &chat_body("excerpt-1", "short question?", "chat-default"),
    )
    .await;
    app.submit(ADMIN_KEY, &chat_body("excerpt-2", &long, "chat-default"))
        .await;
    let res = app.get("/v1/executions?limit=2", ADMIN_KEY).await;
    let page: serde_json::Value = res.json().await.unwrap();
    let excerpts: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["prompt_excerpt"].as_str().unwrap())
        .collect();
    assert_eq!(excerpts[1], "short question?");
    assert_eq!(excerpts[0].chars().count(), 81, "{}", excerpts[0]);
    assert!(excerpts[0].ends_with('…'));
}
