//! Balances with holds over real HTTP and real sled: top-ups and who may make them, the hold
//! a submit places (402 when not covered), settle on `completed` and release on every other
//! end (also after a failover: both attempts are charged), a key's monthly cap, idempotent
//! retries, 200 parallel submits against a balance covering 50 — in process and across a
//! SIGKILL — with the ledger replayed to check that it adds up.

use serde_json::{json, Value};
use std::time::Duration;

use crate::fake_openai::{FakeOpenAi, Fault};
use crate::helpers::*;

/// `chat-default`: the fast mock at $100 / $400 per million tokens, so a `max_tokens: 100`
/// submit with a tiny prompt holds 1.2 × 100 × 400 = 48,000 micros. `slow`: a mock taking 2 s
/// whose holds are the $0.01 minimum. `fake`: the fakes, priced.
fn priced_config(fakes: &[&FakeOpenAi]) -> String {
    let mut toml = String::from(
        r#"listen = "127.0.0.1:0"
data_dir = "unused"

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = 12
mock_chunk_interval_ms = 2

[[providers]]
name = "slow"
kind = "mock"
mock_chunks = 20
mock_chunk_interval_ms = 100

[[models]]
slug = "chat-default"
routes = [{ provider = "mock", model = "mock-1", input_per_mtok = 100.0, output_per_mtok = 400.0 }]

[[models]]
slug = "slow"
routes = [{ provider = "slow", model = "slow-1", input_per_mtok = 1.0, output_per_mtok = 2.0 }]
"#,
    );
    for (i, fake) in fakes.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[providers]]\nname = \"fake{i}\"\nkind = \"openai\"\nbase_url = \"{}\"\nmax_attempts = 1\nidle_timeout_ms = 500\n",
            fake.base_url()
        ));
    }
    if !fakes.is_empty() {
        let routes: Vec<String> = (0..fakes.len())
            .map(|i| {
                format!(
                    r#"{{ provider = "fake{i}", model = "up-{i}", input_per_mtok = 3.0, output_per_mtok = 15.0 }}"#
                )
            })
            .collect();
        toml.push_str(&format!(
            "\n[[models]]\nslug = \"fake\"\nroutes = [{}]\n",
            routes.join(", ")
        ));
    }
    toml
}

fn body(key: &str, model: &str) -> Value {
    let mut b = chat_body(key, "hi", model);
    b["params"] = json!({"max_tokens": 100});
    b
}

async fn top_up(app: &TestApp, by: &str, project: &str, amount: Value) -> reqwest::Response {
    app.post(
        &format!("/v1/projects/{project}/balance"),
        by,
        &json!({ "amount_micros": amount }),
    )
    .await
}

async fn balance(client: &reqwest::Client, base: &str, key: &str) -> Value {
    let res = client
        .get(format!("{base}/v1/balance"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Every ledger entry of the caller's project, following the cursor.
async fn ledger(client: &reqwest::Client, base: &str, key: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/ledger?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let res = client.get(url).bearer_auth(key).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let page: Value = res.json().await.unwrap();
        all.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return all,
        }
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not a whole number: {v}"))
}

/// Replays the ledger: seqs follow each other, every entry's balance and held amount are the
/// sum of what came before, nothing is ever negative or held beyond the balance. Returns the
/// final (balance, held).
fn replay(entries: &[Value]) -> (u64, u64) {
    let (mut balance, mut held) = (0i128, 0i128);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(n(&e["seq"]), i as u64 + 1, "seqs follow each other: {e}");
        let amount = n(&e["amount_micros"]) as i128;
        match e["kind"].as_str().unwrap() {
            "top_up" => balance += amount,
            "hold" => held += amount,
            "settle" => {
                balance -= amount;
                held -= n(&e["hold_micros"]) as i128;
            }
            "release" => held -= amount,
            other => panic!("unknown kind {other}"),
        }
        assert!(balance >= 0 && held >= 0 && held <= balance, "at {e}");
        assert_eq!(
            (balance, held),
            (
                n(&e["balance_micros"]) as i128,
                n(&e["held_micros"]) as i128
            ),
            "entry {e}"
        );
        assert!(e["at"].is_string());
    }
    (balance as u64, held as u64)
}

fn kinds(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect()
}

#[actix_web::test]
async fn top_ups_are_validated_and_only_admins_of_the_project_or_default_make_them() {
    let app = spawn_app_with(&priced_config(&[]), |_| {}).await;
    let member = app.create_key("bal-a", "member").await;
    let admin_a = app.create_key("bal-a", "admin").await;
    let admin_b = app.create_key("bal-b", "admin").await;
    let b = balance(&app.client, &app.address, &member).await;
    assert_eq!(b["unlimited"], true);
    assert_eq!(b["balance_micros"], Value::Null);

    let res = top_up(&app, &member, "bal-a", json!(1000)).await;
    assert_error(res, 403, "forbidden").await;
    let res = top_up(&app, &admin_b, "bal-a", json!(1000)).await;
    assert_error(res, 404, "not_found").await;
    let res = app.get("/v1/balance?project_id=bal-a", &admin_b).await;
    assert_error(res, 404, "not_found").await;
    for bad in [
        json!(-5),
        json!(1.5),
        json!("100"),
        json!(1e30),
        Value::Null,
    ] {
        let res = top_up(&app, &admin_a, "bal-a", bad.clone()).await;
        let msg = assert_error(res, 400, "invalid_request").await;
        assert!(msg.contains("amount_micros"), "{bad}: {msg}");
    }
    let res = app
        .post(
            "/v1/projects/bal-a/balance",
            &admin_a,
            &json!({"amount": 5}),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;

    let res = top_up(&app, &admin_a, "bal-a", json!(1_000)).await;
    assert_eq!(res.status(), 200);
    let res = top_up(&app, ADMIN_KEY, "bal-a", json!(2_500)).await;
    let b: Value = res.json().await.unwrap();
    assert_eq!(b["balance_micros"], 3_500);
    assert_eq!(b["available_micros"], 3_500);
    let b = balance(&app.client, &app.address, &member).await;
    assert_eq!(
        (b["unlimited"].clone(), n(&b["balance_micros"])),
        (json!(false), 3_500)
    );
    let entries = ledger(&app.client, &app.address, &member).await;
    assert_eq!(kinds(&entries), ["top_up", "top_up"]);
    assert_eq!(replay(&entries), (3_500, 0));
    let res = app.get("/v1/ledger?cursor=abc", &member).await;
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn a_completed_execution_settles_its_cost_once_and_a_retry_holds_nothing_more() {
    let app = spawn_app_with(&priced_config(&[]), |_| {}).await;
    let key = app.create_key("bal-c", "member").await;
    top_up(&app, ADMIN_KEY, "bal-c", json!(1_000_000)).await;
    let submitted = app.submit(&key, &body("c-1", "chat-default")).await;
    let id = submitted["id"].as_str().unwrap();
    let done = app.wait_terminal(&key, id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["cost"]["held_micros"], 48_000);
    let settled = n(&done["cost"]["settled_micros"]);
    let attempts: u64 = done["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| n(&a["cost_micros"]))
        .sum();
    let usage = &done["usage"];
    let expected = n(&usage["prompt_tokens"]) * 100 + n(&usage["completion_tokens"]) * 400;
    assert_eq!((settled, attempts), (expected, expected));
    assert!(settled > 0);

    // The same submit again: the original answer, no second hold.
    let res = app
        .post("/v1/executions", &key, &body("c-1", "chat-default"))
        .await;
    assert_eq!(res.status(), 200);
    let entries = ledger(&app.client, &app.address, &key).await;
    assert_eq!(kinds(&entries), ["top_up", "hold", "settle"]);
    assert_eq!(entries[1]["execution_id"], id);
    assert_eq!(n(&entries[2]["amount_micros"]), settled);
    assert_eq!(replay(&entries), (1_000_000 - settled, 0));
    let b = balance(&app.client, &app.address, &key).await;
    assert_eq!(n(&b["balance_micros"]), 1_000_000 - settled);
    assert_eq!(n(&b["held_micros"]), 0);
    // The spend analytics count it once, under its model.
    let res = app.get("/v1/analytics?group_by=model", &key).await;
    let body: Value = res.json().await.unwrap();
    let spend: u64 = body["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["buckets"].as_array().unwrap())
        .map(|b| n(&b["spend_micros"]))
        .sum();
    assert_eq!(spend, settled, "{body}");
}

#[actix_web::test]
async fn a_submit_the_balance_does_not_cover_is_402_on_every_path() {
    let app = spawn_app_with(&priced_config(&[]), |_| {}).await;
    let key = app.create_key("bal-d", "member").await;
    top_up(&app, ADMIN_KEY, "bal-d", json!(40_000)).await;
    let res = app
        .post("/v1/executions", &key, &body("d-1", "chat-default"))
        .await;
    let msg = assert_error(res, 402, "insufficient_balance").await;
    assert!(
        msg.contains("$0.048000") && msg.contains("$0.040000"),
        "{msg}"
    );
    let res = app
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "chat-default", "max_tokens": 100,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(res.status(), 402);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "insufficient_balance");
    // A smaller request fits.
    let mut small = body("d-2", "chat-default");
    small["params"]["max_tokens"] = json!(50);
    let done = app.submit(&key, &small).await;
    app.wait_terminal(&key, done["id"].as_str().unwrap()).await;
    let entries = ledger(&app.client, &app.address, &key).await;
    assert_eq!(kinds(&entries), ["top_up", "hold", "settle"]);
    replay(&entries);
}

#[actix_web::test]
async fn failed_cancelled_and_expired_executions_release_their_hold_whole() {
    let fake = FakeOpenAi::start().await.with_default(Fault::status(500));
    let app = spawn_app_with(&priced_config(&[&fake]), |s| {
        s.limits.max_execution_ms = 400;
    })
    .await;
    let key = app.create_key("bal-e", "member").await;
    top_up(&app, ADMIN_KEY, "bal-e", json!(1_000_000)).await;

    let failed = app.submit(&key, &body("e-fail", "fake")).await;
    let failed = app
        .wait_terminal(&key, failed["id"].as_str().unwrap())
        .await;
    assert_eq!(failed["status"], "failed");

    let mut long = body("e-cancel", "slow");
    long["params"]["max_tokens"] = json!(1000);
    let cancelled = app.submit(&key, &long).await;
    let id = cancelled["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let res = app
        .post(&format!("/v1/executions/{id}/cancel"), &key, &json!({}))
        .await;
    assert!(res.status().is_success());
    let cancelled = app.wait_terminal(&key, id).await;
    assert_eq!(cancelled["status"], "cancelled");

    // 2 s of mock against a 400 ms deadline.
    let expired = app.submit(&key, &body("e-expire", "slow")).await;
    let expired = app
        .wait_terminal(&key, expired["id"].as_str().unwrap())
        .await;
    assert_eq!(expired["status"], "expired");

    for exec in [&failed, &cancelled, &expired] {
        assert_eq!(exec["cost"]["settled_micros"], 0, "{exec}");
    }
    let entries = ledger(&app.client, &app.address, &key).await;
    assert_eq!(
        kinds(&entries),
        ["top_up", "hold", "release", "hold", "release", "hold", "release"]
    );
    for pair in entries[1..].chunks(2) {
        assert_eq!(pair[0]["amount_micros"], pair[1]["amount_micros"]);
        assert_eq!(pair[0]["execution_id"], pair[1]["execution_id"]);
    }
    assert_eq!(replay(&entries), (1_000_000, 0));
}

#[actix_web::test]
async fn a_failover_is_charged_for_both_attempts() {
    let first = FakeOpenAi::start()
        .await
        .with_words(40)
        .with_script(vec![Fault::CutAfter(10)]);
    let second = FakeOpenAi::start().await.with_words(40);
    let app = spawn_app_with(&priced_config(&[&first, &second]), |_| {}).await;
    let key = app.create_key("bal-f", "member").await;
    top_up(&app, ADMIN_KEY, "bal-f", json!(1_000_000)).await;
    let exec = app.submit(&key, &body("f-1", "fake")).await;
    let done = app.wait_terminal(&key, exec["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{done}");
    let costs: Vec<u64> = attempts.iter().map(|a| n(&a["cost_micros"])).collect();
    // The cut attempt reported no usage: charged for what it sent, by the rough measure.
    assert!(attempts[0]["usage"].is_null() && costs[0] > 0, "{done}");
    let usage = &attempts[1]["usage"];
    assert_eq!(
        costs[1],
        n(&usage["prompt_tokens"]) * 3 + n(&usage["completion_tokens"]) * 15
    );
    assert_eq!(n(&done["cost"]["settled_micros"]), costs[0] + costs[1]);
    let entries = ledger(&app.client, &app.address, &key).await;
    assert_eq!(kinds(&entries), ["top_up", "hold", "settle"]);
    assert_eq!(n(&entries[2]["amount_micros"]), costs[0] + costs[1]);
    replay(&entries);
}

#[actix_web::test]
async fn a_keys_monthly_cap_counts_what_it_holds_and_spent() {
    let app = spawn_app_with(&priced_config(&[]), |_| {}).await;
    let (id, key) = app.create_key_by(ADMIN_KEY, "bal-g", "member").await;
    let res = app
        .client
        .patch(app.url(&format!("/v1/keys/{id}")))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"limits": {"monthly_spend_cap_micros": 25_000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Two slow executions hold $0.01 each; a third would pass the cap while they run.
    let a = app.submit(&key, &body("g-1", "slow")).await;
    app.submit(&key, &body("g-2", "slow")).await;
    let res = app.post("/v1/executions", &key, &body("g-3", "slow")).await;
    let msg = assert_error(res, 402, "insufficient_balance").await;
    assert!(msg.contains("monthly spend cap"), "{msg}");
    // Another key of the project is not limited by it; the project has no balance.
    let other = app.create_key("bal-g", "member").await;
    app.submit(&other, &body("g-4", "slow")).await;
    let done = app.wait_terminal(&key, a["id"].as_str().unwrap()).await;
    assert!(n(&done["cost"]["settled_micros"]) > 0);
    assert_eq!(done["cost"]["held_micros"], 10_000);
}

/// 200 submits at once against a balance covering 50 holds: at most 50 accepted, the rest
/// 402, and the ledger adds up once everything ended.
#[actix_web::test]
async fn parallel_submits_never_spend_more_than_the_balance() {
    let app = spawn_app_with(&priced_config(&[]), |_| {}).await;
    let key = app.create_key("bal-h", "member").await;
    top_up(&app, ADMIN_KEY, "bal-h", json!(50 * 10_000)).await;
    let (accepted, refused) = burst(&app.client, &app.address, &key, "h", 200).await;
    assert!(accepted.len() <= 50, "accepted {}", accepted.len());
    assert_eq!(accepted.len() + refused, 200);
    for id in &accepted {
        app.wait_terminal(&key, id).await;
    }
    let entries = ledger(&app.client, &app.address, &key).await;
    let (balance, held) = replay(&entries);
    assert_eq!(held, 0);
    let settled: u64 = entries
        .iter()
        .filter(|e| e["kind"] == "settle")
        .map(|e| n(&e["amount_micros"]))
        .sum();
    assert_eq!(balance, 500_000 - settled);
    assert_eq!(
        entries.iter().filter(|e| e["kind"] == "hold").count(),
        accepted.len()
    );
}

/// Fires `count` submits of the slow model at once; returns the accepted ids and how many
/// were refused with 402.
async fn burst(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    tag: &str,
    count: usize,
) -> (Vec<String>, usize) {
    burst_counting(client, base, key, tag, count, Default::default()).await
}

/// [`burst`], counting acknowledgements in `accepted` as they arrive.
async fn burst_counting(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    tag: &str,
    count: usize,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> (Vec<String>, usize) {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let accepted = accepted.clone();
            let (client, url, key) = (
                client.clone(),
                format!("{base}/v1/executions"),
                key.to_string(),
            );
            let body = body(&format!("{tag}-{i}"), "slow");
            tokio::spawn(async move {
                let res = client.post(url).bearer_auth(key).json(&body).send().await;
                match res {
                    Ok(res) if res.status() == 202 => {
                        let v: Value = res.json().await.unwrap();
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Some(Ok(v["id"].as_str().unwrap().to_string()))
                    }
                    Ok(res) if res.status() == 402 => Some(Err(())),
                    Ok(res) => panic!("unexpected status {}", res.status()),
                    // The server was killed under it: neither accepted nor refused.
                    Err(_) => None,
                }
            })
        })
        .collect();
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Some(Ok(id)) => accepted.push(id),
            Some(Err(())) => refused += 1,
            None => {}
        }
    }
    (accepted, refused)
}

/// The same burst with the process SIGKILLed in the middle of it and started again on the
/// same data: every acknowledged execution ends, its hold settled or released exactly once,
/// and the ledger adds up without ever going negative.
#[actix_web::test]
async fn a_sigkill_in_the_middle_of_a_burst_loses_no_hold_and_overspends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, priced_config(&[])).unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();
    let mut first = spawn_process(&config, &data);
    let res = client
        .post(format!("{}/v1/projects/bal-k/balance", first.address))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"amount_micros": 50 * 10_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = client
        .post(format!("{}/v1/keys", first.address))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"project_id": "bal-k", "role": "member"}))
        .send()
        .await
        .unwrap();
    let key = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let base = first.address.clone();
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let burst = {
        let (client, key, counter) = (client.clone(), key.clone(), acknowledged.clone());
        tokio::spawn(async move { burst_counting(&client, &base, &key, "k", 200, counter).await })
    };
    // Killed while submits are still arriving: some acknowledged, some cut off.
    while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.sigkill();
    let (accepted, _) = burst.await.unwrap();

    let second = spawn_process(&config, &data);
    for id in &accepted {
        for i in 0.. {
            let res = client
                .get(format!("{}/v1/executions/{id}", second.address))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "acknowledged {id} survived");
            let exec: Value = res.json().await.unwrap();
            if !matches!(exec["status"].as_str().unwrap(), "pending" | "processing") {
                break;
            }
            assert!(i < 2000, "{id} did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Submits acknowledged by the store but whose answer the kill cut off run too.
    for status in ["pending", "processing"] {
        for i in 0.. {
            let res = client
                .get(format!(
                    "{}/v1/executions?limit=100&status={status}",
                    second.address
                ))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            let page: Value = res.json().await.unwrap();
            if page["data"].as_array().unwrap().is_empty() {
                break;
            }
            assert!(i < 2000, "executions still running: {page}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let entries = ledger(&client, &second.address, &key).await;
    let (_, held) = replay(&entries);
    assert_eq!(held, 0, "no hold is left open");
    let holds: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "hold").collect();
    assert!(holds.len() <= 50, "{} holds", holds.len());
    for id in &accepted {
        let of = |kind: &str| {
            entries
                .iter()
                .filter(|e| e["kind"] == kind && e["execution_id"] == id.as_str())
                .count()
        };
        assert_eq!(of("hold"), 1, "{id} holds once");
        assert_eq!(of("settle") + of("release"), 1, "{id} ends once");
    }
    let b = balance(&client, &second.address, &key).await;
    assert_eq!(n(&b["held_micros"]), 0);
}
