//! Webhooks: signed, retried until a 2xx, delivered at least once across a crash.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::*;

/// A webhook endpoint that fails its first `failures` deliveries.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub hits: Arc<Mutex<Vec<(String, String, String)>>>,
    failures: Arc<AtomicUsize>,
}

async fn hook(req: HttpRequest, body: String, r: web::Data<Receiver>) -> HttpResponse {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    r.hits.lock().unwrap().push((
        header("switchyard-signature"),
        header("switchyard-event-id"),
        body,
    ));
    if r.failures.load(Ordering::SeqCst) > 0 {
        r.failures.fetch_sub(1, Ordering::SeqCst);
        return HttpResponse::ServiceUnavailable().finish();
    }
    HttpResponse::Ok().finish()
}

pub fn start_receiver(failures: usize) -> Receiver {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let r = Receiver {
        url: format!("http://{}/hook", listener.local_addr().unwrap()),
        hits: Arc::default(),
        failures: Arc::new(AtomicUsize::new(failures)),
    };
    let data = web::Data::new(r.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/hook", web::post().to(hook))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    r
}

impl Receiver {
    pub async fn wait_hits(&self, n: usize) -> Vec<(String, String, String)> {
        for _ in 0..1000 {
            if self.hits.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.hits.lock().unwrap().clone()
    }
}

/// Whether any `v1` in `t=<t>,v1=<hex>[,v1=<hex>…]` is `secret`'s signature of `body`, as a
/// Stripe-style receiver checks it.
pub fn verify(secret: &str, signature: &str, body: &str) -> bool {
    use hmac::{Hmac, Mac};
    let mut parts = signature.split(',');
    let t = parts.next().unwrap().strip_prefix("t=").unwrap();
    parts.any(|part| {
        let v1 = part.strip_prefix("v1=").unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        mac.verify_slice(&hex::decode(v1).unwrap()).is_ok()
    })
}

/// Test receivers listen on 127.0.0.1, which webhooks reach only when allowed.
fn allow_loopback(s: &mut switchyard::settings::Settings) {
    s.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
}

#[actix_web::test]
async fn a_terminal_execution_is_posted_signed_and_retried_until_acknowledged() {
    let receiver = start_receiver(2);
    let app = spawn_app_with(&config(&[]), |s| {
        allow_loopback(s);
        s.webhooks.retry_base_ms = 20;
    })
    .await;
    let mut body = chat_body("wh1", "Hi", "chat-default");
    body["webhook_url"] = json!(receiver.url);
    let sub = app.submit(ADMIN_KEY, &body).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;

    let hits = receiver.wait_hits(3).await;
    assert_eq!(
        hits.len(),
        3,
        "two failures, then the acknowledged delivery"
    );
    let secret: Value = app
        .get("/v1/webhooks/secret", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let secret = secret["secret"].as_str().unwrap();
    for (signature, event_id, raw) in &hits {
        assert!(verify(secret, signature, raw), "signature verifies");
        assert!(!verify("wrong", signature, raw));
        let payload: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(payload["type"], "execution.completed");
        assert_eq!(&payload["id"], event_id);
        assert_eq!(payload["data"]["id"], exec["id"]);
        assert_eq!(payload["data"]["output"], exec["output"]);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.hits.lock().unwrap().len(),
        3,
        "nothing after the 2xx"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_webhook_deliveries_total{outcome=\"failed\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_webhook_deliveries_total{outcome=\"delivered\"} 1"));

    let member = app.create_key("default", "member").await;
    assert_eq!(app.get("/v1/webhooks/secret", &member).await.status(), 403);
}

#[actix_web::test]
async fn a_cancelled_execution_is_announced_with_its_type() {
    let receiver = start_receiver(0);
    let app = spawn_app_with(&config(&[]), |s| {
        allow_loopback(s);
        s.providers[0].mock_chunk_interval_ms = 50;
    })
    .await;
    let mut body = chat_body("wh2", "Hi", "chat-default");
    body["webhook_url"] = json!(receiver.url);
    let sub = app.submit(ADMIN_KEY, &body).await;
    let id = sub["id"].as_str().unwrap();
    let res = app
        .post(
            &format!("/v1/executions/{id}/cancel"),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let hits = receiver.wait_hits(1).await;
    let payload: Value = serde_json::from_str(&hits[0].2).unwrap();
    assert_eq!(payload["type"], "execution.cancelled");
    assert_eq!(payload["data"]["status"], "cancelled");
}

#[actix_web::test]
async fn a_pending_delivery_survives_a_crash() {
    let receiver = start_receiver(usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}\n[webhooks]\nretry_base_ms = 50\nallowed_hosts = [\"127.0.0.1\"]\n",
            config(&[])
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();

    let mut first = spawn_process(&cfg, &data);
    let mut body = chat_body("wh3", "Hi", "chat-default");
    body["webhook_url"] = json!(receiver.url);
    let res = client
        .post(format!("{}/v1/executions", first.address))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    receiver.wait_hits(1).await;
    first.sigkill();

    receiver.failures.store(0, Ordering::SeqCst);
    let before = receiver.hits.lock().unwrap().len();
    let _second = spawn_process(&cfg, &data);
    let hits = receiver.wait_hits(before + 1).await;
    assert!(hits.len() > before, "delivered after the restart");
    let payload: Value = serde_json::from_str(&hits.last().unwrap().2).unwrap();
    assert_eq!(payload["type"], "execution.completed");
}

/// Accepts TCP connections and never answers: every delivery to it waits for its timeout.
struct Blackhole {
    url: String,
    /// Connections it holds.
    accepted: Arc<AtomicUsize>,
    /// When the first one came: no delivery to it can time out before that plus the timeout.
    first: Arc<Mutex<Option<std::time::Instant>>>,
}

fn start_blackhole() -> Blackhole {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = Blackhole {
        url: format!("http://{}/hook", listener.local_addr().unwrap()),
        accepted: Arc::default(),
        first: Arc::default(),
    };
    let (accepted, first) = (hole.accepted.clone(), hole.first.clone());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            first
                .lock()
                .unwrap()
                .get_or_insert_with(std::time::Instant::now);
            accepted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    hole
}

const BLACKHOLE_TIMEOUT_MS: u64 = 10_000;

/// How long after project a's first delivery started project b's delivery arrived, while a's
/// 64 deliveries hang on `destinations` receivers that never answer (spread evenly). Without
/// fairness, b's delivery waits for a's first timeouts (`BLACKHOLE_TIMEOUT_MS`) at least.
async fn wait_behind_blackholes(destinations: usize) -> Duration {
    let blackholes: Vec<_> = (0..destinations).map(|_| start_blackhole()).collect();
    let receiver = start_receiver(0);
    let app = spawn_app_with(&config(&[]), |s| {
        allow_loopback(s);
        s.webhooks.timeout_ms = BLACKHOLE_TIMEOUT_MS;
    })
    .await;
    let key_b = app.create_key("project-b", "admin").await;
    let mut ids = Vec::new();
    for i in 0..64 {
        let mut body = chat_body(&format!("fair-a-{i}"), "Hi", "chat-default");
        body["webhook_url"] = json!(blackholes[i % destinations].url);
        ids.push(
            app.submit(ADMIN_KEY, &body).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        app.wait_terminal(ADMIN_KEY, id).await;
    }
    // A's deliveries are now hanging on the blackholes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let submitted = std::time::Instant::now();
    let mut body = chat_body("fair-b", "Hi", "chat-default");
    body["webhook_url"] = json!(receiver.url);
    app.submit(&key_b, &body).await;
    for _ in 0..3000 {
        if !receiver.hits.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let arrived = std::time::Instant::now();
    assert!(
        !receiver.hits.lock().unwrap().is_empty(),
        "b's hook arrived"
    );
    let first = blackholes
        .iter()
        .filter_map(|b| *b.first.lock().unwrap())
        .min()
        .expect("a's deliveries reached the blackholes");
    eprintln!(
        "fairness ({destinations} dead destinations): b's delivery arrived {:?} after its submit, {:?} after a's first delivery started",
        arrived - submitted,
        arrived - first
    );
    let limits = switchyard::settings::WebhookSettings::default();
    let held: Vec<usize> = blackholes
        .iter()
        .map(|b| b.accepted.load(Ordering::SeqCst))
        .collect();
    assert!(
        held.iter()
            .all(|n| *n <= limits.max_in_flight_per_destination),
        "connections per destination {held:?}, the limit is {}",
        limits.max_in_flight_per_destination
    );
    assert!(held.iter().sum::<usize>() <= limits.max_in_flight_per_project);
    arrived - first
}

#[actix_web::test]
async fn one_projects_dead_receiver_does_not_delay_another_projects_delivery() {
    let waited = wait_behind_blackholes(1).await;
    // Generous: half of the time before any of a's deliveries could have timed out.
    assert!(
        waited < Duration::from_millis(BLACKHOLE_TIMEOUT_MS / 2),
        "b arrived {waited:?} after a started: it waited for a's timeouts"
    );
}

#[actix_web::test]
async fn one_projects_many_dead_receivers_do_not_delay_another_projects_delivery() {
    // 16 destinations × 4 could fill every slot; the per-project limit keeps room for b.
    let waited = wait_behind_blackholes(16).await;
    assert!(
        waited < Duration::from_millis(BLACKHOLE_TIMEOUT_MS / 2),
        "b arrived {waited:?} after a started: it waited for a's timeouts"
    );
}

async fn deliveries(app: &TestApp, key: &str, query: &str) -> Value {
    let res = app
        .get(&format!("/v1/webhooks/deliveries{query}"), key)
        .await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Polls the caller's deliveries until the one for `execution_id` has `status`.
async fn wait_delivery(app: &TestApp, key: &str, execution_id: &str, status: &str) -> Value {
    for _ in 0..500 {
        let list = deliveries(app, key, "?limit=100").await;
        let found = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["execution_id"] == execution_id)
            .cloned();
        if let Some(d) = found.filter(|d| d["status"] == status) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {status} delivery for {execution_id}");
}

#[actix_web::test]
async fn internal_targets_in_any_spelling_are_refused_at_submit() {
    let app = spawn_app().await;
    for (i, url) in [
        "http://127.0.0.1:8080/hook",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://10.0.0.8/",
        "http://172.20.1.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]/",
        "http://100.100.100.200/",
        "https://user:secret@example.com/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
    ]
    .iter()
    .enumerate()
    {
        let mut body = chat_body(&format!("refused-{i}"), "Hi", "chat-default");
        body["webhook_url"] = json!(url);
        let res = app.post("/v1/executions", ADMIN_KEY, &body).await;
        let message = assert_error(res, 400, "invalid_request").await;
        assert!(message.starts_with("webhook_url: "), "{url}: {message}");
    }
    // A public name passes (it is checked again once resolved, at delivery).
    let mut body = chat_body("public", "Hi", "chat-default");
    body["webhook_url"] = json!("https://hooks.example.com/x");
    assert_eq!(
        app.post("/v1/executions", ADMIN_KEY, &body).await.status(),
        202
    );
}

#[actix_web::test]
async fn an_allowed_address_range_admits_an_internal_receiver() {
    let receiver = start_receiver(0);
    let app = spawn_app_with(&config(&[]), |s| {
        s.webhooks.allowed_hosts = vec!["127.0.0.0/8".into()];
    })
    .await;
    let mut body = chat_body("range", "Hi", "chat-default");
    body["webhook_url"] = json!(receiver.url);
    app.submit(ADMIN_KEY, &body).await;
    assert_eq!(receiver.wait_hits(1).await.len(), 1);
}

#[actix_web::test]
async fn a_name_resolving_to_loopback_is_recorded_as_a_failed_delivery() {
    let receiver = start_receiver(0);
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let app = spawn_app_with(&config(&[]), |s| s.webhooks.retry_base_ms = 20).await;
    let mut body = chat_body("by-name", "Hi", "chat-default");
    body["webhook_url"] = json!(format!("http://localhost:{port}/hook"));
    let sub = app.submit(ADMIN_KEY, &body).await;
    let id = sub["id"].as_str().unwrap();
    let delivery = wait_delivery(&app, ADMIN_KEY, id, "dead").await;
    assert_eq!(delivery["attempts"], 1, "refused, not retried");
    let error = delivery["last_error"].as_str().unwrap();
    assert!(error.contains("loopback"), "{error}");
    assert!(delivery["next_attempt_at"].is_null());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        receiver.hits.lock().unwrap().is_empty(),
        "nothing reached it"
    );

    // Listed by name, the same target is delivered to.
    let app = spawn_app_with(&config(&[]), |s| {
        s.webhooks.allowed_hosts = vec!["localhost".into()];
    })
    .await;
    app.submit(ADMIN_KEY, &body).await;
    assert_eq!(receiver.wait_hits(1).await.len(), 1);
}

async fn redirect(target: web::Data<String>) -> HttpResponse {
    HttpResponse::TemporaryRedirect()
        .insert_header(("location", target.get_ref().clone()))
        .finish()
}

#[actix_web::test]
async fn redirects_are_not_followed() {
    let receiver = start_receiver(0);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redirector = format!("http://{}/hook", listener.local_addr().unwrap());
    let target = web::Data::new(receiver.url.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(target.clone())
            .route("/hook", web::post().to(redirect))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);

    let app = spawn_app_with(&config(&[]), |s| {
        allow_loopback(s);
        s.webhooks.retry_base_ms = 60_000;
    })
    .await;
    let mut body = chat_body("redirected", "Hi", "chat-default");
    body["webhook_url"] = json!(redirector);
    let sub = app.submit(ADMIN_KEY, &body).await;
    let id = sub["id"].as_str().unwrap();
    let mut delivery = Value::Null;
    for _ in 0..500 {
        delivery = wait_delivery(&app, ADMIN_KEY, id, "pending").await;
        if delivery["attempts"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(
        delivery["last_error"],
        "answered 307 (redirects are not followed)"
    );
    assert!(delivery["next_attempt_at"].is_string());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.hits.lock().unwrap().is_empty(), "not followed");
}

#[actix_web::test]
async fn deliveries_are_listed_per_project_with_status_and_pages() {
    let ok = start_receiver(0);
    let down = start_receiver(usize::MAX);
    let app = spawn_app_with(&config(&[]), |s| {
        allow_loopback(s);
        s.webhooks.retry_base_ms = 10;
        s.webhooks.max_attempts = 2;
    })
    .await;
    let key_b = app.create_key("project-b", "member").await;
    let mut ids = Vec::new();
    for (i, (key, url)) in [
        (ADMIN_KEY, &ok.url),
        (ADMIN_KEY, &down.url),
        (key_b.as_str(), &ok.url),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = chat_body(&format!("list-{i}"), "Hi", "chat-default");
        body["webhook_url"] = json!(url);
        ids.push(
            app.submit(key, &body).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let delivered = wait_delivery(&app, ADMIN_KEY, &ids[0], "delivered").await;
    assert_eq!(delivered["attempts"], 1);
    assert!(delivered["last_error"].is_null());
    assert!(delivered["delivered_at"].is_string());
    assert_eq!(delivered["type"], "execution.completed");
    let dead = wait_delivery(&app, ADMIN_KEY, &ids[1], "dead").await;
    assert_eq!(dead["attempts"], 2);
    assert_eq!(dead["last_error"], "answered 503");
    wait_delivery(&app, &key_b, &ids[2], "delivered").await;

    let a = deliveries(&app, ADMIN_KEY, "").await;
    let listed: Vec<&str> = a["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["execution_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[1].as_str(), ids[0].as_str()], "newest first");
    let b = deliveries(&app, &key_b, "").await;
    assert_eq!(b["data"].as_array().unwrap().len(), 1, "only b's own");
    assert_eq!(b["data"][0]["execution_id"], ids[2].as_str());

    let first = deliveries(&app, ADMIN_KEY, "?limit=1").await;
    assert_eq!(first["has_more"], true);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = deliveries(&app, ADMIN_KEY, &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(second["data"][0]["execution_id"], ids[0].as_str());
    assert_eq!(second["has_more"], false);
    let only_dead = deliveries(&app, ADMIN_KEY, "?status=dead").await;
    assert_eq!(only_dead["data"].as_array().unwrap().len(), 1);
    assert_eq!(only_dead["data"][0]["execution_id"], ids[1].as_str());
    let res = app
        .get("/v1/webhooks/deliveries?status=lost", ADMIN_KEY)
        .await;
    assert!(assert_error(res, 400, "invalid_request")
        .await
        .starts_with("status:"));
}

#[actix_web::test]
async fn dead_deliveries_are_deleted_when_their_retention_ends() {
    let down = start_receiver(usize::MAX);
    let app = spawn_app_with(&config(&[]), |s| {
        allow_loopback(s);
        s.webhooks.retry_base_ms = 10;
        s.webhooks.max_attempts = 1;
        s.retention.dead_webhooks = Duration::from_millis(300);
        s.retention.sweep_interval = Duration::from_millis(50);
    })
    .await;
    let mut body = chat_body("expiring", "Hi", "chat-default");
    body["webhook_url"] = json!(down.url);
    let id = app.submit(ADMIN_KEY, &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_delivery(&app, ADMIN_KEY, &id, "dead").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let list = deliveries(&app, ADMIN_KEY, "").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
}

async fn secret_of(app: &TestApp, key: &str) -> Value {
    let res = app.get("/v1/webhooks/secret", key).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Submits the `n`th execution to `receiver` and returns its delivery's signature and body.
async fn deliver_nth(app: &TestApp, key: &str, receiver: &Receiver, n: usize) -> (String, String) {
    let mut body = chat_body(&format!("rot-{n}"), "Hi", "chat-default");
    body["webhook_url"] = json!(receiver.url);
    app.submit(key, &body).await;
    let hits = receiver.wait_hits(n).await;
    assert_eq!(hits.len(), n);
    let (signature, _, raw) = hits[n - 1].clone();
    (signature, raw)
}

#[actix_web::test]
async fn each_project_signs_with_its_own_rotatable_secret() {
    let receiver = start_receiver(0);
    let app = spawn_app_with(&config(&[]), allow_loopback).await;
    let admin_b = app.create_key("project-b", "admin").await;
    let member_b = app.create_key("project-b", "member").await;
    let default_secret = secret_of(&app, ADMIN_KEY).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let first = secret_of(&app, &admin_b).await;
    assert_eq!(first["project_id"], "project-b");
    let first = first["secret"].as_str().unwrap().to_string();
    assert_ne!(first, default_secret);
    assert_eq!(
        secret_of(&app, &admin_b).await["secret"],
        first.as_str(),
        "created once"
    );

    let (sig, raw) = deliver_nth(&app, &admin_b, &receiver, 1).await;
    assert!(verify(&first, &sig, &raw));
    assert!(
        !verify(&default_secret, &sig, &raw),
        "not another project's"
    );

    let res = app
        .post(
            "/v1/webhooks/secret/rotate",
            &admin_b,
            &json!({"grace_period_ms": 3_600_000}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    let second = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert!(rotated["previous_secret_expires_at"].is_string());
    let (sig, raw) = deliver_nth(&app, &admin_b, &receiver, 2).await;
    assert_eq!(sig.matches("v1=").count(), 2, "{sig}");
    assert!(verify(&second, &sig, &raw), "new secret verifies");
    assert!(
        verify(&first, &sig, &raw),
        "old secret verifies during grace"
    );

    let res = app
        .post("/v1/webhooks/secret/rotate", &admin_b, &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let third: Value = res.json().await.unwrap();
    assert!(third["previous_secret_expires_at"].is_null());
    let third = third["secret"].as_str().unwrap().to_string();
    let (sig, raw) = deliver_nth(&app, &admin_b, &receiver, 3).await;
    assert!(verify(&third, &sig, &raw));
    assert!(
        !verify(&second, &sig, &raw),
        "no grace: the old one is gone"
    );
    assert_eq!(
        secret_of(&app, ADMIN_KEY).await["secret"],
        default_secret.as_str(),
        "other projects untouched"
    );

    let res = app
        .post("/v1/webhooks/secret/rotate", &member_b, &json!({}))
        .await;
    assert_eq!(res.status(), 403);

    // Admins of `default` reach other projects' secrets, as they do their keys; others do not.
    let seen = app
        .get("/v1/webhooks/secret?project=project-b", ADMIN_KEY)
        .await;
    assert_eq!(seen.status(), 200);
    let seen: Value = seen.json().await.unwrap();
    assert_eq!(seen["project_id"], "project-b");
    assert_eq!(seen["secret"], third.as_str());
    let res = app
        .get("/v1/webhooks/secret?project=default", &admin_b)
        .await;
    assert_eq!(res.status(), 403);
    let res = app
        .post(
            "/v1/webhooks/secret/rotate?project=default",
            &admin_b,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 403);
    let res = app
        .post(
            "/v1/webhooks/secret/rotate?project=project-b",
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_ne!(secret_of(&app, &admin_b).await["secret"], third.as_str());
    let res = app
        .post(
            "/v1/webhooks/secret/rotate",
            &admin_b,
            &json!({"grace_period_ms": "1h"}),
        )
        .await;
    assert!(assert_error(res, 400, "invalid_request")
        .await
        .contains("grace_period_ms"));
}

#[actix_web::test]
async fn a_dead_delivery_can_be_retried_once_the_receiver_is_fixed() {
    let receiver = start_receiver(usize::MAX);
    let app = spawn_app_with(&config(&[]), |s| {
        allow_loopback(s);
        s.webhooks.retry_base_ms = 10;
        s.webhooks.max_attempts = 2;
    })
    .await;
    let mut body = chat_body("retry-dead", "Hi", "chat-default");
    body["webhook_url"] = json!(receiver.url);
    let id = app.submit(ADMIN_KEY, &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dead = wait_delivery(&app, ADMIN_KEY, &id, "dead").await;
    let retry = format!(
        "/v1/webhooks/deliveries/{}/retry",
        dead["id"].as_str().unwrap()
    );

    let other = app.create_key("project-b", "admin").await;
    let res = app.post(&retry, &other, &json!({})).await;
    assert_error(res, 404, "not_found").await;

    receiver.failures.store(0, Ordering::SeqCst);
    let res = app.post(&retry, ADMIN_KEY, &json!({})).await;
    assert_eq!(res.status(), 200);
    let queued: Value = res.json().await.unwrap();
    assert_eq!(queued["status"], "pending");
    assert_eq!(queued["attempts"], 0);
    let delivered = wait_delivery(&app, ADMIN_KEY, &id, "delivered").await;
    assert_eq!(delivered["attempts"], 1);
    assert_eq!(
        receiver.hits.lock().unwrap().len(),
        3,
        "two failures, then one more try"
    );

    // A pending delivery retries on its own.
    let slow = start_receiver(usize::MAX);
    let app2 = spawn_app_with(&config(&[]), |s| {
        allow_loopback(s);
        s.webhooks.retry_base_ms = 60_000;
    })
    .await;
    body["webhook_url"] = json!(slow.url);
    let id = app2.submit(ADMIN_KEY, &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pending = wait_delivery(&app2, ADMIN_KEY, &id, "pending").await;
    let retry = format!(
        "/v1/webhooks/deliveries/{}/retry",
        pending["id"].as_str().unwrap()
    );
    let res = app2.post(&retry, ADMIN_KEY, &json!({})).await;
    assert_error(res, 409, "conflict").await;
}
