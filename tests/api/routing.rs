//! Provider health: the breaker opens on a failing primary, traffic skips it, and one probe
//! after the cooldown brings it back.

use std::time::Duration;

use crate::fake_openai::{FakeOpenAi, Fault};
use crate::helpers::*;

async fn status(app: &TestApp) -> serde_json::Value {
    let res = app.get("/v1/routing/status", ADMIN_KEY).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[actix_web::test]
async fn a_primary_that_is_down_for_a_while_is_skipped_then_probed_back_into_use() {
    let primary = FakeOpenAi::start()
        .await
        .with_words(4)
        .with_default(Fault::status(503));
    let backup = FakeOpenAi::start().await.with_words(4);
    let app = spawn_app_with(&config(&[&primary, &backup]), |s| {
        s.providers[1].max_attempts = 1;
        s.providers[1].breaker_failures = 2;
        s.providers[1].breaker_cooldown_ms = 300;
    })
    .await;
    let run = |key: &'static str| {
        let app = &app;
        async move {
            let sub = app.submit(ADMIN_KEY, &chat_body(key, "Hi", "fake")).await;
            app.wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
                .await
        }
    };

    for key in ["b1", "b2"] {
        let exec = run(key).await;
        assert_eq!(exec["status"], "completed");
        assert_eq!(exec["attempts"][0]["provider"], "fake0");
        assert_eq!(exec["attempts"][0]["error_code"], "provider_unavailable");
        assert_eq!(exec["attempts"][1]["provider"], "fake1");
    }
    assert_eq!(primary.request_count(), 2);
    let s = status(&app).await;
    assert_eq!(s["providers"][1]["name"], "fake0");
    assert_eq!(s["providers"][1]["state"], "open");
    assert_eq!(s["providers"][1]["consecutive_failures"], 2);
    assert!(s["providers"][1]["cooldown_remaining_ms"].as_u64().unwrap() > 0);
    assert_eq!(s["providers"][2]["state"], "closed");

    // Open: the primary is not called at all.
    let exec = run("b3").await;
    assert_eq!(exec["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(exec["attempts"][0]["provider"], "fake1");
    assert_eq!(primary.request_count(), 2);

    // It recovers; after the cooldown one probe closes the breaker.
    primary.set_default(Fault::None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(status(&app).await["providers"][1]["state"], "half_open");
    let exec = run("b4").await;
    assert_eq!(exec["attempts"][0]["provider"], "fake0");
    assert_eq!(exec["attempts"][0]["outcome"], "succeeded");
    let s = status(&app).await;
    assert_eq!(s["providers"][1]["state"], "closed");
    assert_eq!(s["providers"][1]["in_flight"], 0);
    assert!(s["providers"][1]["latency_ms_ewma"].as_f64().is_some());
}

#[actix_web::test]
async fn when_every_route_is_open_the_least_recently_failed_is_still_tried() {
    let only = FakeOpenAi::start()
        .await
        .with_words(3)
        .with_script(vec![Fault::status(503)]);
    let app = spawn_app_with(&config(&[&only]), |s| {
        s.providers[1].max_attempts = 1;
        s.providers[1].breaker_failures = 1;
        s.providers[1].breaker_cooldown_ms = 60_000;
    })
    .await;
    let first = app.submit(ADMIN_KEY, &chat_body("o1", "Hi", "fake")).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, first["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "failed");
    let st = status(&app).await;
    assert_eq!(st["providers"][1]["state"], "open", "{st}");
    let second = app.submit(ADMIN_KEY, &chat_body("o2", "Hi", "fake")).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, second["id"].as_str().unwrap())
        .await;
    assert_eq!(
        exec["status"], "completed",
        "tried rather than failed at once"
    );
    assert_eq!(only.request_count(), 2);
}

#[actix_web::test]
async fn routing_status_needs_a_key() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/v1/routing/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let s = status(&app).await;
    assert_eq!(s["providers"][0]["name"], "mock");
    assert_eq!(s["models"][0]["slug"], "chat-default");
    assert_eq!(s["models"][0]["routes"][0]["admitted"], true);
}

#[actix_web::test]
async fn routes_without_a_needed_capability_are_skipped() {
    let no_json = FakeOpenAi::start().await.with_words(3);
    let json_ok = FakeOpenAi::start().await.with_words(3);
    let toml = config(&[&no_json, &json_ok]).replace(
        r#"{ provider = "fake0", model = "up-0" }"#,
        r#"{ provider = "fake0", model = "up-0", json_mode = false, context_window = 100000 }"#,
    );
    let app = spawn_app_with(&toml, |_| {}).await;
    let mut body = chat_body("j1", "Give me JSON", "fake");
    body["params"] = serde_json::json!({"response_format": {"type": "json_object"}});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed");
    assert_eq!(exec["attempts"][0]["provider"], "fake1");
    assert_eq!(no_json.request_count(), 0);
    assert_eq!(
        json_ok.requests()[0]["response_format"]["type"],
        "json_object"
    );

    // Without the need, the first route serves as usual.
    let sub = app.submit(ADMIN_KEY, &chat_body("j2", "Hi", "fake")).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["attempts"][0]["provider"], "fake0");
}

#[actix_web::test]
async fn a_prompt_larger_than_every_context_window_is_refused_before_any_provider_call() {
    let small = FakeOpenAi::start().await.with_words(3);
    let large = FakeOpenAi::start().await.with_words(3);
    let toml = config(&[&small, &large])
        .replace(
            r#"{ provider = "fake0", model = "up-0" }"#,
            r#"{ provider = "fake0", model = "up-0", context_window = 50 }"#,
        )
        .replace(
            r#"{ provider = "fake1", model = "up-1" }"#,
            r#"{ provider = "fake1", model = "up-1", context_window = 500 }"#,
        );
    let app = spawn_app_with(&toml, |_| {}).await;
    let prompt = "word ".repeat(200); // about 250 tokens: too big for fake0 only
    let sub = app
        .submit(ADMIN_KEY, &chat_body("c1", &prompt, "fake"))
        .await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["attempts"][0]["provider"], "fake1");
    assert_eq!(small.request_count(), 0);

    let huge = "word ".repeat(2000);
    let res = app
        .post("/v1/executions", ADMIN_KEY, &chat_body("c2", &huge, "fake"))
        .await;
    assert_eq!(res.status(), 400);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "context_length_exceeded");
    assert_eq!(large.request_count(), 1);
}

#[actix_web::test]
async fn auto_spreads_requests_over_healthy_models() {
    let fake = FakeOpenAi::start().await.with_words(3);
    let app = spawn_app_with(&config(&[&fake]), |s| {
        s.providers[0].mock_chunk_interval_ms = 40
    })
    .await;
    let first = app.submit(ADMIN_KEY, &chat_body("a1", "Hi", "auto")).await;
    // Wait until its attempt is in flight, so the second choice sees the load.
    for _ in 0..500 {
        let exec = app
            .execution(ADMIN_KEY, first["id"].as_str().unwrap())
            .await;
        if exec["attempts"].as_array().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let second = app.submit(ADMIN_KEY, &chat_body("a2", "Hi", "auto")).await;
    assert_eq!(first["model"], "chat-default");
    assert_eq!(second["model"], "fake", "the busy model is passed over");
    for sub in [&first, &second] {
        let exec = app
            .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
            .await;
        assert_eq!(exec["status"], "completed");
    }
}

/// Health is per route: one upstream model failing opens its own breaker only; another model
/// of the same provider stays in rotation, and its successes do not close the failing one's.
#[actix_web::test]
async fn two_models_of_one_provider_fail_independently() {
    let shared = FakeOpenAi::start()
        .await
        .with_words(3)
        .with_script(vec![Fault::status(500), Fault::status(500)]);
    let backup = FakeOpenAi::start().await.with_words(3);
    let mut toml = config(&[&shared, &backup]);
    toml.push_str(
        "\n[[models]]\nslug = \"other\"\nroutes = [{ provider = \"fake0\", model = \"up-other\" }]\n",
    );
    let app = spawn_app_with(&toml, |s| {
        s.providers[1].max_attempts = 1;
        s.providers[1].breaker_failures = 2;
        s.providers[1].breaker_cooldown_ms = 60_000;
    })
    .await;
    let run = |key: &'static str, model: &'static str| {
        let app = &app;
        async move {
            let sub = app.submit(ADMIN_KEY, &chat_body(key, "Hi", model)).await;
            app.wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
                .await
        }
    };
    for key in ["m1", "m2"] {
        let exec = run(key, "fake").await;
        assert_eq!(exec["attempts"][0]["provider"], "fake0");
        assert_eq!(exec["attempts"][1]["provider"], "fake1");
    }
    let route = |s: &serde_json::Value, slug: &str, i: usize| {
        let model = s["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["slug"] == slug)
            .unwrap()
            .clone();
        model["routes"][i].clone()
    };
    let s = status(&app).await;
    let failing = route(&s, "fake", 0);
    assert_eq!(failing["admitted"], false, "{failing}");
    assert_eq!(failing["health"]["state"], "open", "{failing}");
    let sibling = route(&s, "other", 0);
    assert_eq!(sibling["admitted"], true, "{sibling}");
    assert_eq!(sibling["health"]["state"], "closed", "{sibling}");

    // The other model of the same provider answers...
    let exec = run("o1", "other").await;
    assert_eq!(exec["status"], "completed");
    assert_eq!(exec["attempts"][0]["provider"], "fake0");
    assert_eq!(shared.request_count(), 3);
    // ...and that success does not close the failing model's breaker.
    let exec = run("m3", "fake").await;
    assert_eq!(exec["attempts"].as_array().unwrap().len(), 1, "{exec}");
    assert_eq!(exec["attempts"][0]["provider"], "fake1");
    assert_eq!(shared.request_count(), 3);
}
