//! The reconciliation corpus: answers full of repetition (nested JSON, code, Markdown tables,
//! lists, a poem with a refrain, periodic text, CSV, multi-byte text), each cut at every chunk
//! boundary and continued under every strategy — by an honest provider (the final text must be
//! the original) and by one that restarts from the beginning (the repeat must go wherever the
//! rules allow it to be recognised). Checked twice: on the reconciler alone at every cut, and
//! end to end through a real fake upstream that is cut mid-stream and continued by another
//! route.

use futures_util::StreamExt;
use serde_json::{json, Value};
use switchyard::routing::{Diverged, Reconciler, MIN_RESTART_EVIDENCE};
use switchyard::settings::ContinuationStrategy::{self, Instruction, Prefill, Restart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{spawn_app_with, TestApp, ADMIN_KEY};

pub const CORPUS: &[(&str, &str)] = &[
    (
        "nested json",
        r#"{
  "order": {
    "id": 42,
    "items": [
      {
        "sku": "A-1",
        "qty": 2
      },
      {
        "sku": "A-1",
        "qty": 2
      }
    ],
    "meta": {
      "tags": {
        "a": {}
      }
    }
  }
}
"#,
    ),
    (
        "code",
        "fn main() {\n    for i in 0..3 {\n        if i > 0 {\n            println!(\"{i}\");\n        }\n    }\n    for i in 0..3 {\n        if i > 0 {\n            println!(\"{i}\");\n        }\n    }\n}\n",
    ),
    (
        "markdown table",
        "| name | qty |\n|------|-----|\n| bolt | 4 |\n| bolt | 4 |\n| bolt | 4 |\n| nut | 4 |\n| bolt | 4 |\n",
    ),
    (
        "list",
        "Steps:\n- check the logs\n- restart the node\n- check the logs\n- restart the node\n- check the logs\n- done\n",
    ),
    (
        "poem with a refrain",
        "The river runs, the river rolls,\nand I go down to the water.\nThe river runs, the river rolls,\nand you go down to the water.\nThe river runs, the river rolls,\nand we go down to the water.\n",
    ),
    (
        "periodic text",
        "switchyard routes every chunk through one ordered log so streams survive failover and restarts without repeating or losing a single word while subscribers follow along live the answer switchyard routes every chunk through one ordered log so streams survive failover and restarts without repeating or losing a single word while subscribers follow along live the answer switchyard routes every chunk",
    ),
    (
        "csv",
        "id,status\n1,ok\n2,ok\n3,ok\n1,ok\n2,ok\n3,ok\n",
    ),
    (
        "multi-byte",
        "日本語の答え。日本語の答え。🙂 la la la 🙂 la la la — ünd ünd ünd.\n",
    ),
    (
        // The first 40 bytes repeat at once: a cut right after them is the one shape the
        // `instruction` rule cannot tell from a restart (see `instruction_ambiguity`).
        "opening line repeated",
        "Row, row, row your boat, gently, gently,\nRow, row, row your boat, gently, gently,\nmerrily down the stream.\n",
    ),
];

/// Splits like a tokenizer would: whitespace goes with the word after it, and runs of words
/// and of punctuation are separate chunks; a newline ends a chunk.
pub fn chunks(text: &str) -> Vec<String> {
    #[derive(PartialEq)]
    enum Class {
        Space,
        Word,
        Punct,
    }
    let class = |c: char| {
        if c.is_whitespace() {
            Class::Space
        } else if c.is_ascii_punctuation() {
            Class::Punct
        } else {
            Class::Word
        }
    };
    let mut out = Vec::new();
    let mut current = String::new();
    let mut previous: Option<char> = None;
    for c in text.chars() {
        let boundary = previous.is_some_and(|p| {
            p == '\n'
                || (class(c) == Class::Space && class(p) != Class::Space)
                || (class(c) != Class::Space && class(p) != Class::Space && class(c) != class(p))
        });
        if boundary && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(c);
        previous = Some(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The byte offsets of every chunk boundary inside the text (1..=n chunks emitted).
fn cuts(text: &str) -> Vec<usize> {
    let mut at = 0;
    chunks(text)
        .iter()
        .map(|c| {
            at += c.len();
            at
        })
        .collect()
}

/// Whether the text's first `p` bytes repeat at once: `instruction` reads such a head as a
/// restart (the only case where it changes an honest answer).
fn opening_repeats(text: &str, p: usize) -> bool {
    p >= MIN_RESTART_EVIDENCE && text[p..].starts_with(&text[..p])
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Provider {
    /// Continues exactly after the text it was given (starts over when given none).
    Honest,
    /// Ignores what it was given and answers from the beginning.
    Restarter,
}

/// The final text the rules promise for answer `text` cut after `p` bytes.
fn expected(text: &str, p: usize, strategy: ContinuationStrategy, provider: Provider) -> String {
    let whole = text.to_string();
    let repeated = format!("{}{text}", &text[..p]);
    match (strategy, provider) {
        // Under `restart` the honest provider starts over too: its head is always dropped.
        (Restart, _) => whole,
        (Prefill, Provider::Honest) => whole,
        // Prefill trusts the provider to extend what it was given: never trimmed.
        (Prefill, Provider::Restarter) => repeated,
        (Instruction, Provider::Honest) if opening_repeats(text, p) => {
            format!("{}{}", &text[..p], &text[2 * p..])
        }
        (Instruction, Provider::Honest) => whole,
        (Instruction, Provider::Restarter) if p >= MIN_RESTART_EVIDENCE => whole,
        // Too little was emitted to read its reproduction as a restart.
        (Instruction, Provider::Restarter) => repeated,
    }
}

/// The continuation a provider sends after the first `p` bytes, in its chunks.
fn continuation(
    text: &str,
    p: usize,
    strategy: ContinuationStrategy,
    provider: Provider,
) -> Vec<String> {
    let from = match (strategy, provider) {
        (Restart, _) | (_, Provider::Restarter) => 0,
        _ => p,
    };
    rechunk(text, from)
}

/// `text[from..]` in the answer's own chunks (the first one partial if `from` is inside one).
fn rechunk(text: &str, from: usize) -> Vec<String> {
    let mut at = 0;
    let mut out = Vec::new();
    for c in chunks(text) {
        let end = at + c.len();
        if end > from {
            out.push(text[from.max(at)..end].to_string());
        }
        at = end;
    }
    out
}

fn reconcile(
    emitted: &str,
    strategy: ContinuationStrategy,
    deltas: Vec<String>,
) -> Result<String, Diverged> {
    let mut r = Reconciler::new(emitted, strategy);
    let mut out = emitted.to_string();
    for d in deltas {
        out.extend(r.push(d)?);
    }
    out.extend(r.finish()?);
    Ok(out)
}

#[test]
fn every_cut_of_every_answer_joins_as_the_rules_promise() {
    let mut checked = 0;
    let mut ambiguous = Vec::new();
    for (name, text) in CORPUS {
        assert_eq!(
            chunks(text).concat(),
            *text,
            "{name}: chunks cover the text"
        );
        for p in cuts(text) {
            for strategy in [Prefill, Instruction, Restart] {
                for provider in [Provider::Honest, Provider::Restarter] {
                    let deltas = continuation(text, p, strategy, provider);
                    let got = reconcile(&text[..p], strategy, deltas).unwrap_or_else(|d| {
                        panic!("{name} cut at {p}, {strategy:?}/{provider:?}: {d:?}")
                    });
                    let want = expected(text, p, strategy, provider);
                    assert_eq!(got, want, "{name} cut at {p}, {strategy:?}/{provider:?}");
                    checked += 1;
                }
            }
            if opening_repeats(text, p) {
                ambiguous.push((*name, p));
            }
        }
    }
    assert!(checked > 1_000, "{checked}");
    // Only the answer built to show it: realistic repetition never hits the ambiguity.
    assert_eq!(ambiguous, vec![("opening line repeated", 41)]);
}

#[test]
fn an_honest_answer_is_never_trimmed_under_prefill_at_any_byte() {
    for (name, text) in CORPUS {
        for p in (1..text.len()).filter(|&p| text.is_char_boundary(p)) {
            let got = reconcile(&text[..p], Prefill, rechunk(text, p)).unwrap();
            assert_eq!(got, *text, "{name} cut at byte {p}");
        }
    }
}

#[test]
fn a_restart_that_tells_another_answer_diverges_instead_of_splicing() {
    let text = CORPUS[0].1;
    for p in cuts(text) {
        let other = text.replacen("42", "43", 1);
        let result = reconcile(&text[..p], Restart, rechunk(&other, 0));
        let diverges = other[..p] != text[..p];
        assert_eq!(result.is_err(), diverges, "cut at {p}");
    }
}

// ---- end to end: a fake upstream cut mid-stream, another route continuing ----

/// An OpenAI-compatible upstream answering corpus texts. The user message says which answer
/// and where to cut (`answer I cut P`); the upstream model says how to behave: `cutter` sends
/// the chunks up to byte P and drops the connection, `honest` continues after the assistant
/// text it was given, `restarter` answers from the beginning whatever it was given, `other`
/// answers a different text.
struct CorpusUpstream {
    base_url: String,
}

impl CorpusUpstream {
    async fn start() -> CorpusUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket));
            }
        });
        CorpusUpstream { base_url }
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Value> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    serde_json::from_slice(&buf[head_end..head_end + length]).ok()
}

fn sse_chunk(delta: Value, finish: Option<&str>) -> String {
    let event = json!({"id": "chatcmpl-corpus", "object": "chat.completion.chunk",
        "created": 1_700_000_000u64, "model": "corpus",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {event}\n\n")
}

async fn serve(mut socket: TcpStream) {
    let Some(body) = read_request(&mut socket).await else {
        return;
    };
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let ask = messages[0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut words = ask.split_whitespace().skip(1);
    let answer: usize = words.next().unwrap().parse().unwrap();
    let cut: usize = words.nth(1).unwrap().parse().unwrap();
    let text = CORPUS[answer].1;
    let given = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let (deltas, finish) = match body["model"].as_str().unwrap_or_default() {
        "cutter" => (rechunk(&text[..cut], 0), false),
        "honest" => {
            assert!(
                text.starts_with(&given),
                "an honest continuation of {given:?}"
            );
            (rechunk(text, given.len()), true)
        }
        "restarter" => (rechunk(text, 0), true),
        _ => (rechunk(&text.replacen('"', "'", 1), 0), true),
    };
    let mut out = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
    );
    out.push_str(&sse_chunk(
        json!({"role": "assistant", "content": ""}),
        None,
    ));
    for d in deltas {
        out.push_str(&sse_chunk(json!({"content": d}), None));
    }
    if finish {
        out.push_str(&sse_chunk(json!({}), Some("stop")));
        out.push_str("data: [DONE]\n\n");
    }
    // A cut is the connection closing before any finish reason.
    let _ = socket.write_all(out.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// Each cutting provider fails every stream it serves, so it is used for fewer attempts than
/// its breaker's error-rate window needs (10): a fresh one every [`CASES_PER_CUTTER`] cases
/// keeps route 0 admitted without a test-only switch in the breaker.
const CASES_PER_CUTTER: usize = 8;

fn corpus_config(upstream: &CorpusUpstream, cutters: usize) -> String {
    let mut toml = String::from("listen = \"127.0.0.1:0\"\ndata_dir = \"unused\"\n");
    let provider = |name: &str, strategy: &str| {
        format!(
            "\n[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{}\"\n\
             continuation = \"{strategy}\"\nmax_attempts = 1\nbreaker_failures = 1000\n",
            upstream.base_url
        )
    };
    for strategy in ["prefill", "instruction", "restart"] {
        toml.push_str(&provider(strategy, strategy));
    }
    for k in 0..cutters {
        toml.push_str(&provider(&format!("cut{k}"), "instruction"));
        for strategy in ["prefill", "instruction", "restart"] {
            for behaviour in ["honest", "restarter", "other"] {
                toml.push_str(&format!(
                    "\n[[models]]\nslug = \"{strategy}-{behaviour}-{k}\"\nroutes = [\
                     {{ provider = \"cut{k}\", model = \"cutter\" }}, \
                     {{ provider = \"{strategy}\", model = \"{behaviour}\" }}]\n"
                ));
            }
        }
    }
    toml
}

/// Runs one cut answer through `/v1/chat/completions`: (execution id, status code, content).
async fn complete(app: &TestApp, model: &str, answer: usize, cut: usize) -> (String, u16, Value) {
    let res = app
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            &json!({"model": model,
                    "messages": [{"role": "user", "content": format!("answer {answer} cut {cut}")}]}),
        )
        .await;
    let id = res.headers()["x-switchyard-execution-id"]
        .to_str()
        .unwrap()
        .to_string();
    let status = res.status().as_u16();
    (id, status, res.json().await.unwrap())
}

#[actix_web::test]
async fn cut_at_every_chunk_and_continued_on_another_route_the_answer_is_exact() {
    let upstream = CorpusUpstream::start().await;
    let mut cases = Vec::new();
    for (answer, (_, text)) in CORPUS.iter().enumerate() {
        for p in cuts(text) {
            for strategy in [Prefill, Instruction, Restart] {
                for provider in [Provider::Honest, Provider::Restarter] {
                    cases.push((answer, p, strategy, provider));
                }
            }
        }
    }
    let total = cases.len();
    let app = spawn_app_with(
        &corpus_config(&upstream, total / CASES_PER_CUTTER + 1),
        |_| {},
    )
    .await;
    let results: Vec<_> = futures_util::stream::iter(cases.into_iter().enumerate())
        .map(|(i, (answer, p, strategy, provider))| {
            let app = &app;
            async move {
                let behaviour = match provider {
                    Provider::Honest => "honest",
                    Provider::Restarter => "restarter",
                };
                let cutter = i / CASES_PER_CUTTER;
                let model = format!("{}-{behaviour}-{cutter}", strategy.as_str());
                let (id, status, body) = complete(app, &model, answer, p).await;
                (answer, p, strategy, provider, id, status, body)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(results.len(), total);
    for (answer, p, strategy, provider, id, status, body) in results {
        let (name, text) = CORPUS[answer];
        let case = format!("{name} cut at {p}, {strategy:?}/{provider:?} ({id})");
        assert_eq!(status, 200, "{case}: {body}");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content, expected(text, p, strategy, provider), "{case}");
    }
}

#[actix_web::test]
async fn a_trim_is_told_in_the_failover_event_and_the_debug_log() {
    let upstream = CorpusUpstream::start().await;
    let app = spawn_app_with(&corpus_config(&upstream, 1), |_| {}).await;
    let text = CORPUS[4].1;
    let p = cuts(text)[12];
    assert!(p >= MIN_RESTART_EVIDENCE);
    let (id, status, body) = complete(&app, "instruction-restarter-0", 4, p).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], text);
    let events = app.sse_all(ADMIN_KEY, &id, None).await;
    let failover: Vec<_> = events.iter().filter(|e| e.event == "failover").collect();
    assert_eq!(failover.len(), 1);
    let joined = &failover[0].data["continuation"];
    assert_eq!(joined["strategy"], "instruction");
    assert_eq!(joined["join"], "trimmed");
    assert_eq!(joined["emitted_bytes"], p);
    assert_eq!(joined["trimmed_bytes"], p);
    // The failover comes before the continuation's first chunk, after the cut one's.
    let kinds: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    let at = kinds.iter().position(|k| *k == "failover").unwrap();
    assert!(
        kinds[at + 1] == "chunk" && kinds[at - 1] == "chunk",
        "{kinds:?}"
    );

    let log: Value = app
        .get(&format!("/v1/executions/{id}/log"), ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let entries = log.to_string();
    assert!(
        entries.contains(r#""type":"reconciled""#) && entries.contains(r#""join":"trimmed""#),
        "{entries}"
    );

    // An honest continuation is told as an exact join.
    let (id, _, _) = complete(&app, "instruction-honest-0", 4, p).await;
    let events = app.sse_all(ADMIN_KEY, &id, None).await;
    let failover = events.iter().find(|e| e.event == "failover").unwrap();
    assert_eq!(failover.data["continuation"]["join"], "exact");
    assert_eq!(failover.data["continuation"]["trimmed_bytes"], 0);
}

#[actix_web::test]
async fn a_restarted_answer_that_differs_fails_instead_of_completing_spliced() {
    let upstream = CorpusUpstream::start().await;
    let app = spawn_app_with(&corpus_config(&upstream, 1), |_| {}).await;
    let text = CORPUS[0].1;
    let p = cuts(text)[3];
    let body = json!({"model": "restart-other-0", "idempotency_key": "diverging",
                      "messages": [{"role": "user", "content": format!("answer 0 cut {p}")}]});
    let id = app.submit(ADMIN_KEY, &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let exec = app.wait_terminal(ADMIN_KEY, &id).await;
    assert_eq!(exec["status"], "failed");
    assert_eq!(exec["error"]["code"], "stream_interrupted");
    assert!(
        exec["error"]["message"]
            .as_str()
            .unwrap()
            .contains("diverged"),
        "{exec}"
    );
    // What was delivered stays what it was: the cut answer's head, nothing spliced onto it.
    assert_eq!(exec["output"]["text"], &text[..p]);
}
