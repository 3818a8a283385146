//! Testing mode: the whole pipeline without a provider call — test keys, sample data from a
//! schema, simulated faults with the real failover sequence, nothing held or charged.

use serde_json::{json, Value};

use crate::fake_openai::FakeOpenAi;
use crate::helpers::*;

/// A test key (`"mode": "test"`) of `project`.
async fn test_key(app: &TestApp, project: &str) -> String {
    let res = app
        .post(
            "/v1/keys",
            ADMIN_KEY,
            &json!({"project_id": project, "role": "member", "mode": "test"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await.unwrap();
    assert_eq!(key["mode"], "test");
    key["key"].as_str().unwrap().to_string()
}

#[actix_web::test]
async fn testing_runs_everything_but_the_provider_call() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&fake]).await;
    let schema = json!({"type": "object", "required": ["order_id", "email", "placed_at", "items"],
        "properties": {"order_id": {"type": "string", "format": "uuid"},
            "email": {"type": "string", "format": "email"},
            "placed_at": {"type": "string", "format": "date-time"},
            "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/item"}}},
        "$defs": {"item": {"type": "object", "required": ["sku", "quantity"],
            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-\\d{4}$"},
                "quantity": {"type": "integer", "minimum": 1}}}}});
    let body = |key: &str| {
        json!({"model": "fake", "idempotency_key": key, "mode": "testing",
            "messages": [{"role": "user", "content": "my order"}],
            "params": {"response_format": {"type": "json_schema",
                "json_schema": {"name": "order", "schema": schema}}}})
    };
    let sub = app.submit(ADMIN_KEY, &body("t1")).await;
    let id = sub["id"].as_str().unwrap();
    let events = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&events, 1);
    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "completed");
    assert_eq!(exec["mode"], "testing");
    assert_eq!(exec["attempts"][0]["provider"], "testing");
    let data = &exec["output"]["data"];
    assert!(jsonschema::is_valid(&schema, data), "{data}");
    assert_eq!(
        serde_json::from_str::<Value>(&chunk_text(&events)).unwrap(),
        *data
    );
    assert_eq!(fake.request_count(), 0, "no provider was called");
    // The same schema, the same sample.
    let again = app.submit(ADMIN_KEY, &body("t2")).await;
    let again = app
        .wait_terminal(ADMIN_KEY, again["id"].as_str().unwrap())
        .await;
    assert_eq!(again["output"]["data"], *data);
    // Counted apart in analytics.
    let analytics: Value = app
        .get("/v1/analytics?group_by=model", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        analytics.to_string().contains("fake:testing"),
        "{analytics}"
    );
}

#[actix_web::test]
async fn a_simulated_cut_fails_over_for_real_and_continues_the_text() {
    let app = spawn_app().await;
    let body = json!({"model": "chat-default", "idempotency_key": "s1", "mode": "testing",
        "messages": [{"role": "user", "content": "hello"}],
        "simulate": {"fail_after_chunks": 5}});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let id = sub["id"].as_str().unwrap();
    let events = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&events, 1);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let failover = kinds
        .iter()
        .position(|k| *k == "failover")
        .expect("a failover");
    assert_eq!(
        kinds[..failover].iter().filter(|k| **k == "chunk").count(),
        5
    );
    let f = &events[failover].data;
    assert_eq!(
        (&f["from"], &f["to"]),
        (&json!("testing"), &json!("testing-fallback"))
    );
    assert_eq!(f["reason"], "stream_interrupted");
    assert_eq!(f["continuation"]["join"], "exact");
    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    let text = exec["output"]["text"].as_str().unwrap();
    assert_eq!(text, chunk_text(&events));
    assert_eq!(
        text.split_whitespace().count(),
        24,
        "the whole answer, nothing twice"
    );

    // A 429 before any chunk: the fallback answers, the failover names the code.
    let body = json!({"model": "chat-default", "idempotency_key": "s2", "mode": "testing",
        "messages": [{"role": "user", "content": "hello"}], "simulate": {"status": 429}});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let events = app
        .sse_all(ADMIN_KEY, sub["id"].as_str().unwrap(), None)
        .await;
    let f = events.iter().find(|e| e.event == "failover").unwrap();
    assert_eq!(f.data["reason"], "rate_limited");
    assert_eq!(events.last().unwrap().data["status"], "completed");
}

#[actix_web::test]
async fn a_simulated_stall_ends_at_the_idle_timeout_and_fails_over() {
    let app = spawn_app_with(&config(&[]), |s| s.testing.idle_timeout_ms = 200).await;
    let body = json!({"model": "chat-default", "idempotency_key": "st1", "mode": "testing",
        "messages": [{"role": "user", "content": "hello"}],
        "simulate": {"stall_after_chunks": 3}});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let events = app
        .sse_all(ADMIN_KEY, sub["id"].as_str().unwrap(), None)
        .await;
    assert_gapless(&events, 1);
    let f = events
        .iter()
        .find(|e| e.event == "failover")
        .expect("a failover");
    assert_eq!(f.data["reason"], "provider_timeout");
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["output"]["text"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        24
    );
}

#[actix_web::test]
async fn test_keys_run_only_testing_executions_and_bad_input_is_refused() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&fake]).await;
    let key = test_key(&app, "sandbox").await;
    // Without a mode, a test key's submit is a testing one, also on the compat endpoint.
    let sub = app.submit(&key, &chat_body("k1", "hi", "fake")).await;
    let exec = app.wait_terminal(&key, sub["id"].as_str().unwrap()).await;
    assert_eq!(
        (exec["status"].as_str(), exec["mode"].as_str()),
        (Some("completed"), Some("testing"))
    );
    let res = app
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    // Embeddings too come from the built-in testing routes.
    let res = app
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "fake", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let embeddings: Value = res.json().await.unwrap();
    assert_eq!(embeddings["data"].as_array().unwrap().len(), 2);
    assert_eq!(fake.request_count(), 0);
    let mut live = chat_body("k2", "hi", "fake");
    live["mode"] = json!("live");
    let res = app.post("/v1/executions", &key, &live).await;
    assert_error(res, 403, "forbidden").await;

    let mut simulate = chat_body("k3", "hi", "fake");
    simulate["simulate"] = json!({"fail_after_chunks": 2});
    let res = app.post("/v1/executions", ADMIN_KEY, &simulate).await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.starts_with("simulate"), "{message}");
    let mut typo = chat_body("k4", "hi", "fake");
    typo["mode"] = json!("test");
    let res = app.post("/v1/executions", ADMIN_KEY, &typo).await;
    assert_error(res, 400, "invalid_request").await;
    let mut unknown = chat_body("k5", "hi", "fake");
    unknown["mode"] = json!("testing");
    unknown["simulate"] = json!({"explode": true});
    let res = app.post("/v1/executions", ADMIN_KEY, &unknown).await;
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn testing_executions_hold_and_charge_nothing() {
    let toml = config(&[]).replace(
        r#"{ provider = "mock", model = "mock-1" }"#,
        r#"{ provider = "mock", model = "mock-1", input_per_mtok = 1000.0, output_per_mtok = 1000.0 }"#,
    );
    let app = spawn_app_with(&toml, |_| {}).await;
    let res = app
        .post(
            "/v1/projects/default/balance",
            ADMIN_KEY,
            &json!({"amount_micros": 1}),
        )
        .await;
    assert_eq!(res.status(), 200);
    // Live: the balance cannot cover the hold.
    let res = app
        .post(
            "/v1/executions",
            ADMIN_KEY,
            &chat_body("b1", "hi", "chat-default"),
        )
        .await;
    assert_error(res, 402, "insufficient_balance").await;
    let mut testing = chat_body("b2", "hi", "chat-default");
    testing["mode"] = json!("testing");
    let sub = app.submit(ADMIN_KEY, &testing).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed");
    assert!(
        exec.get("cost").is_none() || exec["cost"]["settled_micros"] == 0,
        "{exec}"
    );
    let balance: Value = app
        .get("/v1/balance", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(balance["balance_micros"], 1);
}
