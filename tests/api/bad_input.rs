//! Bad input gets a contract error (status, normalized code, a message naming the field) and the
//! server keeps serving. Each check is a function so that one test can also run them all
//! against a single server and then prove it still completes a normal submit.

use serde_json::{json, Value};
use std::collections::HashSet;

use crate::helpers::{assert_error, assert_gapless, chat_body, spawn_app, TestApp, ADMIN_KEY};

/// `POST /v1/executions` with a raw body (not necessarily JSON).
async fn post_raw(app: &TestApp, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.client
        .post(app.url("/v1/executions"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Submits `body` and expects a 400 `invalid_request` whose message contains every `needle`.
async fn assert_invalid(app: &TestApp, body: &Value, needles: &[&str]) {
    let res = app.post("/v1/executions", ADMIN_KEY, body).await;
    let message = assert_error(res, 400, "invalid_request").await;
    for needle in needles {
        assert!(
            message.contains(needle),
            "message should name `{needle}`: {message} (body {body})"
        );
    }
}

fn id_of(execution: &Value) -> &str {
    execution["id"].as_str().unwrap()
}

fn valid(idempotency_key: &str) -> Value {
    chat_body(idempotency_key, "hello", "chat-default")
}

async fn check_malformed_json(app: &TestApp) {
    for raw in [
        r#"{"model": "chat-default", "#,
        "{not json}",
        r#"{"model": "m" "idempotency_key": "k"}"#,
        "nul",
    ] {
        let res = post_raw(app, raw).await;
        let message = assert_error(res, 400, "invalid_request").await;
        assert!(message.contains("malformed JSON"), "{raw}: {message}");
    }
    let res = post_raw(app, "").await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("empty"), "{message}");
}

async fn check_wrong_types(app: &TestApp) {
    let mut body = valid("types-1");
    body["messages"] = json!("hi");
    assert_invalid(app, &body, &["messages", "invalid type"]).await;

    let mut body = valid("types-2");
    body["params"] = json!({"temperature": "hot"});
    assert_invalid(app, &body, &["params.temperature", "invalid type"]).await;

    let mut body = valid("types-3");
    body["messages"][0]["role"] = json!("robot");
    assert_invalid(app, &body, &["messages[0].role", "robot"]).await;

    let mut body = valid("types-4");
    body["model"] = json!(42);
    assert_invalid(app, &body, &["model", "invalid type"]).await;

    assert_invalid(app, &json!(["not", "an", "object"]), &["invalid type"]).await;
}

async fn check_missing_and_unknown_fields(app: &TestApp) {
    let mut body = valid("unused");
    body.as_object_mut().unwrap().remove("idempotency_key");
    assert_invalid(app, &body, &["idempotency_key"]).await;

    let mut body = valid("unknown-1");
    body["temprature"] = json!(0.5);
    assert_invalid(app, &body, &["temprature"]).await;

    let mut body = valid("unknown-2");
    body["params"] = json!({"temprature": 0.5});
    assert_invalid(app, &body, &["params", "temprature"]).await;
}

async fn check_bad_values(app: &TestApp) {
    let mut body = valid("values-1");
    body["messages"] = json!([]);
    assert_invalid(app, &body, &["messages"]).await;

    for temperature in [2.5, -0.1] {
        let mut body = valid("values-2");
        body["params"] = json!({"temperature": temperature});
        assert_invalid(app, &body, &["params.temperature"]).await;
    }

    let body = chat_body("values-3", "hello", "no-such-model");
    assert_invalid(app, &body, &["model", "no-such-model"]).await;

    assert_invalid(app, &valid(""), &["idempotency_key"]).await;
}

/// A 12 MB body (the default limit is 4 MB), announced with Content-Length and streamed
/// without one.
async fn check_oversized_body(app: &TestApp) {
    let big = "x".repeat(12 * 1024 * 1024);
    let body = json!({"model": "chat-default", "idempotency_key": "big",
                      "messages": [{"role": "user", "content": big}]})
    .to_string();
    let res = post_raw(app, body.clone()).await;
    let message = assert_error(res, 413, "payload_too_large").await;
    assert!(message.contains("larger than"), "{message}");

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = post_raw(app, streamed).await;
    assert_error(res, 413, "payload_too_large").await;
}

async fn check_unauthorized(app: &TestApp) {
    let submit = || {
        app.client
            .post(app.url("/v1/executions"))
            .json(&valid("auth-1"))
    };
    let list = || app.client.get(app.url("/v1/executions"));
    for (what, req) in [
        ("no header", submit()),
        ("no header", list()),
        ("wrong key", submit().bearer_auth("sy_not-a-real-key")),
        ("wrong key", list().bearer_auth("sy_not-a-real-key")),
        ("basic", submit().header("authorization", "Basic x")),
        ("basic", list().header("authorization", "Basic x")),
        ("empty bearer", list().header("authorization", "Bearer ")),
        ("scheme only", list().header("authorization", "Bearer")),
        (
            "admin key as basic",
            list().header("authorization", format!("Basic {ADMIN_KEY}")),
        ),
    ] {
        let res = req.send().await.unwrap();
        let message = assert_error(res, 401, "unauthorized").await;
        assert!(!message.contains(ADMIN_KEY), "{what}: {message}");
    }
    for path in [
        "/v1/executions/exec_x",
        "/v1/executions/exec_x/events",
        "/v1/keys",
    ] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_error(res, 401, "unauthorized").await;
    }
}

async fn check_not_found(app: &TestApp) {
    let res = app.get("/v1/executions/exec_doesnotexist", ADMIN_KEY).await;
    let message = assert_error(res, 404, "not_found").await;
    assert!(message.contains("exec_doesnotexist"), "{message}");
    let res = app
        .get("/v1/executions/exec_doesnotexist/events", ADMIN_KEY)
        .await;
    assert_error(res, 404, "not_found").await;
    let res = app
        .post(
            "/v1/executions/exec_doesnotexist/cancel",
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    assert_error(res, 404, "not_found").await;

    for path in ["/v1/nothing-here", "/v2/executions", "/v1/executions/a/b/c"] {
        let res = app.get(path, ADMIN_KEY).await;
        assert_eq!(res.headers()["content-type"], "application/json", "{path}");
        assert_error(res, 404, "not_found").await;
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_error(res, 404, "not_found").await;
    }
}

async fn check_bad_list_queries(app: &TestApp) {
    for (query, field) in [
        ("status=bogus", "status"),
        ("limit=0", "limit"),
        ("limit=1000", "limit"),
        ("cursor=zz", "cursor"),
        ("colour=red", "colour"),
    ] {
        let res = app.get(&format!("/v1/executions?{query}"), ADMIN_KEY).await;
        let message = assert_error(res, 400, "invalid_request").await;
        assert!(message.contains(field), "{query}: {message}");
    }
    // Not a number at all: a 400 (whether the message names `limit` is checked separately).
    for query in ["limit=abc", "limit=-1", "limit=1.5"] {
        let res = app.get(&format!("/v1/executions?{query}"), ADMIN_KEY).await;
        assert_error(res, 400, "invalid_request").await;
    }
}

/// Submits one execution and waits until it is terminal; returns its id.
async fn completed_execution(app: &TestApp, idempotency_key: &str) -> String {
    let submitted = app.submit(ADMIN_KEY, &valid(idempotency_key)).await;
    let id = submitted["id"].as_str().unwrap().to_string();
    let done = app.wait_terminal(ADMIN_KEY, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    id
}

async fn check_cancel_terminal(app: &TestApp, idempotency_key: &str) {
    let id = completed_execution(app, idempotency_key).await;
    let res = app
        .post(
            &format!("/v1/executions/{id}/cancel"),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    let message = assert_error(res, 409, "conflict").await;
    assert!(message.contains("completed"), "{message}");
    let after = app.execution(ADMIN_KEY, &id).await;
    assert_eq!(
        after["status"], "completed",
        "a terminal status never changes"
    );
}

#[actix_web::test]
async fn malformed_json_is_invalid_request() {
    check_malformed_json(&spawn_app().await).await;
}

#[actix_web::test]
async fn trailing_bytes_after_the_json_are_malformed() {
    let app = spawn_app().await;
    let body = valid("trailing-1").to_string();
    for raw in [
        format!("{body}}}"),
        format!("{body}garbage"),
        format!("{body}{body}"),
    ] {
        let res = post_raw(&app, raw.clone()).await;
        let message = assert_error(res, 400, "invalid_request").await;
        assert!(message.contains("malformed JSON"), "{raw}: {message}");
    }
    let res = app.get("/v1/executions", ADMIN_KEY).await;
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["data"], json!([]), "no execution was created: {list}");
}

#[actix_web::test]
async fn wrong_types_name_the_field_path() {
    check_wrong_types(&spawn_app().await).await;
}

#[actix_web::test]
async fn missing_and_unknown_fields_are_named() {
    check_missing_and_unknown_fields(&spawn_app().await).await;
}

#[actix_web::test]
async fn out_of_range_values_and_unknown_models_are_named() {
    check_bad_values(&spawn_app().await).await;
}

#[actix_web::test]
async fn oversized_body_is_payload_too_large() {
    check_oversized_body(&spawn_app().await).await;
}

#[actix_web::test]
async fn missing_or_wrong_api_keys_are_unauthorized() {
    check_unauthorized(&spawn_app().await).await;
}

#[actix_web::test]
async fn unknown_executions_and_routes_are_json_not_found() {
    check_not_found(&spawn_app().await).await;
}

#[actix_web::test]
async fn bad_list_queries_are_invalid_request() {
    check_bad_list_queries(&spawn_app().await).await;
}

#[actix_web::test]
async fn non_numeric_limit_is_named() {
    let app = spawn_app().await;
    for query in ["limit=abc", "limit=-1"] {
        let res = app.get(&format!("/v1/executions?{query}"), ADMIN_KEY).await;
        let message = assert_error(res, 400, "invalid_request").await;
        assert!(message.contains("limit"), "{query}: {message}");
    }
}

#[actix_web::test]
async fn cancelling_a_completed_execution_conflicts() {
    check_cancel_terminal(&spawn_app().await, "cancel-late").await;
}

#[actix_web::test]
async fn list_pages_follow_next_cursor_newest_first() {
    let app = spawn_app().await;
    let mut submitted = Vec::new();
    for i in 0..5 {
        let res = app.submit(ADMIN_KEY, &valid(&format!("page-{i}"))).await;
        submitted.push(res["id"].as_str().unwrap().to_string());
    }

    let mut listed: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    for page_no in 0.. {
        assert!(page_no < 5, "pagination does not end: {listed:?}");
        let path = match &cursor {
            Some(c) => format!("/v1/executions?limit=2&cursor={c}"),
            None => "/v1/executions?limit=2".to_string(),
        };
        let res = app.get(&path, ADMIN_KEY).await;
        assert_eq!(res.status(), 200, "{path}");
        let page: Value = res.json().await.unwrap();
        let data = page["data"].as_array().unwrap();
        assert!(!data.is_empty() && data.len() <= 2, "{page}");
        listed.extend(data.iter().cloned());
        if page["has_more"] == false {
            assert!(page["next_cursor"].is_null(), "{page}");
            break;
        }
        assert_eq!(page["has_more"], true, "{page}");
        cursor = Some(
            page["next_cursor"]
                .as_str()
                .expect("a cursor when has_more")
                .to_string(),
        );
    }

    let ids: Vec<&str> = listed.iter().map(id_of).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), 5, "each execution exactly once: {ids:?}");
    assert_eq!(unique, submitted.iter().map(String::as_str).collect());

    // Newest first by created_at; executions created in different milliseconds are listed in
    // reverse submission order (within one millisecond the contract cannot tell them apart).
    let created = |e: &Value| e["created_at"].as_str().unwrap().to_string();
    let position = |id: &str| submitted.iter().position(|s| s == id).unwrap();
    for pair in listed.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(created(a) >= created(b), "newest first: {ids:?}");
        if created(a) > created(b) {
            let (pa, pb) = (position(id_of(a)), position(id_of(b)));
            assert!(pa > pb, "newest first: {ids:?} submitted {submitted:?}");
        }
    }
}

#[actix_web::test]
async fn server_keeps_serving_after_bad_input() {
    let app = spawn_app().await;
    check_malformed_json(&app).await;
    check_wrong_types(&app).await;
    check_missing_and_unknown_fields(&app).await;
    check_bad_values(&app).await;
    check_oversized_body(&app).await;
    check_unauthorized(&app).await;
    check_not_found(&app).await;
    check_bad_list_queries(&app).await;
    check_cancel_terminal(&app, "battery-cancel").await;

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let id = completed_execution(&app, "after-the-battery").await;
    let events = app.sse_all(ADMIN_KEY, &id, None).await;
    assert_gapless(&events, 1);
    // None of the rejected submits left an execution behind.
    let res = app.get("/v1/executions?limit=100", ADMIN_KEY).await;
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
}

#[actix_web::test]
async fn a_non_numeric_after_names_the_parameter_and_openai_errors_name_the_field() {
    let app = spawn_app().await;
    let exec = app
        .submit(ADMIN_KEY, &chat_body("after-abc", "hi", "chat-default"))
        .await;
    let id = exec["id"].as_str().unwrap();
    let res = app
        .get(&format!("/v1/executions/{id}/events?after=abc"), ADMIN_KEY)
        .await;
    let msg = assert_error(res, 400, "invalid_request").await;
    assert!(msg.starts_with("after:") && msg.contains("abc"), "{msg}");
    let res = app
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            &json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model", "{body}");
}
