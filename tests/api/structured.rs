//! Structured output end to end: answers validated against their schema (`output.data`), a
//! repair attempt, `output_invalid`, named structures and their admin API, the mock's JSON.

use serde_json::{json, Value};

use crate::fake_openai::{FakeOpenAi, Fault};
use crate::helpers::*;

fn person_format() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true,
        "schema": {"type": "object", "additionalProperties": false,
            "required": ["name", "age"],
            "properties": {"name": {"type": "string"},
                           "age": {"type": "integer", "minimum": 0}}}}})
}

fn structured_body(key: &str, model: &str) -> Value {
    json!({"model": model, "idempotency_key": key,
        "messages": [{"role": "user", "content": "Who wrote the first program?"}],
        "params": {"response_format": person_format()}})
}

#[actix_web::test]
async fn the_embedded_mock_answers_a_schema_with_valid_data() {
    let app = spawn_app().await;
    let sub = app
        .submit(ADMIN_KEY, &structured_body("s1", "chat-default"))
        .await;
    let id = sub["id"].as_str().unwrap();
    let events = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&events, 1);
    let text = chunk_text(&events);
    let data: Value = serde_json::from_str(&text).unwrap();
    assert!(
        data["age"].as_i64().unwrap() >= 0 && data["name"].is_string(),
        "{data}"
    );
    let done = &events.last().unwrap().data;
    assert_eq!(done["output"]["data"], data, "done carries the parsed data");
    assert_eq!(done["output"]["text"], text);
    assert_eq!(done["validation"], json!({"valid": true, "repairs": 0}));
    let exec = app.execution(ADMIN_KEY, id).await;
    assert_eq!(exec["output"]["data"], data);

    // JSON mode: any object.
    let mut body = chat_body("s2", "hello", "chat-default");
    body["params"] = json!({"response_format": {"type": "json_object"}});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert!(exec["output"]["data"].is_object(), "{exec}");
}

#[actix_web::test]
async fn the_openai_compatible_answer_is_the_json_text() {
    let app = spawn_app().await;
    let res = app
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            &json!({"model": "chat-default", "response_format": person_format(),
                "messages": [{"role": "user", "content": "Who?"}]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let data: Value = serde_json::from_str(content).unwrap();
    assert!(data["name"].is_string());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // Streaming: the validated answer, whole, then the finish.
    let res = app
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            &json!({"model": "chat-default", "response_format": person_format(), "stream": true,
                "messages": [{"role": "user", "content": "Who?"}]}),
        )
        .await;
    let text = res.text().await.unwrap();
    let deltas: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&deltas).unwrap(), data);
}

#[actix_web::test]
async fn an_invalid_answer_is_repaired_on_the_same_route() {
    let fake = FakeOpenAi::start().await.with_script(vec![
        Fault::Answer(r#"{"name": "Ada", "age": "thirty-six"}"#.into()),
        Fault::Answer(r#"{"name": "Ada Lovelace", "age": 36}"#.into()),
    ]);
    let app = spawn_with_fakes(&[&fake]).await;
    let sub = app.submit(ADMIN_KEY, &structured_body("r1", "fake")).await;
    let id = sub["id"].as_str().unwrap();
    let events = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&events, 1);
    let restart = events
        .iter()
        .find(|e| e.event == "failover")
        .expect("the repair is announced");
    assert_eq!(restart.data["restart"], true);
    assert_eq!(restart.data["reason"], "output_invalid");
    assert_eq!(restart.data["from"], restart.data["to"], "same route");
    // The chunks after the restart are the answer.
    let after: String = events
        .iter()
        .skip_while(|e| e.event != "failover")
        .filter(|e| e.event == "chunk")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "completed");
    assert_eq!(exec["output"]["text"], after);
    assert_eq!(
        exec["output"]["data"],
        json!({"name": "Ada Lovelace", "age": 36})
    );
    assert_eq!(exec["validation"]["repairs"], 1);
    assert_eq!(exec["attempts"][0]["error_code"], "output_invalid");
    // The repair sent the invalid answer back with what was wrong.
    assert_eq!(fake.request_count(), 2);
    let repair = fake.request(1);
    let messages = repair["messages"].as_array().unwrap();
    let n = messages.len();
    assert_eq!(messages[n - 2]["role"], "assistant");
    assert!(messages[n - 2]["content"]
        .as_str()
        .unwrap()
        .contains("thirty-six"));
    let problem = messages[n - 1]["content"].as_str().unwrap();
    assert!(problem.contains("/age"), "{problem}");
}

#[actix_web::test]
async fn invalid_on_every_route_fails_output_invalid_and_keeps_the_last_text() {
    let bad = |s: &str| Fault::Answer(s.to_string());
    let first = FakeOpenAi::start()
        .await
        .with_script(vec![bad("not json"), bad("{\"name\": 1}")]);
    let second = FakeOpenAi::start()
        .await
        .with_script(vec![bad("[]"), bad("{\"age\": -3}")]);
    let app = spawn_with_fakes(&[&first, &second]).await;
    let sub = app.submit(ADMIN_KEY, &structured_body("f1", "fake")).await;
    let id = sub["id"].as_str().unwrap();
    let events = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&events, 1);
    let restarts = events
        .iter()
        .filter(|e| e.event == "failover" && e.data["restart"] == true)
        .count();
    assert_eq!(restarts, 3, "repair, next route, its repair");
    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "failed");
    assert_eq!(exec["error"]["code"], "output_invalid");
    assert_eq!(exec["error"]["retryable"], false);
    assert_eq!(exec["output"]["text"], "{\"age\": -3}");
    assert!(exec["output"].get("data").is_none());
    assert_eq!(exec["validation"]["valid"], false);
    assert_eq!(exec["validation"]["repairs"], 2);
    assert_eq!((first.request_count(), second.request_count()), (2, 2));
    // The compat endpoint maps it to a 502.
    first.set_script(vec![bad("x"), bad("y")]);
    second.set_script(vec![bad("x"), bad("y")]);
    let res = app
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            &json!({"model": "fake", "response_format": person_format(),
                "messages": [{"role": "user", "content": "Who?"}]}),
        )
        .await;
    assert_eq!(res.status(), 502);
}

#[actix_web::test]
async fn structures_are_versioned_and_referenced_by_name() {
    let app = spawn_app().await;
    let schema = json!({"type": "object", "required": ["title"],
        "properties": {"title": {"type": "string"}}});
    let res = app
        .post(
            "/v1/structures",
            ADMIN_KEY,
            &json!({"name": "todo", "schema": schema}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let v1: Value = res.json().await.unwrap();
    assert_eq!(
        (v1["version"].as_u64(), &v1["source"]),
        (Some(1), &json!("api"))
    );
    // Creating it again is a conflict; replacing makes version 2.
    let again = app
        .post(
            "/v1/structures",
            ADMIN_KEY,
            &json!({"name": "todo", "schema": schema}),
        )
        .await;
    assert_error(again, 409, "conflict").await;
    let schema2 = json!({"type": "object", "required": ["title", "done"],
        "properties": {"title": {"type": "string"}, "done": {"type": "boolean"}}});
    let res = app
        .client
        .put(app.url("/v1/structures/todo"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"schema": schema2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v2: Value = res.json().await.unwrap();
    assert_eq!(v2["version"], 2);
    let old: Value = app
        .get("/v1/structures/todo?version=1", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(old["schema"], schema);
    let list: Value = app
        .get("/v1/structures", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["version"], 2);

    // A submit by name runs on the newest version and records which.
    let mut body = chat_body("n1", "my tasks", "chat-default");
    body["structure"] = json!("todo");
    let sub = app.submit(ADMIN_KEY, &body).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["structure"], json!({"name": "todo", "version": 2}));
    assert!(exec["output"]["data"]["done"].is_boolean(), "{exec}");

    // Bad input.
    let member = app.create_key("default", "member").await;
    let res = app
        .post(
            "/v1/structures",
            &member,
            &json!({"name": "x", "schema": schema}),
        )
        .await;
    assert_error(res, 403, "forbidden").await;
    let res = app
        .post(
            "/v1/structures",
            ADMIN_KEY,
            &json!({"name": "bad", "schema": {"type": "object",
                "properties": {"a": {"type": "strnig"}}}}),
        )
        .await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(
        message.starts_with("schema:") && message.contains("/properties/a"),
        "{message}"
    );
    let res = app
        .post(
            "/v1/structures",
            ADMIN_KEY,
            &json!({"name": "a b", "schema": {}}),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;
    let res = app.get("/v1/structures/nope", ADMIN_KEY).await;
    assert_error(res, 404, "not_found").await;
    let mut unknown = chat_body("n2", "x", "chat-default");
    unknown["structure"] = json!("nope");
    let res = app.post("/v1/executions", ADMIN_KEY, &unknown).await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("`nope`"), "{message}");
    let mut both = structured_body("n3", "chat-default");
    both["structure"] = json!("todo");
    let res = app.post("/v1/executions", ADMIN_KEY, &both).await;
    assert_error(res, 400, "invalid_request").await;
    let mut broken = chat_body("n4", "x", "chat-default");
    broken["params"] = json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "b", "schema": {"type": 7}}}});
    let res = app.post("/v1/executions", ADMIN_KEY, &broken).await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(
        message.contains("params.response_format.json_schema.schema"),
        "{message}"
    );
    // Another project neither sees nor uses this project's structure.
    let other = app.create_key("elsewhere", "admin").await;
    let res = app.get("/v1/structures/todo", &other).await;
    assert_error(res, 404, "not_found").await;
}

#[actix_web::test]
async fn config_structures_load_inline_and_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("review.json"),
        r#"{"type": "object", "required": ["stars"], "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}}}"#,
    )
    .unwrap();
    let toml = format!(
        "{}\n[[structures]]\nname = \"review\"\nschema_file = \"review.json\"\n\n[[structures]]\nname = \"tag\"\nschema = {{ type = \"object\", properties = {{ tag = {{ type = \"string\" }} }} }}\n",
        config(&[])
    );
    let settings = switchyard::settings::Settings::parse_in(&toml, dir.path()).unwrap();
    assert_eq!(settings.structures.len(), 2);
    let app = spawn_app_with(
        &toml.replace(
            "review.json",
            &dir.path().join("review.json").display().to_string(),
        ),
        |_| {},
    )
    .await;
    let list: Value = app
        .get("/v1/structures", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("review", "config"), ("tag", "config")]);
    let mut body = chat_body("c1", "rate it", "chat-default");
    body["structure"] = json!("review");
    let sub = app.submit(ADMIN_KEY, &body).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    let stars = exec["output"]["data"]["stars"].as_i64().unwrap();
    assert!((1..=5).contains(&stars));

    let broken = format!(
        "{}\n[[structures]]\nname = \"b\"\nschema = {{ type = \"nope\" }}\n",
        config(&[])
    );
    let err = switchyard::settings::Settings::parse(&broken)
        .unwrap_err()
        .to_string();
    assert!(err.contains("structures[0].schema"), "{err}");
}
