//! Crash and restart with the real binary: SIGKILL mid-stream, SIGTERM, replay after restart.

use serde_json::{json, Value};
use std::time::Duration;

use crate::fake_openai::FakeOpenAi;
use crate::helpers::*;

struct Proc {
    server: ServerProcess,
    client: reqwest::Client,
}

impl Proc {
    fn start(config: &std::path::Path, data: &std::path::Path) -> Proc {
        Proc {
            server: spawn_process(config, data),
            client: reqwest::Client::new(),
        }
    }

    async fn submit(&self, body: &Value) -> Value {
        let res = self
            .client
            .post(format!("{}/v1/executions", self.server.address))
            .bearer_auth(ADMIN_KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        res.json().await.unwrap()
    }

    async fn get(&self, id: &str) -> Value {
        let res = self
            .client
            .get(format!("{}/v1/executions/{id}", self.server.address))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "execution {id} is known");
        res.json().await.unwrap()
    }

    async fn wait_terminal(&self, id: &str) -> Value {
        for _ in 0..2000 {
            let exec = self.get(id).await;
            if !matches!(exec["status"].as_str().unwrap(), "pending" | "processing") {
                return exec;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("execution {id} did not finish");
    }

    async fn sse(&self, id: &str) -> SseStream {
        sse_open(&self.client, &self.server.address, ADMIN_KEY, id, None).await
    }
}

fn write_config(dir: &std::path::Path, fakes: &[&FakeOpenAi]) -> std::path::PathBuf {
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, config(fakes)).unwrap();
    path
}

#[actix_web::test]
async fn finished_executions_replay_identically_from_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[]);
    let data = dir.path().join("data");
    let first = Proc::start(&cfg, &data);
    let sub = first
        .submit(&chat_body("r1", "Hello", "chat-default"))
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    let before_exec = first.wait_terminal(&id).await;
    let before = first.sse(&id).await.collect_all().await;
    assert_gapless(&before, 1);

    let mut first = first;
    let status = first.server.sigterm();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");

    let second = Proc::start(&cfg, &data);
    let after = second.sse(&id).await.collect_all().await;
    let summary = |evs: &[SseEvent]| -> Vec<(u64, String, String)> {
        evs.iter()
            .map(|e| (e.id, e.event.clone(), e.data.to_string()))
            .collect()
    };
    assert_eq!(summary(&before), summary(&after));
    assert_eq!(second.get(&id).await, before_exec);
}

#[actix_web::test]
async fn sigkill_mid_stream_loses_nothing_acknowledged_and_the_execution_resumes() {
    let fake = FakeOpenAi::start()
        .await
        .with_words(200)
        .with_chunk_delay(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[&fake]);
    let data = dir.path().join("data");

    let mut first = Proc::start(&cfg, &data);
    let sub = first.submit(&chat_body("k1", "Hi", "fake")).await;
    let id = sub["id"].as_str().unwrap().to_string();
    // More acknowledged submits right before the crash.
    let mut others = Vec::new();
    for i in 0..10 {
        let s = first
            .submit(&chat_body(&format!("o{i}"), "Hi", "chat-default"))
            .await;
        others.push(s["id"].as_str().unwrap().to_string());
    }
    let mut sse = first.sse(&id).await;
    let seen = sse.until_chunks(10).await;
    first.server.sigkill();
    drop(sse);

    let second = Proc::start(&cfg, &data);
    for other in &others {
        second.get(other).await;
    }
    let exec = second.wait_terminal(&id).await;
    assert_eq!(exec["status"], "completed");
    assert_eq!(
        exec["output"]["text"],
        fake.full_text(),
        "nothing repeated, nothing lost"
    );

    let all = second.sse(&id).await.collect_all().await;
    assert_gapless(&all, 1);
    for ev in &seen {
        let logged = &all[(ev.id - 1) as usize];
        assert_eq!(
            (logged.id, &logged.event, &logged.data),
            (ev.id, &ev.event, &ev.data)
        );
    }
    let failover: Vec<_> = all.iter().filter(|e| e.event == "failover").collect();
    assert_eq!(failover.len(), 1, "one failover event marks the resumption");
    assert_eq!(chunk_text(&all), fake.full_text());
    // The continuation asked the provider for the rest only.
    let last = fake.requests().last().unwrap().clone();
    let msgs = last["messages"].as_array().unwrap();
    assert!(msgs.iter().any(|m| m["role"] == "assistant"), "{last}");
    let _ = json!({});
}

#[actix_web::test]
async fn sigkill_halfway_through_a_tool_call_resumes_and_makes_the_call_once() {
    let fake = FakeOpenAi::start()
        .await
        .with_chunk_delay(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[&fake]);
    let data = dir.path().join("data");

    let mut first = Proc::start(&cfg, &data);
    let mut body = chat_body("tool-kill", "Weather in Oslo?", "fake");
    body["params"] = json!({"tools": [{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]});
    let sub = first.submit(&body).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let mut sse = first.sse(&id).await;
    while sse.next().await.unwrap().data["status"] != "processing" {}
    // The fake sends the call's first fragment at once and the next two 300 ms apart.
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.server.sigkill();

    let second = Proc::start(&cfg, &data);
    let exec = second.wait_terminal(&id).await;
    assert_eq!(exec["status"], "completed", "{exec}");
    assert_eq!(exec["finish_reason"], "tool_calls");
    assert_eq!(exec["output"]["tool_calls"].as_array().unwrap().len(), 1);
    let events = second.sse(&id).await.collect_all().await;
    assert_gapless(&events, 1);
    assert_eq!(tool_calls_in(&events).len(), 1, "the call once: {events:?}");
    assert_eq!(
        tool_calls_in(&events)[0]["function"]["arguments"],
        crate::fake_openai::TOOL_ARGUMENTS
    );
    assert_eq!(fake.request_count(), 2, "asked again after the restart");
}
