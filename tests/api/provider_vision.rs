//! Image input on Anthropic and Gemini routes declared `vision = true`, against their fakes over
//! real HTTP: an OpenAI-style `image_url` part arrives in each provider's own image shape,
//! before the text of its message.

use serde_json::{json, Value};

use crate::fake_anthropic::FakeAnthropic;
use crate::fake_gemini::FakeGemini;
use crate::helpers::*;
use crate::providers::{toml, with_keys, P};

const PNG: &str = "data:image/png;base64,iVBORw0KGgo=";
const REMOTE: &str = "https://example.test/cat.jpg";

/// A one-route app whose route `name` can see.
async fn vision_app(p: P<'_>) -> TestApp {
    let name = p.0.to_string();
    let config = toml(&[p]).replace(
        &format!(r#"model = "up-{name}" }}"#),
        &format!(r#"model = "up-{name}", vision = true }}"#),
    );
    assert!(config.contains("vision = true"));
    spawn_app_with(&config, with_keys).await
}

/// A compat request showing one inline and one remote image after the question.
fn compat_with_images() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Which is the cat?"},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
        {"type": "image_url", "image_url": {"url": REMOTE}},
    ]}]})
}

async fn completes(app: &TestApp) -> Value {
    let res = app
        .post("/v1/chat/completions", ADMIN_KEY, &compat_with_images())
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}

#[actix_web::test]
async fn an_anthropic_route_gets_base64_and_url_image_blocks_before_the_text() {
    let fake = FakeAnthropic::start().await.with_words(3);
    let app = vision_app(P("an", "anthropic", fake.base_url())).await;
    let answer = completes(&app).await;
    assert_eq!(answer["choices"][0]["message"]["content"], fake.full_text());
    assert_eq!(
        fake.request(0),
        json!({
            "model": "up-an",
            "max_tokens": 4096,
            "stream": true,
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": REMOTE}},
                {"type": "text", "text": "Which is the cat?"},
            ]}],
        })
    );
}

#[actix_web::test]
async fn a_gemini_route_gets_inline_data_and_file_data_parts_before_the_text() {
    let fake = FakeGemini::start().await.with_words(3);
    let app = vision_app(P("ge", "gemini", fake.base_url())).await;
    let answer = completes(&app).await;
    assert_eq!(answer["choices"][0]["message"]["content"], fake.full_text());
    assert_eq!(
        fake.request(0),
        json!({"contents": [{"role": "user", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": REMOTE}},
            {"text": "Which is the cat?"},
        ]}]})
    );
}
