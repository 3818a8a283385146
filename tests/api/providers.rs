//! The Anthropic and Gemini wire formats end to end: executions on their routes, the requests
//! their fakes receive, cross-provider mid-stream failover, and their errors' classification.

use serde_json::{json, Value};
use switchyard::routing::CONTINUE_INSTRUCTION;
use switchyard::settings::ContinuationStrategy;

use crate::fake_anthropic::{self, FakeAnthropic};
use crate::fake_gemini::{self, FakeGemini};
use crate::fake_openai::{self, FakeOpenAi};
use crate::helpers::*;

/// One network provider of a test config: its name, kind and base URL.
pub struct P<'a>(pub &'a str, pub &'a str, pub String);

/// A config whose model `m` routes through `providers` in order (route model = `up-<name>`).
/// Each provider gets one try, so a failure moves to the next route at once, and an
/// `api_key_env` whose key the test sets with [`with_keys`].
pub fn toml(providers: &[P<'_>]) -> String {
    let mut toml = String::from("listen = \"127.0.0.1:0\"\ndata_dir = \"unused\"\n");
    for P(name, kind, base_url) in providers {
        toml.push_str(&format!(
            r#"
[[providers]]
name = "{name}"
kind = "{kind}"
base_url = "{base_url}"
api_key_env = "SWITCHYARD_TEST_KEY_{}"
first_chunk_timeout_ms = 2000
idle_timeout_ms = 1000
max_attempts = 1
"#,
            name.to_ascii_uppercase()
        ));
    }
    let routes: Vec<String> = providers
        .iter()
        .map(|P(name, ..)| format!(r#"{{ provider = "{name}", model = "up-{name}" }}"#))
        .collect();
    toml.push_str(&format!(
        "\n[[models]]\nslug = \"m\"\nroutes = [{}]\n",
        routes.join(", ")
    ));
    toml
}

/// Sets every provider's key to `key-<name>` (as if read from its variable).
pub fn with_keys(s: &mut switchyard::settings::Settings) {
    for p in &mut s.providers {
        p.api_key = Some(format!("key-{}", p.name));
    }
}

fn body(key: &str) -> Value {
    json!({"model": "m", "idempotency_key": key, "messages": [
        {"role": "system", "content": "Answer in words"},
        {"role": "user", "content": "Count for me"},
        {"role": "user", "content": "please"},
    ]})
}

/// Submits, waits for the end, and returns the execution and its events.
async fn run(app: &TestApp, key: &str) -> (Value, Vec<SseEvent>) {
    let sub = app.submit(ADMIN_KEY, &body(key)).await;
    let id = sub["id"].as_str().unwrap();
    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    let events = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&events, 1);
    (exec, events)
}

fn failovers(events: &[SseEvent]) -> Vec<&SseEvent> {
    events.iter().filter(|e| e.event == "failover").collect()
}

/// Prompt words of [`body`] (the fakes count words): system 3 + user 3 + 1.
const PROMPT_WORDS: u64 = 7;

#[actix_web::test]
async fn an_anthropic_route_completes_with_the_exact_text_and_usage() {
    let fake = FakeAnthropic::start().await.with_words(7);
    let app = spawn_app_with(&toml(&[P("an", "anthropic", fake.base_url())]), with_keys).await;
    let (exec, events) = run(&app, "an1").await;
    assert_eq!(exec["status"], "completed", "{exec}");
    assert_eq!(exec["output"]["text"], fake.full_text());
    assert_eq!(chunk_text(&events), fake.full_text());
    assert_eq!(
        exec["usage"],
        json!({"prompt_tokens": PROMPT_WORDS, "completion_tokens": 7, "total_tokens": PROMPT_WORDS + 7})
    );
    assert!(failovers(&events).is_empty());
}

#[actix_web::test]
async fn the_anthropic_request_has_the_messages_api_shape() {
    let fake = FakeAnthropic::start().await.with_words(3);
    let app = spawn_app_with(&toml(&[P("an", "anthropic", fake.base_url())]), with_keys).await;
    let (exec, _) = run(&app, "an2").await;
    assert_eq!(exec["status"], "completed", "{exec}");
    let r = &fake.recorded()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/messages");
    let h = fake.request_headers(0);
    assert_eq!(h["x-api-key"], "key-an");
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert_eq!(h["content-type"], "application/json");
    assert!(!h.contains_key("authorization"));
    assert_eq!(
        r.body,
        json!({
            "model": "up-an",
            "max_tokens": 4096,
            "stream": true,
            "system": "Answer in words",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Count for me"},
                {"type": "text", "text": "please"},
            ]}],
        })
    );

    // The debug log has the request as sent, the key redacted, and every raw event.
    let id = exec["id"].as_str().unwrap();
    let log: Value = app
        .get(&format!("/v1/executions/{id}/log"), ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert!(!log.to_string().contains("key-an"), "secrets are redacted");
    let entries = log["attempts"][0]["entries"].as_array().unwrap();
    assert_eq!(entries[0]["body"], r.body);
    let key = entries[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-api-key")
        .unwrap();
    assert_eq!(key[1], "[redacted]");
    // message_start, block start, ping, 3 deltas, block stop, message_delta, message_stop.
    let chunks = entries.iter().filter(|e| e["type"] == "chunk").count();
    assert_eq!(chunks, 9);
}

#[actix_web::test]
async fn a_gemini_route_completes_with_the_exact_text_and_usage() {
    let fake = FakeGemini::start().await.with_words(7);
    let app = spawn_app_with(&toml(&[P("ge", "gemini", fake.base_url())]), with_keys).await;
    let (exec, events) = run(&app, "ge1").await;
    assert_eq!(exec["status"], "completed", "{exec}");
    assert_eq!(exec["output"]["text"], fake.full_text());
    assert_eq!(chunk_text(&events), fake.full_text());
    assert_eq!(
        exec["usage"],
        json!({"prompt_tokens": PROMPT_WORDS, "completion_tokens": 7, "total_tokens": PROMPT_WORDS + 7})
    );
}

#[actix_web::test]
async fn the_gemini_request_has_the_generate_content_shape() {
    let fake = FakeGemini::start().await.with_words(3);
    let app = spawn_app_with(&toml(&[P("ge", "gemini", fake.base_url())]), with_keys).await;
    let mut submit = body("ge2");
    submit["params"] = json!({"temperature": 0.2, "max_tokens": 50, "stop": "END"});
    submit["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": "Sure"}),
        json!({"role": "user", "content": "go"}),
    ]);
    let sub = app.submit(ADMIN_KEY, &submit).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed", "{exec}");
    let r = &fake.recorded()[0];
    assert_eq!(r.path, "/v1beta/models/up-ge:streamGenerateContent");
    assert_eq!(r.query, "alt=sse");
    let h = fake.request_headers(0);
    assert_eq!(h["x-goog-api-key"], "key-ge");
    assert!(!h.contains_key("authorization"));
    assert_eq!(
        r.body,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Count for me"}, {"text": "please"}]},
                {"role": "model", "parts": [{"text": "Sure"}]},
                {"role": "user", "parts": [{"text": "go"}]},
            ],
            "systemInstruction": {"parts": [{"text": "Answer in words"}]},
            "generationConfig": {"temperature": 0.2, "maxOutputTokens": 50, "stopSequences": ["END"]},
        })
    );
}

/// An OpenAI route that cuts its stream after 5 of 12 words, then `fallback` (named `name`,
/// of `kind`): the answer completes with the fallback's exact text after one failover.
async fn continued_after_an_openai_cut(
    (name, kind, base_url): (&str, &str, String),
    full_text: String,
    key: &str,
) -> (Value, Vec<SseEvent>) {
    let openai = FakeOpenAi::start()
        .await
        .with_words(12)
        .with_default(fake_openai::Fault::CutAfter(5));
    let app = spawn_app_with(
        &toml(&[
            P("oa", "openai", openai.base_url()),
            P(name, kind, base_url),
        ]),
        with_keys,
    )
    .await;
    let (exec, events) = run(&app, key).await;
    assert_eq!(exec["status"], "completed", "{exec}");
    assert_eq!(exec["output"]["text"], full_text);
    assert_eq!(chunk_text(&events), full_text);
    let failovers = failovers(&events);
    assert_eq!(failovers.len(), 1, "{events:?}");
    assert_eq!(failovers[0].data["from"], "oa");
    assert_eq!(failovers[0].data["to"], name);
    (exec, events)
}

#[actix_web::test]
async fn an_openai_stream_cut_mid_answer_continues_on_anthropic_with_a_prefill() {
    let anthropic = FakeAnthropic::start().await.with_words(12);
    let fallback = ("an", "anthropic", anthropic.base_url());
    let (exec, events) = continued_after_an_openai_cut(fallback, anthropic.full_text(), "x1").await;
    assert_eq!(failovers(&events)[0].data["reason"], "stream_interrupted");
    assert_eq!(exec["attempts"][1]["strategy"], "prefill");

    // Native prefill: the emitted text as the final assistant turn, trailing space trimmed,
    // and the fake continued right after it.
    let messages = anthropic.request(0)["messages"].clone();
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "content": [{"type": "text", "text": "w0 w1 w2 w3 w4"}]})
    );
    assert_eq!(anthropic.start_chunks(), [5]);
}

#[actix_web::test]
async fn an_openai_stream_cut_mid_answer_continues_on_gemini_with_an_instruction() {
    let gemini = FakeGemini::start().await.with_words(12);
    let fallback = ("ge", "gemini", gemini.base_url());
    let (exec, _) = continued_after_an_openai_cut(fallback, gemini.full_text(), "x2").await;
    assert_eq!(exec["attempts"][1]["strategy"], "instruction");

    let contents = gemini.request(0)["contents"].clone();
    assert_eq!(
        contents[1],
        json!({"role": "model", "parts": [{"text": "w0 w1 w2 w3 w4 "}]})
    );
    assert_eq!(
        contents[2],
        json!({"role": "user", "parts": [{"text": CONTINUE_INSTRUCTION}]})
    );
    assert_eq!(gemini.start_chunks(), [5]);
}

#[actix_web::test]
async fn a_gemini_route_configured_for_prefill_falls_back_to_the_instruction() {
    let openai = FakeOpenAi::start()
        .await
        .with_words(9)
        .with_default(fake_openai::Fault::CutAfter(4));
    let gemini = FakeGemini::start().await.with_words(9);
    let app = spawn_app_with(
        &toml(&[
            P("oa", "openai", openai.base_url()),
            P("ge", "gemini", gemini.base_url()),
        ]),
        |s| {
            with_keys(s);
            s.providers[1].continuation = Some(ContinuationStrategy::Prefill);
        },
    )
    .await;
    let (exec, events) = run(&app, "x3").await;
    assert_eq!(exec["status"], "completed", "{exec}");
    assert_eq!(chunk_text(&events), gemini.full_text());
    let strategies: Vec<&str> = exec["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(strategies, ["initial", "prefill", "instruction"]);
    assert_eq!(exec["attempts"][1]["error_code"], "provider_error");
    assert_eq!(gemini.start_chunks(), [0, 4]);
}

#[actix_web::test]
async fn a_gemini_safety_block_fails_with_content_filtered_and_no_failover() {
    let gemini = FakeGemini::start()
        .await
        .with_words(8)
        .with_default(fake_gemini::Fault::SafetyAt(3));
    let backup = FakeOpenAi::start().await.with_words(8);
    let app = spawn_app_with(
        &toml(&[
            P("ge", "gemini", gemini.base_url()),
            P("oa", "openai", backup.base_url()),
        ]),
        with_keys,
    )
    .await;
    let (exec, events) = run(&app, "s1").await;
    assert_eq!(exec["status"], "failed", "{exec}");
    assert_eq!(exec["error"]["code"], "content_filtered");
    assert_eq!(exec["attempts"].as_array().unwrap().len(), 1);
    assert!(failovers(&events).is_empty());
    assert_eq!(backup.request_count(), 0);
    assert_eq!(chunk_text(&events), FakeGemini::text_range(0, 3));

    // A blocked prompt is the same refusal, before any text.
    gemini.set_default(fake_gemini::Fault::PromptBlocked);
    let (exec, _) = run(&app, "s2").await;
    assert_eq!(exec["error"]["code"], "content_filtered");
    assert_eq!(backup.request_count(), 0);
}

#[actix_web::test]
async fn provider_errors_are_classified_per_wire_format() {
    let anthropic = FakeAnthropic::start().await.with_words(4);
    let gemini = FakeGemini::start().await.with_words(4);
    let backup = FakeOpenAi::start().await.with_words(4);
    let app = spawn_app_with(
        &toml(&[
            P("an", "anthropic", anthropic.base_url()),
            P("ge", "gemini", gemini.base_url()),
            P("oa", "openai", backup.base_url()),
        ]),
        |s| {
            with_keys(s);
            // Every case fails both primaries: keep them in rotation.
            for p in &mut s.providers {
                p.breaker_failures = 100;
            }
        },
    )
    .await;
    let cases = [
        (
            fake_anthropic::Fault::overloaded(),
            fake_gemini::Fault::rate_limited(),
            ["provider_unavailable", "rate_limited"],
        ),
        (
            fake_anthropic::Fault::rate_limited(None),
            fake_gemini::Fault::unavailable(),
            ["rate_limited", "provider_unavailable"],
        ),
        (
            fake_anthropic::Fault::ErrorEventAt(0, "overloaded_error"),
            fake_gemini::Fault::ErrorEventAt(0),
            ["provider_unavailable", "provider_unavailable"],
        ),
        (
            fake_anthropic::Fault::CutAfter(0),
            fake_gemini::Fault::CutAfter(0),
            ["stream_interrupted", "stream_interrupted"],
        ),
        (
            fake_anthropic::Fault::prompt_too_long(),
            fake_gemini::Fault::token_limit(),
            ["context_length_exceeded", "context_length_exceeded"],
        ),
    ];
    for (i, (a, g, codes)) in cases.into_iter().enumerate() {
        anthropic.set_default(a);
        gemini.set_default(g);
        let (exec, _) = run(&app, &format!("e{i}")).await;
        assert_eq!(exec["status"], "completed", "{exec}");
        assert_eq!(exec["output"]["text"], backup.full_text());
        let got: Vec<&str> = exec["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .take(2)
            .map(|a| a["error_code"].as_str().unwrap_or("none"))
            .collect();
        assert_eq!(got, codes, "case {i}: {exec}");
    }
}
