//! Tool calling over the Anthropic and Gemini wire formats, against their fakes over real
//! HTTP: the call comes back whole with finish reason `tool_calls`, the call and its result go
//! back upstream in each provider's own shape, and a call cut halfway on one format is made
//! again, once, on the other.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::fake_anthropic::{self, FakeAnthropic};
use crate::fake_gemini::{FakeGemini, THOUGHT_SIGNATURE};
use crate::fake_openai::TOOL_ARGUMENTS;
use crate::helpers::*;
use crate::providers::{toml, with_keys, P};

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "additionalProperties": false,
                       "properties": {"city": {"type": "string"},
                                      "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]}}})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_time"}})
}

pub const QUESTION: &str = "Weather in Oslo?";

async fn anthropic_app(fake: &FakeAnthropic) -> TestApp {
    spawn_app_with(&toml(&[P("an", "anthropic", fake.base_url())]), with_keys).await
}

async fn gemini_app(fake: &FakeGemini) -> TestApp {
    spawn_app_with(&toml(&[P("ge", "gemini", fake.base_url())]), with_keys).await
}

/// A compat request on model `m` offering both tools.
pub fn compat_asking(stream: bool, tool_choice: Value) -> Value {
    json!({"model": "m", "stream": stream, "tools": [weather_tool(), time_tool()],
           "tool_choice": tool_choice, "messages": [{"role": "user", "content": QUESTION}]})
}

/// An executions request on model `m` offering both tools.
fn submit_asking(key: &str, messages: Value, tool_choice: Value) -> Value {
    json!({"model": "m", "idempotency_key": key, "messages": messages,
           "params": {"tools": [weather_tool(), time_tool()], "tool_choice": tool_choice}})
}

/// Every `data:` payload of a compat stream, without `[DONE]`.
pub async fn stream_payloads(res: reqwest::Response) -> Vec<Value> {
    let mut out = Vec::new();
    let mut events = res.bytes_stream().eventsource();
    while let Some(Ok(ev)) = events.next().await {
        if ev.data == "[DONE]" {
            break;
        }
        out.push(serde_json::from_str(&ev.data).unwrap());
    }
    out
}

/// The conversation after `call`: its assistant turn, the result, and a user remark.
/// A non-stream compat answer, which must be a 200.
pub async fn compat(app: &TestApp, body: &Value) -> Value {
    let res = app.post("/v1/chat/completions", ADMIN_KEY, body).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}

/// The call of a non-stream compat answer to the weather question under `tool_choice`.
pub async fn first_call(app: &TestApp, tool_choice: Value) -> Value {
    let answer = compat(app, &compat_asking(false, tool_choice)).await;
    answer["choices"][0]["message"]["tool_calls"][0].clone()
}

fn answered(call: &Value, result: &str) -> Value {
    json!([
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": result},
        {"role": "user", "content": "In celsius, please."},
    ])
}

#[actix_web::test]
async fn an_anthropic_route_streams_the_call_whole_with_finish_reason_tool_calls() {
    let fake = FakeAnthropic::start().await;
    let app = anthropic_app(&fake).await;
    let res = app
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            &compat_asking(true, json!("required")),
        )
        .await;
    assert_eq!(res.status(), 200);
    let payloads = stream_payloads(res).await;
    let calls: Vec<&Value> = payloads
        .iter()
        .filter_map(|p| p["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "one whole call: {payloads:?}");
    assert_eq!(calls[0]["id"], "toolu_fake_1");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], TOOL_ARGUMENTS);
    let finish: Vec<&str> = payloads
        .iter()
        .filter_map(|p| p["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"]);

    let sent = fake.request(0);
    assert_eq!(
        sent["tools"],
        json!([
            {"name": "get_weather", "description": "Current weather in a city",
             "input_schema": weather_tool()["function"]["parameters"]},
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ])
    );
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));
}

#[actix_web::test]
async fn a_gemini_route_returns_the_call_in_the_execution() {
    let fake = FakeGemini::start().await;
    let app = gemini_app(&fake).await;
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let messages = json!([{"role": "user", "content": QUESTION}]);
    let sub = app
        .submit(ADMIN_KEY, &submit_asking("g-call", messages, named))
        .await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed", "{exec}");
    assert_eq!(exec["finish_reason"], "tool_calls");
    assert_eq!(exec["output"]["text"], "");
    let calls = exec["output"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_time");
    assert_eq!(calls[0]["function"]["arguments"], TOOL_ARGUMENTS);
    assert!(
        calls[0]["id"].as_str().unwrap().starts_with("call_"),
        "Gemini sends no id: Switchyard names the call"
    );

    let sent = fake.request(0);
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [
            {"name": "get_weather", "description": "Current weather in a city",
             "parameters": {"type": "object",
                            "properties": {"city": {"type": "string"},
                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                            "required": ["city"]}},
            {"name": "get_time"},
        ]}]),
        "additionalProperties is not in Gemini's schema subset"
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}})
    );
}

#[actix_web::test]
async fn an_anthropic_round_trip_sends_tool_use_then_tool_result_before_the_text() {
    let fake = FakeAnthropic::start().await.with_words(4);
    let app = anthropic_app(&fake).await;
    let first = compat(&app, &compat_asking(false, json!("auto"))).await;
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    let call = &first["choices"][0]["message"]["tool_calls"][0];

    let mut follow_up = compat_asking(false, json!("auto"));
    follow_up["messages"] = answered(call, "3 degrees");
    let second = compat(&app, &follow_up).await;
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert_eq!(second["choices"][0]["message"]["content"], fake.full_text());

    let sent = fake.request(1);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_fake_1",
                "name": "get_weather", "input": {"city": "Oslo", "unit": "celsius"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_fake_1", "content": "3 degrees"},
                {"type": "text", "text": "In celsius, please."},
            ]},
        ])
    );
}

#[actix_web::test]
async fn an_anthropic_follow_up_without_tools_declares_the_history_functions_with_choice_none() {
    let fake = FakeAnthropic::start().await.with_words(4);
    let app = anthropic_app(&fake).await;
    let call = first_call(&app, json!("required")).await;

    let follow_up = json!({"model": "m", "messages": answered(&call, "3 degrees")});
    let second = compat(&app, &follow_up).await;
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert_eq!(second["choices"][0]["message"]["content"], fake.full_text());
    let sent = fake.request(1);
    assert_eq!(
        sent["tools"],
        json!([{"name": "get_weather", "input_schema": {"type": "object"}}])
    );
    assert_eq!(sent["tool_choice"], json!({"type": "none"}));
}

#[actix_web::test]
async fn the_fake_anthropic_refuses_tool_blocks_without_tools_as_the_api_does() {
    let fake = FakeAnthropic::start().await;
    let mut body = json!({"model": "claude-x", "max_tokens": 64, "stream": true,
    "messages": [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
            "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
            "content": "3 degrees"}]},
    ]});
    let post = |body: Value| {
        reqwest::Client::new()
            .post(format!("{}/messages", fake.base_url()))
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    let res = post(body.clone()).await.unwrap();
    assert_eq!(res.status(), 400);
    let error: Value = res.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("must define tools"));

    body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    body["tool_choice"] = json!({"type": "none"});
    assert_eq!(post(body).await.unwrap().status(), 200);
}

#[actix_web::test]
async fn a_gemini_round_trip_sends_function_call_then_function_response_parts() {
    let fake = FakeGemini::start().await.with_words(4);
    let app = gemini_app(&fake).await;
    let messages = json!([{"role": "user", "content": QUESTION}]);
    let sub = app
        .submit(ADMIN_KEY, &submit_asking("g-rt-1", messages, json!("auto")))
        .await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    let call = exec["output"]["tool_calls"][0].clone();
    assert_eq!(call["function"]["name"], "get_weather");

    for (key, result, response) in [
        ("g-rt-2", r#"{"temp": 3}"#, json!({"temp": 3})),
        ("g-rt-3", "3 degrees", json!({"result": "3 degrees"})),
    ] {
        let body = submit_asking(key, answered(&call, result), json!("auto"));
        let sub = app.submit(ADMIN_KEY, &body).await;
        let exec = app
            .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
            .await;
        assert_eq!(exec["status"], "completed", "{exec}");
        assert_eq!(exec["finish_reason"], "stop");
        assert_eq!(exec["output"]["text"], fake.full_text());
        let sent = fake.requests().last().cloned().unwrap();
        assert_eq!(
            sent["contents"],
            json!([
                {"role": "user", "parts": [{"text": QUESTION}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather",
                    "args": {"city": "Oslo", "unit": "celsius"}},
                    "thoughtSignature": THOUGHT_SIGNATURE}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": response}},
                    {"text": "In celsius, please."},
                ]},
            ])
        );
    }
}

#[actix_web::test]
async fn an_anthropic_call_cut_halfway_fails_over_to_gemini_and_the_call_comes_once() {
    let primary = FakeAnthropic::start()
        .await
        .with_default(fake_anthropic::Fault::CutAfter(2));
    let backup = FakeGemini::start().await;
    let config = toml(&[
        P("an", "anthropic", primary.base_url()),
        P("ge", "gemini", backup.base_url()),
    ]);
    let app = spawn_app_with(&config, with_keys).await;
    let messages = json!([{"role": "user", "content": QUESTION}]);
    let sub = app
        .submit(
            ADMIN_KEY,
            &submit_asking("cut-call", messages, json!("auto")),
        )
        .await;
    let id = sub["id"].as_str().unwrap();
    let events = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&events, 1);
    let calls: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "chunk")
        .filter_map(|e| e.data["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], TOOL_ARGUMENTS);
    let failovers: Vec<_> = events.iter().filter(|e| e.event == "failover").collect();
    assert_eq!(failovers.len(), 1);
    assert_eq!(failovers[0].data["from"], "an");
    assert_eq!(failovers[0].data["to"], "ge");
    assert_eq!(failovers[0].data["reason"], "stream_interrupted");

    let exec = app.execution(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "completed");
    assert_eq!(exec["finish_reason"], "tool_calls");
    assert_eq!(exec["output"]["text"], "");
    assert_eq!(exec["output"]["tool_calls"], json!(calls));
    // The backup was asked afresh: half a call is not passed on as if it were an answer.
    assert_eq!(backup.request(0)["contents"].as_array().unwrap().len(), 1);
}
