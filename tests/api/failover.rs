//! Failover, one fault per test: a primary (`fake0`) with the fault, a healthy fallback
//! (`fake1`), and exact expectations on status, text, error code, attempts per route and the
//! event sequence. The fake answers a continuation with exactly the rest of its word sequence,
//! so `text == full_text()` proves nothing was repeated or lost.

use serde_json::Value;
use std::time::Duration;
use switchyard::settings::{ContinuationStrategy, ProviderSettings, Settings};

use crate::fake_openai::{FakeOpenAi, Fault};
use crate::helpers::*;

/// Words in every answer (the fake's default).
const WORDS: usize = 20;

// ---- helpers ----

struct Run {
    id: String,
    exec: Value,
    events: Vec<SseEvent>,
}

/// Submits to `fake`, follows the SSE stream to `done`, and checks what holds for every run:
/// a gapless sequence ending in `done`, whose object agrees with `GET /v1/executions/{id}`,
/// and an output equal to the concatenated chunks.
async fn run(app: &TestApp, key: &str) -> Run {
    let sub = app
        .submit(ADMIN_KEY, &chat_body(key, "Tell me the words", "fake"))
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    let events = app.sse_all(ADMIN_KEY, &id, None).await;
    let exec = app.wait_terminal(ADMIN_KEY, &id).await;
    assert_gapless(&events, 1);
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], exec["status"]);
    assert_eq!(done["output"], exec["output"]);
    assert_eq!(exec["output"]["text"], chunk_text(&events), "{events:?}");
    Run { id, exec, events }
}

impl Run {
    fn status(&self) -> &str {
        self.exec["status"].as_str().unwrap()
    }

    fn text(&self) -> &str {
        self.exec["output"]["text"].as_str().unwrap()
    }

    fn attempts(&self) -> Vec<A> {
        self.exec["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| A {
                provider: a["provider"].as_str().unwrap().to_string(),
                outcome: a["outcome"].as_str().unwrap().to_string(),
                code: a["error_code"].as_str().map(str::to_string),
                strategy: a["strategy"].as_str().unwrap().to_string(),
            })
            .collect()
    }

    /// The error message attempt `i` (0-based) was recorded with.
    fn attempt_error(&self, i: usize) -> &str {
        self.exec["attempts"][i]["error_message"].as_str().unwrap()
    }

    /// The debug log entries of attempt `i` (0-based), from `GET /v1/executions/{id}/log`.
    async fn log_entries(&self, app: &TestApp, i: usize) -> Vec<Value> {
        let log: Value = app
            .get(&format!("/v1/executions/{}/log", self.id), ADMIN_KEY)
            .await
            .json()
            .await
            .unwrap();
        log["attempts"][i]["entries"].as_array().unwrap().clone()
    }

    /// `(from, to, reason)` of every `failover` event, in order.
    fn failovers(&self) -> Vec<(String, String, String)> {
        self.events
            .iter()
            .filter(|e| e.event == "failover")
            .map(|e| {
                assert_eq!(e.data["seq"], e.id);
                (
                    e.data["from"].as_str().unwrap().to_string(),
                    e.data["to"].as_str().unwrap().to_string(),
                    e.data["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The event kinds, runs of chunks collapsed to `chunk×n`.
    fn shape(&self) -> Vec<String> {
        shape_of(&self.events)
    }

    fn assert_completed_exactly(&self, fake: &FakeOpenAi) {
        assert_eq!(self.status(), "completed", "{:#}", self.exec);
        assert_eq!(self.text(), fake.full_text());
        assert!(self.exec["error"].is_null());
        assert!(self.events.iter().all(|e| e.event != "error"));
    }

    fn assert_failed_with(&self, code: &str) {
        assert_eq!(self.status(), "failed", "{:#}", self.exec);
        assert_eq!(self.exec["error"]["code"], code);
        let error = self
            .events
            .iter()
            .find(|e| e.event == "error")
            .expect("an error event");
        assert_eq!(error.data["error"]["code"], code);
        assert_eq!(
            self.events[self.events.len() - 2].event,
            "error",
            "the error event comes right before done"
        );
    }
}

/// One attempt as the execution records it.
#[derive(Debug, PartialEq)]
struct A {
    provider: String,
    outcome: String,
    code: Option<String>,
    strategy: String,
}

fn a(provider: &str, outcome: &str, code: Option<&str>, strategy: &str) -> A {
    A {
        provider: provider.into(),
        outcome: outcome.into(),
        code: code.map(Into::into),
        strategy: strategy.into(),
    }
}

fn ok(provider: &str, strategy: &str) -> A {
    a(provider, "succeeded", None, strategy)
}

fn failed(provider: &str, code: &str, strategy: &str) -> A {
    a(provider, "failed", Some(code), strategy)
}

fn fo(from: &str, to: &str, reason: &str) -> (String, String, String) {
    (from.into(), to.into(), reason.into())
}

fn shape_of(events: &[SseEvent]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut chunks = 0;
    for e in events {
        if e.event == "chunk" {
            chunks += 1;
            continue;
        }
        if chunks > 0 {
            out.push(format!("chunk×{chunks}"));
            chunks = 0;
        }
        out.push(e.event.clone());
    }
    if chunks > 0 {
        out.push(format!("chunk×{chunks}"));
    }
    out
}

fn shape(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn provider<'a>(settings: &'a mut Settings, name: &str) -> &'a mut ProviderSettings {
    settings
        .providers
        .iter_mut()
        .find(|p| p.name == name)
        .unwrap()
}

/// The messages of a fake's request `i`, as `(role, content)`.
fn messages(fake: &FakeOpenAi, i: usize) -> Vec<(String, String)> {
    fake.request(i)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn two_fakes(primary: FakeOpenAi) -> (FakeOpenAi, FakeOpenAi, TestApp) {
    let fallback = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&primary, &fallback]).await;
    (primary, fallback, app)
}

/// Expectations shared by every mid-stream failover from fake0 after `k` chunks to fake1.
fn assert_continued_on_fallback(
    r: &Run,
    fake0: &FakeOpenAi,
    fake1: &FakeOpenAi,
    k: usize,
    reason: &str,
) {
    r.assert_completed_exactly(fake1);
    assert_eq!(r.failovers(), vec![fo("fake0", "fake1", reason)]);
    let after = format!("chunk×{}", WORDS - k);
    let before = format!("chunk×{k}");
    assert_eq!(
        r.shape(),
        shape(&["status", "status", &before, "failover", &after, "done"])
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", reason, "initial"),
            ok("fake1", "instruction")
        ]
    );
    assert_eq!(r.exec["attempts"][0]["chunks_delivered"], k);
    assert_eq!(r.exec["attempts"][1]["chunks_delivered"], WORDS - k);
    assert_eq!(fake0.request_count(), 1, "the primary is not asked again");
    assert_eq!(fake1.start_chunks(), vec![k]);
    // The continuation sent the emitted text back as the assistant's turn (openai's default
    // strategy: instruction), after the original prompt.
    let sent = messages(fake1, 0);
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].1, "Tell me the words");
    assert_eq!(sent[1], ("assistant".to_string(), fake0.prefix(k)));
    assert_eq!(sent[2].0, "user");
}

// ---- mid-stream faults ----

#[actix_web::test]
async fn a_stream_cut_after_k_chunks_continues_on_the_fallback_from_chunk_k() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_script(vec![Fault::CutAfter(7)]),
    )
    .await;
    let r = run(&app, "cut").await;
    assert_continued_on_fallback(&r, &fake0, &fake1, 7, "stream_interrupted");
}

#[actix_web::test]
async fn a_stream_reset_after_k_chunks_continues_on_the_fallback_from_chunk_k() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_script(vec![Fault::ResetAfter(4)]),
    )
    .await;
    let r = run(&app, "reset").await;
    assert_continued_on_fallback(&r, &fake0, &fake1, 4, "stream_interrupted");
}

#[actix_web::test]
async fn an_error_event_mid_stream_continues_on_the_fallback() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_script(vec![Fault::ErrorEventAt(9)]),
    )
    .await;
    let r = run(&app, "errev").await;
    assert_continued_on_fallback(&r, &fake0, &fake1, 9, "stream_interrupted");
}

#[actix_web::test]
async fn a_stall_after_k_chunks_fails_over_with_provider_timeout_within_the_idle_timeout() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_script(vec![Fault::StallAfter(6)]),
    )
    .await;
    let r = run(&app, "stall").await;
    assert_continued_on_fallback(&r, &fake0, &fake1, 6, "provider_timeout");
    // The idle timeout (500 ms) ended the stalled try, not the total timeout.
    assert_eq!(r.attempt_error(0), "stream stalled: no event for 500 ms");
    // The stalled connection is dropped, not left hanging.
    for _ in 0..200 {
        if fake0.client_disconnects() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake0.client_disconnects(), 1);
}

#[actix_web::test]
async fn a_malformed_event_is_skipped_and_is_not_a_failover() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_default(Fault::MalformedAt(5)),
    )
    .await;
    let r = run(&app, "malformed").await;
    r.assert_completed_exactly(&fake0);
    assert!(r.failovers().is_empty());
    assert_eq!(r.shape(), shape(&["status", "status", "chunk×20", "done"]));
    assert_eq!(r.attempts(), vec![ok("fake0", "initial")]);
    assert_eq!(r.exec["attempts"][0]["chunks_delivered"], WORDS);
    assert_eq!(fake0.request_count(), 1);
    assert_eq!(fake1.request_count(), 0);
    // The skipped event is recorded in the debug log, as received.
    let entries = r.log_entries(&app, 0).await;
    let skipped: Vec<&Value> = entries.iter().filter(|e| e["type"] == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{entries:#?}");
    assert_eq!(skipped[0]["data"], "{not json");
}

#[actix_web::test]
async fn a_stream_without_done_completes_on_the_primary_at_once() {
    let fake0 = FakeOpenAi::start().await.with_default(Fault::NoDone);
    let fake1 = FakeOpenAi::start().await;
    // An idle timeout of ten minutes: a run waiting for a [DONE] that never comes could not
    // finish within the test's wait for events.
    let app = spawn_app_with(&config(&[&fake0, &fake1]), |s| {
        provider(s, "fake0").idle_timeout_ms = 600_000;
    })
    .await;
    let r = run(&app, "nodone").await;
    r.assert_completed_exactly(&fake0);
    assert!(r.failovers().is_empty());
    assert_eq!(r.shape(), shape(&["status", "status", "chunk×20", "done"]));
    assert_eq!(r.attempts(), vec![ok("fake0", "initial")]);
    assert_eq!(r.exec["usage"]["completion_tokens"], WORDS);
    assert_eq!(fake0.request_count(), 1);
    assert_eq!(fake1.request_count(), 0);
    // The try ended at the end of the body, not with a timeout (which the log would record as an
    // error even though the answer was already complete).
    let entries = r.log_entries(&app, 0).await;
    assert!(entries.iter().all(|e| e["type"] != "error"), "{entries:#?}");
    assert_eq!(entries.last().unwrap()["type"], "chunk", "{entries:#?}");
}

// ---- faults before the first chunk ----

#[actix_web::test]
async fn a_429_with_retry_after_once_is_retried_on_the_same_route_after_the_delay() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_script(vec![Fault::rate_limited(Some(1))]),
    )
    .await;
    let r = run(&app, "429once").await;
    r.assert_completed_exactly(&fake0);
    assert!(r.failovers().is_empty(), "nothing was emitted, same route");
    assert_eq!(r.shape(), shape(&["status", "status", "chunk×20", "done"]));
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "rate_limited", "initial"),
            ok("fake0", "initial")
        ]
    );
    assert_eq!(fake0.request_count(), 2);
    assert_eq!(fake1.request_count(), 0);
    // Retry-After: 1 is honoured: the fake saw the retry at least a second after the 429'd
    // request (a lower bound on a deliberate wait; load can only lengthen it).
    let gap = fake0.received_at(1) - fake0.received_at(0);
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[actix_web::test]
async fn a_persistent_429_moves_to_the_fallback_after_max_attempts() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_default(Fault::rate_limited(None)),
    )
    .await;
    let r = run(&app, "429").await;
    r.assert_completed_exactly(&fake1);
    assert_eq!(r.failovers(), vec![fo("fake0", "fake1", "rate_limited")]);
    assert_eq!(
        r.shape(),
        shape(&["status", "status", "failover", "chunk×20", "done"])
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "rate_limited", "initial"),
            failed("fake0", "rate_limited", "initial"),
            ok("fake1", "initial"),
        ]
    );
    assert_eq!(fake0.request_count(), 2, "max_attempts = 2");
    assert_eq!(fake1.start_chunks(), vec![0]);
}

#[actix_web::test]
async fn a_500_once_is_retried_on_the_same_route() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_script(vec![Fault::status(500)]),
    )
    .await;
    let r = run(&app, "500once").await;
    r.assert_completed_exactly(&fake0);
    assert!(r.failovers().is_empty());
    assert_eq!(r.shape(), shape(&["status", "status", "chunk×20", "done"]));
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "provider_unavailable", "initial"),
            ok("fake0", "initial")
        ]
    );
    assert_eq!(fake0.request_count(), 2);
    assert_eq!(fake1.request_count(), 0);
}

/// A primary that keeps failing before its first chunk is tried `max_attempts` (2) times, then
/// the fallback answers from the start.
async fn assert_retried_then_moved_on(fault: Fault, key: &str) {
    let (fake0, fake1, app) = two_fakes(FakeOpenAi::start().await.with_default(fault)).await;
    let r = run(&app, key).await;
    r.assert_completed_exactly(&fake1);
    assert_eq!(
        r.failovers(),
        vec![fo("fake0", "fake1", "provider_unavailable")]
    );
    assert_eq!(
        r.shape(),
        shape(&["status", "status", "failover", "chunk×20", "done"])
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "provider_unavailable", "initial"),
            failed("fake0", "provider_unavailable", "initial"),
            ok("fake1", "initial"),
        ]
    );
    assert_eq!(fake0.request_count(), 2);
    assert_eq!(fake1.request_count(), 1);
}

#[actix_web::test]
async fn a_persistent_503_moves_to_the_fallback_after_max_attempts() {
    assert_retried_then_moved_on(Fault::status(503), "503").await;
}

#[actix_web::test]
async fn a_reset_before_headers_is_provider_unavailable_retried_then_moved_on() {
    assert_retried_then_moved_on(Fault::ResetBeforeHeaders, "rst-headers").await;
}

#[actix_web::test]
async fn a_reset_before_headers_once_is_retried_on_the_same_route() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_script(vec![Fault::ResetBeforeHeaders]),
    )
    .await;
    let r = run(&app, "rst-headers-once").await;
    r.assert_completed_exactly(&fake0);
    assert!(r.failovers().is_empty());
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "provider_unavailable", "initial"),
            ok("fake0", "initial"),
        ]
    );
    assert_eq!(fake1.request_count(), 0);
}

/// A provider that does not answer in time is silent: it is not asked again, the next route
/// is tried at once.
async fn assert_silent_primary_is_skipped(fault: Fault, key: &str) -> FakeOpenAi {
    let fake0 = FakeOpenAi::start().await.with_default(fault);
    let fake1 = FakeOpenAi::start().await;
    let app = spawn_app_with(&config(&[&fake0, &fake1]), |s| {
        provider(s, "fake0").first_chunk_timeout_ms = 300;
    })
    .await;
    let r = run(&app, key).await;
    r.assert_completed_exactly(&fake1);
    assert_eq!(
        r.failovers(),
        vec![fo("fake0", "fake1", "provider_timeout")]
    );
    assert_eq!(
        r.shape(),
        shape(&["status", "status", "failover", "chunk×20", "done"])
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "provider_timeout", "initial"),
            ok("fake1", "initial")
        ]
    );
    assert_eq!(fake0.request_count(), 1, "a silent provider is not retried");
    assert_eq!(fake1.start_chunks(), vec![0]);
    // The 300 ms first-chunk timeout ended the try: the fake's answer was not waited for.
    assert_eq!(r.attempt_error(0), "no response within 300 ms");
    fake0
}

#[actix_web::test]
async fn no_response_at_all_is_provider_timeout_and_moves_on_without_retry() {
    let fake0 = assert_silent_primary_is_skipped(Fault::NoResponse, "silent").await;
    // The abandoned request's connection is closed, not left waiting.
    for _ in 0..200 {
        if fake0.client_disconnects() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake0.client_disconnects(), 1);
}

#[actix_web::test]
async fn a_slow_first_chunk_is_provider_timeout_and_moves_on() {
    assert_silent_primary_is_skipped(Fault::SlowFirstChunk(Duration::from_secs(10)), "slow").await;
}

#[actix_web::test]
async fn headers_then_a_slow_first_chunk_is_provider_timeout_and_moves_on() {
    let fake0 = FakeOpenAi::start()
        .await
        .with_first_chunk_delay(Duration::from_secs(10));
    let fake1 = FakeOpenAi::start().await;
    let app = spawn_app_with(&config(&[&fake0, &fake1]), |s| {
        provider(s, "fake0").first_chunk_timeout_ms = 300;
    })
    .await;
    let r = run(&app, "slow-after-headers").await;
    r.assert_completed_exactly(&fake1);
    assert_eq!(
        r.failovers(),
        vec![fo("fake0", "fake1", "provider_timeout")]
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "provider_timeout", "initial"),
            ok("fake1", "initial")
        ]
    );
    assert_eq!(fake0.request_count(), 1);
    // The 300 ms first-chunk timeout ended the try: the fake's first chunk was not waited for.
    assert_eq!(r.attempt_error(0), "no first chunk within 300 ms");
}

#[actix_web::test]
async fn context_length_moves_to_the_next_route_without_retry() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_default(Fault::context_length()),
    )
    .await;
    let r = run(&app, "ctx").await;
    r.assert_completed_exactly(&fake1);
    assert_eq!(
        r.failovers(),
        vec![fo("fake0", "fake1", "context_length_exceeded")]
    );
    assert_eq!(
        r.shape(),
        shape(&["status", "status", "failover", "chunk×20", "done"])
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "context_length_exceeded", "initial"),
            ok("fake1", "initial")
        ]
    );
    assert_eq!(fake0.request_count(), 1, "not retried on the same route");
    assert_eq!(fake1.request_count(), 1);
}

#[actix_web::test]
async fn context_length_on_the_only_route_fails_with_context_length_exceeded() {
    let fake0 = FakeOpenAi::start()
        .await
        .with_default(Fault::context_length());
    let app = spawn_with_fakes(&[&fake0]).await;
    let r = run(&app, "ctx-only").await;
    r.assert_failed_with("context_length_exceeded");
    assert_eq!(r.exec["error"]["retryable"], false);
    assert_eq!(r.text(), "");
    assert!(r.failovers().is_empty());
    assert_eq!(r.shape(), shape(&["status", "status", "error", "done"]));
    assert_eq!(
        r.attempts(),
        vec![failed("fake0", "context_length_exceeded", "initial")]
    );
    assert_eq!(fake0.request_count(), 1);
}

#[actix_web::test]
async fn a_content_filter_rejection_fails_at_once_without_failover() {
    let (fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_default(Fault::content_filter()),
    )
    .await;
    let r = run(&app, "filter").await;
    r.assert_failed_with("content_filtered");
    assert_eq!(r.exec["error"]["retryable"], false);
    assert!(
        r.exec["error"]["message"]
            .as_str()
            .unwrap()
            .contains("content management policy"),
        "the provider's reason is kept: {}",
        r.exec["error"]
    );
    assert_eq!(r.text(), "");
    assert!(r.failovers().is_empty());
    assert_eq!(r.shape(), shape(&["status", "status", "error", "done"]));
    assert_eq!(
        r.attempts(),
        vec![failed("fake0", "content_filtered", "initial")]
    );
    assert_eq!(fake0.request_count(), 1);
    assert_eq!(fake1.request_count(), 0, "never asked");
}

// ---- continuation strategies, single routes, caps ----

/// fake0 cuts after 5 chunks; fake1 rejects assistant prefill and is configured with it.
/// fake0 has `max_attempts = 1`, so this does not depend on the cut-route tests above.
async fn prefill_run(key: &str) -> (FakeOpenAi, FakeOpenAi, Run) {
    let fake0 = FakeOpenAi::start().await.with_default(Fault::CutAfter(5));
    let fake1 = FakeOpenAi::start()
        .await
        .with_default(Fault::RejectsPrefill);
    let app = spawn_app_with(&config(&[&fake0, &fake1]), |s| {
        provider(s, "fake0").max_attempts = 1;
        provider(s, "fake1").continuation = Some(ContinuationStrategy::Prefill);
    })
    .await;
    let r = run(&app, key).await;
    (fake0, fake1, r)
}

#[actix_web::test]
async fn a_fallback_that_rejects_prefill_is_retried_with_the_instruction_form() {
    let (fake0, fake1, r) = prefill_run("prefill").await;
    r.assert_completed_exactly(&fake1);
    // The 400 is never the execution's error.
    assert!(r.events.iter().all(|e| e.event != "error"));
    assert_eq!(
        r.failovers(),
        vec![fo("fake0", "fake1", "stream_interrupted")],
        "a quiet retry of the same route is not announced"
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "stream_interrupted", "initial"),
            failed("fake1", "provider_error", "prefill"),
            ok("fake1", "instruction"),
        ]
    );
    assert_eq!(r.exec["attempts"][0]["chunks_delivered"], 5);
    assert_eq!(r.exec["attempts"][1]["chunks_delivered"], 0);
    assert_eq!(r.exec["attempts"][2]["chunks_delivered"], WORDS - 5);
    assert_eq!(fake0.request_count(), 1);
    assert_eq!(fake1.start_chunks(), vec![5, 5]);
    let prefill = messages(&fake1, 0);
    assert_eq!(prefill.len(), 2);
    assert_eq!(prefill[1], ("assistant".to_string(), fake0.prefix(5)));
    let instruction = messages(&fake1, 1);
    assert_eq!(instruction.len(), 3);
    assert_eq!(instruction[1], ("assistant".to_string(), fake0.prefix(5)));
    assert_eq!(instruction[2].0, "user");
}

/// fake0 cuts after 5 chunks (one attempt); fake1 answers its first continuation with a 503.
async fn fallback_503_run(key: &str) -> (FakeOpenAi, FakeOpenAi, Run) {
    let fake0 = FakeOpenAi::start().await.with_default(Fault::CutAfter(5));
    let fake1 = FakeOpenAi::start()
        .await
        .with_script(vec![Fault::status(503)]);
    let app = spawn_app_with(&config(&[&fake0, &fake1]), |s| {
        provider(s, "fake0").max_attempts = 1;
    })
    .await;
    let r = run(&app, key).await;
    (fake0, fake1, r)
}

#[actix_web::test]
async fn a_fallback_failing_before_its_first_continuation_chunk_is_retried_with_the_same_continuation(
) {
    let (fake0, fake1, r) = fallback_503_run("fallback-503").await;
    r.assert_completed_exactly(&fake1);
    assert_eq!(
        r.failovers(),
        vec![fo("fake0", "fake1", "stream_interrupted")],
        "a quiet retry of the same route is not announced"
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "stream_interrupted", "initial"),
            failed("fake1", "provider_unavailable", "instruction"),
            ok("fake1", "instruction"),
        ]
    );
    assert_eq!(fake0.request_count(), 1);
    assert_eq!(fake1.start_chunks(), vec![5, 5]);
}

#[actix_web::test]
async fn retries_that_deliver_nothing_are_not_announced_as_failovers() {
    for (fake1, r) in [
        prefill_run("prefill-events").await,
        fallback_503_run("fallback-503-events").await,
    ]
    .map(|(_, fake1, r)| (fake1, r))
    {
        r.assert_completed_exactly(&fake1);
        assert_eq!(
            r.failovers(),
            vec![fo("fake0", "fake1", "stream_interrupted")]
        );
        assert_eq!(
            r.shape(),
            shape(&[
                "status",
                "status",
                "chunk×5",
                "failover",
                "chunk×15",
                "done"
            ])
        );
    }
}

/// With `max_attempts = 1` on the primary, FIN, RST and an in-stream error event each hand the
/// answer over to the fallback from the chunk where it stopped.
#[actix_web::test]
async fn mid_stream_faults_continue_on_the_fallback_when_the_primary_has_one_attempt() {
    for (fault, k) in [
        (Fault::CutAfter(7), 7),
        (Fault::ResetAfter(4), 4),
        (Fault::ErrorEventAt(9), 9),
    ] {
        let fake0 = FakeOpenAi::start().await.with_script(vec![fault]);
        let fake1 = FakeOpenAi::start().await;
        let app = spawn_app_with(&config(&[&fake0, &fake1]), |s| {
            provider(s, "fake0").max_attempts = 1;
        })
        .await;
        let r = run(&app, &format!("one-attempt-{k}")).await;
        assert_continued_on_fallback(&r, &fake0, &fake1, k, "stream_interrupted");
    }
}

#[actix_web::test]
async fn a_single_route_cut_once_continues_on_the_same_route() {
    let fake0 = FakeOpenAi::start()
        .await
        .with_script(vec![Fault::CutAfter(5)]);
    let app = spawn_with_fakes(&[&fake0]).await;
    let r = run(&app, "single").await;
    r.assert_completed_exactly(&fake0);
    assert_eq!(
        r.failovers(),
        vec![fo("fake0", "fake0", "stream_interrupted")]
    );
    assert_eq!(
        r.shape(),
        shape(&[
            "status",
            "status",
            "chunk×5",
            "failover",
            "chunk×15",
            "done"
        ])
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "stream_interrupted", "initial"),
            ok("fake0", "instruction"),
        ]
    );
    assert_eq!(fake0.start_chunks(), vec![0, 5]);
    assert_eq!(
        messages(&fake0, 1)[1],
        ("assistant".to_string(), fake0.prefix(5))
    );
}

#[actix_web::test]
async fn routes_that_keep_failing_mid_stream_end_failed_not_completed_truncated() {
    let fake0 = FakeOpenAi::start().await.with_default(Fault::CutAfter(2));
    let fake1 = FakeOpenAi::start().await.with_default(Fault::CutAfter(2));
    let app = spawn_with_fakes(&[&fake0, &fake1]).await;
    let r = run(&app, "doomed").await;
    r.assert_failed_with("stream_interrupted");
    assert_eq!(r.exec["error"]["retryable"], true);
    let text = r.text();
    assert!(!text.is_empty());
    assert!(
        fake0.full_text().starts_with(text) && text != fake0.full_text(),
        "a truncated prefix, never more: {text:?}"
    );
    // Every try delivered its two chunks and was cut; each switch was announced.
    let attempts = r.attempts();
    let switches = r.failovers();
    assert!(
        (2..=6).contains(&attempts.len()),
        "switches are capped: {attempts:?}"
    );
    assert_eq!(switches.len(), attempts.len() - 1);
    assert!(switches
        .iter()
        .all(|(_, _, why)| why == "stream_interrupted"));
    assert!(attempts
        .iter()
        .all(|a| a.outcome == "failed" && a.code.as_deref() == Some("stream_interrupted")));
    assert_eq!(text, fake0.prefix(2 * attempts.len()));
    assert!(attempts.iter().any(|a| a.provider == "fake1"));
    // The sequence: chunks, then per switch a failover and two more chunks, then the error.
    let mut want = vec!["status".to_string(), "status".to_string(), "chunk×2".into()];
    for _ in &switches {
        want.push("failover".into());
        want.push("chunk×2".into());
    }
    want.push("error".into());
    want.push("done".into());
    assert_eq!(r.shape(), want);
    assert_eq!(
        fake0.request_count() + fake1.request_count(),
        attempts.len()
    );
}

// ---- subscribers across a failover ----

#[actix_web::test]
async fn live_and_late_subscribers_see_the_same_gapless_sequence_across_a_failover() {
    let fake0 = FakeOpenAi::start()
        .await
        .with_chunk_delay(Duration::from_millis(25))
        .with_script(vec![Fault::StallAfter(8)]);
    let fake1 = FakeOpenAi::start()
        .await
        .with_chunk_delay(Duration::from_millis(5));
    let app = spawn_with_fakes(&[&fake0, &fake1]).await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("subs", "Tell me the words", "fake"))
        .await;
    let id = sub["id"].as_str().unwrap().to_string();

    // Two live subscribers, connected before the fault: one from the start, one resuming
    // after the first chunk it saw.
    let mut live = app.sse(ADMIN_KEY, &id, None).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &SseEvent| e.event == "chunk") {
        seen.push(live.next().await.unwrap());
    }
    let exec = app.execution(ADMIN_KEY, &id).await;
    assert_eq!(
        exec["attempts"].as_array().unwrap().len(),
        1,
        "subscribed before the fault"
    );
    assert_eq!(fake1.request_count(), 0);
    let resumed_from = seen.last().unwrap().id;
    let resumed = app.sse(ADMIN_KEY, &id, Some(resumed_from)).await;
    let (rest, resumed) = futures_util::join!(live.collect_all(), resumed.collect_all());
    seen.extend(rest);

    assert_gapless(&seen, 1);
    assert_eq!(chunk_text(&seen), fake0.full_text());
    assert_eq!(
        shape_of(&seen),
        shape(&[
            "status",
            "status",
            "chunk×8",
            "failover",
            "chunk×12",
            "done"
        ])
    );
    let failover = seen.iter().find(|e| e.event == "failover").unwrap();
    assert_eq!(failover.data["from"], "fake0");
    assert_eq!(failover.data["to"], "fake1");
    assert_eq!(failover.data["reason"], "provider_timeout");

    let summary = |evs: &[SseEvent]| -> Vec<(u64, String, String)> {
        evs.iter()
            .map(|e| (e.id, e.event.clone(), e.data.to_string()))
            .collect()
    };
    assert_eq!(
        summary(&resumed),
        summary(&seen[resumed_from as usize..]),
        "a resumed subscriber gets exactly the rest"
    );
    let late = app.sse_all(ADMIN_KEY, &id, None).await;
    assert_eq!(
        summary(&late),
        summary(&seen),
        "a late subscriber sees the same"
    );
    let exec = app.wait_terminal(ADMIN_KEY, &id).await;
    assert_eq!(exec["output"]["text"], fake0.full_text());
}

/// After a failover the stored record reads back unchanged, with per-attempt upstream model and
/// time to first chunk.
#[actix_web::test]
async fn a_failed_over_execution_reads_back_with_its_attempts() {
    let (_fake0, fake1, app) = two_fakes(
        FakeOpenAi::start()
            .await
            .with_script(vec![Fault::StallAfter(3)]),
    )
    .await;
    let r = run(&app, "readback").await;
    let again = app.execution(ADMIN_KEY, &r.id).await;
    assert_eq!(again, r.exec);
    assert_eq!(again["output"]["text"], fake1.full_text());
    assert_eq!(again["attempts"][1]["model"], "up-1");
    assert!(again["attempts"][1]["time_to_first_chunk_ms"].is_u64());
}

// ---- provider health ----

/// One provider's entry in `GET /v1/routing/status`.
async fn health_of(app: &TestApp, name: &str) -> Value {
    let res = app.get("/v1/routing/status", ADMIN_KEY).await;
    assert_eq!(res.status(), 200);
    let status: Value = res.json().await.unwrap();
    status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
        .clone()
}

/// A primary that keeps dying mid-stream opens its breaker (cuts count against it), later
/// executions start on the fallback without calling it, and after the cooldown exactly one
/// probe brings it back.
#[actix_web::test]
async fn a_primary_cutting_mid_stream_is_skipped_while_open_then_one_probe_closes_it() {
    let fake0 = FakeOpenAi::start().await.with_default(Fault::CutAfter(3));
    let fake1 = FakeOpenAi::start().await;
    let app = spawn_app_with(&config(&[&fake0, &fake1]), |s| {
        let p = provider(s, "fake0");
        p.max_attempts = 1;
        p.breaker_failures = 2;
        p.breaker_cooldown_ms = 2_000;
    })
    .await;

    // Two executions, each cut on fake0 after 3 chunks and finished on fake1, exactly.
    for key in ["h1", "h2"] {
        let r = run(&app, key).await;
        assert_continued_on_fallback_after(&r, &fake1, 3);
    }
    assert_eq!(fake0.request_count(), 2);
    let h = health_of(&app, "fake0").await;
    assert_eq!(h["state"], "open", "{h}");
    assert_eq!(h["consecutive_failures"], 2);
    assert!(h["cooldown_remaining_ms"].as_u64().unwrap() > 0);
    assert_eq!(h["in_flight"], 0);
    assert_eq!(health_of(&app, "fake1").await["state"], "closed");

    // Open: the next execution starts on the fallback; fake0 is not called.
    let r = run(&app, "h3").await;
    r.assert_completed_exactly(&fake1);
    assert_eq!(r.attempts(), vec![ok("fake1", "initial")]);
    assert!(r.failovers().is_empty());
    assert_eq!(fake0.request_count(), 2);

    // fake0 recovers (slowly, so the probe is still in flight when the next one starts).
    fake0.set_default(Fault::None);
    fake0.set_chunk_delay(Duration::from_millis(20));
    let mut waited = Duration::ZERO;
    while health_of(&app, "fake0").await["state"] != "half_open" {
        assert!(waited < Duration::from_secs(10), "cooldown never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }

    // Two executions at once: exactly one of them probes fake0, the other uses fake1.
    let (a, b) = futures_util::join!(run(&app, "h4"), run(&app, "h5"));
    assert_eq!(fake0.request_count(), 3, "one half-open probe");
    let mut firsts: Vec<String> = [&a, &b]
        .iter()
        .map(|r| {
            r.assert_completed_exactly(&fake0);
            assert_eq!(r.attempts().len(), 1);
            r.attempts()[0].provider.clone()
        })
        .collect();
    firsts.sort();
    assert_eq!(firsts, ["fake0", "fake1"]);
    let h = health_of(&app, "fake0").await;
    assert_eq!(h["state"], "closed", "{h}");
    assert_eq!(h["consecutive_failures"], 0);
    assert_eq!(h["in_flight"], 0);

    // Closed: back in use as the primary.
    let r = run(&app, "h6").await;
    assert_eq!(r.attempts(), vec![ok("fake0", "initial")]);
    assert_eq!(fake0.request_count(), 4);
}

/// A cut on fake0 after `k` chunks, finished on fake1 (fake0 with one attempt).
fn assert_continued_on_fallback_after(r: &Run, fake1: &FakeOpenAi, k: usize) {
    r.assert_completed_exactly(fake1);
    assert_eq!(
        r.failovers(),
        vec![fo("fake0", "fake1", "stream_interrupted")]
    );
    assert_eq!(
        r.attempts(),
        vec![
            failed("fake0", "stream_interrupted", "initial"),
            ok("fake1", "instruction")
        ]
    );
    assert_eq!(r.exec["attempts"][0]["chunks_delivered"], k);
}
