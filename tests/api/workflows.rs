//! Workflows end to end: a named model + prompt + structure, variables, a two-step chain in one
//! execution followed over SSE and WebSocket, the admin API, and a SIGKILL between the steps.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// The mock config plus a structure and two workflows: `reviewer` (one step) and `triage`
/// (classify, then reply reading the first step's data).
fn workflow_config(chunk_interval_ms: u64) -> String {
    config(&[]).replace(
        "mock_chunk_interval_ms = 2",
        &format!("mock_chunk_interval_ms = {chunk_interval_ms}"),
    ) + r#"
[[structures]]
name = "intent"
schema = { type = "object", required = ["intent"], additionalProperties = false, properties = { intent = { type = "string", enum = ["refund", "question"] } } }

[[workflows]]
name = "reviewer"
model = "chat-default"
system = "You review books about {{topic}}."
structure = "intent"

[[workflows]]
name = "triage"
model = "chat-default"
system = "You help customers of {{shop}}."

[[workflows.steps]]
name = "classify"
prompt = "Classify the message."
structure = "intent"

[[workflows.steps]]
name = "reply"
prompt = "Write a reply for intent {{steps.classify.data.intent}}."
"#
}

fn triage_body(key: &str) -> Value {
    json!({"workflow": "triage", "idempotency_key": key,
        "messages": [{"role": "user", "content": "My parcel never came."}],
        "variables": {"shop": "Bookshop"}})
}

#[actix_web::test]
async fn a_one_step_workflow_renders_its_prompt_and_answers_its_structure() {
    let app = spawn_app_with(&workflow_config(1), |_| {}).await;
    let body = json!({"workflow": "reviewer", "idempotency_key": "w1",
        "messages": [{"role": "user", "content": "Dune"}], "variables": {"topic": "deserts"}});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let id = sub["id"].as_str().unwrap();
    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "completed", "{exec}");
    assert_eq!(exec["model"], "chat-default");
    assert_eq!(exec["workflow"], json!({"name": "reviewer", "version": 1}));
    assert_eq!(exec["structure"], json!({"name": "intent", "version": 1}));
    assert_eq!(exec["output"]["data"], json!({"intent": "refund"}));
    let log: Value = app
        .get(&format!("/v1/executions/{id}/log"), ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let sent = log.to_string();
    assert!(sent.contains("You review books about deserts."), "{sent}");

    // Bad input: a missing variable, an unknown workflow, a workflow plus a model.
    let mut missing = body.clone();
    missing["idempotency_key"] = json!("w2");
    missing["variables"] = json!({});
    let res = app.post("/v1/executions", ADMIN_KEY, &missing).await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("`topic`"), "{message}");
    let res = app
        .post(
            "/v1/executions",
            ADMIN_KEY,
            &json!({"workflow": "nope", "idempotency_key": "w3",
                "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("`nope`"), "{message}");
    let mut both = body.clone();
    both["idempotency_key"] = json!("w4");
    both["model"] = json!("chat-default");
    let res = app.post("/v1/executions", ADMIN_KEY, &both).await;
    assert_error(res, 400, "invalid_request").await;
}

#[actix_web::test]
async fn two_steps_run_in_one_execution_seen_whole_over_sse_and_websocket() {
    let app = spawn_app_with(&workflow_config(1), |_| {}).await;
    let sub = app.submit(ADMIN_KEY, &triage_body("t1")).await;
    let id = sub["id"].as_str().unwrap();
    let url = format!(
        "{}/v1/ws?token={}",
        app.address.replace("http://", "ws://"),
        sub["ws_token"].as_str().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let channel = sub["websocket_channel"].as_str().unwrap();
    let join = json!({"action": "join", "channel": channel, "after": 0});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let mut frames = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap();
        if frame["event"] == "joined" {
            continue;
        }
        let done = frame["event"] == "done";
        frames.push(frame);
        if done {
            break;
        }
    }
    let events = app.sse_all(ADMIN_KEY, id, None).await;
    assert_gapless(&events, 1);
    let ws_seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    let sse_seqs: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ws_seqs, sse_seqs, "both transports carry the same sequence");

    let steps: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.event == "step")
        .map(|e| {
            let d = &e.data;
            (
                d["step"].as_str().unwrap().into(),
                d["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("classify", "started"),
        ("classify", "completed"),
        ("reply", "started"),
        ("reply", "completed"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(steps, expected);
    // Every chunk says its step; the classify chunks are its JSON.
    let text_of = |step: &str| -> String {
        events
            .iter()
            .filter(|e| e.event == "chunk" && e.data["step"] == step)
            .map(|e| e.data["delta"].as_str().unwrap())
            .collect()
    };
    assert!(events
        .iter()
        .filter(|e| e.event == "chunk")
        .all(|e| e.data["step"].is_string()));
    assert_eq!(
        serde_json::from_str::<Value>(&text_of("classify")).unwrap(),
        json!({"intent": "refund"})
    );

    let exec = app.wait_terminal(ADMIN_KEY, id).await;
    assert_eq!(exec["status"], "completed");
    let steps = exec["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["data"], json!({"intent": "refund"}));
    assert_eq!(steps[1]["text"], text_of("reply"));
    assert_eq!(
        exec["output"]["text"],
        text_of("reply"),
        "output is the last step's"
    );
    let usage = &exec["usage"];
    let summed = steps[0]["usage"]["total_tokens"].as_u64().unwrap()
        + steps[1]["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), summed);
    // The second step's prompt read the first step's data.
    let log = app
        .get(&format!("/v1/executions/{id}/log"), ADMIN_KEY)
        .await
        .text()
        .await
        .unwrap();
    assert!(log.contains("Write a reply for intent refund."), "{log}");
}

#[actix_web::test]
async fn workflows_are_managed_through_the_admin_api() {
    let app = spawn_app_with(&workflow_config(1), |_| {}).await;
    let def = json!({"name": "summarize", "model": "chat-default",
        "system": "Summarize for {{audience}}.", "params": {"temperature": 0.2}});
    let res = app.post("/v1/workflows", ADMIN_KEY, &def).await;
    assert_eq!(res.status(), 201);
    let list: Value = app
        .get("/v1/workflows", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["reviewer", "summarize", "triage"]);
    let got: Value = app
        .get("/v1/workflows/summarize", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["definition"]["system"], "Summarize for {{audience}}.");
    let body = json!({"workflow": "summarize", "idempotency_key": "a1",
        "messages": [{"role": "user", "content": "long text"}], "variables": {"audience": "kids"}});
    let sub = app.submit(ADMIN_KEY, &body).await;
    let exec = app
        .wait_terminal(ADMIN_KEY, sub["id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed");

    let bad = [
        json!({"name": "x", "model": "nope"}),
        json!({"name": "x", "model": "chat-default", "structure": "nope"}),
        json!({"name": "x", "model": "chat-default", "steps": [{"name": "a", "prompt": "{{steps.b.text}}"}, {"name": "b"}]}),
        json!({"name": "x", "model": "chat-default", "system": "{{ unclosed"}),
        json!({"name": "x", "modle": "chat-default"}),
    ];
    for def in bad {
        let res = app.post("/v1/workflows", ADMIN_KEY, &def).await;
        assert_error(res, 400, "invalid_request").await;
    }
    let member = app.create_key("default", "member").await;
    let res = app
        .post(
            "/v1/workflows",
            &member,
            &json!({"name": "y", "model": "chat-default"}),
        )
        .await;
    assert_error(res, 403, "forbidden").await;
}

#[actix_web::test]
async fn a_sigkill_between_steps_resumes_the_next_step_without_rerunning_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, workflow_config(40)).unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();
    let mut first = spawn_process(&cfg, &data);
    let res = client
        .post(format!("{}/v1/executions", first.address))
        .bearer_auth(ADMIN_KEY)
        .json(&triage_body("k1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sse = sse_open(&client, &first.address, ADMIN_KEY, &id, None).await;
    loop {
        let ev = sse.next().await.expect("the stream goes on");
        if ev.event == "step" && ev.data["state"] == "completed" {
            break;
        }
    }
    first.sigkill();

    let second = spawn_process(&cfg, &data);
    let events = sse_open(&client, &second.address, ADMIN_KEY, &id, None)
        .await
        .collect_all()
        .await;
    assert_gapless(&events, 1);
    let classify_starts = events
        .iter()
        .filter(|e| {
            e.event == "step" && e.data["step"] == "classify" && e.data["state"] == "started"
        })
        .count();
    assert_eq!(classify_starts, 1, "the finished step is not run again");
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["steps"][0]["data"], json!({"intent": "refund"}));
    assert_eq!(done["steps"].as_array().unwrap().len(), 2);
    let reply: String = events
        .iter()
        .filter(|e| e.event == "chunk" && e.data["step"] == "reply")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(done["output"]["text"], reply);
}
