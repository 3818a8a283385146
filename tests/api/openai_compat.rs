//! The OpenAI-compatible surface over real HTTP: stream and non-stream, failover behind it,
//! errors in OpenAI's shape. (The official Python SDK runs against it in tests/sdk.)

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::fake_openai::{FakeOpenAi, Fault};
use crate::helpers::*;

fn request(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
           "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]})
}

async fn post(app: &TestApp, body: &Value) -> reqwest::Response {
    let mut body = body.clone();
    if body["stream_options"].is_null() {
        body.as_object_mut().unwrap().remove("stream_options");
    }
    app.post("/v1/chat/completions", ADMIN_KEY, &body).await
}

async fn chunks(res: reqwest::Response) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    let mut events = res.bytes_stream().eventsource();
    while let Some(Ok(ev)) = events.next().await {
        if ev.data == "[DONE]" {
            done = true;
            break;
        }
        out.push(serde_json::from_str(&ev.data).unwrap());
    }
    (out, done)
}

#[actix_web::test]
async fn a_non_streaming_completion_has_openais_shape_and_the_execution_behind_it() {
    let fake = FakeOpenAi::start().await.with_words(6);
    let app = spawn_with_fakes(&[&fake]).await;
    let res = post(&app, &request("fake", false)).await;
    assert_eq!(res.status(), 200);
    let id = res.headers()["x-switchyard-execution-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "up-0");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], fake.full_text());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 6);
    // The request went upstream as a streaming chat request with the system turn kept.
    assert_eq!(fake.requests()[0]["messages"][0]["role"], "system");
    assert_eq!(fake.requests()[0]["messages"][1]["content"], "Hello");
    let exec = app.execution(ADMIN_KEY, &id).await;
    assert_eq!(exec["status"], "completed");
}

#[actix_web::test]
async fn a_streamed_completion_survives_a_mid_stream_failover_with_the_exact_text() {
    let primary = FakeOpenAi::start().await.with_default(Fault::CutAfter(7));
    let backup = FakeOpenAi::start().await;
    let app = spawn_with_fakes(&[&primary, &backup]).await;
    let res = post(&app, &request("fake", true)).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["x-switchyard-execution-id"]
        .to_str()
        .unwrap()
        .starts_with("exec_"));
    let (chunks, done) = chunks(res).await;
    assert!(done, "a completed stream ends with [DONE]");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, backup.full_text());
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let finish = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"] == "stop")
        .unwrap();
    assert_eq!(finish["model"], "up-1", "the model that actually answered");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 13);
}

#[actix_web::test]
async fn an_unrecoverable_stream_ends_with_an_error_event_not_a_clean_finish() {
    let fake = FakeOpenAi::start().await.with_default(Fault::CutAfter(3));
    let app = spawn_app_with(&config(&[&fake]), |s| s.providers[1].max_attempts = 1).await;
    let res = post(&app, &request("fake", true)).await;
    let mut events = res.bytes_stream().eventsource();
    let mut last = None;
    while let Some(Ok(ev)) = events.next().await {
        assert_ne!(ev.data, "[DONE]");
        last = Some(ev.data);
    }
    let last: Value = serde_json::from_str(&last.unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted");
    assert_eq!(last["error"]["type"], "server_error");
}

#[actix_web::test]
async fn errors_come_in_openais_shape_with_the_right_status() {
    let fake = FakeOpenAi::start()
        .await
        .with_default(Fault::context_length());
    let app = spawn_with_fakes(&[&fake]).await;
    let res = post(&app, &request("fake", false)).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length"));

    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&request("fake", false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "authentication_error"
    );

    for (patch, field) in [
        (json!({"n": 2}), "n"),
        (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
        (json!({"model": "nope"}), "model"),
        (json!({"bogus": 1}), "bogus"),
    ] {
        let mut body = request("fake", false);
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let res = post(&app, &body).await;
        assert_eq!(res.status(), 400, "{patch}");
        let msg = res.json::<Value>().await.unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.contains(field), "{patch}: {msg}");
    }
}

#[actix_web::test]
async fn models_lists_the_configured_slugs_and_idempotency_keys_are_honoured() {
    let fake = FakeOpenAi::start().await.with_words(3);
    let app = spawn_with_fakes(&[&fake]).await;
    let models: Value = app.get("/v1/models", ADMIN_KEY).await.json().await.unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat-default", "fake", "auto"]);
    assert_eq!(models["object"], "list");

    let send = || {
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(ADMIN_KEY)
            .header("idempotency-key", "same-call")
            .json(&request("fake", false))
            .send()
    };
    let a = send().await.unwrap();
    let b = send().await.unwrap();
    assert_eq!(
        a.headers()["x-switchyard-execution-id"],
        b.headers()["x-switchyard-execution-id"]
    );
    assert_eq!(
        b.json::<Value>().await.unwrap()["choices"][0]["message"]["content"],
        fake.full_text()
    );
    assert_eq!(fake.request_count(), 1);
}

#[actix_web::test]
async fn embeddings_fail_over_before_the_first_byte_and_answer_in_openais_shape() {
    // The fake speaks chat only: its 404 on /embeddings moves routing on to the mock.
    let fake = FakeOpenAi::start().await;
    let toml = config(&[&fake]).replace(
        "routes = [{ provider = \"fake0\", model = \"up-0\" }]",
        "routes = [{ provider = \"fake0\", model = \"up-0\" }, { provider = \"mock\", model = \"mock-embed\" }]",
    );
    let app = spawn_app_with(&toml, |_| {}).await;
    let res = app
        .post(
            "/v1/embeddings",
            ADMIN_KEY,
            &json!({"model": "fake", "input": ["one", "two"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "mock-embed");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    let v: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(
        (v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-3,
        "unit vector"
    );
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(body["usage"]["prompt_tokens"], 2);

    let same: Value = app
        .post(
            "/v1/embeddings",
            ADMIN_KEY,
            &json!({"model": "chat-default", "input": "one"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        same["data"][0]["embedding"], data[0]["embedding"],
        "deterministic"
    );
    let bad = app
        .post(
            "/v1/embeddings",
            ADMIN_KEY,
            &json!({"model": "chat-default", "input": []}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
}

/// The server side of a connection from `client_port` to `server_port` in this process, by
/// way of /proc/self/net/tcp (inode) and /proc/self/fd.
fn server_socket_fd(server_port: u16, client_port: u16) -> Option<i32> {
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    let table = std::fs::read_to_string("/proc/self/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (port(f.get(1)?)? == server_port && port(f.get(2)?)? == client_port)
            .then(|| f.get(9).map(|s| s.to_string()))?
    })?;
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == wanted))
        .and_then(|e| e.file_name().to_string_lossy().parse().ok())
}

/// Without TCP_NODELAY every response written in more than one piece (every stream) waits
/// ~40 ms for the client's delayed ACK; actix-web leaves it off unless asked.
#[actix_web::test]
async fn accepted_connections_have_tcp_nodelay() {
    use std::io::{Read, Write};
    let app = spawn_app().await;
    let addr: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    let client = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        s
    })
    .await
    .unwrap();
    let client_port = client.local_addr().unwrap().port();
    let fd = server_socket_fd(addr.port(), client_port).expect("the accepted socket");
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    assert_ne!(value, 0, "TCP_NODELAY is off on an accepted connection");
}

#[actix_web::test]
async fn image_parts_go_to_vision_routes_only_and_arrive_as_content_parts() {
    let text_only = FakeOpenAi::start().await.with_words(3);
    let sighted = FakeOpenAi::start().await.with_words(3);
    let toml = config(&[&text_only, &sighted]).replace(
        r#"{ provider = "fake1", model = "up-1" }"#,
        r#"{ provider = "fake1", model = "up-1", vision = true }"#,
    );
    let app = spawn_app_with(&toml, |_| {}).await;
    let image = json!({"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"});
    let body = json!({"model": "fake", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": image}]}]});
    let res = post(&app, &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(text_only.request_count(), 0, "a text-only route is skipped");
    assert_eq!(
        sighted.requests()[0]["messages"][0]["content"],
        json!([{"type": "text", "text": "What is in this picture?"},
               {"type": "image_url", "image_url": image}])
    );

    // Text alone still goes to the first route.
    let res = post(&app, &request("fake", false)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(text_only.request_count(), 1);

    // No route that can see: a clear 400 before any provider call; a bad image URL names it.
    let res = post(
        &app,
        &json!({"model": "chat-default", "messages": body["messages"]}),
    )
    .await;
    let message = openai_error_message(res, 400).await;
    assert!(message.contains("vision"), "{message}");
    let mut bad = body.clone();
    bad["messages"][0]["content"][1]["image_url"]["url"] = json!("file:///etc/passwd");
    let message = openai_error_message(post(&app, &bad).await, 400).await;
    assert!(message.contains("images[0].url"), "{message}");
}

/// A switch between two models of one provider before any text is a failover like any other:
/// announced, and the answer — streamed chunks, the non-stream object, the attempts — names
/// the upstream model that actually answered.
#[actix_web::test]
async fn a_switch_between_two_models_of_one_provider_is_announced_and_named() {
    let shared = FakeOpenAi::start().await.with_words(3);
    let mut toml = config(&[&shared]);
    toml.push_str(
        "\n[[models]]\nslug = \"pair\"\nroutes = [{ provider = \"fake0\", model = \"up-a\" }, \
         { provider = \"fake0\", model = \"up-b\" }]\n",
    );
    let app = spawn_app_with(&toml, |s| {
        s.providers[1].max_attempts = 1;
    })
    .await;

    // Streamed: every chunk after the switch names up-b, and the log has the failover.
    shared.set_script(vec![Fault::status(500)]);
    let res = post(&app, &request("pair", true)).await;
    assert_eq!(res.status(), 200);
    let id = res.headers()["x-switchyard-execution-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (chunks, done) = chunks(res).await;
    assert!(done);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, shared.full_text());
    for chunk in &chunks {
        assert_eq!(chunk["model"], "up-b", "{chunk}");
    }
    let events = sse_open(&app.client, &app.address, ADMIN_KEY, &id, None)
        .await
        .collect_all()
        .await;
    let failovers: Vec<_> = events.iter().filter(|e| e.event == "failover").collect();
    assert_eq!(failovers.len(), 1, "{events:?}");
    assert_eq!(failovers[0].data["from"], "fake0");
    assert_eq!(failovers[0].data["to"], "fake0");
    assert_eq!(failovers[0].data["model"], "up-b");
    let exec: Value = app
        .get(&format!("/v1/executions/{id}"), ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(exec["attempts"][0]["model"], "up-a");
    assert_eq!(exec["attempts"][1]["model"], "up-b");

    // Not streamed: the same model in the answer.
    shared.set_script(vec![Fault::status(500)]);
    let res = post(&app, &request("pair", false)).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["model"], "up-b", "{body}");
}
