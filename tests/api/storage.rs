//! The store refusing writes: a free-disk floor (and a real full disk) answer
//! `storage_unavailable` (503, retryable, Retry-After) before anything is accepted, and
//! readiness says why.

use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn under_the_free_disk_floor_new_work_is_refused_and_readiness_fails() {
    // A floor no disk reaches: the store has less free space than this everywhere.
    let app = spawn_app_with(&config(&[]), |s| s.limits.min_free_disk_mb = u64::MAX / 4).await;

    let res = app
        .post(
            "/v1/executions",
            ADMIN_KEY,
            &chat_body("floor-1", "hello", "mock"),
        )
        .await;
    assert_eq!(
        res.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("5"),
        "{:?}",
        res.status()
    );
    let message = assert_error(res, 503, "storage_unavailable").await;
    assert!(message.contains("min_free_disk_mb"), "{message}");

    let chat = json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]});
    let res = app.post("/v1/chat/completions", ADMIN_KEY, &chat).await;
    assert_eq!(res.status(), 503);

    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["store"], false);
    assert!(
        body["checks"]["store_reason"]
            .as_str()
            .unwrap()
            .contains("free"),
        "{body}"
    );

    // Nothing was accepted, so nothing is listed.
    let list: Value = app
        .get("/v1/executions", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");
}

#[actix_web::test]
async fn with_room_on_disk_readiness_reports_the_store_writable() {
    let app = spawn_app().await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["store"], true, "{body}");
    assert!(body["checks"].get("store_reason").is_none(), "{body}");
}
