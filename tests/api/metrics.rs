//! `/metrics` after a known workload: the right series move by the right amounts, and no label
//! carries an id.

use crate::fake_openai::{FakeOpenAi, Fault};
use crate::helpers::*;

async fn scrape(app: &TestApp) -> String {
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    res.text().await.unwrap()
}

/// The value of the series whose name and labels (in Prometheus' sorted order) are given.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series}"))
        .trim()
        .parse()
        .unwrap()
}

#[actix_web::test]
async fn a_failover_moves_the_right_series_by_the_right_amounts() {
    let primary = FakeOpenAi::start().await.with_default(Fault::CutAfter(5));
    let backup = FakeOpenAi::start().await;
    let app = spawn_app_with(&config(&[&primary, &backup]), |s| {
        s.providers[1].max_attempts = 1
    })
    .await;
    let sub = app.submit(ADMIN_KEY, &chat_body("m1", "Hi", "fake")).await;
    let id = sub["id"].as_str().unwrap();
    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "completed");
    let events = app.sse_all(ADMIN_KEY, id, None).await;

    // The actor deregisters and the SSE stream closes just after the terminal state is visible.
    let mut text = scrape(&app).await;
    for _ in 0..200 {
        if value(&text, "switchyard_active_executions") == 0.0
            && value(&text, "switchyard_sse_subscribers") == 0.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        text = scrape(&app).await;
    }
    let v = |s: &str| value(&text, s);
    assert_eq!(
        v(r#"switchyard_failovers_total{from="fake0",reason="stream_interrupted",to="fake1"}"#),
        1.0
    );
    assert_eq!(
        v(r#"switchyard_executions_total{model="fake",status="completed"}"#),
        1.0
    );
    assert_eq!(
        v(
            r#"switchyard_provider_attempts_total{code="stream_interrupted",outcome="failed",provider="fake0"}"#
        ),
        1.0
    );
    assert_eq!(
        v(
            r#"switchyard_provider_attempts_total{code="none",outcome="succeeded",provider="fake1"}"#
        ),
        1.0
    );
    assert_eq!(
        v(r#"switchyard_time_to_first_chunk_seconds_count{provider="fake0"}"#),
        1.0
    );
    assert_eq!(
        v(r#"switchyard_time_to_first_chunk_seconds_count{provider="fake1"}"#),
        1.0
    );
    // 5 chunks then 15: 4 and 14 gaps between consecutive chunks of one attempt.
    assert_eq!(
        v(r#"switchyard_inter_chunk_gap_seconds_count{provider="fake0"}"#),
        4.0
    );
    assert_eq!(
        v(r#"switchyard_inter_chunk_gap_seconds_count{provider="fake1"}"#),
        14.0
    );
    assert_eq!(
        v(r#"switchyard_stream_duration_seconds_count{provider="fake1"}"#),
        1.0
    );
    assert_eq!(
        v(r#"switchyard_tokens_total{direction="completion",model="fake"}"#),
        exec["usage"]["completion_tokens"].as_f64().unwrap()
    );
    assert_eq!(v("switchyard_events_appended_total"), events.len() as f64);
    assert_eq!(
        v(r#"switchyard_http_requests_total{method="POST",route="/v1/executions",status="202"}"#),
        1.0
    );
    assert!(
        v(
            r#"switchyard_http_request_duration_seconds_count{method="GET",route="/v1/executions/{id}"}"#
        ) >= 1.0
    );
    assert_eq!(v("switchyard_active_executions"), 0.0);
    assert_eq!(v("switchyard_sse_subscribers"), 0.0);
    assert_eq!(
        v(r#"switchyard_provider_breaker_state{provider="fake0"}"#),
        0.0
    );
    assert!(v("switchyard_store_flush_seconds_count") >= 1.0);
    assert!(v("switchyard_store_size_bytes") > 0.0);
    assert!(!text.contains("exec_"), "no execution id in any label");
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("switchyard_"), "{line}");
    }
}
