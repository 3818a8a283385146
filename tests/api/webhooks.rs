//! Webhooks: signed, retried until a 2xx, delivered at least once across a crash.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::*;

/// A webhook endpoint that fails its first `failures` deliveries.
#[derive(Clone)]
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<(String, String, String)>>>,
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

fn start_receiver(failures: usize) -> Receiver {
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
    async fn wait_hits(&self, n: usize) -> Vec<(String, String, String)> {
        for _ in 0..1000 {
            if self.hits.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.hits.lock().unwrap().clone()
    }
}

fn verify(secret: &str, signature: &str, body: &str) -> bool {
    use hmac::{Hmac, Mac};
    let (t, v1) = signature.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    mac.verify_slice(&hex::decode(v1).unwrap()).is_ok()
}

#[actix_web::test]
async fn a_terminal_execution_is_posted_signed_and_retried_until_acknowledged() {
    let receiver = start_receiver(2);
    let app = spawn_app_with(&config(&[]), |s| s.webhooks.retry_base_ms = 20).await;
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
    let app = spawn_app_with(&config(&[]), |s| s.providers[0].mock_chunk_interval_ms = 50).await;
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
        format!("{}\n[webhooks]\nretry_base_ms = 50\n", config(&[])),
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
