//! The built-in mock provider: deterministic text with configurable length and pacing, no
//! network. Chunks are generated one at a time as the stream is polled, so a long answer costs
//! no memory up front and a cancelled one no work past the cancel. It understands continuations (prefill and instruction), so failover and crash
//! resumption can be demonstrated with it. Offered tools, it calls one (arguments filled in
//! from the function's schema) unless the conversation already ends with a tool result. Asked
//! for JSON, it answers with the schema's deterministic sample (`structured::sample`). It also
//! answers testing-mode executions, acting out their simulated faults.

use futures_util::stream::{self, StreamExt};
use std::time::Duration;

use super::{
    approx_tokens, Delta, Embeddings, ProviderError, ProviderStream, StreamItem, UpstreamRequest,
};
use crate::domain::tools::ToolMode;
use crate::domain::{Role, ToolCallDelta, Usage};
use crate::settings::ProviderSettings;
use crate::store::{AttemptLog, LogEntry};

const VOCABULARY: &[&str] = &[
    "switchyard",
    "routes",
    "every",
    "chunk",
    "through",
    "one",
    "ordered",
    "log",
    "so",
    "streams",
    "survive",
    "failover",
    "and",
    "restarts",
    "without",
    "repeating",
    "or",
    "losing",
    "a",
    "single",
    "word",
    "while",
    "subscribers",
    "follow",
    "along",
    "live",
    "the",
    "answer",
];

pub struct Mock {
    chunks: u32,
    interval: Duration,
}

impl Mock {
    pub fn new(settings: &ProviderSettings) -> Mock {
        Mock {
            chunks: settings.mock_chunks,
            interval: Duration::from_millis(settings.mock_chunk_interval_ms),
        }
    }

    /// The same result type as the network providers' `open` (one error type for routing).
    #[allow(clippy::result_large_err)]
    pub fn open(
        &self,
        req: &UpstreamRequest,
        log: &AttemptLog,
    ) -> Result<ProviderStream, ProviderError> {
        log.record(LogEntry::Request {
            url: "mock://local",
            headers: Vec::new(),
            body: &serde_json::json!({"model": req.model,
                "messages": req.messages, "tools": req.params.tools,
                "response_format": req.params.response_format, "simulate": req.fault}),
        });
        let fault = req.fault.clone().unwrap_or_default();
        if let Some(status) = fault.status {
            let retry_after = (status == 429).then_some(Duration::from_secs(1));
            let body = format!("{{\"error\":{{\"message\":\"simulated HTTP {status}\"}}}}");
            return Err(ProviderError::from_status(status, retry_after, &body));
        }
        if let Some(call) = tool_call(req) {
            return Ok(self.call_tool(req, call, log));
        }
        Ok(act_out(fault, self.answer(req, log)))
    }

    fn answer(&self, req: &UpstreamRequest, log: &AttemptLog) -> ProviderStream {
        if let Some(json) = json_answer(req, self.chunks) {
            return self.stream_text(req, json, log);
        }
        let answer = Answer::of(req, self.chunks);
        let start = continuation_offset(req, &answer);
        let prompt_tokens: u64 = req.messages.iter().map(|m| approx_tokens(&m.content)).sum();
        let completion_tokens = answer.chunks - start;
        let interval = self.interval;
        let log = log.clone();
        let body = stream::iter(start..answer.chunks).then(move |i| {
            let log = log.clone();
            async move {
                let word = answer.chunk(i);
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                log.record(LogEntry::Chunk { data: &word });
                Ok(StreamItem::Delta(Delta {
                    text: Some(word),
                    ..Delta::default()
                }))
            }
        });
        let finish =
            stream::once(async move { Ok(finish("stop", prompt_tokens, completion_tokens)) });
        body.chain(finish).boxed()
    }

    /// Streams a whole answer text in pieces of about [`JSON_PIECE`] bytes, from where a
    /// continuation's prior text (a prefix of it) ends.
    fn stream_text(&self, req: &UpstreamRequest, text: String, log: &AttemptLog) -> ProviderStream {
        let start = prior_answer(req)
            .filter(|prior| text.starts_with(prior))
            .map_or(0, str::len);
        let mut pieces = Vec::new();
        let mut at = start;
        while at < text.len() {
            let mut end = (at + JSON_PIECE).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            pieces.push(text[at..end].to_string());
            at = end;
        }
        let prompt_tokens: u64 = req.messages.iter().map(|m| approx_tokens(&m.content)).sum();
        let completion_tokens = (pieces.len() as u64).max(1);
        let (interval, log) = (self.interval, log.clone());
        let body = stream::iter(pieces).then(move |piece| {
            let log = log.clone();
            async move {
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                log.record(LogEntry::Chunk { data: &piece });
                Ok(StreamItem::Delta(Delta {
                    text: Some(piece),
                    ..Delta::default()
                }))
            }
        });
        let finish =
            stream::once(async move { Ok(finish("stop", prompt_tokens, completion_tokens)) });
        body.chain(finish).boxed()
    }

    /// Streams one tool call: the name first, then the arguments in two fragments, as real
    /// providers split them.
    fn call_tool(&self, req: &UpstreamRequest, call: MockCall, log: &AttemptLog) -> ProviderStream {
        let prompt_tokens: u64 = req.messages.iter().map(|m| approx_tokens(&m.content)).sum();
        let completion_tokens = approx_tokens(&call.arguments).max(1);
        let split = call.arguments.len() / 2;
        let split = (split..=call.arguments.len())
            .find(|&i| call.arguments.is_char_boundary(i))
            .unwrap_or(0);
        let fragments = vec![
            ToolCallDelta {
                index: 0,
                id: Some(call.id),
                name: Some(call.name),
                ..ToolCallDelta::default()
            },
            ToolCallDelta {
                index: 0,
                arguments: call.arguments[..split].to_string(),
                ..ToolCallDelta::default()
            },
            ToolCallDelta {
                index: 0,
                arguments: call.arguments[split..].to_string(),
                ..ToolCallDelta::default()
            },
        ];
        let (interval, log) = (self.interval, log.clone());
        let body = stream::iter(fragments).then(move |fragment| {
            let log = log.clone();
            async move {
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                log.record(LogEntry::Chunk {
                    data: &format!("{fragment:?}"),
                });
                Ok(StreamItem::Delta(Delta {
                    tool_calls: vec![fragment],
                    ..Delta::default()
                }))
            }
        });
        let end =
            stream::once(async move { Ok(finish("tool_calls", prompt_tokens, completion_tokens)) });
        body.chain(end).boxed()
    }
}

/// A testing execution's simulated fault, acted out on the stream: cut after `k` chunks, or
/// silent after `k` chunks (until the route's idle timeout ends the attempt).
fn act_out(fault: crate::domain::Simulate, answer: ProviderStream) -> ProviderStream {
    let (cut, stall) = (fault.fail_after_chunks, fault.stall_after_chunks);
    if cut.is_none() && stall.is_none() {
        return answer;
    }
    let limit = cut.or(stall).unwrap_or_default() as usize;
    let head = answer.take(limit);
    let tail = stream::once(async move {
        if cut.is_some() {
            return Err(ProviderError::cut("simulated fault (fail_after_chunks)"));
        }
        std::future::pending::<()>().await;
        unreachable!("a stall never ends by itself")
    });
    head.chain(tail).boxed()
}

fn finish(reason: &str, prompt_tokens: u64, completion_tokens: u64) -> StreamItem {
    StreamItem::Delta(Delta {
        finish_reason: Some(reason.into()),
        usage: Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }),
        ..Delta::default()
    })
}

struct MockCall {
    id: String,
    name: String,
    arguments: String,
}

/// The call the mock makes: the named tool, else the first one, with every required property
/// (all of them when none is marked required) filled in by type, strings with the last user
/// message. None when no tools are offered, `tool_choice` is `none`, or the model has just been
/// given a tool result (then it answers in text).
fn tool_call(req: &UpstreamRequest) -> Option<MockCall> {
    let params = &req.params;
    if params.tool_choice.as_ref() == Some(&crate::domain::tools::ToolChoice::Mode(ToolMode::None))
        || req.messages.last().is_some_and(|m| m.role == Role::Tool)
    {
        return None;
    }
    let named = params.tool_choice.as_ref().and_then(|c| c.named());
    let tool = match named {
        Some(name) => params.tools.iter().find(|t| t.function.name == name),
        None => params.tools.first(),
    }?;
    let said = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    let schema = tool.function.parameters.clone().unwrap_or_default();
    let properties = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_else(|| properties.keys().map(String::as_str).collect());
    let arguments: serde_json::Map<String, serde_json::Value> = required
        .into_iter()
        .map(|name| {
            let value = match properties.get(name).and_then(|p| p["type"].as_str()) {
                Some("integer" | "number") => serde_json::json!(1),
                Some("boolean") => serde_json::json!(true),
                Some("array") => serde_json::json!([]),
                Some("object") => serde_json::json!({}),
                _ => serde_json::json!(said),
            };
            (name.to_string(), value)
        })
        .collect();
    let turn = req.messages.len();
    Some(MockCall {
        id: format!("call_mock_{turn}"),
        name: tool.function.name.clone(),
        arguments: serde_json::Value::Object(arguments).to_string(),
    })
}

impl Mock {
    /// Deterministic unit vectors derived from each input's bytes.
    pub fn embed(&self, input: &[String], dimensions: usize) -> Embeddings {
        let vectors = input
            .iter()
            .map(|text| {
                let mut v: Vec<f32> = (0..dimensions as u64)
                    .map(|i| {
                        let h = text
                            .bytes()
                            .fold(i.wrapping_mul(0x9E37_79B9) ^ 0xcbf2_9ce4, |h, b| {
                                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
                            });
                        (h % 2001) as f32 / 1000.0 - 1.0
                    })
                    .collect();
                let norm = v
                    .iter()
                    .map(|x| x * x)
                    .sum::<f32>()
                    .sqrt()
                    .max(f32::EPSILON);
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect();
        let prompt_tokens = input.iter().map(|t| approx_tokens(t)).sum();
        Embeddings {
            vectors,
            prompt_tokens,
            headroom: None,
        }
    }
}

/// Bytes per chunk of a JSON answer: several chunks even for a small object, as providers
/// stream them.
const JSON_PIECE: usize = 12;

/// The answer to a request for JSON: for a schema, the deterministic sample of it (so the
/// embedded start serves structured output); for JSON mode, the text answer as an object.
fn json_answer(req: &UpstreamRequest, chunks: u32) -> Option<String> {
    let format = req.params.response_format.as_ref()?;
    let data = match format.get("type")?.as_str()? {
        "json_schema" => {
            let schema = format.pointer("/json_schema/schema");
            crate::structured::sample::sample(schema.unwrap_or(&serde_json::Value::Bool(true)))
        }
        "json_object" => {
            let answer = Answer::of(req, chunks);
            let text: String = (0..answer.chunks).map(|i| answer.chunk(i)).collect();
            serde_json::json!({"answer": text.trim_end()})
        }
        _ => return None,
    };
    Some(data.to_string())
}

/// The assistant text a continuation request carries (a prefill, or the turn before the
/// continue instruction).
fn prior_answer(req: &UpstreamRequest) -> Option<&str> {
    crate::routing::continued_turn(&req.messages).map(|m| m.content.as_str())
}

/// The answer for this conversation, computed chunk by chunk: chunk `i` is one word and a
/// space, chosen from the vocabulary by a hash of the first user message (stable across
/// continuations).
#[derive(Clone, Copy)]
struct Answer {
    seed: u64,
    chunks: u64,
}

impl Answer {
    fn of(req: &UpstreamRequest, chunks: u32) -> Answer {
        let prompt = req
            .messages
            .iter()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        let seed = prompt.bytes().fold(1469598103934665603u64, |h, b| {
            (h ^ b as u64).wrapping_mul(1099511628211)
        });
        Answer {
            seed,
            chunks: chunks.into(),
        }
    }

    fn word(&self, i: u64) -> &'static str {
        let n = VOCABULARY.len() as u64;
        VOCABULARY[((self.seed >> 7).wrapping_add(i.wrapping_mul(11)) % n) as usize]
    }

    fn chunk(&self, i: u64) -> String {
        format!("{} ", self.word(i))
    }
}

/// How many chunks a continuation already has: the trailing assistant text (prefill, or the
/// assistant turn before the continue instruction) when it is a chunk-aligned prefix. Walks
/// the answer only as far as that text reaches.
fn continuation_offset(req: &UpstreamRequest, answer: &Answer) -> u64 {
    let Some(prior) = prior_answer(req) else {
        return 0;
    };
    let mut rest = prior;
    for i in 0..answer.chunks {
        if rest.is_empty() {
            return i;
        }
        match rest
            .strip_prefix(answer.word(i))
            .and_then(|r| r.strip_prefix(' '))
        {
            Some(r) => rest = r,
            None => return 0,
        }
    }
    if rest.is_empty() {
        answer.chunks
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Message, Params};
    use crate::routing::CONTINUE_INSTRUCTION;

    fn req(messages: Vec<Message>) -> UpstreamRequest {
        UpstreamRequest {
            model: "mock-1".into(),
            messages,
            params: Params::default(),
            fault: None,
            structured: Default::default(),
        }
    }

    fn collect(mock: &Mock, r: &UpstreamRequest) -> String {
        let items: Vec<_> = crate::providers::block_on_test(
            mock.open(r, &AttemptLog::disabled()).unwrap().collect(),
        );
        items
            .into_iter()
            .filter_map(|i| match i {
                Ok(StreamItem::Delta(d)) => d.text,
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_huge_answer_streams_without_being_built_first() {
        let mock = Mock {
            chunks: u32::MAX,
            interval: Duration::ZERO,
        };
        let r = req(vec![Message::new(Role::User, "hello")]);
        let first: Vec<_> = crate::providers::block_on_test(
            mock.open(&r, &AttemptLog::disabled())
                .unwrap()
                .take(3)
                .collect(),
        );
        let text: String = first
            .into_iter()
            .filter_map(|i| match i {
                Ok(StreamItem::Delta(d)) => d.text,
                _ => None,
            })
            .collect();
        assert_eq!(text.split_whitespace().count(), 3);
    }

    #[test]
    fn a_schema_is_answered_with_its_sample_and_continued_from_a_prefill() {
        let mock = Mock {
            chunks: 6,
            interval: Duration::ZERO,
        };
        let schema = serde_json::json!({"type": "object", "required": ["city", "days"],
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}}});
        let mut r = req(vec![Message::new(Role::User, "plan")]);
        r.params.response_format = Some(serde_json::json!({"type": "json_schema",
            "json_schema": {"name": "trip", "schema": schema.clone()}}));
        let full = collect(&mock, &r);
        let data: serde_json::Value = serde_json::from_str(&full).unwrap();
        assert!(jsonschema::is_valid(&schema, &data), "{full}");
        assert_eq!(full, collect(&mock, &r), "deterministic");
        let head = &full[..full.len() / 2];
        r.messages.push(Message::new(Role::Assistant, head));
        assert_eq!(format!("{head}{}", collect(&mock, &r)), full);
        let mut object = req(vec![Message::new(Role::User, "hi")]);
        object.params.response_format = Some(serde_json::json!({"type": "json_object"}));
        let answer: serde_json::Value = serde_json::from_str(&collect(&mock, &object)).unwrap();
        assert!(answer["answer"].as_str().unwrap().split(' ').count() == 6);
    }

    #[test]
    fn the_answer_is_deterministic_and_continues_from_a_prefill() {
        let mock = Mock {
            chunks: 6,
            interval: Duration::ZERO,
        };
        let user = Message::new(Role::User, "hello");
        let full = collect(&mock, &req(vec![user.clone()]));
        assert_eq!(full, collect(&mock, &req(vec![user.clone()])));
        assert_eq!(full.split_whitespace().count(), 6);
        let head: String = full.split_inclusive(' ').take(2).collect();
        let rest = collect(
            &mock,
            &req(vec![
                user.clone(),
                Message::new(Role::Assistant, head.clone()),
            ]),
        );
        assert_eq!(format!("{head}{rest}"), full);
        let rest = collect(
            &mock,
            &req(vec![
                user,
                Message::new(Role::Assistant, head.clone()),
                Message::new(Role::User, CONTINUE_INSTRUCTION),
            ]),
        );
        assert_eq!(format!("{head}{rest}"), full);
    }
}
