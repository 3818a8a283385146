//! Tool calling end to end: tools offered through both APIs reach the provider, its streamed
//! call comes back whole (OpenAI stream and non-stream shapes, the execution's output and event
//! log), the tool result goes back upstream, and a stream that breaks halfway through a call
//! leaves nothing half-said.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::fake_openai::{FakeOpenAi, Fault, TOOL_ARGUMENTS};
use crate::helpers::*;

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]}}})
}

fn asking(stream: bool) -> Value {
    json!({"model": "fake", "stream": stream, "tools": [weather_tool()], "tool_choice": "auto",
           "messages": [{"role": "user", "content": "Weather in Oslo?"}]})
}

async fn compat(app: &TestApp, body: &Value) -> reqwest::Response {
    app.post("/v1/chat/completions", ADMIN_KEY, body).await
}

/// Every `data:` payload of a compat stream, without `[DONE]` (and whether it came).
async fn stream_payloads(res: reqwest::Response) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut events = res.bytes_stream().eventsource();
    while let Some(Ok(ev)) = events.next().await {
        if ev.data == "[DONE]" {
            return (out, true);
        }
        out.push(serde_json::from_str(&ev.data).unwrap());
    }
    (out, false)
}

#[actix_web::test]
async fn a_streamed_tool_call_arrives_whole_with_its_index_and_finish_reason() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&fake]).await;
    let res = compat(&app, &asking(true)).await;
    assert_eq!(res.status(), 200);
    let (payloads, done) = stream_payloads(res).await;
    assert!(done);
    let deltas: Vec<&Value> = payloads
        .iter()
        .filter_map(|p| p["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(deltas.len(), 1, "one whole call: {payloads:?}");
    let call = deltas[0];
    assert_eq!(call["index"], 0);
    assert_eq!(call["id"], "call_fake_1");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], TOOL_ARGUMENTS);
    let finish: Vec<&Value> = payloads
        .iter()
        .filter_map(|p| p["choices"][0]["finish_reason"].as_str().map(|_| p))
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "tool_calls");
    let text: String = payloads
        .iter()
        .filter_map(|p| p["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "", "no text beside the call");
    // The tools and the choice went upstream as OpenAI's own fields.
    let sent = &fake.requests()[0];
    assert_eq!(sent["tools"][0], weather_tool());
    assert_eq!(sent["tool_choice"], "auto");

    // A client that rebuilt the message from the deltas sends the call back with its `index`.
    let mut follow_up = asking(true);
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    messages.push(json!({"role": "tool", "tool_call_id": "call_fake_1", "content": "3 C"}));
    let res = compat(&app, &follow_up).await;
    assert_eq!(res.status(), 200);
    let echoed = &fake.requests()[1]["messages"][1]["tool_calls"][0];
    assert!(echoed.get("index").is_none(), "{echoed}");
}

#[actix_web::test]
async fn a_tool_round_trip_sends_the_call_and_its_result_back_upstream() {
    let fake = FakeOpenAi::start().await.with_words(4);
    let app = spawn_with_fakes(&[&fake]).await;
    let res = compat(&app, &asking(false)).await;
    assert_eq!(res.status(), 200);
    let first: Value = res.json().await.unwrap();
    let message = &first["choices"][0]["message"];
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        TOOL_ARGUMENTS
    );
    assert!(message["tool_calls"][0].get("index").is_none());

    let mut follow_up = asking(false);
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(message.clone());
    messages.push(
        json!({"role": "tool", "tool_call_id": message["tool_calls"][0]["id"],
                         "content": "{\"temp\": 3}"}),
    );
    let res = compat(&app, &follow_up).await;
    assert_eq!(res.status(), 200);
    let second: Value = res.json().await.unwrap();
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert_eq!(second["choices"][0]["message"]["content"], fake.full_text());
    assert!(second["choices"][0]["message"].get("tool_calls").is_none());

    let sent = &fake.requests()[1]["messages"];
    assert_eq!(sent[1]["role"], "assistant");
    assert_eq!(sent[1]["content"], Value::Null);
    assert_eq!(sent[1]["tool_calls"][0]["id"], "call_fake_1");
    assert_eq!(
        sent[1]["tool_calls"][0]["function"]["arguments"],
        TOOL_ARGUMENTS
    );
    assert_eq!(sent[2]["role"], "tool");
    assert_eq!(sent[2]["tool_call_id"], "call_fake_1");
    assert_eq!(sent[2]["content"], "{\"temp\": 3}");
}

#[actix_web::test]
async fn a_stream_cut_halfway_through_a_call_fails_over_and_the_call_comes_once() {
    let primary = FakeOpenAi::start().await.with_default(Fault::CutAfter(2));
    let backup = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&primary, &backup]).await;
    let body = json!({"model": "fake", "idempotency_key": "t-cut",
        "params": {"tools": [weather_tool()]},
        "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let id = sub["id"].as_str().unwrap();
    let events = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&events, 1);
    let calls = tool_calls_in(&events);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(calls[0]["function"]["arguments"], TOOL_ARGUMENTS);
    let failovers: Vec<_> = events.iter().filter(|e| e.event == "failover").collect();
    assert_eq!(failovers.len(), 1);
    assert_eq!(failovers[0].data["reason"], "stream_interrupted");

    let exec = app.execution(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "completed");
    assert_eq!(exec["finish_reason"], "tool_calls");
    assert_eq!(exec["output"]["text"], "");
    assert_eq!(exec["output"]["tool_calls"][0]["id"], "call_fake_1");
    let attempts = exec["attempts"].as_array().unwrap();
    assert_eq!(attempts.last().unwrap()["provider"], "fake1");
    assert!(attempts[..attempts.len() - 1]
        .iter()
        .all(|a| a["provider"] == "fake0" && a["error_code"] == "stream_interrupted"));
    // The backup was asked afresh: no half call is passed on as if it were text.
    let sent = &backup.requests()[0]["messages"];
    assert_eq!(sent.as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn the_mock_calls_a_tool_with_arguments_from_its_schema_then_answers_the_result() {
    let app = spawn_app().await;
    let mut body = chat_body("t-mock", "Oslo", "chat-default");
    body["params"] = json!({"tools": [weather_tool()],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["finish_reason"], "tool_calls");
    let call = &exec["output"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Oslo"}), "required properties only");

    let mut body = chat_body("t-mock-2", "Oslo", "chat-default");
    body["params"] = json!({"tools": [weather_tool()]});
    body["messages"] = json!([
        {"role": "user", "content": "Oslo"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "3 degrees"}]);
    let sub = app.submit(ADMIN_KEY, &body).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["finish_reason"], "stop");
    assert!(!exec["output"]["text"].as_str().unwrap().is_empty());
    assert!(exec["output"].get("tool_calls").is_none());
}

#[actix_web::test]
async fn malformed_tool_requests_are_refused_naming_the_field() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&fake]).await;
    let cases = [
        (
            json!([{"role": "user", "content": "hi"},
                   {"role": "tool", "tool_call_id": "call_x", "content": "r"}]),
            json!({}),
            "messages[1].tool_call_id",
        ),
        (
            json!([{"role": "user", "content": "hi"}, {"role": "tool", "content": "r"}]),
            json!({}),
            "messages[1].tool_call_id",
        ),
        (
            json!([{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": null, "tool_calls": [
                       {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                   {"role": "user", "content": "never mind"}]),
            json!({"tools": [weather_tool()]}),
            "messages[1].tool_calls",
        ),
        (
            json!([{"role": "user", "content": "hi"}]),
            json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!([{"role": "user", "content": "hi"}]),
            json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}),
            "tools[0].function.name",
        ),
        (
            json!([{"role": "user", "content": "hi"}]),
            json!({"tools": [{"type": "retrieval"}]}),
            "tools[0]",
        ),
    ];
    for (i, (messages, params, field)) in cases.iter().enumerate() {
        let body = json!({"model": "fake", "idempotency_key": format!("bad-{i}"),
                          "messages": messages, "params": params});
        let res = app.post("/v1/executions", ADMIN_KEY, &body).await;
        let message = assert_error(res, 400, "invalid_request").await;
        assert!(message.contains(field), "{field}: {message}");

        let mut compat_body = json!({"model": "fake", "messages": messages});
        for (k, v) in params.as_object().unwrap() {
            compat_body[k] = v.clone();
        }
        let res = compat(&app, &compat_body).await;
        assert_eq!(res.status(), 400, "{compat_body}");
        let error: Value = res.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{field}: {message}");
        assert!(
            !message.starts_with("params."),
            "compat names its own fields: {message}"
        );
    }
    assert_eq!(fake.request_count(), 0);
}

#[actix_web::test]
async fn routes_without_tools_are_skipped_and_none_left_is_a_clear_400() {
    let plain = FakeOpenAi::start().await;
    let capable = FakeOpenAi::start().await;
    let toml = config(&[&plain, &capable]).replace(
        r#"{ provider = "fake0", model = "up-0" }"#,
        r#"{ provider = "fake0", model = "up-0", tools = false }"#,
    );
    let app = spawn_app_with(&toml, |_| {}).await;
    let res = compat(&app, &asking(false)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(plain.request_count(), 0);
    assert_eq!(capable.request_count(), 1);

    let only_plain = config(&[&plain]).replace(
        r#"{ provider = "fake0", model = "up-0" }"#,
        r#"{ provider = "fake0", model = "up-0", tools = false }"#,
    );
    let app = spawn_app_with(&only_plain, |_| {}).await;
    let message = openai_error_message(compat(&app, &asking(false)).await, 400).await;
    assert!(message.contains("tools"), "{message}");
    assert_eq!(plain.request_count(), 0);
}
