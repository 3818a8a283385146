//! The event sequence over SSE: live, late, resumed — always gapless and duplicate-free.

use std::time::Duration;

use crate::fake_openai::FakeOpenAi;
use crate::helpers::*;

#[actix_web::test]
async fn late_subscribers_replay_the_same_sequence_as_live_ones() {
    let fake = FakeOpenAi::start()
        .await
        .with_chunk_delay(Duration::from_millis(5));
    let app = spawn_with_fakes(&[&fake]).await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("late", "Hi", "fake"))
        .await;
    let id = sub["id"].as_str().unwrap();
    let live = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&live, 1);
    assert_eq!(live[0].event, "status");
    assert_eq!(live[0].data["status"], "pending");
    assert_eq!(live[1].data["status"], "processing");
    assert_eq!(chunk_text(&live), fake.full_text());
    for ev in live.iter().filter(|e| e.event == "chunk") {
        assert_eq!(ev.data["seq"], ev.id);
    }
    let done = &live.last().unwrap().data;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"]["text"], fake.full_text());

    let late = app.sse_all(ADMIN_KEY, id, None).await;
    let summary = |evs: &[SseEvent]| -> Vec<(u64, String, String)> {
        evs.iter()
            .map(|e| (e.id, e.event.clone(), e.data.to_string()))
            .collect()
    };
    assert_eq!(summary(&live), summary(&late));
}

#[actix_web::test]
async fn many_concurrent_subscribers_see_identical_sequences() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(40)
        .with_chunk_delay(Duration::from_millis(3));
    let app = spawn_with_fakes(&[&fake]).await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("many", "Hi", "fake"))
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    let readers = (0..20).map(|_| app.sse_all(ADMIN_KEY, &id, None));
    let all = futures_util::future::join_all(readers).await;
    for events in &all {
        assert_gapless(events, 1);
        assert_eq!(chunk_text(events), fake.full_text());
        assert_eq!(events.len(), all[0].len());
    }
}

#[actix_web::test]
async fn a_reconnect_with_last_event_id_mid_stream_gets_exactly_the_rest() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(300)
        .with_chunk_delay(Duration::from_millis(5));
    let app = spawn_with_fakes(&[&fake]).await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("resume", "Hi", "fake"))
        .await;
    let id = sub["id"].as_str().unwrap();

    let mut first = Vec::new();
    let mut sse = app.sse(ADMIN_KEY, id, None).await;
    while first.len() < 8 {
        first.push(sse.next().await.unwrap());
    }
    drop(sse);
    let exec = app.execution(ADMIN_KEY, id).await;
    assert_eq!(
        exec["status"], "processing",
        "the reconnect happens mid-stream"
    );

    let rest = app.sse_all(ADMIN_KEY, id, Some(8)).await;
    assert_eq!(rest[0].id, 9);
    let mut all = first.clone();
    all.extend(rest);
    assert_gapless(&all, 1);
    assert_eq!(chunk_text(&all), fake.full_text());
}

#[actix_web::test]
async fn after_query_parameter_resumes_like_last_event_id() {
    let app = spawn_app().await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("after", "Hi", "chat-default"))
        .await;
    let id = sub["id"].as_str().unwrap();
    let all = app.sse_all(ADMIN_KEY, id, None).await;
    let res = app
        .get(&format!("/v1/executions/{id}/events?after=3"), ADMIN_KEY)
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.starts_with("id: 4\n"), "{text}");
    assert_eq!(text.matches("\nevent: ").count(), all.len() - 3);
    let res = app
        .get(&format!("/v1/executions/{id}/events?after=x"), ADMIN_KEY)
        .await;
    assert_eq!(res.status(), 400);
    let res = app
        .client
        .get(app.url(&format!("/v1/executions/{id}/events")))
        .bearer_auth(ADMIN_KEY)
        .header("last-event-id", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[actix_web::test]
async fn an_idle_stream_gets_keep_alive_comments() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(3)
        .with_first_chunk_delay(Duration::from_millis(400));
    let app = spawn_app_with(&config(&[&fake]), |s| s.limits.sse_keepalive_ms = 50).await;
    let sub = app.submit(ADMIN_KEY, &chat_body("ka", "Hi", "fake")).await;
    let res = app
        .get(
            &format!("/v1/executions/{}/events", sub["id"].as_str().unwrap()),
            ADMIN_KEY,
        )
        .await;
    let text = res.text().await.unwrap();
    assert!(text.contains(": keep-alive\n\n"), "{text}");
    assert!(text.contains("event: done"));
}

/// A new execution's `processing` record and event are written after its first request has
/// gone out (issue 16). A provider that answers within the same scheduler pass (the mock, with
/// no pacing) delivers its first events before that deferred turn: they must still follow
/// `processing`, in the log and in the record, and the answer must be whole.
#[actix_web::test]
async fn processing_comes_second_even_when_the_provider_answers_at_once() {
    let toml = config(&[]).replace("mock_chunk_interval_ms = 2", "mock_chunk_interval_ms = 0");
    let app = spawn_app_with(&toml, |_| {}).await;
    for n in 0..20 {
        let sub = app
            .submit(
                ADMIN_KEY,
                &chat_body(&format!("at-once-{n}"), "Hi", "chat-default"),
            )
            .await;
        let id = sub["id"].as_str().unwrap();
        let events = app.sse_all(ADMIN_KEY, id, None).await;
        assert_gapless(&events, 1);
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e.event.as_str() {
                "status" => format!("status:{}", e.data["status"].as_str().unwrap()),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(
            kinds[..2],
            ["status:pending", "status:processing"],
            "{kinds:?}"
        );
        assert!(
            kinds[2..kinds.len() - 1].iter().all(|k| k == "chunk"),
            "{kinds:?}"
        );
        assert_eq!(kinds.last().unwrap(), "done");
        let exec = app.wait_terminal(ADMIN_KEY, id).await;
        assert_eq!(exec["status"], "completed");
        assert_eq!(exec["output"]["text"], chunk_text(&events));
        assert_eq!(exec["attempts"].as_array().unwrap().len(), 1, "{exec}");
        assert!(exec["started_at"].is_string(), "{exec}");
    }
}
