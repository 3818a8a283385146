//! Cluster mode with real processes: a `nats-server -js` of the test's own on a free port with
//! a temp store, three Switchyard nodes on loopback, real SSE and WebSocket clients, SIGKILL,
//! and a TCP proxy the test controls between a node and NATS to partition it.
//!
//! Needs `nats-server` (Debian's package; `.ci/run` installs it). Without it these tests say
//! so and pass, unless `SWITCHYARD_REQUIRE_NATS=1` (set by `.ci/run`) makes that a failure.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use crate::fake_openai::FakeOpenAi;
use crate::helpers::*;
use crate::nats_server::{free_port, Nats};

/// Short leases keep the tests quick: a dead node's executions move after ~1 s.
const LEASE_MS: u64 = 1_000;

/// A TCP proxy to NATS that the test can cut (every connection closed, new ones refused) and
/// restore: a network partition between one node and NATS.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// On a thread and runtime of its own: the test's runtime blocks while a node starts.
    fn start(upstream: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if cut2.load(Ordering::SeqCst) {
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    open2.lock().unwrap().push(task.abort_handle());
                }
            });
        });
        Proxy { port, cut, open }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

struct Node {
    server: ServerProcess,
    client: reqwest::Client,
}

fn node_config(nats_url: &str, node: &str, fakes: &[&FakeOpenAi]) -> String {
    format!(
        "{}\n[webhooks]\nretry_base_ms = 50\nallowed_hosts = [\"127.0.0.1\"]\n\n[cluster]\nnats_url = \"{nats_url}\"\nnode_id = \"{node}\"\nlease_ms = {LEASE_MS}\n",
        config(fakes)
    )
}

impl Node {
    async fn start(
        dir: &std::path::Path,
        node: &str,
        nats_url: &str,
        fakes: &[&FakeOpenAi],
    ) -> Node {
        Node::start_toml(dir, node, node_config(nats_url, node, fakes)).await
    }

    /// A node named `node` on `toml`, its data under `dir/node`, once ready.
    async fn start_toml(dir: &std::path::Path, node: &str, toml: String) -> Node {
        let cfg = dir.join(format!("{node}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let node = Node {
            server: spawn_process(&cfg, &dir.join(node)),
            client: reqwest::Client::new(),
        };
        node.wait_ready().await;
        node
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.address)
    }

    async fn readyz(&self) -> (u16, Value) {
        let res = self.client.get(self.url("/readyz")).send().await.unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn wait_ready(&self) {
        for _ in 0..400 {
            if self.readyz().await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("node never became ready: {:?}", self.readyz().await);
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(ADMIN_KEY)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
    }

    async fn submit(&self, body: &Value) -> Value {
        let res = self.post("/v1/executions", body).await;
        assert_eq!(res.status(), 202, "submit accepted");
        res.json().await.unwrap()
    }

    async fn sse(&self, id: &str) -> SseStream {
        sse_open(&self.client, &self.server.address, ADMIN_KEY, id, None).await
    }

    async fn wait_terminal(&self, id: &str) -> Value {
        self.wait_terminal_as(ADMIN_KEY, id).await
    }

    async fn wait_terminal_as(&self, key: &str, id: &str) -> Value {
        for _ in 0..2000 {
            let res = self
                .client
                .get(self.url(&format!("/v1/executions/{id}")))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            if res.status() == 200 {
                let exec: Value = res.json().await.unwrap();
                if !matches!(exec["status"].as_str(), Some("pending" | "processing")) {
                    return exec;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("execution {id} did not finish");
    }

    async fn ws(&self, query: &str) -> Socket {
        let url = format!(
            "{}/v1/ws?{query}",
            self.server.address.replace("http://", "ws://")
        );
        tokio_tungstenite::connect_async(url).await.unwrap().0
    }
}

/// A fake OpenAI upstream answering `words` words, `ms` apart: a stream long enough to cut.
async fn slow_fake(words: usize, ms: u64) -> FakeOpenAi {
    FakeOpenAi::start()
        .await
        .with_words(words)
        .with_chunk_delay(Duration::from_millis(ms))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_send(ws: &mut Socket, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON frame, or `None` once the server closed the socket.
async fn ws_recv(ws: &mut Socket) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")?;
        match msg {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A channel's frames until its `done`.
async fn ws_follow(ws: &mut Socket, channel: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let frame = ws_recv(ws).await.expect("socket open until done");
        if frame["channel"] != channel
            || matches!(frame["event"].as_str(), Some("joined" | "lagged"))
        {
            continue;
        }
        let done = frame["event"] == "done";
        events.push(frame);
        if done {
            return events;
        }
    }
}

fn summary_sse(events: &[SseEvent]) -> Vec<(u64, String, Value)> {
    events
        .iter()
        .map(|e| (e.id, e.event.clone(), e.data.clone()))
        .collect()
}

fn summary_ws(events: &[Value]) -> Vec<(u64, String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["event"].as_str().unwrap().to_string(),
                e["data"].clone(),
            )
        })
        .collect()
}

#[actix_web::test]
async fn a_dead_nodes_execution_is_taken_over_and_followers_on_other_nodes_see_one_sequence() {
    let Some(nats) = Nats::start() else { return };
    let fake = slow_fake(120, 15).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Node::start(dir.path(), "a", &nats.url(), &[&fake]).await;
    let b = Node::start(dir.path(), "b", &nats.url(), &[&fake]).await;
    let c = Node::start(dir.path(), "c", &nats.url(), &[&fake]).await;

    let sub = a.submit(&chat_body("takeover", "Hi", "fake")).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let channel = sub["websocket_channel"].as_str().unwrap().to_string();
    // Followed on B over SSE and on C over WebSocket, both right after the submit on A.
    let mut sse_b = b.sse(&id).await;
    let mut ws_c = c.ws(&format!("api_key={ADMIN_KEY}")).await;
    ws_send(&mut ws_c, json!({"action": "join", "channel": channel})).await;
    let mut seen_b = sse_b.until_chunks(15).await;
    a.server.sigkill();

    let follow_c = ws_follow(&mut ws_c, &channel);
    let rest_b = sse_b.collect_all();
    let (on_c, rest_b) = futures_util::join!(follow_c, rest_b);
    seen_b.extend(rest_b);

    assert_gapless(&seen_b, 1);
    assert_eq!(
        chunk_text(&seen_b),
        fake.full_text(),
        "nothing repeated, nothing lost"
    );
    let failovers: Vec<_> = seen_b.iter().filter(|e| e.event == "failover").collect();
    assert_eq!(
        failovers.len(),
        1,
        "one failover marks the takeover: {failovers:?}"
    );
    assert_eq!(
        summary_ws(&on_c),
        summary_sse(&seen_b),
        "the same sequence on every node"
    );

    let exec_b = b.wait_terminal(&id).await;
    let exec_c = c.wait_terminal(&id).await;
    assert_eq!(exec_b["status"], "completed", "{exec_b}");
    assert_eq!(exec_b["output"]["text"], fake.full_text());
    assert_eq!(exec_c["output"]["text"], fake.full_text());
    // A late reader on either node replays the same log.
    let replay = c.sse(&id).await.collect_all().await;
    assert_eq!(summary_sse(&replay), summary_sse(&seen_b));
    // The continuation asked the provider for the rest only.
    let last = fake.requests().last().unwrap().clone();
    let msgs = last["messages"].as_array().unwrap();
    assert!(msgs.iter().any(|m| m["role"] == "assistant"), "{last}");
    // Each node's scrape is its own: one of B and C took the execution over.
    let mut takeovers = 0;
    for (node, name) in [(&b, "b"), (&c, "c")] {
        let text = node.get("/metrics").await.text().await.unwrap();
        assert!(
            text.contains(&format!("switchyard_cluster_node{{node=\"{name}\"}} 1")),
            "{text}"
        );
        takeovers += metric(&text, "switchyard_cluster_takeovers_total");
    }
    assert_eq!(takeovers, 1);
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[actix_web::test]
async fn a_node_waits_for_nats_at_start_and_says_why() {
    let Some(nats) = Nats::start() else { return };
    drop(nats);
    // A port nothing listens on yet.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("late.toml");
    std::fs::write(
        &cfg,
        node_config(&format!("nats://127.0.0.1:{port}"), "late", &[]),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    let mut child = server_args(&mut command, &cfg, &dir.path().join("late"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let said = rx
        .iter()
        .find(|l| l.contains("cannot reach NATS"))
        .expect("says why it is not ready");
    assert!(said.contains(&port.to_string()), "{said}");
    // NATS arrives on that port: the node joins and serves.
    let js = tempfile::tempdir().unwrap();
    let mut late_nats = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(js.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let address = stdout
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("switchyard listening on ")
                .map(str::to_string)
        })
        .expect("serves once NATS is there");
    // Keep draining stdout so the server never writes to a closed pipe.
    std::thread::spawn(move || stdout.for_each(drop));
    let mut ready = false;
    for _ in 0..200 {
        let res = reqwest::get(format!("{address}/readyz")).await.unwrap();
        if res.status() == 200 {
            let body: Value = res.json().await.unwrap();
            ready = body["checks"]["cluster"] == true && body["node"] == "late";
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = late_nats.kill();
    let _ = late_nats.wait();
    assert!(ready, "ready once NATS is there");
}

#[actix_web::test]
async fn the_same_idempotency_key_submitted_to_two_nodes_at_once_runs_once() {
    let Some(nats) = Nats::start() else { return };
    let fake = FakeOpenAi::start().await.with_words(5);
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(dir.path(), "a", &nats.url(), &[&fake]).await;
    let b = Node::start(dir.path(), "b", &nats.url(), &[&fake]).await;
    for round in 0..8 {
        let body = chat_body(&format!("race-{round}"), "Hi", "fake");
        let (ra, rb) = futures_util::join!(
            a.post("/v1/executions", &body),
            b.post("/v1/executions", &body)
        );
        let mut statuses = vec![ra.status().as_u16(), rb.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, vec![200, 202], "one created, one found");
        let (va, vb): (Value, Value) = (ra.json().await.unwrap(), rb.json().await.unwrap());
        assert_eq!(va["id"], vb["id"], "both name the same execution");
        let id = va["id"].as_str().unwrap();
        assert_eq!(a.wait_terminal(id).await["status"], "completed");
        assert_eq!(
            b.wait_terminal(id).await["output"]["text"],
            fake.full_text()
        );
    }
    assert_eq!(fake.request_count(), 8, "each key ran once");
    // Both nodes' analytics count each of the eight executions once, wherever it ran.
    for node in [&a, &b] {
        let mut requests = 0;
        for _ in 0..200 {
            let body: Value = node
                .get("/v1/analytics?group_by=none")
                .await
                .json()
                .await
                .unwrap();
            requests = body["series"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["buckets"].as_array().unwrap().clone())
                .map(|b| b["requests"].as_u64().unwrap())
                .sum::<u64>();
            if requests == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(requests, 8);
    }
    // A different body under a used key is a conflict on any node.
    let mut other = chat_body("race-0", "Something else", "fake");
    other["metadata"] = json!({"x": "1"});
    let res = b.post("/v1/executions", &other).await;
    assert_error(res, 409, "idempotency_conflict").await;
}

#[actix_web::test]
async fn a_websocket_token_from_one_node_works_once_on_any_node() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(dir.path(), "a", &nats.url(), &[]).await;
    let b = Node::start(dir.path(), "b", &nats.url(), &[]).await;
    let c = Node::start(dir.path(), "c", &nats.url(), &[]).await;
    // C's project channel hears about executions wherever they run.
    let mut project_c = c.ws(&format!("api_key={ADMIN_KEY}")).await;
    ws_send(
        &mut project_c,
        json!({"action": "join", "channel": "project:default"}),
    )
    .await;
    assert_eq!(ws_recv(&mut project_c).await.unwrap()["event"], "joined");
    let sub = a.submit(&chat_body("tok", "Hi", "chat-default")).await;
    let token = sub["ws_token"].as_str().unwrap();
    let channel = sub["websocket_channel"].as_str().unwrap();

    let mut on_b = b.ws(&format!("token={token}")).await;
    ws_send(&mut on_b, json!({"action": "join", "channel": channel})).await;
    let events = ws_follow(&mut on_b, channel).await;
    assert_eq!(events.last().unwrap()["event"], "done");

    let mut statuses = Vec::new();
    while statuses.last().map(String::as_str) != Some("completed") {
        let frame = ws_recv(&mut project_c).await.unwrap();
        assert_eq!(frame["data"]["execution_id"], sub["id"], "{frame}");
        statuses.push(frame["data"]["status"].as_str().unwrap().to_string());
    }
    assert_eq!(statuses, ["processing", "completed"]);

    // Spent on B: refused on C, and on A that issued it.
    for node in [&c, &a] {
        let mut again = node.ws(&format!("token={token}")).await;
        match again.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 4401);
                assert!(frame.reason.contains("token"), "{}", frame.reason);
            }
            other => panic!("a spent token must be refused: {other:?}"),
        }
    }
}

#[actix_web::test]
async fn a_node_cut_off_from_nats_is_fenced_and_the_execution_finishes_elsewhere() {
    let Some(nats) = Nats::start() else { return };
    let fake = slow_fake(150, 15).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(nats.port);
    let a = Node::start(dir.path(), "a", &proxy.url(), &[&fake]).await;
    let b = Node::start(dir.path(), "b", &nats.url(), &[&fake]).await;

    let sub = a.submit(&chat_body("partition", "Hi", "fake")).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let mut sse_b = b.sse(&id).await;
    let mut seen = sse_b.until_chunks(10).await;
    proxy.cut();
    // Cut off, A refuses new work it could not share.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = a
        .post(
            "/v1/executions",
            &chat_body("while-cut", "Hi", "chat-default"),
        )
        .await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal");
    assert_eq!(body["error"]["retryable"], true);
    assert_eq!(a.readyz().await.0, 503, "not ready while cut off");
    // The SDK-facing endpoints say the same in their own shapes.
    let res = a
        .post(
            "/v1/chat/completions",
            &json!({"model": "chat-default", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal", "{body}");
    let res = a
        .post(
            "/v1/messages",
            &json!({"model": "chat-default", "max_tokens": 16,
                    "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");

    seen.extend(sse_b.collect_all().await);
    assert_gapless(&seen, 1);
    assert_eq!(
        chunk_text(&seen),
        fake.full_text(),
        "nothing repeated, nothing lost"
    );

    // A comes back: it appends nothing more, and its copy of the log becomes B's.
    proxy.restore();
    a.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(3 * LEASE_MS)).await;
    let on_b = b.sse(&id).await.collect_all().await;
    assert_eq!(
        summary_sse(&on_b),
        summary_sse(&seen),
        "the shared log is unchanged"
    );
    let on_a = a.sse(&id).await.collect_all().await;
    assert_eq!(
        summary_sse(&on_a),
        summary_sse(&seen),
        "A's copy is the shared log"
    );
    assert_eq!(
        a.wait_terminal(&id).await["output"]["text"],
        fake.full_text()
    );
}

#[actix_web::test]
async fn a_node_whose_settings_disagree_with_the_stream_refuses_to_start() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let _a = Node::start(dir.path(), "a", &nats.url(), &[]).await;
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        node_config(&nats.url(), "bad", &[]).replace("[cluster]\n", "[cluster]\nreplicas = 3\n"),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    let out = server_args(&mut command, &cfg, &dir.path().join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replicas") && stderr.contains("SWITCHYARD_EVENTS"),
        "names the mismatch: {stderr}"
    );
}

impl Node {
    /// A new member key of `project` with `limits`, made through this node; its secret.
    async fn limited_key(&self, project: &str, limits: Value) -> String {
        let res = self
            .post(
                "/v1/keys",
                &json!({"project_id": project, "role": "member"}),
            )
            .await;
        let key: Value = res.json().await.unwrap();
        let res = self
            .client
            .patch(self.url(&format!("/v1/keys/{}", key["id"].as_str().unwrap())))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "limits": limits }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        key["key"].as_str().unwrap().to_string()
    }

    async fn post_as(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

#[actix_web::test]
async fn keys_structures_and_responses_made_on_one_node_hold_on_every_node() {
    let Some(nats) = Nats::start() else { return };
    let fake = slow_fake(200, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(dir.path(), "a", &nats.url(), &[&fake]).await;
    let b = Node::start(dir.path(), "b", &nats.url(), &[&fake]).await;

    // A key created on A works on B as soon as A answered.
    let res = a
        .post("/v1/keys", &json!({"project_id": "acme", "role": "admin"}))
        .await;
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await.unwrap();
    let (key_id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let res = b
        .post_as(secret, "/v1/executions", &chat_body("k", "Hi", "fake"))
        .await;
    assert_eq!(res.status(), 202, "the key works on B");
    let exec: Value = res.json().await.unwrap();
    let id = exec["id"].as_str().unwrap();

    // A stream B opened with the key ends when A revokes it, and B refuses the key after.
    let mut stream = sse_open(&b.client, &b.server.address, secret, id, None).await;
    stream.next().await.unwrap();
    let res = a
        .client
        .delete(a.url(&format!("/v1/keys/{key_id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.collect_all())
        .await
        .expect("the revoked key's stream on B ends");
    assert!(
        ended.iter().all(|e| e.event != "done"),
        "ended by the revocation, not by done"
    );
    let res = b
        .post_as(secret, "/v1/executions", &chat_body("k2", "Hi", "fake"))
        .await;
    assert_error(res, 401, "unauthorized").await;

    // A structure made on A is used by a submit on B.
    let schema = json!({"type": "object", "required": ["title"],
        "properties": {"title": {"type": "string"}}});
    let res = a
        .post("/v1/structures", &json!({"name": "todo", "schema": schema}))
        .await;
    assert_eq!(res.status(), 201);
    let res = b
        .post(
            "/v1/executions",
            &json!({"model": "chat-default", "structure": "todo", "idempotency_key": "s1",
                    "messages": [{"role": "user", "content": "todo"}]}),
        )
        .await;
    assert_eq!(res.status(), 202, "B knows the structure");
    let exec: Value = res.json().await.unwrap();
    let done = b.wait_terminal(exec["id"].as_str().unwrap()).await;
    assert!(done["output"]["data"]["title"].is_string(), "{done}");

    // A node started after all this knows the structure and the revoked key, and the
    // executions run before it came.
    let late = Node::start(dir.path(), "late", &nats.url(), &[&fake]).await;
    let res = late
        .post(
            "/v1/executions",
            &json!({"model": "chat-default", "structure": "todo", "idempotency_key": "s2",
                    "messages": [{"role": "user", "content": "todo"}]}),
        )
        .await;
    assert_eq!(res.status(), 202, "the late node knows the structure");
    let res = late
        .post_as(secret, "/v1/executions", &chat_body("k3", "Hi", "fake"))
        .await;
    assert_error(res, 401, "unauthorized").await;
    let before = late.wait_terminal(exec["id"].as_str().unwrap()).await;
    assert_eq!(before["status"], "completed");

    // A Responses API response created on A is retrieved on B.
    let res = a
        .post(
            "/v1/responses",
            &json!({"model": "chat-default", "input": "Hi"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let created: Value = res.json().await.unwrap();
    let rid = created["id"].as_str().unwrap();
    let res = b.get(&format!("/v1/responses/{rid}")).await;
    assert_eq!(res.status(), 200);
    let got: Value = res.json().await.unwrap();
    assert_eq!(got["output"], created["output"]);
    assert_eq!(got["status"], "completed");
}

#[actix_web::test]
async fn each_webhook_try_is_made_by_exactly_one_node() {
    let Some(nats) = Nats::start() else { return };
    // The receiver fails its first two deliveries: those jobs are retried.
    let receiver = crate::webhooks::start_receiver(2);
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(dir.path(), "a", &nats.url(), &[]).await;
    let b = Node::start(dir.path(), "b", &nats.url(), &[]).await;
    let c = Node::start(dir.path(), "c", &nats.url(), &[]).await;
    let mut ids = Vec::new();
    for (i, node) in [&a, &b, &c, &a, &b, &c].into_iter().enumerate() {
        let mut body = chat_body(&format!("hook-{i}"), "Hi", "chat-default");
        body["webhook_url"] = json!(receiver.url);
        ids.push(node.submit(&body).await["id"].as_str().unwrap().to_string());
    }
    let hits = receiver.wait_hits(8).await;
    assert_eq!(hits.len(), 8, "six deliveries and two failed tries");
    // Long enough for any second node's duplicate try to arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits = receiver.hits.lock().unwrap().clone();
    assert_eq!(
        hits.len(),
        8,
        "no try was made twice: {:?}",
        hits.iter().map(|h| &h.1).collect::<Vec<_>>()
    );
    // Signed on three nodes with the project's one secret, whichever node created it.
    let secret: Value = b.get("/v1/webhooks/secret").await.json().await.unwrap();
    let secret = secret["secret"].as_str().unwrap();
    for (signature, _, body) in &hits {
        assert!(
            crate::webhooks::verify(secret, signature, body),
            "{signature}"
        );
    }
    let mut event_ids: Vec<&str> = hits.iter().map(|h| h.1.as_str()).collect();
    event_ids.sort();
    event_ids.dedup();
    assert_eq!(event_ids.len(), 6, "every execution announced");
    for id in &ids {
        assert!(event_ids.contains(&format!("evt_{}", id.trim_start_matches("exec_")).as_str()));
    }
}

impl Node {
    /// Starts a node whose `chat-default` is a slow, priced mock: a `max_tokens: 100` submit
    /// holds 48,000 micros and runs about 2 s.
    async fn start_priced(dir: &std::path::Path, node: &str, nats_url: &str) -> Node {
        let toml = node_config(nats_url, node, &[])
            .replace("mock_chunk_interval_ms = 2", "mock_chunk_interval_ms = 150")
            .replace(
                r#"routes = [{ provider = "mock", model = "mock-1" }]"#,
                r#"routes = [{ provider = "mock", model = "mock-1", input_per_mtok = 100.0, output_per_mtok = 400.0 }]"#,
            );
        Node::start_toml(dir, node, toml).await
    }

    /// Priced nodes `a`, `b` and `c` (see [`Node::start_priced`]) on one NATS.
    async fn priced_trio(dir: &std::path::Path, nats_url: &str) -> [Node; 3] {
        [
            Node::start_priced(dir, "a", nats_url).await,
            Node::start_priced(dir, "b", nats_url).await,
            Node::start_priced(dir, "c", nats_url).await,
        ]
    }

    /// Submits `body` as `secret` until it is accepted (a place or an allowance is given back
    /// just after an execution ends), up to 100 times 25 ms; the last status.
    async fn submit_until_accepted(&self, secret: &str, body: &Value) -> u16 {
        let mut status = 0;
        for _ in 0..100 {
            status = self
                .post_as(secret, "/v1/executions", body)
                .await
                .status()
                .as_u16();
            if status == 202 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        status
    }

    async fn balance(&self) -> Value {
        self.get("/v1/balance").await.json().await.unwrap()
    }
}

#[actix_web::test]
async fn parallel_submits_on_every_node_never_hold_more_than_the_balance() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = Node::priced_trio(dir.path(), &nats.url()).await;
    // Covers exactly 10 holds of 48,000.
    let res = nodes[0]
        .post(
            "/v1/projects/default/balance",
            &json!({"amount_micros": 480_000}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let submits = (0..30).map(|i| {
        let node = &nodes[i % 3];
        let mut body = chat_body(&format!("spend-{i}"), "hi", "chat-default");
        body["params"] = json!({"max_tokens": 100});
        async move {
            let res = node.post("/v1/executions", &body).await;
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap();
            (status, v)
        }
    });
    let answers = futures_util::future::join_all(submits).await;
    let accepted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, v)| v)
        .collect();
    let refused = answers.iter().filter(|(s, _)| *s == 402).count();
    assert_eq!(
        accepted.len(),
        10,
        "exactly what the balance covers: {answers:?}"
    );
    assert_eq!(refused, 20);
    for exec in &accepted {
        nodes[1].wait_terminal(exec["id"].as_str().unwrap()).await;
    }
    // Every hold settled; every node reports the same balance, charged what the answers cost.
    let mut charged = 0;
    for exec in &accepted {
        let done = nodes[2].wait_terminal(exec["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "completed");
        charged += done["cost"]["settled_micros"].as_u64().unwrap_or(0);
    }
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = Vec::new();
        for node in &nodes {
            seen.push(node.balance().await);
        }
        if seen.iter().all(|b| b["held_micros"] == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for b in &seen {
        assert_eq!(b["held_micros"], 0, "{seen:?}");
        assert_eq!(b["balance_micros"], 480_000 - charged, "{seen:?}");
    }
    assert!(charged > 0, "the answers were charged");
}

#[actix_web::test]
async fn a_background_response_started_on_one_node_resumes_on_another() {
    use eventsource_stream::Eventsource;
    let Some(nats) = Nats::start() else { return };
    let fake = slow_fake(60, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(dir.path(), "a", &nats.url(), &[&fake]).await;
    let b = Node::start(dir.path(), "b", &nats.url(), &[&fake]).await;
    let res = a
        .post(
            "/v1/responses",
            &json!({"model": "fake", "input": "Hi", "background": true, "stream": true}),
        )
        .await;
    assert_eq!(res.status(), 200);
    // Read A's stream for a while, then drop it, as a client whose connection broke.
    let mut first = Vec::new();
    let mut stream = res.bytes_stream().eventsource();
    while first.len() < 12 {
        let ev = stream.next().await.unwrap().unwrap();
        first.push(serde_json::from_str::<Value>(&ev.data).unwrap());
    }
    drop(stream);
    let id = first[0]["response"]["id"].as_str().unwrap().to_string();
    let last = first.last().unwrap()["sequence_number"].as_u64().unwrap();
    // Resumed on B after the last event seen.
    let res = b
        .get(&format!(
            "/v1/responses/{id}?stream=true&starting_after={last}"
        ))
        .await;
    assert_eq!(res.status(), 200);
    let rest: Vec<Value> = res
        .bytes_stream()
        .eventsource()
        .map(|ev| serde_json::from_str::<Value>(&ev.unwrap().data).unwrap())
        .collect()
        .await;
    let all: Vec<&Value> = first.iter().chain(&rest).collect();
    for (i, ev) in all.iter().enumerate() {
        assert_eq!(ev["sequence_number"], i as u64, "gap or repeat at {i}");
    }
    let text: String = all
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, fake.full_text());
    assert_eq!(all.last().unwrap()["type"], "response.completed");
}

#[actix_web::test]
async fn a_node_restarted_with_its_id_takes_its_own_executions_back_at_once() {
    let Some(nats) = Nats::start() else { return };
    let fake = slow_fake(120, 15).await;
    let dir = tempfile::tempdir().unwrap();
    // Leases far longer than the test: only the restarted node itself may resume its work.
    let start = |node: &'static str| {
        let toml = node_config(&nats.url(), node, &[&fake])
            .replace(&format!("lease_ms = {LEASE_MS}"), "lease_ms = 60000");
        Node::start_toml(dir.path(), node, toml)
    };
    let mut a = start("a").await;
    let b = start("b").await;
    let sub = a.submit(&chat_body("comeback", "Hi", "fake")).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let mut sse_b = b.sse(&id).await;
    let mut seen = sse_b.until_chunks(12).await;
    a.server.sigkill();
    let a = start("a").await;
    seen.extend(sse_b.collect_all().await);
    assert_gapless(&seen, 1);
    assert_eq!(
        chunk_text(&seen),
        fake.full_text(),
        "nothing repeated, nothing lost"
    );
    assert_eq!(seen.iter().filter(|e| e.event == "failover").count(), 1);
    let on_a = a.sse(&id).await.collect_all().await;
    assert_eq!(
        summary_sse(&on_a),
        summary_sse(&seen),
        "A's log is the shared one"
    );
    let text = a.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(&text, "switchyard_cluster_takeovers_total"),
        1,
        "A took it back"
    );
}

#[actix_web::test]
async fn a_keys_monthly_cap_holds_across_nodes() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = Node::priced_trio(dir.path(), &nats.url()).await;
    // Two holds of 48,000 fit under the cap, a third does not, wherever they are submitted.
    let secret = a
        .limited_key("capped", json!({"monthly_spend_cap_micros": 100_000}))
        .await;
    let secret = secret.as_str();
    let body = |k: &str| {
        let mut b = chat_body(k, "hi", "chat-default");
        b["params"] = json!({"max_tokens": 100});
        b
    };
    let first = b.post_as(secret, "/v1/executions", &body("cap-1")).await;
    assert_eq!(first.status(), 202);
    let second = c.post_as(secret, "/v1/executions", &body("cap-2")).await;
    assert_eq!(second.status(), 202);
    let third = a.post_as(secret, "/v1/executions", &body("cap-3")).await;
    let msg = assert_error(third, 402, "insufficient_balance").await;
    assert!(msg.contains("monthly spend cap"), "{msg}");
    // Once both ended, what they held is given back and only what they cost stays spent.
    let first: Value = first.json().await.unwrap();
    let second: Value = second.json().await.unwrap();
    let mut spent = 0;
    for exec in [&first, &second] {
        let done = a
            .wait_terminal_as(secret, exec["id"].as_str().unwrap())
            .await;
        spent += done["cost"]["settled_micros"].as_u64().unwrap();
    }
    assert!(spent < 100_000 - 48_000, "room for one more hold: {spent}");
    // The holds are closed just after the executions end.
    let fourth = c.submit_until_accepted(secret, &body("cap-4")).await;
    assert_eq!(
        fourth, 202,
        "the cap counts what was spent, not what was held"
    );
}

#[actix_web::test]
async fn a_keys_executions_in_flight_are_counted_across_nodes() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The priced nodes' mock runs ~2 s: submits overlap.
    let [a, b, c] = Node::priced_trio(dir.path(), &nats.url()).await;
    let secret = a
        .limited_key("busy", json!({"concurrent_executions": 2}))
        .await;
    let secret = secret.as_str();
    let nodes = [&a, &b, &c];
    let submits = (0..9).map(|i| {
        let node = nodes[i % 3];
        async move {
            node.post_as(
                secret,
                "/v1/executions",
                &chat_body(&format!("busy-{i}"), "hi", "chat-default"),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(submits).await;
    let accepted: Vec<_> = answers.iter().filter(|r| r.status() == 202).collect();
    let limited = answers.iter().filter(|r| r.status() == 429).count();
    assert_eq!(
        accepted.len(),
        2,
        "the key's two places, wherever submitted"
    );
    assert_eq!(limited, 7);
    let mut ids = Vec::new();
    for res in answers.into_iter().filter(|r| r.status() == 202) {
        let v: Value = res.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        c.wait_terminal_as(secret, id).await;
    }
    // Their places are given back once they ended.
    let after = chat_body("busy-after", "hi", "chat-default");
    assert_eq!(b.submit_until_accepted(secret, &after).await, 202);
}

#[actix_web::test]
async fn a_routes_day_cap_holds_across_nodes() {
    let Some(nats) = Nats::start() else { return };
    let fake = FakeOpenAi::start().await.with_words(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let toml = node_config(&nats.url(), name, &[&fake]).replace(
            r#"{ provider = "fake0", model = "up-0" }"#,
            r#"{ provider = "fake0", model = "up-0", requests_per_day = 4 }"#,
        );
        nodes.push(Node::start_toml(dir.path(), name, toml).await);
    }
    // Twelve executions, one after another, round-robin: each node alone would send 4.
    let mut completed = 0;
    for i in 0..12 {
        let node = &nodes[i % 3];
        let res = node
            .post(
                "/v1/executions",
                &chat_body(&format!("day-{i}"), "Hi", "fake"),
            )
            .await;
        if res.status() != 202 {
            // The day cap is used up across the cluster: refused at submit, until tomorrow.
            let msg = assert_error(res, 503, "provider_unavailable").await;
            assert!(msg.contains("quota_requests_per_day"), "{msg}");
            continue;
        }
        let v: Value = res.json().await.unwrap();
        let done = node.wait_terminal(v["id"].as_str().unwrap()).await;
        if done["status"] == "completed" {
            completed += 1;
        } else {
            assert_eq!(done["error"]["code"], "provider_unavailable", "{done}");
        }
    }
    assert!(
        fake.request_count() <= 4,
        "never past the day cap: {}",
        fake.request_count()
    );
    assert_eq!(completed, fake.request_count());
    assert!(
        completed >= 2,
        "the cap is used, not just refused: {completed}"
    );
}
