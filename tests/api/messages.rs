//! Anthropic's Messages API inbound (`POST /v1/messages`) over real HTTP, routed to OpenAI-,
//! Gemini- and Anthropic-format fakes: the message object and the event stream in Anthropic's
//! shapes, a tool round trip, a mid-stream failover with the exact text, errors in Anthropic's
//! shape and status, `x-api-key`, `count_tokens`. (The official Python SDK runs against it in
//! tests/sdk.)

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::fake_anthropic::{self, FakeAnthropic};
use crate::fake_gemini::FakeGemini;
use crate::fake_openai::{self, FakeOpenAi, TOOL_ARGUMENTS};
use crate::helpers::*;
use crate::providers::{toml, with_keys, P};

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 256, "stream": stream,
           "system": "be brief",
           "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]})
}

/// A request as Anthropic's SDKs send it: `x-api-key` and `anthropic-version`.
async fn post(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("x-api-key", ADMIN_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "some-beta-2025-01-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn message(app: &TestApp, body: &Value) -> Value {
    let res = post(app, "/v1/messages", body).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}

/// Every event of a stream as (event name, data).
async fn events(res: reqwest::Response) -> Vec<(String, Value)> {
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut out = Vec::new();
    let mut stream = res.bytes_stream().eventsource();
    while let Some(ev) = stream.next().await {
        let ev = ev.unwrap();
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(data["type"], ev.event.as_str(), "type names the event");
        out.push((ev.event, data));
    }
    out
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    let mut names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    names.dedup();
    names
}

fn streamed_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "text_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect()
}

/// Checks an error answer: status and exactly `{"type": "error", "error": {"type", "message"}}`.
async fn assert_anthropic_error(res: reqwest::Response, status: u16, kind: &str) -> String {
    assert_eq!(res.status().as_u16(), status);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    assert_eq!(body["error"].as_object().unwrap().len(), 2, "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

fn weather_tool() -> Value {
    json!({"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                            "unit": {"type": "string"}}, "required": ["city"]}})
}

#[actix_web::test]
async fn a_message_on_an_openai_route_has_anthropics_shape() {
    let fake = FakeOpenAi::start().await.with_words(6);
    let app = spawn_with_fakes(&[&fake]).await;
    let res = post(&app, "/v1/messages", &ask("fake", false)).await;
    assert_eq!(res.status(), 200);
    let exec_id = res.headers()["x-switchyard-execution-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["id"].as_str().unwrap(),
        exec_id.replace("exec_", "msg_")
    );
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "up-0");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": fake.full_text()}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(body["usage"]["output_tokens"], 6);
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let sent = fake.request(0);
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(sent["messages"][1]["content"], "Hello");
    assert_eq!(sent["max_tokens"], 256);
    assert_eq!(
        app.execution(ADMIN_KEY, &exec_id).await["status"],
        "completed"
    );
}

#[actix_web::test]
async fn a_stream_from_an_anthropic_route_is_anthropics_event_sequence() {
    let fake = FakeAnthropic::start().await.with_words(5);
    let app = spawn_app_with(&toml(&[P("an", "anthropic", fake.base_url())]), with_keys).await;
    let events = events(post(&app, "/v1/messages", &ask("m", true)).await).await;
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["model"], "up-an");
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(streamed_text(&events), fake.full_text());
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 5);
    // What went upstream: Anthropic's own shape, the system prompt on top.
    assert_eq!(fake.request(0)["system"], "be brief");
}

/// Asks for the weather, gets the call, answers it, gets text: on whichever route `m` has.
async fn tool_round_trip(app: &TestApp, stream: bool) -> Value {
    let mut body = ask("m", stream);
    body["tools"] = json!([weather_tool()]);
    body["tool_choice"] = json!({"type": "any"});
    let call = if stream {
        let events = events(post(app, "/v1/messages", &body).await).await;
        let start = events
            .iter()
            .find(|(_, d)| d["content_block"]["type"] == "tool_use")
            .expect("a tool_use block");
        let block = &start.1["content_block"];
        assert_eq!(block["input"], json!({}));
        let json: String = events
            .iter()
            .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
            .collect();
        let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
        assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
        json!({"type": "tool_use", "id": block["id"], "name": block["name"],
               "input": serde_json::from_str::<Value>(&json).unwrap()})
    } else {
        let answer = message(app, &body).await;
        assert_eq!(answer["stop_reason"], "tool_use");
        let calls: Vec<&Value> = answer["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .collect();
        assert_eq!(calls.len(), 1, "{answer}");
        calls[0].clone()
    };
    assert_eq!(call["name"], "get_weather");
    assert_eq!(
        call["input"],
        serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap()
    );
    assert!(!call["id"].as_str().unwrap().is_empty());
    body["stream"] = json!(false);
    body["tool_choice"] = json!({"type": "auto"});
    body["messages"] = json!([
        body["messages"][0],
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                       "content": [{"type": "text", "text": "12 degrees"}]}]},
    ]);
    let answer = message(app, &body).await;
    assert_eq!(answer["stop_reason"], "end_turn", "{answer}");
    assert_eq!(answer["content"][0]["type"], "text");
    answer
}

#[actix_web::test]
async fn a_tool_round_trip_works_on_every_route_format() {
    let openai = FakeOpenAi::start().await.with_words(3);
    let app = spawn_app_with(&toml(&[P("op", "openai", openai.base_url())]), with_keys).await;
    tool_round_trip(&app, false).await;
    tool_round_trip(&app, true).await;
    let sent = openai.request(openai.request_count() - 1);
    assert_eq!(
        sent["messages"][2]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(sent["messages"][3]["role"], "tool");
    assert_eq!(sent["messages"][3]["content"], "12 degrees");
    assert_eq!(sent["tool_choice"], "auto");

    let anthropic = FakeAnthropic::start().await.with_words(3);
    let app = spawn_app_with(
        &toml(&[P("an", "anthropic", anthropic.base_url())]),
        with_keys,
    )
    .await;
    tool_round_trip(&app, false).await;
    tool_round_trip(&app, true).await;
    let sent = anthropic.request(anthropic.request_count() - 1);
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");

    let gemini = FakeGemini::start().await.with_words(3);
    let app = spawn_app_with(&toml(&[P("ge", "gemini", gemini.base_url())]), with_keys).await;
    tool_round_trip(&app, false).await;
    let answer = tool_round_trip(&app, true).await;
    assert_eq!(answer["content"][0]["text"], gemini.full_text());
}

#[actix_web::test]
async fn a_stream_cut_on_anthropic_continues_on_gemini_with_the_exact_text() {
    let anthropic = FakeAnthropic::start()
        .await
        .with_words(12)
        .with_default(fake_anthropic::Fault::CutAfter(4));
    let gemini = FakeGemini::start().await.with_words(12);
    let app = spawn_app_with(
        &toml(&[
            P("an", "anthropic", anthropic.base_url()),
            P("ge", "gemini", gemini.base_url()),
        ]),
        with_keys,
    )
    .await;
    let events = events(post(&app, "/v1/messages", &ask("m", true)).await).await;
    assert_eq!(streamed_text(&events), gemini.full_text());
    // One text block throughout: the failover is invisible but for the model.
    let starts = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .count();
    assert_eq!(starts, 1);
    assert_eq!(events.last().unwrap().0, "message_stop");
    assert_eq!(gemini.start_chunks(), [4]);
}

#[actix_web::test]
async fn a_stream_that_cannot_be_finished_ends_with_an_error_event() {
    let fake = FakeOpenAi::start()
        .await
        .with_default(fake_openai::Fault::CutAfter(3));
    let app = spawn_app_with(&config(&[&fake]), |s| s.providers[1].max_attempts = 1).await;
    let events = events(post(&app, "/v1/messages", &ask("fake", true)).await).await;
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "api_error");
    assert!(!events.iter().any(|(n, _)| n == "message_stop"));
}

#[actix_web::test]
async fn provider_failures_come_back_in_anthropics_shape_and_status() {
    let limited = FakeOpenAi::start()
        .await
        .with_default(fake_openai::Fault::rate_limited(Some(7)));
    let app = spawn_app_with(&config(&[&limited]), |s| s.providers[1].max_attempts = 1).await;
    let res = post(&app, "/v1/messages", &ask("fake", false)).await;
    assert_eq!(res.headers()["x-switchyard-error-code"], "rate_limited");
    assert!(res.headers().contains_key("retry-after"));
    assert_anthropic_error(res, 429, "rate_limit_error").await;

    let overloaded = FakeAnthropic::start()
        .await
        .with_default(fake_anthropic::Fault::overloaded());
    let app = spawn_app_with(
        &toml(&[P("an", "anthropic", overloaded.base_url())]),
        with_keys,
    )
    .await;
    // A stream that fails before any content still gets a real status.
    let res = post(&app, "/v1/messages", &ask("m", true)).await;
    assert_eq!(
        res.headers()["x-switchyard-error-code"],
        "provider_unavailable"
    );
    assert_anthropic_error(res, 529, "overloaded_error").await;

    let too_long = FakeAnthropic::start()
        .await
        .with_default(fake_anthropic::Fault::prompt_too_long());
    let app = spawn_app_with(
        &toml(&[P("an", "anthropic", too_long.base_url())]),
        with_keys,
    )
    .await;
    let res = post(&app, "/v1/messages", &ask("m", false)).await;
    let msg = assert_anthropic_error(res, 400, "invalid_request_error").await;
    assert!(msg.contains("prompt is too long"), "{msg}");
}

#[actix_web::test]
async fn keys_come_by_x_api_key_or_bearer_and_bad_ones_are_authentication_errors() {
    let app = spawn_app().await;
    let body = ask("chat-default", false);
    let res = app.post("/v1/messages", ADMIN_KEY, &body).await;
    assert_eq!(res.status(), 200, "bearer works too");
    let res = app
        .client
        .post(app.url("/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let msg = assert_anthropic_error(res, 401, "authentication_error").await;
    assert!(msg.contains("x-api-key"), "{msg}");
    let res = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", "sy_wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_anthropic_error(res, 401, "authentication_error").await;
    // The key is not a bearer token elsewhere in the API: x-api-key is this endpoint's.
    let res = app
        .client
        .get(app.url("/v1/models"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[actix_web::test]
async fn bad_input_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"top_k": 5}), "top_k"),
        (json!({"bogus": 1}), "bogus"),
        (json!({"max_tokens": null}), "max_tokens"),
        (json!({"temperature": 1.5}), "temperature"),
        (json!({"model": "nope"}), "model"),
        (
            json!({"thinking": {"type": "enabled", "budget_tokens": 2048}}),
            "thinking",
        ),
        (
            json!({"stop_sequences": ["a", "b", "c", "d", "e"]}),
            "stop_sequences",
        ),
        (
            json!({"tool_choice": {"type": "tool", "name": "x"}}),
            "tool_choice",
        ),
        (
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "tools[0]",
        ),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "system", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image",
                "source": {"type": "base64", "media_type": "image/svg+xml", "data": "PHN2Zz4="}}]}]}),
            "messages[0].content[0].source",
        ),
        (
            json!({"messages": [{"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {"role": "user", "content": "no result"}]}),
            "messages[1]",
        ),
        (json!({"metadata": {"user_id": "u", "other": 1}}), "other"),
    ];
    for (patch, field) in cases {
        let mut body = ask("chat-default", false);
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        let res = post(&app, "/v1/messages", &body).await;
        let msg = assert_anthropic_error(res, 400, "invalid_request_error").await;
        assert!(msg.contains(field), "{patch}: {msg}");
    }
    let res = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", ADMIN_KEY)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_anthropic_error(res, 400, "invalid_request_error").await;
}

#[actix_web::test]
async fn images_and_metadata_go_upstream() {
    let fake = FakeAnthropic::start().await.with_words(2);
    let config = toml(&[P("an", "anthropic", fake.base_url())]).replace(
        r#"model = "up-an" }"#,
        r#"model = "up-an", vision = true }"#,
    );
    let app = spawn_app_with(&config, with_keys).await;
    let mut body = ask("m", false);
    body["metadata"] = json!({"user_id": "u-42"});
    body["messages"] = json!([{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
        {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}}]}]);
    let res = post(&app, "/v1/messages", &body).await;
    let id = res
        .headers()
        .get("x-switchyard-execution-id")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let blocks = fake.request(0)["messages"][0]["content"].clone();
    let kinds: Vec<&str> = blocks
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"image") && kinds.contains(&"text"),
        "{blocks}"
    );
    let exec = app.execution(ADMIN_KEY, &id.unwrap()).await;
    assert_eq!(exec["metadata"]["user_id"], "u-42");
}

#[actix_web::test]
async fn count_tokens_answers_an_estimate() {
    let app = spawn_app().await;
    let text = "x".repeat(400);
    let body = json!({"model": "chat-default", "system": "abcd",
        "messages": [{"role": "user", "content": text}]});
    let res = post(&app, "/v1/messages/count_tokens", &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"input_tokens": 101})
    );
    let res = post(
        &app,
        "/v1/messages/count_tokens",
        &json!({"model": "chat-default", "max_tokens": 5, "messages": []}),
    )
    .await;
    let msg = assert_anthropic_error(res, 400, "invalid_request_error").await;
    assert!(msg.contains("max_tokens"), "{msg}");
    let res = app
        .client
        .post(app.url("/v1/messages/count_tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_anthropic_error(res, 401, "authentication_error").await;
}

#[actix_web::test]
async fn balances_and_client_rate_limits_answer_billing_and_rate_limit_errors() {
    let priced = config(&[]).replace(
        r#"model = "mock-1" }"#,
        r#"model = "mock-1", input_per_mtok = 100.0, output_per_mtok = 400.0 }"#,
    );
    let app = spawn_app_with(&priced, |s| s.limits.key_requests_per_minute = 2).await;
    let key = app.create_key("msg-bal", "member").await;
    let res = app
        .post(
            "/v1/projects/msg-bal/balance",
            ADMIN_KEY,
            &json!({"amount_micros": 1_000}),
        )
        .await;
    assert!(res.status().is_success());
    let send = || {
        app.client
            .post(app.url("/v1/messages"))
            .header("x-api-key", &key)
            .json(&ask("chat-default", false))
            .send()
    };
    let res = send().await.unwrap();
    assert_eq!(
        res.headers()["x-switchyard-error-code"],
        "insufficient_balance"
    );
    assert_anthropic_error(res, 402, "billing_error").await;
    let _ = send().await.unwrap();
    let res = send().await.unwrap();
    assert!(res.headers().contains_key("retry-after"));
    assert_anthropic_error(res, 429, "rate_limit_error").await;
}

#[actix_web::test]
async fn parallel_tool_results_and_idempotency_keys_are_honoured() {
    let fake = FakeOpenAi::start().await.with_words(3);
    let app = spawn_with_fakes(&[&fake]).await;
    let use_block = |id: &str, city: &str| json!({"type": "tool_use", "id": id, "name": "get_weather", "input": {"city": city}});
    let result = |id: &str, text: &str, is_error: bool| json!({"type": "tool_result", "tool_use_id": id, "content": text, "is_error": is_error});
    let mut body = ask("fake", false);
    body["tools"] = json!([weather_tool()]);
    body["messages"] = json!([
        {"role": "user", "content": "Oslo and Bergen?"},
        {"role": "assistant", "content": [use_block("toolu_a", "Oslo"), use_block("toolu_b", "Bergen")]},
        {"role": "user", "content": [result("toolu_a", "12 degrees", false),
                                     result("toolu_b", "no station", true),
                                     {"type": "text", "text": "Compare them."}]},
    ]);
    let send = || {
        app.client
            .post(app.url("/v1/messages"))
            .header("x-api-key", ADMIN_KEY)
            .header("idempotency-key", "msg-same-call")
            .json(&body)
            .send()
    };
    let a = send().await.unwrap();
    let b = send().await.unwrap();
    assert_eq!(
        a.headers()["x-switchyard-execution-id"],
        b.headers()["x-switchyard-execution-id"]
    );
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a, b);
    // Tools still offered and the last turn the user's: the fake calls again.
    assert_eq!(a["stop_reason"], "tool_use", "{a}");
    assert_eq!(fake.request_count(), 1);
    let sent = &fake.request(0)["messages"];
    assert_eq!(sent[0]["role"], "system");
    assert_eq!(sent[2]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(
        sent[2]["tool_calls"][1]["function"]["arguments"],
        r#"{"city":"Bergen"}"#
    );
    assert_eq!(
        sent[3],
        json!({"role": "tool", "tool_call_id": "toolu_a", "content": "12 degrees"})
    );
    assert_eq!(sent[4]["content"], "Error: no station");
    assert_eq!(sent[5], json!({"role": "user", "content": "Compare them."}));
}
