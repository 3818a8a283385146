//! Extended thinking passed through from Anthropic routes: the Messages API's thinking blocks
//! (non-stream and stream), a try cut inside a thinking block (restarted, said so in the
//! failover event), a continuation after the text began (no thinking on the prefill), thinking
//! sent back in a later turn, and a reported stop sequence.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::fake_anthropic::{FakeAnthropic, Fault, SIGNATURE, THINKING};
use crate::helpers::*;
use crate::providers::{toml, with_keys, P};

fn thinking_body(stream: bool) -> Value {
    json!({"model": "m", "max_tokens": 4096, "stream": stream,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "Think, then answer."}]})
}

async fn post(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/messages"))
        .header("x-api-key", ADMIN_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// An app whose model `m` routes to two Anthropic providers on the same fake.
async fn app(fake: &FakeAnthropic) -> TestApp {
    let providers = [
        P("first", "anthropic", fake.base_url()),
        P("second", "anthropic", fake.base_url()),
    ];
    spawn_app_with(&toml(&providers), with_keys).await
}

#[actix_web::test]
async fn thinking_blocks_come_first_with_their_signature() {
    let fake = FakeAnthropic::start().await.with_words(5);
    let app = app(&fake).await;
    let mut body = thinking_body(false);
    body["temperature"] = json!(0.3);
    let res = post(&app, &body).await;
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.unwrap();
    let content = msg["content"].as_array().unwrap();
    assert_eq!(
        content[0],
        json!({"type": "thinking", "thinking": THINKING, "signature": SIGNATURE})
    );
    assert_eq!(content[1]["type"], "text");
    assert_eq!(content[1]["text"], fake.full_text());
    let sent = fake.request(0);
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    assert!(
        sent.get("temperature").is_none(),
        "thinking takes the default sampling"
    );

    // Streamed: the thinking block whole (text, then signature), then the text block.
    let res = post(&app, &thinking_body(true)).await;
    let mut events = Vec::new();
    let mut stream = res.bytes_stream().eventsource();
    while let Some(ev) = stream.next().await {
        let ev = ev.unwrap();
        events.push(serde_json::from_str::<Value>(&ev.data).unwrap());
    }
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .collect();
    assert_eq!(starts[0]["content_block"]["type"], "thinking");
    assert_eq!(
        (starts[0]["index"].as_u64(), starts[1]["index"].as_u64()),
        (Some(0), Some(1))
    );
    let thought: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "thinking_delta")
        .map(|e| e["delta"]["thinking"].as_str().unwrap())
        .collect();
    assert_eq!(thought, THINKING);
    let signature = events
        .iter()
        .find(|e| e["delta"]["type"] == "signature_delta");
    assert_eq!(signature.unwrap()["delta"]["signature"], SIGNATURE);
}

#[actix_web::test]
async fn a_try_cut_inside_thinking_restarts_the_block_and_says_so() {
    let fake = FakeAnthropic::start()
        .await
        .with_words(5)
        .with_script(vec![Fault::CutInThinking, Fault::None]);
    let app = app(&fake).await;
    let body = json!({"model": "m", "idempotency_key": "t1",
        "params": {"thinking": {"budget_tokens": 2048}, "max_tokens": 4096},
        "messages": [{"role": "user", "content": "Think, then answer."}]});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let events = app
        .sse_all(ADMIN_KEY, sub["id"].as_str().unwrap(), None)
        .await;
    assert_gapless(&events, 1);
    let failover = events.iter().position(|e| e.event == "failover").unwrap();
    let f = &events[failover].data;
    assert_eq!(
        (&f["restart"], &f["restarted"]),
        (&json!(true), &json!("thinking"))
    );
    let before: String = events[..failover]
        .iter()
        .filter_map(|e| e.data["thinking"].as_str())
        .collect();
    assert_eq!(
        before, "Let me ",
        "the void part of the block went out first"
    );
    let after: String = events[failover..]
        .iter()
        .filter_map(|e| e.data["thinking"].as_str())
        .collect();
    assert_eq!(after, THINKING, "the block made anew, whole");
    let done = &events.last().unwrap().data;
    assert_eq!(
        done["output"]["thinking"],
        json!([{"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}])
    );
    assert_eq!(done["output"]["text"], fake.full_text());
    assert_eq!(chunk_text(&events), fake.full_text(), "no text was voided");
}

#[actix_web::test]
async fn a_cut_after_the_text_began_continues_without_thinking() {
    let fake = FakeAnthropic::start()
        .await
        .with_words(8)
        .with_script(vec![Fault::CutAfter(3), Fault::None]);
    let app = app(&fake).await;
    let res = post(&app, &thinking_body(false)).await;
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.unwrap();
    let content = msg["content"].as_array().unwrap();
    assert_eq!(
        content.len(),
        2,
        "one thinking block, one text block: {msg}"
    );
    assert_eq!(content[0]["thinking"], THINKING);
    assert_eq!(content[1]["text"], fake.full_text());
    let continuation = fake.request(1);
    assert!(
        continuation.get("thinking").is_none(),
        "a prefill cannot think"
    );
    assert_eq!(
        continuation["messages"].as_array().unwrap().last().unwrap()["role"],
        "assistant"
    );
}

#[actix_web::test]
async fn thinking_sent_back_reaches_an_anthropic_route_first_in_its_turn() {
    let fake = FakeAnthropic::start().await.with_words(3);
    let app = app(&fake).await;
    let body = json!({"model": "m", "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should call it.", "signature": "sig_1"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]});
    let res = post(&app, &body).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let sent = fake.request(0);
    let assistant = &sent["messages"][1]["content"];
    assert_eq!(
        assistant[0],
        json!({"type": "thinking", "thinking": "I should call it.", "signature": "sig_1"})
    );
    assert_eq!(
        assistant[1],
        json!({"type": "redacted_thinking", "data": "opaque"})
    );
    assert_eq!(assistant[2]["type"], "tool_use");

    // Thinking in a user turn, a budget under Anthropic's minimum, an unknown type: 400.
    let bad = [
        json!({"type": "enabled", "budget_tokens": 100}),
        json!({"type": "enabled", "budget_tokens": 8192}),
        json!({"type": "sometimes"}),
    ];
    for thinking in bad {
        let mut body = thinking_body(false);
        body["thinking"] = thinking;
        let res = post(&app, &body).await;
        assert_eq!(res.status(), 400);
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("thinking"),
            "{err}"
        );
    }
}

#[actix_web::test]
async fn a_stop_sequence_is_reported_as_such() {
    let fake = FakeAnthropic::start()
        .await
        .with_words(4)
        .with_default(Fault::StopSequence);
    let app = app(&fake).await;
    let body = json!({"model": "m", "max_tokens": 256, "stop_sequences": ["END"],
        "messages": [{"role": "user", "content": "Go."}]});
    let msg: Value = post(&app, &body).await.json().await.unwrap();
    assert_eq!(
        (&msg["stop_reason"], &msg["stop_sequence"]),
        (&json!("stop_sequence"), &json!("END"))
    );
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let text = post(&app, &stream_body).await.text().await.unwrap();
    assert!(
        text.contains(r#""stop_reason":"stop_sequence","stop_sequence":"END""#),
        "{text}"
    );
    // The execution says it too; the OpenAI-compatible answer stays `stop`.
    let res = app
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            &json!({"model": "m", "stop": ["END"], "messages": [{"role": "user", "content": "Go."}]}),
        )
        .await;
    let completion: Value = res.json().await.unwrap();
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
}
