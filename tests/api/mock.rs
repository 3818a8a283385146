//! The built-in mock provider streams: an answer of a billion chunks starts at once (nothing
//! is built up front) and stops when cancelled.

use serde_json::json;
use std::time::Duration;

use crate::helpers::*;

#[actix_web::test]
async fn a_billion_chunk_mock_answer_streams_from_the_first_chunk_and_cancels() {
    let toml = config(&[])
        .replace("mock_chunks = 12", "mock_chunks = 1000000000")
        .replace("mock_chunk_interval_ms = 2", "mock_chunk_interval_ms = 5");
    let app = spawn_app_with(&toml, |_| {}).await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("huge", "Hi", "chat-default"))
        .await;
    let id = sub["id"].as_str().unwrap();
    let mut sse = app.sse(ADMIN_KEY, id, None).await;
    let first_chunk = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = sse.next().await.expect("stream open");
            if ev.event == "chunk" {
                return ev;
            }
        }
    })
    .await
    .expect("the first chunk within 5 s");
    assert!(!first_chunk.data["delta"].as_str().unwrap().is_empty());
    let res = app
        .post(
            &format!("/v1/executions/{id}/cancel"),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "cancelled");
}
