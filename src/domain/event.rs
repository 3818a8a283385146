//! One entry of an execution's event log: serialized once, shared by every reader.
//!
//! The JSON `data` is encoded when the event is created and never again; the SSE frame is built
//! from it at most once (on first use) and then handed to every SSE subscriber as a cheap
//! `Bytes` clone.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use std::sync::{Arc, OnceLock};

use crate::error::ErrorBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Status,
    Chunk,
    Failover,
    Done,
    Error,
    /// A workflow step started or finished (`state`), with the finished step's output.
    Step,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Chunk => "chunk",
            EventKind::Failover => "failover",
            EventKind::Done => "done",
            EventKind::Error => "error",
            EventKind::Step => "step",
        }
    }

    fn tag(self) -> u8 {
        match self {
            EventKind::Status => 1,
            EventKind::Chunk => 2,
            EventKind::Failover => 3,
            EventKind::Done => 4,
            EventKind::Error => 5,
            EventKind::Step => 6,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<EventKind> {
        Some(match tag {
            1 => EventKind::Status,
            2 => EventKind::Chunk,
            3 => EventKind::Failover,
            4 => EventKind::Done,
            5 => EventKind::Error,
            6 => EventKind::Step,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub kind: EventKind,
    /// The event's JSON object, exactly as every transport sends it (a view into `stored`).
    pub data: Bytes,
    /// The storage form, kept so the log append copies nothing: one tag byte, then `data`.
    stored: Bytes,
    sse: OnceLock<Bytes>,
    /// An event belongs to one execution, hence to one channel: its frame is built once.
    ws: OnceLock<bytestring::ByteString>,
}

pub type SharedEvent = Arc<Event>;

impl Event {
    /// An event from its storage form (tag byte, then the JSON data).
    fn from_stored(seq: u64, kind: EventKind, stored: Bytes) -> Event {
        Event {
            seq,
            kind,
            data: stored.slice(1..),
            stored,
            sse: OnceLock::new(),
            ws: OnceLock::new(),
        }
    }

    /// Builds an event whose data is `payload` serialized to JSON, written once, right after
    /// its tag byte.
    pub fn from_payload(seq: u64, kind: EventKind, payload: &impl Serialize) -> Event {
        Event::from_payload_sized(seq, kind, payload, 0)
    }

    /// [`Event::from_payload`] into a buffer sized for `text` bytes of strings in the payload
    /// (plus its field names and numbers), so that serializing it does not grow the buffer
    /// from empty: that was four reallocations and copies per chunk event.
    fn from_payload_sized(
        seq: u64,
        kind: EventKind,
        payload: &impl Serialize,
        text: usize,
    ) -> Event {
        let mut stored = Vec::with_capacity(64 + text);
        stored.push(kind.tag());
        serde_json::to_writer(&mut stored, payload).expect("event payloads serialize");
        Event::from_stored(seq, kind, Bytes::from(stored))
    }

    pub fn status(seq: u64, status: super::Status) -> Event {
        #[derive(Serialize)]
        struct Payload {
            seq: u64,
            status: super::Status,
        }
        Event::from_payload(seq, EventKind::Status, &Payload { seq, status })
    }

    /// `processing`, with the route the first try goes to.
    pub fn processing(seq: u64, provider: &str, model: &str) -> Event {
        #[derive(Serialize)]
        struct Payload<'a> {
            seq: u64,
            status: super::Status,
            provider: &'a str,
            model: &'a str,
        }
        let status = super::Status::Processing;
        Event::from_payload(
            seq,
            EventKind::Status,
            &Payload {
                seq,
                status,
                provider,
                model,
            },
        )
    }

    pub fn chunk(seq: u64, delta: &str) -> Event {
        #[derive(Serialize)]
        struct Payload<'a> {
            seq: u64,
            delta: &'a str,
        }
        Event::from_payload_sized(seq, EventKind::Chunk, &Payload { seq, delta }, delta.len())
    }

    /// A chunk of a workflow step's answer: says which step it belongs to.
    pub fn step_chunk(seq: u64, delta: &str, step: &str) -> Event {
        #[derive(Serialize)]
        struct Payload<'a> {
            seq: u64,
            delta: &'a str,
            step: &'a str,
        }
        Event::from_payload(seq, EventKind::Chunk, &Payload { seq, delta, step })
    }

    /// A fragment of a thinking block: a chunk with an empty text delta and one of
    /// `thinking`, `thinking_signature` (the block is complete) or `redacted_thinking`.
    pub fn thinking(seq: u64, fragment: &super::ThinkingDelta) -> Event {
        use super::ThinkingDelta;
        let (field, value) = match fragment {
            ThinkingDelta::Text(t) => ("thinking", t),
            ThinkingDelta::Signature(s) => ("thinking_signature", s),
            ThinkingDelta::Redacted(d) => ("redacted_thinking", d),
        };
        let mut payload = serde_json::Map::new();
        payload.insert("seq".into(), seq.into());
        payload.insert("delta".into(), "".into());
        payload.insert(field.into(), value.as_str().into());
        Event::from_payload(seq, EventKind::Chunk, &payload)
    }

    /// The thinking fragment a chunk event carries (see [`Event::thinking`]).
    pub fn carried_thinking(&self) -> Option<super::ThinkingDelta> {
        use super::ThinkingDelta;
        #[derive(serde::Deserialize)]
        struct Payload {
            #[serde(default)]
            thinking: Option<String>,
            #[serde(default)]
            thinking_signature: Option<String>,
            #[serde(default)]
            redacted_thinking: Option<String>,
        }
        if self.kind != EventKind::Chunk {
            return None;
        }
        let p: Payload = serde_json::from_slice(&self.data).ok()?;
        p.thinking
            .map(ThinkingDelta::Text)
            .or(p.thinking_signature.map(ThinkingDelta::Signature))
            .or(p.redacted_thinking.map(ThinkingDelta::Redacted))
    }

    /// A workflow step begins: its chunks follow.
    pub fn step_started(seq: u64, index: usize, name: &str, model: &str) -> Event {
        #[derive(Serialize)]
        struct Payload<'a> {
            seq: u64,
            state: &'static str,
            index: usize,
            step: &'a str,
            model: &'a str,
        }
        let payload = Payload {
            seq,
            state: "started",
            index,
            step: name,
            model,
        };
        Event::from_payload(seq, EventKind::Step, &payload)
    }

    /// A workflow step finished, carrying its whole result: the log alone tells a restarted
    /// process which steps are done (and what they said).
    pub fn step_completed(seq: u64, index: usize, result: &crate::workflows::StepResult) -> Event {
        #[derive(Serialize)]
        struct Payload<'a> {
            seq: u64,
            state: &'static str,
            index: usize,
            step: &'a str,
            result: &'a crate::workflows::StepResult,
        }
        let payload = Payload {
            seq,
            state: "completed",
            index,
            step: &result.name,
            result,
        };
        Event::from_payload(seq, EventKind::Step, &payload)
    }

    /// A step event's result when it says the step completed; `None` for a start.
    pub fn step_result(&self) -> Option<crate::workflows::StepResult> {
        #[derive(serde::Deserialize)]
        struct Payload {
            #[serde(default)]
            result: Option<crate::workflows::StepResult>,
        }
        if self.kind != EventKind::Step {
            return None;
        }
        serde_json::from_slice::<Payload>(&self.data).ok()?.result
    }

    /// Whether a `failover` event voids the answer so far (it starts over).
    pub fn restarts_answer(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct Payload {
            #[serde(default)]
            restart: bool,
        }
        self.kind == EventKind::Failover
            && serde_json::from_slice::<Payload>(&self.data).is_ok_and(|p| p.restart)
    }

    /// The tool calls that end an answer, each whole: a chunk with an empty text delta.
    pub fn tool_calls(seq: u64, calls: &[super::ToolCall]) -> Event {
        #[derive(Serialize)]
        struct Payload<'a> {
            seq: u64,
            delta: &'static str,
            tool_calls: &'a [super::ToolCall],
        }
        let payload = Payload {
            seq,
            delta: "",
            tool_calls: calls,
        };
        Event::from_payload(seq, EventKind::Chunk, &payload)
    }

    pub fn error(seq: u64, error: &ErrorBody) -> Event {
        #[derive(Serialize)]
        struct Payload<'a> {
            seq: u64,
            error: &'a ErrorBody,
        }
        Event::from_payload(seq, EventKind::Error, &Payload { seq, error })
    }

    /// The text of a chunk event (the log is the source of an execution's output), borrowed
    /// from the event's JSON when it holds no escapes.
    pub fn chunk_delta(&self) -> Option<std::borrow::Cow<'_, str>> {
        if self.kind != EventKind::Chunk {
            return None;
        }
        #[derive(serde::Deserialize)]
        struct Payload<'a> {
            #[serde(borrow)]
            delta: std::borrow::Cow<'a, str>,
        }
        serde_json::from_slice::<Payload>(&self.data)
            .ok()
            .map(|p| p.delta)
    }

    /// The tool calls a chunk event carries (see [`Event::tool_calls`]); empty for others.
    pub fn carried_tool_calls(&self) -> Vec<super::ToolCall> {
        #[derive(serde::Deserialize)]
        struct Payload {
            #[serde(default)]
            tool_calls: Vec<super::ToolCall>,
        }
        if self.kind != EventKind::Chunk {
            return Vec::new();
        }
        serde_json::from_slice::<Payload>(&self.data)
            .map(|p| p.tool_calls)
            .unwrap_or_default()
    }

    /// `id: <seq>\nevent: <kind>\ndata: <json>\n\n`, built once.
    pub fn sse_frame(&self) -> Bytes {
        self.sse
            .get_or_init(|| {
                let mut buf = BytesMut::with_capacity(self.data.len() + 40);
                buf.put_slice(b"id: ");
                buf.put_slice(self.seq.to_string().as_bytes());
                buf.put_slice(b"\nevent: ");
                buf.put_slice(self.kind.as_str().as_bytes());
                buf.put_slice(b"\ndata: ");
                buf.put_slice(&self.data);
                buf.put_slice(b"\n\n");
                buf.freeze()
            })
            .clone()
    }

    /// `{"channel": …, "event": <kind>, "seq": n, "data": <json>}`, built once and shared by
    /// every WebSocket session on the channel.
    pub fn ws_frame(&self, channel: &str) -> bytestring::ByteString {
        self.ws
            .get_or_init(|| {
                let mut buf = String::with_capacity(self.data.len() + channel.len() + 48);
                buf.push_str("{\"channel\":");
                buf.push_str(&serde_json::to_string(channel).expect("strings serialize"));
                buf.push_str(",\"event\":\"");
                buf.push_str(self.kind.as_str());
                buf.push_str("\",\"seq\":");
                buf.push_str(&self.seq.to_string());
                buf.push_str(",\"data\":");
                buf.push_str(std::str::from_utf8(&self.data).expect("event data is JSON text"));
                buf.push('}');
                buf.into()
            })
            .clone()
    }

    /// Storage form: one tag byte, then the JSON data.
    pub fn encode(&self) -> &[u8] {
        &self.stored
    }

    pub fn decode(seq: u64, stored: &[u8]) -> Option<Event> {
        Event::decode_shared(seq, Bytes::copy_from_slice(stored))
    }

    /// [`Event::decode`] of bytes it may keep (a slice of a log value read once).
    pub fn decode_shared(seq: u64, stored: Bytes) -> Option<Event> {
        let kind = EventKind::from_tag(*stored.first()?)?;
        Some(Event::from_stored(seq, kind, stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frame_has_id_event_and_data() {
        let ev = Event::chunk(7, "he said \"hi\"\n");
        let frame = ev.sse_frame();
        assert_eq!(
            std::str::from_utf8(&frame).unwrap(),
            "id: 7\nevent: chunk\ndata: {\"seq\":7,\"delta\":\"he said \\\"hi\\\"\\n\"}\n\n"
        );
        assert_eq!(ev.chunk_delta().as_deref(), Some("he said \"hi\"\n"));
    }

    #[test]
    fn ws_frame_wraps_the_data_once() {
        let ev = Event::chunk(3, "hi");
        let frame = ev.ws_frame("ai_response:p:ch_1");
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["channel"], "ai_response:p:ch_1");
        assert_eq!(v["event"], "chunk");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["data"]["delta"], "hi");
        assert!(std::ptr::eq(
            frame.as_ptr(),
            ev.ws_frame("ai_response:p:ch_1").as_ptr()
        ));
    }

    #[test]
    fn tool_calls_ride_a_chunk_with_an_empty_delta_and_read_back() {
        let call: crate::domain::ToolCall = serde_json::from_value(serde_json::json!(
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}))
        .unwrap();
        let ev = Event::tool_calls(4, std::slice::from_ref(&call));
        assert_eq!(ev.kind, EventKind::Chunk);
        assert_eq!(ev.chunk_delta().as_deref(), Some(""));
        let back = Event::decode(4, ev.encode()).unwrap();
        assert_eq!(back.carried_tool_calls(), vec![call]);
        assert!(Event::chunk(5, "text").carried_tool_calls().is_empty());
    }

    #[test]
    fn storage_round_trips() {
        let ev = Event::status(1, crate::domain::Status::Pending);
        let back = Event::decode(1, ev.encode()).unwrap();
        assert_eq!(back.kind, EventKind::Status);
        assert_eq!(back.data, ev.data);
        assert!(Event::decode(1, &[99, b'{']).is_none());
    }
}
