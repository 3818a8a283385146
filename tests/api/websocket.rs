//! WebSocket channels with a real client: tokens, join/leave, replay, slow consumers,
//! heartbeats, the project feed.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::fake_openai::FakeOpenAi;
use crate::helpers::*;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, query: &str) -> Socket {
    let url = format!("{}/v1/ws?{query}", app.address.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Socket, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON text frame (control frames are skipped).
async fn recv(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("socket open")
            .unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Frames of `channel` until its `done`, checking seq order (skipping `lagged` notes).
async fn follow(ws: &mut Socket, channel: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let frame = recv(ws).await;
        if frame["channel"] != channel || frame["event"] == "lagged" || frame["event"] == "joined" {
            continue;
        }
        let done = frame["event"] == "done";
        events.push(frame);
        if done {
            return events;
        }
    }
}

fn assert_seq_from(events: &[Value], first: u64) {
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev["seq"], first + i as u64, "gap or duplicate at {i}");
    }
}

fn text_of(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["event"] == "chunk")
        .map(|e| e["data"]["delta"].as_str().unwrap())
        .collect()
}

#[actix_web::test]
async fn the_token_from_the_submit_response_follows_its_execution_to_done() {
    let fake = FakeOpenAi::start()
        .await
        .with_chunk_delay(Duration::from_millis(5));
    let app = spawn_with_fakes(&[&fake]).await;
    let sub = app.submit(ADMIN_KEY, &chat_body("ws1", "Hi", "fake")).await;
    let channel = sub["websocket_channel"].as_str().unwrap();
    assert_eq!(
        sub["websocket_url"],
        format!("{}/v1/ws", app.address.replace("http://", "ws://"))
    );
    // A plain GET (no upgrade) is refused without spending the token.
    let token = sub["ws_token"].as_str().unwrap();
    let plain = app.client.get(app.url(&format!("/v1/ws?token={token}")));
    assert_eq!(plain.send().await.unwrap().status(), 400);
    let mut ws = connect(
        &app,
        &format!("token={}", sub["ws_token"].as_str().unwrap()),
    )
    .await;
    send(
        &mut ws,
        json!({"action": "join", "channel": channel, "after": 0}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"channel": channel, "event": "joined"})
    );
    let events = follow(&mut ws, channel).await;
    assert_seq_from(&events, 1);
    assert_eq!(events[0]["event"], "status");
    assert_eq!(text_of(&events), fake.full_text());
    assert_eq!(events.last().unwrap()["data"]["status"], "completed");

    // The token worked once.
    let mut again = connect(
        &app,
        &format!("token={}", sub["ws_token"].as_str().unwrap()),
    )
    .await;
    match again.next().await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::from(4401));
            assert!(frame.reason.contains("token"), "{}", frame.reason);
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[actix_web::test]
async fn a_token_opens_only_its_own_channel_and_bad_frames_keep_the_socket_up() {
    let app = spawn_app().await;
    let mine = app
        .submit(ADMIN_KEY, &chat_body("own", "Hi", "chat-default"))
        .await;
    let other = app
        .submit(ADMIN_KEY, &chat_body("other", "Hi", "chat-default"))
        .await;
    let mut ws = connect(
        &app,
        &format!("token={}", mine["ws_token"].as_str().unwrap()),
    )
    .await;

    send(
        &mut ws,
        json!({"action": "join", "channel": other["websocket_channel"]}),
    )
    .await;
    let err = recv(&mut ws).await;
    assert_eq!(err["event"], "error");
    assert_eq!(err["data"]["code"], "not_found");
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(recv(&mut ws).await["data"]["code"], "invalid_request");
    send(&mut ws, json!({"action": "dance"})).await;
    assert_eq!(recv(&mut ws).await["data"]["code"], "invalid_request");
    send(
        &mut ws,
        json!({"action": "leave", "channel": "ai_response:default:ch_x"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["data"]["code"], "not_found");
    send(&mut ws, json!({"action": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"event": "pong"}));

    let channel = mine["websocket_channel"].as_str().unwrap();
    send(&mut ws, json!({"action": "join", "channel": channel})).await;
    assert_eq!(recv(&mut ws).await["event"], "joined");
    assert_eq!(
        follow(&mut ws, channel).await.last().unwrap()["event"],
        "done"
    );
}

#[actix_web::test]
async fn an_api_key_joins_several_channels_of_its_project_on_one_socket() {
    let app = spawn_app().await;
    let a = app
        .submit(ADMIN_KEY, &chat_body("a", "first", "chat-default"))
        .await;
    let b = app
        .submit(ADMIN_KEY, &chat_body("b", "second", "chat-default"))
        .await;
    let (ca, cb) = (
        a["websocket_channel"].as_str().unwrap(),
        b["websocket_channel"].as_str().unwrap(),
    );
    let mut ws = connect(&app, &format!("api_key={ADMIN_KEY}")).await;
    send(&mut ws, json!({"action": "join", "channel": ca})).await;
    send(&mut ws, json!({"action": "join", "channel": cb})).await;
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    let mut done = 0;
    while done < 2 {
        let frame = recv(&mut ws).await;
        if frame["event"] == "joined" {
            continue;
        }
        if frame["event"] == "done" {
            done += 1;
        }
        if frame["channel"] == ca {
            ea.push(frame)
        } else {
            eb.push(frame)
        }
    }
    assert_seq_from(&ea, 1);
    assert_seq_from(&eb, 1);
    let exec_a = app
        .wait_terminal(ADMIN_KEY, a["id"].as_str().unwrap())
        .await;
    assert_eq!(text_of(&ea), exec_a["output"]["text"].as_str().unwrap());

    // Another project's key cannot join these channels.
    let foreign = app.create_key("acme", "member").await;
    let mut ws2 = connect(&app, &format!("api_key={foreign}")).await;
    send(&mut ws2, json!({"action": "join", "channel": ca})).await;
    assert_eq!(recv(&mut ws2).await["data"]["code"], "not_found");
    let mut bad = connect(&app, "api_key=nope").await;
    assert!(
        matches!(bad.next().await, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::from(4401))
    );
}

#[actix_web::test]
async fn a_late_join_with_after_replays_exactly_the_rest() {
    let app = spawn_app().await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("late", "Hi", "chat-default"))
        .await;
    let id = sub["id"].as_str().unwrap();
    let all = app.sse_all(ADMIN_KEY, id, None).await;
    let channel = sub["websocket_channel"].as_str().unwrap();
    let mut ws = connect(&app, &format!("api_key={ADMIN_KEY}")).await;
    send(
        &mut ws,
        json!({"action": "join", "channel": channel, "after": 5}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["event"], "joined");
    let rest = follow(&mut ws, channel).await;
    assert_seq_from(&rest, 6);
    assert_eq!(rest.len(), all.len() - 5);
    for (ws_ev, sse_ev) in rest.iter().zip(&all[5..]) {
        assert_eq!(
            ws_ev["data"], sse_ev.data,
            "both transports carry the same events"
        );
    }
}

#[actix_web::test]
async fn a_slow_consumer_does_not_delay_a_fast_one_and_still_gets_every_event() {
    let app = spawn_app_with(&config(&[]), |s| {
        s.providers[0].mock_chunks = 6000;
        s.providers[0].mock_chunk_interval_ms = 0;
    })
    .await;
    let sub = app
        .submit(ADMIN_KEY, &chat_body("slow", "Hi", "chat-default"))
        .await;
    let channel = sub["websocket_channel"].as_str().unwrap();
    let mut slow = connect(&app, &format!("api_key={ADMIN_KEY}")).await;
    let mut fast = connect(&app, &format!("api_key={ADMIN_KEY}")).await;
    send(&mut slow, json!({"action": "join", "channel": channel})).await;
    send(&mut fast, json!({"action": "join", "channel": channel})).await;
    // The fast one reads everything while the slow one reads nothing.
    let fast_events = follow(&mut fast, channel).await;
    assert_seq_from(&fast_events, 1);
    assert_eq!(
        fast_events.iter().filter(|e| e["event"] == "chunk").count(),
        6000
    );
    let slow_events = follow(&mut slow, channel).await;
    assert_seq_from(&slow_events, 1);
    assert_eq!(text_of(&slow_events), text_of(&fast_events));
}

#[actix_web::test]
async fn the_project_channel_carries_status_changes_and_leave_stops_a_channel() {
    let app = spawn_app().await;
    let mut ws = connect(&app, &format!("api_key={ADMIN_KEY}")).await;
    send(
        &mut ws,
        json!({"action": "join", "channel": "project:default"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["event"], "joined");
    let sub = app
        .submit(ADMIN_KEY, &chat_body("feed", "Hi", "chat-default"))
        .await;
    let mut statuses = Vec::new();
    while statuses.last().map(String::as_str) != Some("completed") {
        let frame = recv(&mut ws).await;
        assert_eq!(frame["channel"], "project:default");
        assert_eq!(frame["data"]["execution_id"], sub["id"]);
        statuses.push(frame["data"]["status"].as_str().unwrap().to_string());
    }
    assert_eq!(statuses, ["processing", "completed"]);
    send(
        &mut ws,
        json!({"action": "leave", "channel": "project:default"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["event"], "left");

    let token = app
        .submit(ADMIN_KEY, &chat_body("feed2", "Hi", "chat-default"))
        .await;
    let mut tws = connect(
        &app,
        &format!("token={}", token["ws_token"].as_str().unwrap()),
    )
    .await;
    send(
        &mut tws,
        json!({"action": "join", "channel": "project:default"}),
    )
    .await;
    assert_eq!(
        recv(&mut tws).await["data"]["code"],
        "not_found",
        "tokens open one execution only"
    );
}

async fn gauge(app: &TestApp, name: &str) -> i64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[actix_web::test]
async fn a_silent_client_is_closed_by_the_heartbeat_and_everything_is_cleaned_up() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(100)
        .with_chunk_delay(Duration::from_millis(50));
    let app = spawn_app_with(&config(&[&fake]), |s| {
        s.limits.ws_heartbeat_ms = 50;
        s.limits.ws_client_timeout_ms = 300;
    })
    .await;
    let sub = app.submit(ADMIN_KEY, &chat_body("hb", "Hi", "fake")).await;
    let mut ws = connect(&app, &format!("api_key={ADMIN_KEY}")).await;
    send(
        &mut ws,
        json!({"action": "join", "channel": sub["websocket_channel"]}),
    )
    .await;
    send(
        &mut ws,
        json!({"action": "join", "channel": "project:default"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["event"], "joined");
    assert_eq!(gauge(&app, "switchyard_websocket_sockets").await, 1);
    assert_eq!(gauge(&app, "switchyard_websocket_channels").await, 2);

    // Stop reading (so no pong goes back): the server gives up on the client.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gauge(&app, "switchyard_websocket_sockets").await, 0);
    assert_eq!(gauge(&app, "switchyard_websocket_channels").await, 0);
    let mut closed_with = None;
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Close(frame) = msg {
            closed_with = frame.map(|f| f.code);
            break;
        }
    }
    assert_eq!(closed_with, Some(CloseCode::from(4408)));
}
