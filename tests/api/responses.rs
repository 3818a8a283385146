//! The OpenAI Responses API over real HTTP: the response object and its event stream in
//! OpenAI's shapes, derived from the execution's log (sequence numbers stable across
//! reconnects and restarts), background mode with resume, tools, structured output,
//! conversation chaining, cancel, delete and bad input. (The official Python SDK runs against
//! it in tests/sdk.)

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

use crate::fake_openai::{FakeOpenAi, Fault, TOOL_ARGUMENTS};
use crate::helpers::*;

async fn create(app: &TestApp, body: &Value) -> reqwest::Response {
    app.post("/v1/responses", ADMIN_KEY, body).await
}

/// An SSE body's events as `(event name, data)`, up to `limit` of them.
async fn events(res: reqwest::Response, limit: usize) -> Vec<(String, Value)> {
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut out = Vec::new();
    let mut stream = res.bytes_stream().eventsource();
    while out.len() < limit {
        let Some(Ok(ev)) = stream.next().await else {
            break;
        };
        out.push((ev.event.clone(), serde_json::from_str(&ev.data).unwrap()));
    }
    out
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

fn text_of(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect()
}

/// Every event names its type in the data too, and the numbers run on from `first` by one
/// (OpenAI numbers a stream from 0).
fn assert_numbered_from(events: &[(String, Value)], first: u64) {
    for (i, (kind, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], kind.as_str(), "{data}");
        assert_eq!(
            data["sequence_number"],
            first + i as u64,
            "{kinds:?}",
            kinds = kinds(events)
        );
    }
}

async fn retrieve(app: &TestApp, id: &str, query: &str) -> reqwest::Response {
    app.get(&format!("/v1/responses/{id}{query}"), ADMIN_KEY)
        .await
}

async fn wait_finished(app: &TestApp, id: &str) -> Value {
    for _ in 0..1000 {
        let body: Value = retrieve(app, id, "").await.json().await.unwrap();
        if !matches!(body["status"].as_str(), Some("queued" | "in_progress")) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("response {id} did not finish");
}

#[actix_web::test]
async fn a_response_has_openais_shape_and_runs_as_an_execution() {
    let fake = FakeOpenAi::start().await.with_words(6);
    let app = spawn_with_fakes(&[&fake]).await;
    let res = create(
        &app,
        &json!({"model": "fake", "instructions": "be brief", "input": "Hello",
            "temperature": 0.5, "max_output_tokens": 100, "metadata": {"k": "v"}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let exec_id = res.headers()["x-switchyard-execution-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["id"], exec_id.replace("exec_", "resp_"));
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "fake");
    assert_eq!(body["instructions"], "be brief");
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["max_output_tokens"], 100);
    assert_eq!(body["metadata"], json!({"k": "v"}));
    assert_eq!(body["background"], false);
    assert_eq!(body["error"], Value::Null);
    assert_eq!(body["text"], json!({"format": {"type": "text"}}));
    let output = body["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(output[0]["status"], "completed");
    assert_eq!(output[0]["content"][0]["type"], "output_text");
    assert_eq!(output[0]["content"][0]["text"], fake.full_text());
    assert_eq!(output[0]["content"][0]["annotations"], json!([]));
    let usage = &body["usage"];
    assert_eq!(usage["output_tokens"], 6);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["input_tokens"].as_u64().unwrap() + 6
    );
    // Upstream: instructions as the system turn, then the input; sampling as given.
    let sent = fake.requests()[0].clone();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(sent["messages"][1]["content"], "Hello");
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["max_tokens"], 100);
    // The same object when polled, and the execution behind it.
    let polled: Value = retrieve(&app, body["id"].as_str().unwrap(), "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(polled, body);
    assert_eq!(
        app.execution(ADMIN_KEY, &exec_id).await["status"],
        "completed"
    );
}

#[actix_web::test]
async fn a_streamed_response_is_openais_event_sequence() {
    let fake = FakeOpenAi::start().await.with_words(5);
    let app = spawn_with_fakes(&[&fake]).await;
    let res = create(
        &app,
        &json!({"model": "fake", "input": "Hi", "stream": true}),
    )
    .await;
    let events = events(res, usize::MAX).await;
    assert_numbered_from(&events, 0);
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 5]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(kinds(&events), expected);
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    assert_eq!(events[0].1["response"]["output"], json!([]));
    let item_id = events[2].1["item"]["id"].as_str().unwrap();
    assert_eq!(events[2].1["item"]["status"], "in_progress");
    for (_, data) in &events[3..11] {
        assert_eq!(data["item_id"], item_id);
        assert_eq!(data["output_index"], 0);
        assert_eq!(data["content_index"], 0);
    }
    assert_eq!(text_of(&events), fake.full_text());
    assert_eq!(events[9].1["text"], fake.full_text());
    assert_eq!(events[11].1["item"]["content"][0]["text"], fake.full_text());
    let done = &events[12].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], fake.full_text());
    assert_eq!(done["usage"]["output_tokens"], 5);
    // Replayed later, the same events with the same numbers.
    let id = done["id"].as_str().unwrap();
    let again = events_of(&app, id, "?stream=true").await;
    assert_eq!(again, events);
    let tail = events_of(&app, id, "?stream=true&starting_after=10").await;
    assert_eq!(tail, events[11..]);
}

async fn events_of(app: &TestApp, id: &str, query: &str) -> Vec<(String, Value)> {
    events(retrieve(app, id, query).await, usize::MAX).await
}

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
}

#[actix_web::test]
async fn a_function_call_goes_round_trip_with_its_output() {
    let fake = FakeOpenAi::start().await.with_words(3);
    let app = spawn_with_fakes(&[&fake]).await;
    let res = create(
        &app,
        &json!({"model": "fake", "input": "Weather in Oslo?", "tools": weather_tool(),
            "tool_choice": "auto", "stream": true}),
    )
    .await;
    let events = events(res, usize::MAX).await;
    assert_numbered_from(&events, 0);
    assert_eq!(
        kinds(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(events[4].1["arguments"], TOOL_ARGUMENTS);
    let response = &events[6].1["response"];
    let call = &response["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["arguments"], TOOL_ARGUMENTS);
    assert_eq!(call["status"], "completed");
    assert_eq!(response["tools"], weather_tool());
    // Upstream got the tool in chat form.
    let sent = fake.requests()[0].clone();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["tool_choice"], "auto");
    // The output goes back, chained to the first response.
    let call_id = call["call_id"].as_str().unwrap();
    let res = create(
        &app,
        &json!({"model": "fake", "tools": weather_tool(),
            "previous_response_id": response["id"],
            "input": [{"type": "function_call_output", "call_id": call_id, "output": "{\"c\":21}"}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let second: Value = res.json().await.unwrap();
    assert_eq!(second["output"][0]["content"][0]["text"], fake.full_text());
    assert_eq!(second["previous_response_id"], response["id"]);
    let sent = fake.requests()[1].clone();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{sent}");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["tool_calls"][0]["id"], call_id);
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["tool_call_id"], call_id);
    assert_eq!(messages[2]["content"], "{\"c\":21}");
    // The calls can also be sent back as items, without chaining.
    let res = create(
        &app,
        &json!({"model": "fake", "tools": weather_tool(), "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
            {"type": "function_call", "call_id": "c9", "name": "get_weather", "arguments": TOOL_ARGUMENTS},
            {"type": "function_call_output", "call_id": "c9", "output": "sunny"}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let sent = fake.requests()[2].clone();
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "c9");
    assert_eq!(sent["messages"][2]["content"], "sunny");
}

#[actix_web::test]
async fn text_format_json_schema_goes_upstream_as_response_format() {
    let fake = FakeOpenAi::start().await.with_words(3);
    let app = spawn_with_fakes(&[&fake]).await;
    // The shape of the fake's JSON answer (`fake_openai::JSON_ANSWER`).
    let schema = json!({"type": "object", "additionalProperties": false,
        "required": ["title", "done", "tags"],
        "properties": {"title": {"type": "string"}, "done": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}}}});
    let format = json!({"type": "json_schema", "name": "thing", "schema": schema, "strict": true});
    let res = create(
        &app,
        &json!({"model": "fake", "input": "x", "text": {"format": format}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["text"]["format"], format);
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        crate::fake_openai::JSON_ANSWER
    );
    assert_eq!(
        fake.requests()[0]["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": true}})
    );
}

#[actix_web::test]
async fn previous_response_id_prepends_that_conversation_but_not_its_instructions() {
    let fake = FakeOpenAi::start().await.with_words(4);
    let app = spawn_with_fakes(&[&fake]).await;
    let first: Value = create(
        &app,
        &json!({"model": "fake", "instructions": "first rules", "input": "one"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let res = create(
        &app,
        &json!({"model": "fake", "instructions": "second rules", "input": "two",
            "previous_response_id": first["id"]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let sent = fake.requests()[1]["messages"].clone();
    assert_eq!(
        sent,
        json!([{"role": "system", "content": "second rules"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": fake.full_text()},
            {"role": "user", "content": "two"}])
    );
    // The input items are this response's own.
    let items: Value = app
        .get(
            &format!(
                "/v1/responses/{}/input_items?order=asc",
                first["id"].as_str().unwrap()
            ),
            ADMIN_KEY,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"].as_array().unwrap().len(), 1);
    assert_eq!(items["data"][0]["type"], "message");
    assert_eq!(items["data"][0]["role"], "user");
    assert_eq!(
        items["data"][0]["content"][0],
        json!({"type": "input_text", "text": "one"})
    );
    assert_eq!(items["first_id"], items["data"][0]["id"]);
    assert_eq!(items["has_more"], false);
    // An unknown previous response is a 404.
    let res = create(
        &app,
        &json!({"model": "fake", "input": "x", "previous_response_id": "resp_nope"}),
    )
    .await;
    let message = openai_error_message(res, 404).await;
    assert!(message.contains("previous_response_id"), "{message}");
}

#[actix_web::test]
async fn a_background_response_resumes_after_any_event_with_the_exact_text() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(40)
        .with_chunk_delay(Duration::from_millis(15));
    let app = spawn_with_fakes(&[&fake]).await;
    // Polled: answered at once, queued.
    let res = create(
        &app,
        &json!({"model": "fake", "input": "Hi", "background": true}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let queued: Value = res.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["background"], true);
    let done = wait_finished(&app, queued["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], fake.full_text());

    // Streamed, cut after a few events, resumed twice.
    let res = create(
        &app,
        &json!({"model": "fake", "input": "Hi", "background": true, "stream": true}),
    )
    .await;
    let first = events(res, 7).await;
    assert_eq!(first[0].1["response"]["status"], "queued");
    assert_eq!(
        kinds(&first)[..3],
        [
            "response.created",
            "response.queued",
            "response.in_progress"
        ]
    );
    let id = first[0].1["response"]["id"].as_str().unwrap().to_string();
    let second = events(
        retrieve(&app, &id, "?stream=true&starting_after=6").await,
        10,
    )
    .await;
    let rest = events_of(&app, &id, "?stream=true&starting_after=16").await;
    let all: Vec<_> = first.into_iter().chain(second).chain(rest).collect();
    assert_numbered_from(&all, 0);
    assert_eq!(text_of(&all), fake.full_text());
    assert_eq!(all.last().unwrap().0, "response.completed");
    // The whole stream replayed is the same.
    assert_eq!(events_of(&app, &id, "?stream=true").await, all);
}

#[actix_web::test]
async fn a_mid_stream_failover_shows_only_as_the_continued_text() {
    let primary = FakeOpenAi::start().await.with_default(Fault::CutAfter(7));
    let backup = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&primary, &backup]).await;
    let res = create(
        &app,
        &json!({"model": "fake", "input": "Hi", "stream": true}),
    )
    .await;
    let events = events(res, usize::MAX).await;
    assert_numbered_from(&events, 0);
    assert_eq!(text_of(&events), backup.full_text());
    let items: Vec<_> = events
        .iter()
        .filter(|(k, _)| k == "response.output_item.added")
        .collect();
    assert_eq!(items.len(), 1, "one message across the failover");
    let (kind, last) = events.last().unwrap();
    assert_eq!(kind, "response.completed");
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        backup.full_text()
    );
}

#[actix_web::test]
async fn a_failure_ends_the_stream_with_response_failed() {
    let fake = FakeOpenAi::start().await.with_default(Fault::status(400));
    let app = spawn_with_fakes(&[&fake]).await;
    let res = create(
        &app,
        &json!({"model": "fake", "input": "Hi", "stream": true}),
    )
    .await;
    let events = events(res, usize::MAX).await;
    assert_numbered_from(&events, 0);
    let (kind, data) = events.last().unwrap();
    assert_eq!(kind, "response.failed");
    assert_eq!(data["response"]["status"], "failed");
    assert!(data["response"]["error"]["message"].is_string(), "{data}");
    // Non-streaming, the failure is an error in OpenAI's shape.
    let res = create(&app, &json!({"model": "fake", "input": "Hi"})).await;
    assert!(res.status().is_client_error() || res.status().is_server_error());
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["type"].is_string(), "{body}");
}

#[actix_web::test]
async fn cancel_stops_a_background_response_and_delete_removes_it() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(200)
        .with_chunk_delay(Duration::from_millis(20));
    let app = spawn_with_fakes(&[&fake]).await;
    let queued: Value = create(
        &app,
        &json!({"model": "fake", "input": "Hi", "background": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = queued["id"].as_str().unwrap();
    let res = app
        .post(&format!("/v1/responses/{id}/cancel"), ADMIN_KEY, &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let cancelled: Value = res.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    // Again: the same answer; polled: cancelled; streamed: ends with an error event.
    let again: Value = app
        .post(&format!("/v1/responses/{id}/cancel"), ADMIN_KEY, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "cancelled");
    assert_eq!(wait_finished(&app, id).await["status"], "cancelled");
    let events = events_of(&app, id, "?stream=true").await;
    assert_numbered_from(&events, 0);
    assert_eq!(events.last().unwrap().0, "error");
    assert_eq!(events.last().unwrap().1["code"], "cancelled");

    // A completed one cannot be cancelled; any can be deleted.
    let done: Value = create(&app, &json!({"model": "chat-default", "input": "Hi"}))
        .await
        .json()
        .await
        .unwrap();
    let done_id = done["id"].as_str().unwrap();
    let res = app
        .post(
            &format!("/v1/responses/{done_id}/cancel"),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    openai_error_message(res, 409).await;
    for id in [id, done_id] {
        let res = app
            .client
            .delete(app.url(&format!("/v1/responses/{id}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body,
            json!({"id": id, "object": "response.deleted", "deleted": true})
        );
        openai_error_message(retrieve(&app, id, "").await, 404).await;
        let exec_id = id.replace("resp_", "exec_");
        assert_eq!(
            app.get(&format!("/v1/executions/{exec_id}"), ADMIN_KEY)
                .await
                .status(),
            404
        );
    }
    // A running one is cancelled, then deleted.
    let running: Value = create(
        &app,
        &json!({"model": "fake", "input": "Hi", "background": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    let running_id = running["id"].as_str().unwrap();
    let res = app
        .client
        .delete(app.url(&format!("/v1/responses/{running_id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    openai_error_message(retrieve(&app, running_id, "").await, 404).await;
}

#[actix_web::test]
async fn another_projects_or_an_unknown_id_is_not_found_in_openais_shape() {
    let app = spawn_app().await;
    let done: Value = create(&app, &json!({"model": "chat-default", "input": "Hi"}))
        .await
        .json()
        .await
        .unwrap();
    let id = done["id"].as_str().unwrap();
    let other = app.create_key("other", "admin").await;
    for path in [
        format!("/v1/responses/{id}"),
        format!("/v1/responses/{id}?stream=true"),
        format!("/v1/responses/{id}/input_items"),
        "/v1/responses/resp_unknown".to_string(),
        "/v1/responses/nonsense".to_string(),
    ] {
        let res = app.get(&path, &other).await;
        assert_eq!(res.status(), 404, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["type"], "not_found_error", "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        assert!(body["error"].get("param").is_some());
    }
    let res = app
        .post(&format!("/v1/responses/{id}/cancel"), &other, &json!({}))
        .await;
    assert_eq!(res.status(), 404);
    let res = app
        .client
        .delete(app.url(&format!("/v1/responses/{id}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // Still there for its owner.
    assert_eq!(retrieve(&app, id, "").await.status(), 200);
}

#[actix_web::test]
async fn bad_input_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"model": "chat-default", "input": "x", "reasoning": {"effort": "low"}}),
            "reasoning",
        ),
        (
            json!({"model": "chat-default", "input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "chat-default", "input": [{"type": "reasoning", "summary": []}]}),
            "input[0].type",
        ),
        (
            json!({"model": "chat-default", "input": [{"role": "user", "content": "x", "extra": 1}]}),
            "input[0].extra",
        ),
        (
            json!({"model": "chat-default", "input": "x", "text": {"format": {"type": "yaml"}}}),
            "text.format.type",
        ),
        (
            json!({"model": "chat-default", "input": "x", "temperature": 9}),
            "temperature",
        ),
        (
            json!({"model": "chat-default", "input": "x", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            json!({"model": "chat-default", "input": "x", "truncation": "auto"}),
            "truncation",
        ),
        (json!({"model": "nope", "input": "x"}), "model"),
        (json!({"model": "chat-default"}), "input"),
    ];
    for (body, field) in cases {
        let res = create(&app, &body).await;
        let message = openai_error_message(res, 400).await;
        assert!(message.contains(field), "{field}: {message}");
    }
    let done: Value = create(&app, &json!({"model": "chat-default", "input": "Hi"}))
        .await
        .json()
        .await
        .unwrap();
    let id = done["id"].as_str().unwrap();
    for query in [
        "?stream=true&starting_after=abc",
        "?stream=true&starting_after=100000",
        "?stream=true&starting_after=-1",
    ] {
        let message = openai_error_message(retrieve(&app, id, query).await, 400).await;
        assert!(message.contains("starting_after"), "{query}: {message}");
    }
    let message = openai_error_message(retrieve(&app, id, "?bogus=1").await, 400).await;
    assert!(message.contains("bogus"), "{message}");
}

#[actix_web::test]
async fn a_background_stream_resumes_across_a_sigkill_and_restart() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(120)
        .with_chunk_delay(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, config(&[&fake])).unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();

    let mut first = spawn_process(&cfg, &data);
    let res = client
        .post(format!("{}/v1/responses", first.address))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"model": "fake", "input": "Hi", "background": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let seen = events(res, 20).await;
    assert_eq!(seen.len(), 20);
    let id = seen[0].1["response"]["id"].as_str().unwrap().to_string();
    first.sigkill();

    let second = spawn_process(&cfg, &data);
    let url = format!("{}/v1/responses/{id}?stream=true", second.address);
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).bearer_auth(ADMIN_KEY).send().await.unwrap() }
    };
    let rest = events(get(format!("{url}&starting_after=19")).await, usize::MAX).await;
    let all: Vec<_> = seen.iter().cloned().chain(rest).collect();
    assert_numbered_from(&all, 0);
    assert_eq!(all.last().unwrap().0, "response.completed");
    assert_eq!(
        text_of(&all),
        fake.full_text(),
        "nothing repeated, nothing lost"
    );
    // The new process numbers the old events as the old one did.
    let replay = events(get(url).await, usize::MAX).await;
    assert_eq!(replay, all);
}

#[actix_web::test]
async fn a_revoked_key_ends_the_stream_and_another_key_resumes_it() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(100)
        .with_chunk_delay(Duration::from_millis(10));
    let app = spawn_with_fakes(&[&fake]).await;
    let (key_id, key) = app.create_key_by(ADMIN_KEY, "default", "admin").await;
    let res = app
        .post(
            "/v1/responses",
            &key,
            &json!({"model": "fake", "input": "Hi", "background": true, "stream": true}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream().eventsource();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let ev = stream.next().await.unwrap().unwrap();
        seen.push((ev.event, serde_json::from_str::<Value>(&ev.data).unwrap()));
    }
    let res = app
        .client
        .delete(app.url(&format!("/v1/keys/{key_id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    // The stream ends (before the response does).
    while let Some(Ok(ev)) = stream.next().await {
        seen.push((ev.event, serde_json::from_str(&ev.data).unwrap()));
    }
    assert_ne!(seen.last().unwrap().0, "response.completed");
    let id = seen[0].1["response"]["id"].as_str().unwrap().to_string();
    let last = seen.last().unwrap().1["sequence_number"].as_u64().unwrap();
    let rest = events_of(&app, &id, &format!("?stream=true&starting_after={last}")).await;
    let all: Vec<_> = seen.into_iter().chain(rest).collect();
    assert_numbered_from(&all, 0);
    assert_eq!(text_of(&all), fake.full_text());
}
