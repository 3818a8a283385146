//! Access: revoking or rotating a key ends its open streams (SSE, streaming chat completions,
//! WebSockets); cross-project key administration; WebSocket tokens on idempotent retries;
//! `public_url`; WebSocket close codes; protected metrics.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The mock answers slowly (200 chunks, 50 ms apart: 10 s), so streams are open long enough.
async fn slow_app(extra: &str) -> TestApp {
    let toml = config(&[])
        .replace("mock_chunks = 12", "mock_chunks = 200")
        .replace("mock_chunk_interval_ms = 2", "mock_chunk_interval_ms = 50");
    spawn_app_with(&format!("{toml}{extra}"), |_| {}).await
}

/// Creates a key and returns (id, secret).
async fn key_in(app: &TestApp, admin: &str, project: &str, role: &str) -> (String, String) {
    app.create_key_by(admin, project, role).await
}

async fn revoke(app: &TestApp, admin: &str, id: &str) -> reqwest::Response {
    app.client
        .delete(app.url(&format!("/v1/keys/{id}")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
}

async fn rotate(app: &TestApp, admin: &str, id: &str) -> reqwest::Response {
    app.post(&format!("/v1/keys/{id}/rotate"), admin, &json!({}))
        .await
}

async fn ws_connect(app: &TestApp, query: &str) -> Socket {
    let url = format!("{}/v1/ws?{query}", app.address.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Reads frames until the server closes; returns the close code (`None`: closed without one).
async fn close_code(ws: &mut Socket) -> Option<CloseCode> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the server closes within 5 s");
        match msg {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

async fn next_text(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// The rest of an SSE stream, which must end within 5 s; returns the event kinds seen.
async fn rest_of(mut sse: SseStream) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut kinds = Vec::new();
        while let Some(ev) = sse.next().await {
            kinds.push(ev.event);
        }
        kinds
    })
    .await
    .expect("the stream ends within 5 s of the revocation")
}

#[actix_web::test]
async fn revoking_a_key_ends_its_sse_streams_and_only_those() {
    let app = slow_app("").await;
    let (id, member) = key_in(&app, ADMIN_KEY, "acme", "member").await;
    let (_, other) = key_in(&app, ADMIN_KEY, "acme", "member").await;
    let sub = app
        .submit(&member, &chat_body("rev-sse", "Hi", "chat-default"))
        .await;
    let exec = sub["id"].as_str().unwrap();
    let mut mine = app.sse(&member, exec, None).await;
    let mut theirs = app.sse(&other, exec, None).await;
    assert!(mine.next().await.is_some());
    assert!(theirs.next().await.is_some());

    assert_eq!(revoke(&app, ADMIN_KEY, &id).await.status(), 200);
    let kinds = rest_of(mine).await;
    assert!(
        !kinds.iter().any(|k| k == "done"),
        "ended by the revocation, not by the execution: {kinds:?}"
    );
    // The other key's stream goes on.
    for _ in 0..3 {
        let ev = theirs.next().await.expect("still streaming");
        assert_ne!(ev.event, "done");
    }
    // And the revoked key opens nothing new.
    let res = app
        .get(&format!("/v1/executions/{exec}/events"), &member)
        .await;
    assert_eq!(res.status(), 401);
}

#[actix_web::test]
async fn rotating_a_key_ends_its_streaming_chat_completion_with_an_error() {
    let app = slow_app("").await;
    let (id, member) = key_in(&app, ADMIN_KEY, "acme", "member").await;
    let res = app
        .post(
            "/v1/chat/completions",
            &member,
            &json!({"model": "chat-default", "stream": true,
                    "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");

    let rotated = rotate(&app, ADMIN_KEY, &id).await;
    assert_eq!(rotated.status(), 200);
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = Vec::new();
        while let Some(Ok(bytes)) = body.next().await {
            rest.extend_from_slice(&bytes);
        }
        String::from_utf8(rest).unwrap()
    })
    .await
    .expect("the answer ends within 5 s of the rotation");
    assert!(rest.contains(r#""code":"unauthorized""#), "{rest}");
    assert!(!rest.contains("[DONE]"), "{rest}");
}

#[actix_web::test]
async fn revoking_or_rotating_a_key_closes_its_websockets_with_4401() {
    let app = slow_app("").await;
    let (id, member) = key_in(&app, ADMIN_KEY, "acme", "member").await;
    let sub = app
        .submit(&member, &chat_body("rev-ws", "Hi", "chat-default"))
        .await;
    let channel = sub["websocket_channel"].as_str().unwrap();

    // One socket opened with the key itself, one with the token its submit returned.
    let mut by_key = ws_connect(&app, &format!("api_key={member}")).await;
    let token = sub["ws_token"].as_str().unwrap();
    let mut by_token = ws_connect(&app, &format!("token={token}")).await;
    for ws in [&mut by_key, &mut by_token] {
        let join = json!({"action": "join", "channel": channel}).to_string();
        ws.send(Message::Text(join.into())).await.unwrap();
        assert_eq!(next_text(ws).await["event"], "joined");
        assert_eq!(next_text(ws).await["channel"], channel);
    }
    assert_eq!(rotate(&app, ADMIN_KEY, &id).await.status(), 200);
    assert_eq!(close_code(&mut by_key).await, Some(CloseCode::from(4401)));
    assert_eq!(close_code(&mut by_token).await, Some(CloseCode::from(4401)));

    // A token minted before a revocation no longer opens anything.
    let rotated: Value = rotate(&app, ADMIN_KEY, &id).await.json().await.unwrap();
    let member = rotated["key"].as_str().unwrap();
    let sub = app
        .submit(member, &chat_body("rev-ws-2", "Hi", "chat-default"))
        .await;
    assert_eq!(revoke(&app, ADMIN_KEY, &id).await.status(), 200);
    let token = sub["ws_token"].as_str().unwrap();
    let mut late = ws_connect(&app, &format!("token={token}")).await;
    assert_eq!(close_code(&mut late).await, Some(CloseCode::from(4401)));
}

#[actix_web::test]
async fn admins_of_default_administer_every_project_and_others_only_their_own() {
    let app = spawn_app().await;
    let (acme_admin_id, acme_admin) = key_in(&app, ADMIN_KEY, "acme", "admin").await;
    let (acme_member_id, _) = key_in(&app, ADMIN_KEY, "acme", "member").await;
    let (default_member_id, _) = key_in(&app, ADMIN_KEY, "default", "member").await;

    // The operator lists another project with `?project=`.
    let listed: Value = app
        .get("/v1/keys?project=acme", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&acme_admin_id.as_str()) && ids.contains(&acme_member_id.as_str()));
    assert!(!ids.contains(&default_member_id.as_str()));
    // ... and rotates and revokes its keys.
    assert_eq!(rotate(&app, ADMIN_KEY, &acme_member_id).await.status(), 200);
    assert_eq!(revoke(&app, ADMIN_KEY, &acme_member_id).await.status(), 200);

    // acme's admin sees only acme.
    let own: Value = app.get("/v1/keys", &acme_admin).await.json().await.unwrap();
    assert!(own["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["project_id"] == "acme"));
    let foreign = app.get("/v1/keys?project=default", &acme_admin).await;
    assert_error(foreign, 403, "forbidden").await;
    assert_error(
        revoke(&app, &acme_admin, &default_member_id).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        rotate(&app, &acme_admin, &default_member_id).await,
        404,
        "not_found",
    )
    .await;
    // A member administers nothing.
    let (_, member) = key_in(&app, ADMIN_KEY, "acme", "member").await;
    assert_error(app.get("/v1/keys", &member).await, 403, "forbidden").await;
}

#[actix_web::test]
async fn an_idempotent_retry_returns_the_same_unspent_token() {
    let app = spawn_app().await;
    let body = chat_body("retry-token", "Hi", "chat-default");
    let first = app.submit(ADMIN_KEY, &body).await;
    let retry: Value = app
        .post("/v1/executions", ADMIN_KEY, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(retry["id"], first["id"]);
    assert_eq!(retry["ws_token"], first["ws_token"]);

    // Spent once; the next retry gets a fresh token, which works.
    let token = first["ws_token"].as_str().unwrap();
    let mut ws = ws_connect(&app, &format!("token={token}")).await;
    let join = json!({"action": "join", "channel": first["websocket_channel"]}).to_string();
    ws.send(Message::Text(join.into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await["event"], "joined");
    let again: Value = app
        .post("/v1/executions", ADMIN_KEY, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(again["ws_token"], first["ws_token"]);
    let fresh = again["ws_token"].as_str().unwrap();
    let mut ws = ws_connect(&app, &format!("token={fresh}")).await;
    let join = json!({"action": "join", "channel": first["websocket_channel"]}).to_string();
    ws.send(Message::Text(join.into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await["event"], "joined");
}

#[actix_web::test]
async fn websocket_url_comes_from_public_url_when_configured() {
    let toml = config(&[]).replace(
        "data_dir = \"unused\"",
        "data_dir = \"unused\"\npublic_url = \"https://router.example/sy/\"",
    );
    let app = spawn_app_with(&toml, |_| {}).await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("public", "Hi", "chat-default"))
        .await;
    assert_eq!(sub["websocket_url"], "wss://router.example/sy/v1/ws");
    // Without it, the Host header still decides.
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/v1/executions"))
        .bearer_auth(ADMIN_KEY)
        .header("host", "elsewhere.test:9")
        .json(&chat_body("host", "Hi", "chat-default"))
        .send()
        .await
        .unwrap();
    let sub: Value = res.json().await.unwrap();
    assert_eq!(sub["websocket_url"], "ws://elsewhere.test:9/v1/ws");
    let bad = config(&[]).replace(
        "data_dir = \"unused\"",
        "data_dir = \"unused\"\npublic_url = \"router.example\"",
    );
    let err = switchyard::settings::Settings::parse(&bad).unwrap_err();
    assert!(err.to_string().contains("public_url"), "{err}");
}

#[actix_web::test]
async fn websocket_protocol_errors_close_with_their_rfc_6455_codes() {
    let app = spawn_app_with(
        &format!("{}\n[limits]\nws_max_message_bytes = 1024\n", config(&[])),
        |_| {},
    )
    .await;
    let query = format!("api_key={ADMIN_KEY}");
    let open = || ws_connect(&app, &query);

    let mut ws = open().await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Unsupported));

    let mut ws = open().await;
    let not_utf8 = Frame::message(vec![0xff, 0xfe, 0x41], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(not_utf8)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Invalid));

    let mut ws = open().await;
    let big = json!({"action": "ping", "pad": "x".repeat(2048)}).to_string();
    ws.send(Message::Text(big.into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));

    // A continuation frame with no message to continue.
    let mut ws = open().await;
    let stray = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(stray)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Protocol));

    // A fragmented text message within the limit is assembled and answered.
    let mut ws = open().await;
    let first = Frame::message(br#"{"action""#.to_vec(), OpCode::Data(Data::Text), false);
    let last = Frame::message(br#": "ping"}"#.to_vec(), OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(first)).await.unwrap();
    ws.send(Message::Frame(last)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, json!({"event": "pong"}));
    // Bad JSON still only gets an error frame, as the contract says.
    ws.send(Message::Text("{nope".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await["data"]["code"], "invalid_request");
}

#[actix_web::test]
async fn metrics_can_require_a_bearer_token() {
    let app = spawn_app_with(&config(&[]), |s| {
        s.metrics.bearer_token = Some("scrape-secret".into());
    })
    .await;
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_error(res, 401, "unauthorized").await;
    assert_error(app.get("/metrics", "wrong").await, 401, "unauthorized").await;
    let res = app.get("/metrics", "scrape-secret").await;
    assert_eq!(res.status(), 200);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("switchyard_http_requests_total"));

    // A token variable that is not set stops the start instead of exposing the metrics.
    let toml = format!(
        "{}\n[metrics]\nbearer_token_env = \"SWITCHYARD_TEST_UNSET_METRICS_TOKEN\"\n",
        config(&[])
    );
    let mut settings = switchyard::settings::Settings::parse(&toml).unwrap();
    settings.data_dir = app.data_dir.path().join("other");
    settings.read_secrets_from_env();
    let err = switchyard::startup::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("metrics.bearer_token_env"),
        "{err}"
    );
}

#[actix_web::test]
async fn metrics_can_move_to_their_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = switchyard::settings::Settings::parse(&config(&[])).unwrap();
    settings.data_dir = dir.path().to_path_buf();
    settings.admin_key = Some(ADMIN_KEY.into());
    settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = switchyard::startup::Application::build(settings)
        .await
        .unwrap();
    let main = format!("http://{}", app.address());
    let metrics = format!("http://{}", app.metrics_address().unwrap());
    let handle = app.server_handle();
    actix_web::rt::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let res = client.get(format!("{main}/metrics")).send().await.unwrap();
    assert_error(res, 404, "not_found").await;
    let res = client
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("switchyard_"));
    // Only the metrics live there.
    let res = client
        .get(format!("{metrics}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    handle.stop(true).await;
}
