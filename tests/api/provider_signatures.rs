//! Gemini thought signatures over real HTTP: a call's signature comes out as Google's
//! `extra_content` (stream, execution), goes back upstream on its `functionCall` part, a call
//! made on another route reaches Gemini with the documented dummy, and an OpenAI route never
//! sees `extra_content`.

use serde_json::{json, Value};

use crate::fake_gemini::{self, FakeGemini, DUMMY_THOUGHT_SIGNATURE, THOUGHT_SIGNATURE};
use crate::fake_openai::{self, FakeOpenAi};
use crate::helpers::*;
use crate::provider_tools::{compat, compat_asking, first_call, stream_payloads, QUESTION};
use crate::providers::{toml, with_keys, P};

/// The conversation after `call`, ending with its result: the turn Gemini 3 checks.
fn history(call: &Value) -> Value {
    json!([
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "3 degrees"},
    ])
}

/// A follow-up that answers `call`, offering the tools again.
fn follow_up(call: &Value) -> Value {
    let mut body = compat_asking(false, json!("auto"));
    body["messages"] = history(call);
    body
}

#[actix_web::test]
async fn a_gemini_signature_comes_out_as_extra_content_and_goes_back_on_its_part() {
    let fake = FakeGemini::start().await.with_words(3);
    let app = spawn_app_with(&toml(&[P("ge", "gemini", fake.base_url())]), with_keys).await;
    let signed = json!({"google": {"thought_signature": THOUGHT_SIGNATURE}});

    let res = app
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            &compat_asking(true, json!("required")),
        )
        .await;
    let id = res.headers()["x-switchyard-execution-id"]
        .to_str()
        .unwrap()
        .to_string();
    let payloads = stream_payloads(res).await;
    let call = payloads
        .iter()
        .find_map(|p| p["choices"][0]["delta"]["tool_calls"].get(0))
        .cloned()
        .expect("a call in the stream");
    assert_eq!(call["extra_content"], signed);
    let exec = app.wait_terminal(ADMIN_KEY, &id).await;
    assert_eq!(exec["output"]["tool_calls"][0]["extra_content"], signed);

    let mut call = call;
    call.as_object_mut().unwrap().remove("index");
    let answer = compat(&app, &follow_up(&call)).await;
    assert_eq!(answer["choices"][0]["message"]["content"], fake.full_text());
    assert_eq!(
        fake.request(1)["contents"][1],
        json!({"role": "model", "parts": [{
            "functionCall": {"name": "get_weather", "args": {"city": "Oslo", "unit": "celsius"}},
            "thoughtSignature": THOUGHT_SIGNATURE}]})
    );
}

#[actix_web::test]
async fn a_call_made_on_an_openai_route_reaches_gemini_with_the_dummy_signature() {
    let openai = FakeOpenAi::start().await;
    let gemini = FakeGemini::start().await.with_words(3);
    let config = toml(&[
        P("op", "openai", openai.base_url()),
        P("ge", "gemini", gemini.base_url()),
    ]);
    let app = spawn_app_with(&config, with_keys).await;
    let call = first_call(&app, json!("required")).await;
    assert!(call.get("extra_content").is_none(), "{call}");

    openai.push_fault(fake_openai::Fault::status(503));
    let answer = compat(&app, &follow_up(&call)).await;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        gemini.full_text()
    );
    let part = &gemini.request(0)["contents"][1]["parts"][0];
    assert_eq!(part["thoughtSignature"], DUMMY_THOUGHT_SIGNATURE);
}

#[actix_web::test]
async fn a_gemini_call_reaches_an_openai_route_without_extra_content() {
    let gemini = FakeGemini::start().await;
    let openai = FakeOpenAi::start().await.with_words(3);
    let config = toml(&[
        P("ge", "gemini", gemini.base_url()),
        P("op", "openai", openai.base_url()),
    ]);
    let app = spawn_app_with(&config, with_keys).await;
    let call = first_call(&app, json!("required")).await;
    assert!(call.get("extra_content").is_some(), "{call}");

    gemini.push_fault(fake_gemini::Fault::unavailable());
    let answer = compat(&app, &follow_up(&call)).await;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        openai.full_text()
    );
    let mut upstream = call.clone();
    upstream.as_object_mut().unwrap().remove("extra_content");
    assert_eq!(
        openai.request(0)["messages"][1]["tool_calls"],
        json!([upstream])
    );
}

#[actix_web::test]
async fn the_fake_gemini_refuses_an_unsigned_step_of_the_current_turn() {
    let fake = FakeGemini::start().await;
    let url = format!(
        "{}/models/gemini-x:streamGenerateContent?alt=sse",
        fake.base_url()
    );
    let contents = |signature: Option<&str>| {
        let mut call = json!({"functionCall": {"name": "get_time", "args": {}}});
        if let Some(s) = signature {
            call["thoughtSignature"] = s.into();
        }
        json!({"contents": [
            {"role": "user", "parts": [{"text": QUESTION}]},
            {"role": "model", "parts": [call]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_time",
                                                             "response": {"result": "12:00"}}}]},
        ]})
    };
    let status = |body: Value| {
        let url = url.clone();
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }
    };
    assert_eq!(status(contents(None)).await, 400);
    assert_eq!(status(contents(Some("forged"))).await, 400);
    assert_eq!(status(contents(Some(THOUGHT_SIGNATURE))).await, 200);
    assert_eq!(status(contents(Some(DUMMY_THOUGHT_SIGNATURE))).await, 200);
}
