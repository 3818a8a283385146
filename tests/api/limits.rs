//! Client rate limits over real HTTP: per key, per project and per client address (with and
//! without a trusted proxy), the `x-ratelimit-*` headers, executions in flight per key, and
//! per-key overrides through `PATCH /v1/keys/{id}`. Other clients connect from 127.0.0.x
//! (all of 127.0.0.0/8 is loopback on Linux).

use reqwest::{Client, Response};
use serde_json::{json, Value};
use std::net::IpAddr;
use switchyard::settings::Settings;

use crate::helpers::{assert_error, chat_body, spawn_app_with, TestApp, ADMIN_KEY};

fn base() -> String {
    crate::helpers::config(&[])
}

async fn spawn(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(&base(), tweak).await
}

fn client_from(ip: &str) -> Client {
    Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Creates a key (as the env admin) and returns (id, secret).
async fn key(app: &TestApp, project: &str, role: &str) -> (String, String) {
    app.create_key_by(ADMIN_KEY, project, role).await
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn body() -> Value {
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    chat_body(&format!("lim-{n}"), "hi", "chat-default")
}

async fn submit_from(
    app: &TestApp,
    client: &Client,
    key: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut req = client
        .post(app.url("/v1/executions"))
        .bearer_auth(key)
        .json(&body());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

async fn submit(app: &TestApp, key: &str) -> Response {
    submit_from(app, &app.client, key, &[]).await
}

fn header<'a>(res: &'a Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

/// `PATCH path` with `{"limits": limits}`.
async fn patch(app: &TestApp, by: &str, path: &str, limits: Value) -> Response {
    app.client
        .patch(app.url(path))
        .bearer_auth(by)
        .json(&json!({ "limits": limits }))
        .send()
        .await
        .unwrap()
}

async fn patch_limits(app: &TestApp, by: &str, id: &str, limits: Value) -> Response {
    patch(app, by, &format!("/v1/keys/{id}"), limits).await
}

#[actix_web::test]
async fn a_key_past_its_requests_per_minute_gets_429_with_retry_after_and_headers() {
    let toml = format!("{}\n[limits]\nkey_requests_per_minute = 3\n", base());
    let app = spawn_app_with(&toml, |_| {}).await;
    let (_, member) = key(&app, "default", "member").await;
    for remaining in ["2", "1", "0"] {
        let res = submit(&app, &member).await;
        assert_eq!(res.status(), 202);
        assert_eq!(header(&res, "x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(
            header(&res, "x-ratelimit-remaining-requests"),
            Some(remaining)
        );
        assert!(header(&res, "x-ratelimit-reset-requests").is_some());
        assert!(header(&res, "x-ratelimit-limit-tokens").is_none());
    }
    let res = submit(&app, &member).await;
    let retry: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(
        header(&res, "retry-after-ms")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(header(&res, "x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(header(&res, "x-ratelimit-remaining-requests"), Some("0"));
    assert!(header(&res, "x-ratelimit-reset-requests").is_some());
    let message = assert_error(res, 429, "rate_limited").await;
    assert!(message.contains("per-key"), "{message}");
    // Another key has its own allowance.
    let (_, other) = key(&app, "default", "member").await;
    assert_eq!(submit(&app, &other).await.status(), 202);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("switchyard_rate_limited_total{scope=\"key\"} 1"),
        "{text}"
    );
}

#[actix_web::test]
async fn a_project_limit_counts_every_key_of_the_project_on_every_submit_path() {
    let app = spawn(|s| s.limits.project_requests_per_minute = 2).await;
    let (_, a) = key(&app, "p1", "member").await;
    let (_, b) = key(&app, "p1", "member").await;
    let (_, elsewhere) = key(&app, "p2", "member").await;
    assert_eq!(submit(&app, &a).await.status(), 202);
    let res = app
        .post(
            "/v1/embeddings",
            &b,
            &json!({"model": "chat-default", "input": "hello"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(header(&res, "x-ratelimit-remaining-requests"), Some("0"));
    let res = app
        .post(
            "/v1/chat/completions",
            &a,
            &json!({"model": "chat-default", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(res.status(), 429);
    assert!(header(&res, "retry-after").is_some());
    assert_eq!(header(&res, "x-ratelimit-remaining-requests"), Some("0"));
    let error: Value = res.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per-project"),
        "{error}"
    );
    assert_eq!(submit(&app, &elsewhere).await.status(), 202);
}

#[actix_web::test]
async fn the_address_limit_counts_the_peer_and_ignores_forwarded_headers_from_untrusted_peers() {
    let app = spawn(|s| s.limits.ip_requests_per_minute = 2).await;
    let from2 = client_from("127.0.0.2");
    let from3 = client_from("127.0.0.3");
    let (_, member) = key(&app, "default", "member").await;
    // Each request claims another address: none of it counts from an untrusted peer.
    for (i, spoof) in ["198.51.100.1", "198.51.100.2"].iter().enumerate() {
        let res = submit_from(&app, &from2, &member, &[("x-forwarded-for", spoof)]).await;
        assert_eq!(res.status(), 202, "request {i}");
    }
    let res = submit_from(
        &app,
        &from2,
        &member,
        &[
            ("x-forwarded-for", "198.51.100.3"),
            ("forwarded", "for=198.51.100.4"),
        ],
    )
    .await;
    let message = assert_error(res, 429, "rate_limited").await;
    assert!(message.contains("per-address"), "{message}");
    // The same key from another address is not limited.
    assert_eq!(submit_from(&app, &from3, &member, &[]).await.status(), 202);
}

#[actix_web::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited() {
    let app = spawn(|s| {
        s.limits.ip_requests_per_minute = 1;
        s.limits.trusted_proxies = vec!["127.0.0.4".into(), "10.0.0.0/8".into()];
    })
    .await;
    let proxy = client_from("127.0.0.4");
    let (_, member) = key(&app, "default", "member").await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(
        submit_from(&app, &proxy, &member, &xff("203.0.113.1"))
            .await
            .status(),
        202
    );
    // The same client again, also through a second (trusted) proxy hop.
    let res = submit_from(&app, &proxy, &member, &xff("203.0.113.1, 10.1.1.1")).await;
    assert_error(res, 429, "rate_limited").await;
    // RFC 7239 `Forwarded` names the client too.
    let res = submit_from(&app, &proxy, &member, &[("forwarded", "for=203.0.113.1")]).await;
    assert_error(res, 429, "rate_limited").await;
    // A client prepending a fake address is still known by what the proxy appended.
    let res = submit_from(&app, &proxy, &member, &xff("203.0.113.9, 203.0.113.1")).await;
    assert_error(res, 429, "rate_limited").await;
    // Other clients behind the proxy have their own allowance, and so does the proxy itself.
    assert_eq!(
        submit_from(&app, &proxy, &member, &xff("203.0.113.2"))
            .await
            .status(),
        202
    );
    assert_eq!(submit_from(&app, &proxy, &member, &[]).await.status(), 202);
}

#[actix_web::test]
async fn executions_in_flight_are_limited_and_given_back_at_the_end() {
    let app = spawn(|s| {
        s.limits.key_concurrent_executions = 1;
        // Slow enough that the second submit arrives while the first runs.
        s.providers[0].mock_chunk_interval_ms = 100;
    })
    .await;
    let (_, member) = key(&app, "default", "member").await;
    let res = submit(&app, &member).await;
    assert_eq!(res.status(), 202);
    let first: Value = res.json().await.unwrap();
    let res = submit(&app, &member).await;
    let message = assert_error(res, 429, "rate_limited").await;
    assert!(message.contains("concurrent"), "{message}");
    let done = app
        .wait_terminal(&member, first["id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "completed");
    // Given back as the terminal status is written: no wait needed.
    let res = submit(&app, &member).await;
    assert_eq!(res.status(), 202);
    let second: Value = res.json().await.unwrap();
    // A cancelled execution gives its place back as well.
    let id = second["id"].as_str().unwrap();
    let res = app
        .post(&format!("/v1/executions/{id}/cancel"), &member, &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(submit(&app, &member).await.status(), 202);
}

#[actix_web::test]
async fn key_overrides_apply_at_once() {
    let app = spawn(|_| {}).await;
    let (id, member) = key(&app, "default", "member").await;
    // No limit by default: no headers either.
    let res = submit(&app, &member).await;
    assert_eq!(res.status(), 202);
    assert!(header(&res, "x-ratelimit-limit-requests").is_none());

    let res = patch_limits(&app, ADMIN_KEY, &id, json!({"requests_per_minute": 1})).await;
    assert_eq!(res.status(), 200);
    let view: Value = res.json().await.unwrap();
    assert_eq!(view["limits"], json!({"requests_per_minute": 1}));
    let res = submit(&app, &member).await;
    assert_eq!(res.status(), 202);
    assert_eq!(header(&res, "x-ratelimit-limit-requests"), Some("1"));
    assert_error(submit(&app, &member).await, 429, "rate_limited").await;

    // Back to the default (no limit), and a token budget instead.
    let res = patch_limits(
        &app,
        ADMIN_KEY,
        &id,
        json!({"requests_per_minute": null, "tokens_per_minute": 100}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let with_max = |n: u64| {
        let mut b = body();
        b["params"] = json!({"max_tokens": n});
        b
    };
    let res = app.post("/v1/executions", &member, &with_max(500)).await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.starts_with("max_tokens"), "{message}");
    let res = app.post("/v1/executions", &member, &with_max(50)).await;
    assert_eq!(res.status(), 202);
    assert_eq!(header(&res, "x-ratelimit-limit-tokens"), Some("100"));
    assert_eq!(header(&res, "x-ratelimit-remaining-tokens"), Some("50"));
    assert!(header(&res, "x-ratelimit-reset-tokens").is_some());
    assert_eq!(
        app.post("/v1/executions", &member, &with_max(50))
            .await
            .status(),
        202
    );
    let res = app.post("/v1/executions", &member, &with_max(50)).await;
    assert_eq!(header(&res, "x-ratelimit-remaining-tokens"), Some("0"));
    let message = assert_error(res, 429, "rate_limited").await;
    assert!(message.contains("tokens"), "{message}");

    // Listed with the key, and kept in the store.
    let keys: Value = app.get("/v1/keys", ADMIN_KEY).await.json().await.unwrap();
    let listed = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(listed["limits"], json!({"tokens_per_minute": 100}));
}

#[actix_web::test]
async fn key_limits_need_an_admin_of_the_project_and_valid_values() {
    let app = spawn(|_| {}).await;
    let (member_id, member) = key(&app, "p1", "member").await;
    let (_, admin1) = key(&app, "p1", "admin").await;
    let (foreign_id, _) = key(&app, "p2", "member").await;
    let ok = json!({"requests_per_minute": 5});
    assert_error(
        patch_limits(&app, &member, &member_id, ok.clone()).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        patch_limits(&app, &admin1, &foreign_id, ok.clone()).await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(
        patch_limits(&app, &admin1, &member_id, ok.clone())
            .await
            .status(),
        200
    );
    assert_eq!(
        patch_limits(
            &app,
            ADMIN_KEY,
            &member_id,
            json!({"concurrent_executions": 2, "monthly_spend_cap_micros": 5000000})
        )
        .await
        .status(),
        200
    );
    for (limits, field) in [
        (
            json!({"requests_per_minute": -1}),
            "limits.requests_per_minute",
        ),
        (
            json!({"tokens_per_minute": "many"}),
            "limits.tokens_per_minute",
        ),
        (
            json!({"concurrent_executions": 1.5}),
            "limits.concurrent_executions",
        ),
        (
            json!({"requests_per_minute": 99999999999u64}),
            "limits.requests_per_minute",
        ),
        (
            json!({"requests_per_mnute": 1}),
            "limits.requests_per_mnute",
        ),
        (json!([1]), "limits"),
    ] {
        let res = patch_limits(&app, ADMIN_KEY, &member_id, limits.clone()).await;
        let message = assert_error(res, 400, "invalid_request").await;
        assert!(message.starts_with(field), "{limits}: {message}");
    }
    let res = app
        .client
        .patch(app.url(&format!("/v1/keys/{member_id}")))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.starts_with("name"), "{message}");
    // Nothing invalid was kept.
    let keys: Value = app
        .get("/v1/keys?project=p1", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let listed = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == member_id.as_str())
        .unwrap();
    assert_eq!(
        listed["limits"],
        json!({"requests_per_minute": 5, "concurrent_executions": 2, "monthly_spend_cap_micros": 5000000})
    );
}

#[actix_web::test]
async fn key_overrides_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, base()).unwrap();
    let data = dir.path().join("data");
    let client = Client::new();
    let post = |address: &str, key: &str, path: &str, body: &Value| {
        client
            .post(format!("{address}{path}"))
            .bearer_auth(key)
            .json(body)
            .send()
    };
    let mut server = crate::helpers::spawn_process(&config, &data);
    let created: Value = post(
        &server.address,
        ADMIN_KEY,
        "/v1/keys",
        &json!({"role": "member"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let (id, member) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let res = client
        .patch(format!("{}/v1/keys/{id}", server.address))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"limits": {"requests_per_minute": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Answered means durable: a SIGKILL right after does not lose it.
    server.sigkill();
    let server = crate::helpers::spawn_process(&config, &data);
    let first = post(&server.address, member, "/v1/executions", &body())
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), Some("1"));
    let second = post(&server.address, member, "/v1/executions", &body())
        .await
        .unwrap();
    assert_error(second, 429, "rate_limited").await;
}

async fn patch_project(app: &TestApp, by: &str, project: &str, limits: Value) -> Response {
    patch(app, by, &format!("/v1/projects/{project}/limits"), limits).await
}

#[actix_web::test]
async fn project_overrides_apply_at_once_to_every_key_and_only_admins_set_them() {
    let app = spawn(|_| {}).await;
    let (_, admin) = key(&app, "lim-p", "admin").await;
    let (_, member) = key(&app, "lim-p", "member").await;
    let (_, stranger) = key(&app, "lim-q", "admin").await;
    let res = patch_project(&app, &member, "lim-p", json!({"requests_per_minute": 1})).await;
    assert_error(res, 403, "forbidden").await;
    let res = patch_project(&app, &stranger, "lim-p", json!({"requests_per_minute": 1})).await;
    assert_error(res, 404, "not_found").await;
    for bad in [
        json!({"requests_per_minute": -1}),
        json!({"tokens_per_minute": "many"}),
        json!({"monthly_spend_cap_micros": 5}),
        json!({"burst": 5}),
    ] {
        let res = patch_project(&app, &admin, "lim-p", bad.clone()).await;
        let msg = assert_error(res, 400, "invalid_request").await;
        assert!(msg.starts_with("limits."), "{bad}: {msg}");
    }
    let res = patch_project(&app, &admin, "lim-p", json!({"requests_per_minute": 2})).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["limits"]["requests_per_minute"], 2);
    assert_eq!(submit(&app, &member).await.status(), 202);
    assert_eq!(submit(&app, &admin).await.status(), 202);
    let res = submit(&app, &member).await;
    assert!(header(&res, "retry-after").is_some());
    let msg = assert_error(res, 429, "rate_limited").await;
    assert!(msg.contains("per-project"), "{msg}");
    // Another project is not affected; lifting the override applies at once.
    let (_, other) = key(&app, "lim-q", "member").await;
    assert_eq!(submit(&app, &other).await.status(), 202);
    let res = patch_project(
        &app,
        ADMIN_KEY,
        "lim-p",
        json!({"requests_per_minute": null}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(submit(&app, &member).await.status(), 202);
    let res = app.get("/v1/projects/lim-p/limits", &admin).await;
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["limits"], json!({}));
}

/// Without `max_tokens` a submit is counted for 1,024 completion tokens; the mock answers in
/// a few dozen, and the difference is given back to the next submit: one after another, many
/// fit in a minute that could hold two estimates.
#[actix_web::test]
async fn tokens_per_minute_follow_the_real_usage() {
    let toml = format!("{}\n[limits]\nkey_tokens_per_minute = 2100\n", base());
    let app = spawn_app_with(&toml, |_| {}).await;
    let (_, member) = key(&app, "default", "member").await;
    for _ in 0..6 {
        let res = submit(&app, &member).await;
        assert_eq!(res.status(), 202);
        let v: Value = res.json().await.unwrap();
        let done = app.wait_terminal(&member, v["id"].as_str().unwrap()).await;
        assert!(done["usage"]["total_tokens"].as_u64().unwrap() < 200);
    }
    // Three at once are counted by estimate before any ends: the third does not fit.
    let (a, b, c) = tokio::join!(
        submit(&app, &member),
        submit(&app, &member),
        submit(&app, &member)
    );
    let statuses = [a.status(), b.status(), c.status()];
    assert!(statuses.iter().any(|s| s.as_u16() == 429), "{statuses:?}");
}
