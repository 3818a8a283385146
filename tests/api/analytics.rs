//! `GET /v1/analytics`: exact numbers for a known workload, grouped by model and by provider,
//! project isolation, and errors that name the bad parameter.

use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::fake_openai::{FakeOpenAi, Fault};
use crate::helpers::*;

/// Submits and follows the execution to `done` (the analytics entry is written before `done`
/// is published, so it is visible once the stream ends). Returns the final execution.
async fn run_to_done(app: &TestApp, key: &str, idem: &str, prompt: &str, model: &str) -> Value {
    let sub = app.submit(key, &chat_body(idem, prompt, model)).await;
    let id = sub["id"].as_str().unwrap();
    let events = app.sse_all(key, id, None).await;
    assert_eq!(events.last().unwrap().event, "done");
    app.execution(key, id).await
}

async fn analytics(app: &TestApp, key: &str, query: &str) -> Value {
    let res = app.get(&format!("/v1/analytics{query}"), key).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "analytics");
    body
}

/// One series' buckets summed (a workload may straddle a bucket boundary).
#[derive(Debug, Default, PartialEq)]
struct Totals {
    requests: u64,
    errors: BTreeMap<String, u64>,
    failovers: u64,
    prompt: u64,
    completion: u64,
}

fn totals(body: &Value) -> BTreeMap<String, Totals> {
    let bucket_seconds = body["bucket_seconds"].as_u64().unwrap();
    let mut out = BTreeMap::new();
    for series in body["series"].as_array().unwrap() {
        let t: &mut Totals = out
            .entry(series["key"].as_str().unwrap().to_string())
            .or_default();
        let buckets = series["buckets"].as_array().unwrap();
        assert!(!buckets.is_empty(), "no empty series: {body}");
        let mut previous = None;
        for b in buckets {
            let start = humantime::parse_rfc3339(b["start"].as_str().unwrap()).unwrap();
            let secs = start
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert_eq!(secs % bucket_seconds, 0, "buckets are aligned: {b}");
            assert!(previous < Some(secs), "buckets in order: {body}");
            previous = Some(secs);
            t.requests += b["requests"].as_u64().unwrap();
            for (code, n) in b["errors"].as_object().unwrap() {
                *t.errors.entry(code.clone()).or_default() += n.as_u64().unwrap();
            }
            t.failovers += b["failovers"].as_u64().unwrap();
            t.prompt += b["tokens"]["prompt"].as_u64().unwrap();
            t.completion += b["tokens"]["completion"].as_u64().unwrap();
            for field in ["latency_ms", "first_chunk_ms"] {
                let (p50, p95) = (&b[field]["p50"], &b[field]["p95"]);
                if p50.is_null() {
                    assert!(p95.is_null(), "{b}");
                } else {
                    assert!(p50.as_u64().unwrap() <= p95.as_u64().unwrap(), "{b}");
                }
            }
            if b["requests"].as_u64().unwrap() > 0 {
                assert!(
                    b["latency_ms"]["p50"].is_u64(),
                    "finished work has a latency: {b}"
                );
            }
        }
    }
    out
}

fn t(
    requests: u64,
    errors: &[(&str, u64)],
    failovers: u64,
    prompt: u64,
    completion: u64,
) -> Totals {
    Totals {
        requests,
        errors: errors.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
        failovers,
        prompt,
        completion,
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

#[actix_web::test]
async fn a_known_workload_gives_exact_numbers_by_model_and_by_provider() {
    let fake0 = FakeOpenAi::start().await;
    let fake1 = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&fake0, &fake1]).await;

    // Three completions on the mock: 3 prompt words and 12 chunks (one token each) apiece.
    let mut mock_latencies = Vec::new();
    for i in 0..3 {
        let exec = run_to_done(
            &app,
            ADMIN_KEY,
            &format!("m{i}"),
            "one two three",
            "chat-default",
        )
        .await;
        assert_eq!(exec["status"], "completed");
        mock_latencies.push(exec["duration_ms"].as_u64().unwrap());
    }
    // One failure: a content filter on the first route fails at once, no failover.
    fake0.set_script(vec![Fault::content_filter()]);
    let failed = run_to_done(&app, ADMIN_KEY, "f", "bad words", "fake").await;
    assert_eq!(failed["error"]["code"], "content_filtered");
    // One failover: fake0 is cut after 5 chunks, fake1 continues with the other 15.
    fake0.set_script(vec![Fault::CutAfter(5)]);
    let over = run_to_done(&app, ADMIN_KEY, "o", "tell me the words", "fake").await;
    assert_eq!(over["status"], "completed");
    assert_eq!(over["attempts"].as_array().unwrap().len(), 2);
    // fake1 reports usage for the continuation request only (fake0's stream was cut first).
    let continuation_prompt: u64 = fake1.requests()[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| words(m["content"].as_str().unwrap()))
        .sum();

    let by_model = analytics(&app, ADMIN_KEY, "").await;
    assert_eq!(by_model["group_by"], "model");
    assert_eq!(by_model["bucket_seconds"], 60);
    let expected: BTreeMap<String, Totals> = [
        ("chat-default".to_string(), t(3, &[], 0, 9, 36)),
        (
            "fake".to_string(),
            t(2, &[("content_filtered", 1)], 1, continuation_prompt, 15),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(totals(&by_model), expected, "{by_model:#}");

    let all = analytics(&app, ADMIN_KEY, "?group_by=none").await;
    assert_eq!(all["group_by"], "none");
    let expected: BTreeMap<String, Totals> = [(
        "all".to_string(),
        t(
            5,
            &[("content_filtered", 1)],
            1,
            9 + continuation_prompt,
            36 + 15,
        ),
    )]
    .into_iter()
    .collect();
    assert_eq!(totals(&all), expected, "{all:#}");

    let by_provider = analytics(&app, ADMIN_KEY, "?group_by=provider&bucket=hour").await;
    assert_eq!(by_provider["group_by"], "provider");
    assert_eq!(by_provider["bucket_seconds"], 3600);
    let expected: BTreeMap<String, Totals> = [
        ("mock".to_string(), t(3, &[], 0, 9, 36)),
        // The failed execution ended on fake0; the failover left fake0.
        (
            "fake0".to_string(),
            t(1, &[("content_filtered", 1)], 1, 0, 0),
        ),
        // The failed-over execution ended on fake1.
        ("fake1".to_string(), t(1, &[], 0, continuation_prompt, 15)),
    ]
    .into_iter()
    .collect();
    assert_eq!(totals(&by_provider), expected, "{by_provider:#}");

    // A single execution's quantiles are its own latency, to the histogram's ±10%.
    let fake1_series = by_provider["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "fake1")
        .unwrap();
    let bucket = &fake1_series["buckets"][0];
    let latency = over["duration_ms"].as_u64().unwrap() as f64;
    for q in ["p50", "p95"] {
        let estimate = bucket["latency_ms"][q].as_u64().unwrap() as f64;
        assert!(
            (estimate - latency).abs() <= latency * 0.1 + 1.0,
            "{q} {estimate} vs {latency}"
        );
    }
    let first_chunk = bucket["first_chunk_ms"]["p50"].as_u64().unwrap() as f64;
    assert!(
        first_chunk <= latency * 1.1 + 1.0,
        "{first_chunk} vs {latency}"
    );
    // The mock's p95 covers the slowest of its three runs.
    let slowest = *mock_latencies.iter().max().unwrap() as f64;
    let mock_p95: u64 = by_model["series"][0]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["latency_ms"]["p95"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        mock_p95 as f64 >= slowest * 0.9 - 1.0,
        "{mock_p95} vs {slowest}"
    );
}

#[actix_web::test]
async fn the_time_range_selects_buckets() {
    let app = spawn_app().await;
    let exec = run_to_done(&app, ADMIN_KEY, "r", "hello", "chat-default").await;
    let done = humantime::parse_rfc3339(exec["completed_at"].as_str().unwrap()).unwrap();
    let done = done
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = done / 60 * 60;

    // Exactly its minute, given as unix seconds, and as RFC 3339 with an offset.
    let body = analytics(
        &app,
        ADMIN_KEY,
        &format!("?from={minute}&to={}", minute + 60),
    )
    .await;
    assert_eq!(totals(&body)["chat-default"].requests, 1);
    assert_eq!(body["series"][0]["buckets"].as_array().unwrap().len(), 1);
    let offset_from = humantime::format_rfc3339(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(minute + 7200),
    )
    .to_string()
    .replace('Z', "+02:00");
    let body = analytics(
        &app,
        ADMIN_KEY,
        &format!(
            "?from={}&to={}",
            offset_from.replace('+', "%2B"),
            minute + 60
        ),
    )
    .await;
    assert_eq!(totals(&body)["chat-default"].requests, 1, "{body}");

    // `to` is exclusive, `from` aligned down to its bucket.
    let before = analytics(
        &app,
        ADMIN_KEY,
        &format!("?from={}&to={minute}", minute - 600),
    )
    .await;
    assert_eq!(before["series"], json!([]));
    let after = analytics(
        &app,
        ADMIN_KEY,
        &format!("?from={}&to={}", minute + 60, minute + 120),
    )
    .await;
    assert_eq!(after["series"], json!([]));
    let aligned = analytics(
        &app,
        ADMIN_KEY,
        &format!("?from={}&to={}", minute + 59, minute + 60),
    )
    .await;
    assert_eq!(totals(&aligned)["chat-default"].requests, 1);
}

#[actix_web::test]
async fn a_project_sees_only_its_own_numbers() {
    let app = spawn_app().await;
    let acme = app.create_key("acme", "member").await;
    run_to_done(&app, &acme, "a1", "hello there", "chat-default").await;
    run_to_done(&app, &acme, "a2", "hello there", "chat-default").await;
    run_to_done(&app, ADMIN_KEY, "d1", "hello there", "chat-default").await;

    let mine = totals(&analytics(&app, &acme, "").await);
    assert_eq!(mine.keys().collect::<Vec<_>>(), ["chat-default"]);
    assert_eq!(mine["chat-default"].requests, 2);
    let theirs = totals(&analytics(&app, ADMIN_KEY, "?group_by=provider").await);
    assert_eq!(theirs["mock"].requests, 1);
    let globex = app.create_key("globex", "admin").await;
    assert_eq!(analytics(&app, &globex, "").await["series"], json!([]));

    let res = app
        .client
        .get(app.url("/v1/analytics"))
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "unauthorized").await;
}

#[actix_web::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let app = spawn_app().await;
    let cases = [
        ("?group_by=team", "group_by: "),
        ("?bucket=day", "bucket: "),
        ("?from=yesterday", "from: "),
        ("?to=2024-05-01", "to: "),
        ("?from=2024-05-01T12:00:00%2B25:00", "from: "),
        ("?from=2000&to=1000", "from: "),
        ("?from=1000&to=1000", "from: "),
        ("?from=0&to=86401", "to: "),
        ("?bucket=hour&from=0&to=86400000", "to: "),
        (
            "?limit=3",
            "invalid query string: Query deserialize error: unknown field `limit`",
        ),
    ];
    for (query, prefix) in cases {
        let res = app.get(&format!("/v1/analytics{query}"), ADMIN_KEY).await;
        let message = assert_error(res, 400, "invalid_request").await;
        assert!(message.starts_with(prefix), "{query}: {message}");
    }
    // The largest allowed windows.
    analytics(&app, ADMIN_KEY, "?from=0&to=86400").await;
    analytics(&app, ADMIN_KEY, "?bucket=hour&from=0&to=5184000").await;
}

#[actix_web::test]
async fn me_names_the_key_its_project_and_role() {
    let app = spawn_app().await;
    let res = app.get("/v1/me", ADMIN_KEY).await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(
        me,
        json!({"object": "principal", "project_id": "default", "key_id": "key_env_admin", "role": "admin"})
    );
    let acme = app.create_key("acme", "member").await;
    let me: Value = app.get("/v1/me", &acme).await.json().await.unwrap();
    assert_eq!(me["project_id"], "acme");
    assert_eq!(me["role"], "member");
    assert!(me["key_id"].as_str().unwrap().starts_with("key_"));
    let res = app.get("/v1/me", "nope").await;
    assert_error(res, 401, "unauthorized").await;
}
