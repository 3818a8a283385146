//! Structured output asked the native way of each provider kind, against the fakes over real
//! HTTP: what the fake received is the kind's own shape for the route's `structured_output`
//! mode, and the JSON the fake answered is the execution's text.

use serde_json::{json, Value};

use crate::fake_anthropic::{self, FakeAnthropic};
use crate::fake_gemini::FakeGemini;
use crate::fake_openai::{FakeOpenAi, JSON_ANSWER, JSON_INSTRUCTION_MARK, TOOL_ARGUMENTS};
use crate::helpers::*;
use crate::providers::{toml, with_keys, P};

fn todo_schema() -> Value {
    json!({"type": "object", "additionalProperties": false,
           "properties": {"title": {"type": "string"}, "done": {"type": "boolean"},
                          "tags": {"type": "array", "items": {"type": "string"}}},
           "required": ["title", "done", "tags"]})
}

/// The schema of [`TOOL_ARGUMENTS`], which the Anthropic fake answers a forced call with.
fn weather_schema() -> Value {
    json!({"type": "object", "additionalProperties": false,
           "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
           "required": ["city", "unit"]})
}

fn weather_format() -> Value {
    json!({"type": "json_schema",
           "json_schema": {"name": "weather", "schema": weather_schema(), "strict": true}})
}

fn todo_format() -> Value {
    json!({"type": "json_schema",
           "json_schema": {"name": "todo", "schema": todo_schema(), "strict": true}})
}

/// A config whose model `m` routes to the providers in order, each route with `mode` as its
/// `structured_output` when given.
async fn app(providers: &[P<'_>], mode: Option<&str>) -> TestApp {
    let mut toml = toml(providers);
    if let Some(mode) = mode {
        for P(name, ..) in providers {
            toml = toml.replace(
                &format!(r#"model = "up-{name}" }}"#),
                &format!(r#"model = "up-{name}", structured_output = "{mode}" }}"#),
            );
        }
    }
    spawn_app_with(&toml, with_keys).await
}

/// Submits a request for `format` on `m` and waits for its end.
async fn run(app: &TestApp, key: &str, prompt: &str, format: Value) -> Value {
    let body = json!({"model": "m", "idempotency_key": key,
        "messages": [{"role": "system", "content": "You plan days."},
                     {"role": "user", "content": prompt}],
        "params": {"response_format": format}});
    let sub = app.submit(ADMIN_KEY, &body).await;
    app.wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await
}

/// The execution completed with `text` as its answer, streamed as chunks.
async fn assert_answered(app: &TestApp, exec: &Value, text: &str) {
    assert_eq!(exec["status"], "completed", "{exec}");
    assert_eq!(exec["output"]["text"], text, "{exec}");
    let events = app
        .sse_all(ADMIN_KEY, exec["id"].as_str().unwrap(), None)
        .await;
    assert_eq!(chunk_text(&events), text);
}

fn text_of(message: &Value) -> &str {
    message["content"].as_str().unwrap_or_default()
}

#[actix_web::test]
async fn openai_native_sends_the_response_format_as_given() {
    let fake = FakeOpenAi::start().await;
    let app = app(&[P("op", "openai", fake.base_url())], None).await;
    let exec = run(&app, "s1", "One task for today?", todo_format()).await;
    assert_answered(&app, &exec, JSON_ANSWER).await;
    let sent = fake.request(0);
    assert_eq!(sent["response_format"], todo_format());
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "no instruction added: {sent}");
}

#[actix_web::test]
async fn openai_json_object_gets_the_word_json_it_requires() {
    let fake = FakeOpenAi::start().await;
    let app = app(&[P("op", "openai", fake.base_url())], None).await;
    // The fake, like OpenAI, refuses json_object when no message says "json".
    let exec = run(&app, "s2", "One task?", json!({"type": "json_object"})).await;
    assert_answered(&app, &exec, JSON_ANSWER).await;
    let sent = fake.request(0);
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    assert_eq!(text_of(&sent["messages"][0]), "You plan days.");
    assert_eq!(sent["messages"][1]["role"], "system");
    assert!(text_of(&sent["messages"][1]).contains("JSON object"));
}

#[actix_web::test]
async fn openai_json_mode_sends_json_object_and_the_schema_as_an_instruction() {
    let fake = FakeOpenAi::start().await;
    let app = app(&[P("op", "openai", fake.base_url())], Some("json_mode")).await;
    let exec = run(&app, "s3", "One task for today?", todo_format()).await;
    assert_answered(&app, &exec, JSON_ANSWER).await;
    let sent = fake.request(0);
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    let instruction = &sent["messages"][1];
    assert_eq!(instruction["role"], "system");
    assert!(
        text_of(instruction).contains(&todo_schema().to_string()),
        "{instruction}"
    );
    assert_eq!(text_of(&sent["messages"][2]), "One task for today?");
}

#[actix_web::test]
async fn openai_instructions_send_no_response_format() {
    let fake = FakeOpenAi::start().await;
    let app = app(&[P("op", "openai", fake.base_url())], Some("instructions")).await;
    let exec = run(&app, "s4", "One task for today?", todo_format()).await;
    assert_answered(&app, &exec, JSON_ANSWER).await;
    let sent = fake.request(0);
    assert!(sent.get("response_format").is_none(), "{sent}");
    let instruction = text_of(&sent["messages"][1]);
    assert!(
        instruction.starts_with(JSON_INSTRUCTION_MARK),
        "{instruction}"
    );
    assert!(instruction.contains("no Markdown code fences"));
    assert!(instruction.contains(&todo_schema().to_string()));
}

#[actix_web::test]
async fn gemini_native_asks_json_with_the_narrowed_response_schema() {
    let fake = FakeGemini::start().await;
    let app = app(&[P("ge", "gemini", fake.base_url())], None).await;
    let exec = run(&app, "s5", "One task for today?", todo_format()).await;
    assert_answered(&app, &exec, JSON_ANSWER).await;
    let sent = fake.request(0);
    let mut narrowed = todo_schema();
    narrowed
        .as_object_mut()
        .unwrap()
        .remove("additionalProperties");
    assert_eq!(
        sent["generationConfig"],
        json!({"responseMimeType": "application/json", "responseSchema": narrowed})
    );
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "You plan days."}]}),
        "no instruction added"
    );
}

#[actix_web::test]
async fn anthropic_native_forces_one_tool_and_its_input_is_the_answer() {
    let fake = FakeAnthropic::start().await;
    let app = app(&[P("an", "anthropic", fake.base_url())], None).await;
    let exec = run(&app, "s6", "One task for today?", weather_format()).await;
    // The fake streams the input of its forced call as `input_json_delta` fragments.
    assert_answered(&app, &exec, TOOL_ARGUMENTS).await;
    assert!(
        exec["output"]["tool_calls"]
            .as_array()
            .is_none_or(|c| c.is_empty()),
        "the forced call is the answer, not a call: {exec}"
    );
    let sent = fake.request(0);
    let tools = sent["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["name"], "weather");
    assert_eq!(tools[0]["input_schema"], weather_schema());
    assert!(tools[0]["description"].is_string());
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "weather", "disable_parallel_tool_use": true})
    );
    assert_eq!(sent["system"], "You plan days.");

    // Through the compat API the forced call finishes as `stop`, with the JSON as content.
    let body = json!({"model": "m", "response_format": weather_format(),
        "messages": [{"role": "user", "content": "One task?"}]});
    let res = app.post("/v1/chat/completions", ADMIN_KEY, &body).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], TOOL_ARGUMENTS);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

#[actix_web::test]
async fn anthropic_continues_a_cut_json_answer_by_instruction_not_by_tool() {
    let first = FakeAnthropic::start()
        .await
        .with_script(vec![fake_anthropic::Fault::CutAfter(1)]);
    let second = FakeAnthropic::start().await;
    let app = app(
        &[
            P("a1", "anthropic", first.base_url()),
            P("a2", "anthropic", second.base_url()),
        ],
        None,
    )
    .await;
    let exec = run(&app, "s7", "One task for today?", todo_format()).await;
    assert!(exec["status"].is_string(), "{exec}");
    assert!(first.request(0).get("tools").is_some());
    let sent = second.request(0);
    assert!(
        sent.get("tools").is_none() && sent.get("tool_choice").is_none(),
        "{sent}"
    );
    let system = sent["system"].as_str().unwrap();
    assert!(system.starts_with("You plan days.\n\nAnswer with a single JSON value"));
    assert!(system.contains("continue that same JSON value"), "{system}");
    // The partial JSON is the prefill the model extends as text.
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.last().unwrap()["role"], "assistant");
    assert_eq!(
        messages.last().unwrap()["content"][0]["text"],
        crate::fake_openai::tool_fragment(0).trim_end()
    );
}
