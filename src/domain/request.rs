//! The submit body as clients send it, its validation, and the canonical chat request that
//! providers translate into their own wire formats.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::tools::{self, Tool, ToolCall, ToolChoice};
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    /// Text; `null` is accepted as empty (an assistant turn that only calls tools has none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The calls an assistant turn made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Images a user message shows the model, after its text (needs a `vision` route).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
    /// The thinking blocks an assistant turn began with, sent back as they came (Anthropic
    /// requires them with tool results when thinking is on; other formats have no use for them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thinking: Vec<super::ThinkingBlock>,
}

/// An image input: an `http(s)` URL or a `data:image/…;base64,…` URL, as OpenAI takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub url: String,
    /// OpenAI's `auto` / `low` / `high`; other formats ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Image {
    /// `(media type, base64 data)` of a data URL; `None` for a remote URL.
    pub fn inline(&self) -> Option<(&str, &str)> {
        let rest = self.url.strip_prefix("data:")?;
        let (media_type, data) = rest.split_once(";base64,")?;
        Some((media_type, data))
    }

    /// The media type: a data URL's own, else guessed from the URL's extension.
    pub fn media_type(&self) -> &str {
        if let Some((media_type, _)) = self.inline() {
            return media_type;
        }
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        let ext = path.rsplit('.').next().unwrap_or_default();
        match ext.to_ascii_lowercase().as_str() {
            "png" => "image/png",
            "gif" => "image/gif",
            "webp" => "image/webp",
            "heic" => "image/heic",
            _ => "image/jpeg",
        }
    }

    fn check(&self, field: &str) -> Result<(), ApiError> {
        let remote = url::Url::parse(&self.url)
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .unwrap_or(false);
        if let Some((media_type, data)) = self.inline() {
            if !INLINE_IMAGE_TYPES.contains(&media_type) {
                return Err(ApiError::invalid(format!(
                    "{field}.url: inline images must be one of {}, got `{media_type}`",
                    INLINE_IMAGE_TYPES.join(", ")
                )));
            }
            use base64::Engine;
            if data.is_empty()
                || base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .is_err()
            {
                return Err(ApiError::invalid(format!(
                    "{field}.url: the data URL's payload is not valid base64"
                )));
            }
        } else if !remote {
            return Err(ApiError::invalid(format!(
                "{field}.url: must be an http(s) URL or a data:image/...;base64,... URL"
            )));
        }
        match self.detail.as_deref() {
            None | Some("auto" | "low" | "high") => Ok(()),
            Some(other) => Err(ApiError::invalid(format!(
                "{field}.detail: must be auto, low or high, got `{other}`"
            ))),
        }
    }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            images: Vec::new(),
            thinking: Default::default(),
        }
    }

    /// The name of the function whose call `tool_call_id` answers, looked up in the turns
    /// before (formats such as Gemini's identify a result by function name, not call id).
    pub fn answered_function<'a>(&self, earlier: &'a [Message]) -> Option<&'a str> {
        let id = self.tool_call_id.as_deref()?;
        earlier
            .iter()
            .rev()
            .flat_map(|m| &m.tool_calls)
            .find(|c| c.id == id)
            .map(|c| c.function.name.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Sampling parameters passed through to providers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// OpenAI's `{"type": "text" | "json_object" | "json_schema", …}`, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Extended thinking (routes that have it: Anthropic's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<super::ThinkingParam>,
}

impl Params {
    /// Whether the request involves tool calling at all (a route must then support it).
    pub fn uses_tools(&self) -> bool {
        !self.tools.is_empty()
    }
}

/// `POST /v1/executions` body. Unknown fields are rejected so that typos do not pass silently.
/// The fields added after the first release are skipped when empty, so the fingerprint of a
/// body that does not use them is what it always was (idempotency keys keep matching).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// A model slug; may be left out when a `workflow` names one.
    #[serde(default)]
    pub model: String,
    pub messages: Vec<Message>,
    pub idempotency_key: String,
    #[serde(default)]
    pub params: Params,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// A named JSON Schema (`[[structures]]` or the admin API) the answer must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structure: Option<String>,
    /// A named workflow: its model, system prompt, structure and steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Values for the workflow's templates (`{{name}}`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub variables: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Testing mode only: a fault the first attempt acts out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate: Option<Simulate>,
}

/// Whether providers answer (`live`) or the built-in testing answer does (`testing`: the whole
/// pipeline runs — limits, events, webhooks, analytics — but no provider is called or paid).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Live,
    Testing,
}

impl Mode {
    pub fn is_live(&self) -> bool {
        *self == Mode::Live
    }
}

/// A fault for a testing execution's first attempt to act out, so an application can test its
/// own handling of failover and reconnects end to end. The next attempt (a second built-in
/// route) answers normally, continuing from the text already emitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simulate {
    /// The stream breaks after this many chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_after_chunks: Option<u32>,
    /// The attempt is refused with this HTTP status (429, 500, 503, …) before any chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The stream goes silent after this many chunks, until the route's idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_after_chunks: Option<u32>,
}

/// What a provider is asked: the conversation and the sampling parameters — and, for a
/// workflow with steps, the plan of every step (each step's own request is built from it when
/// the step starts). Stored once per execution; fields are skipped when empty so requests
/// stored before they existed still decode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub params: Params,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate: Option<Simulate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::workflows::StepPlan>,
    /// The workflow's variables, kept for the templates of later steps.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub variables: Map<String, Value>,
}

const MAX_MESSAGES: usize = 2048;
const MAX_IDEMPOTENCY_KEY: usize = 255;
const MAX_METADATA_KEYS: usize = 50;
const MAX_IMAGES: usize = 20;
/// The image types every provider with vision accepts inline.
const INLINE_IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];
const MAX_METADATA_KEY_LEN: usize = 40;
const MAX_METADATA_VALUE_LEN: usize = 500;

fn range(field: &str, value: Option<f64>, lo: f64, hi: f64) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(ApiError::invalid(format!(
            "{field}: must be between {lo} and {hi}, got {v}"
        ))),
        _ => Ok(()),
    }
}

fn unanswered(at: usize, ids: &[&str]) -> ApiError {
    ApiError::invalid(format!(
        "messages[{at}].tool_calls: `{}` must be answered by tool messages right after it",
        ids.join("`, `")
    ))
}

impl SubmitBody {
    /// Checks everything that does not need the configuration (the model slug is checked
    /// against the routing table by the caller).
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.model.trim().is_empty() && self.workflow.is_none() {
            return Err(ApiError::invalid("model: must not be empty"));
        }

        if self.idempotency_key.is_empty() || self.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ApiError::invalid(format!(
                "idempotency_key: must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
            )));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages: must contain at least one message",
            ));
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::invalid(format!(
                "messages: at most {MAX_MESSAGES} messages"
            )));
        }
        if !self.messages.iter().any(|m| m.role != Role::System) {
            return Err(ApiError::invalid(
                "messages: needs at least one non-system message",
            ));
        }
        let p = &self.params;
        range("params.temperature", p.temperature, 0.0, 2.0)?;
        range("params.top_p", p.top_p, 0.0, 1.0)?;
        range("params.presence_penalty", p.presence_penalty, -2.0, 2.0)?;
        range("params.frequency_penalty", p.frequency_penalty, -2.0, 2.0)?;
        if p.max_tokens == Some(0) {
            return Err(ApiError::invalid("params.max_tokens: must be at least 1"));
        }
        if let Some(Stop::Many(stops)) = &p.stop {
            if stops.len() > 4 {
                return Err(ApiError::invalid("params.stop: at most 4 sequences"));
            }
        }
        if let Some(format) = &p.response_format {
            let kind = format.get("type").and_then(Value::as_str);
            if !matches!(kind, Some("text" | "json_object" | "json_schema")) {
                return Err(ApiError::invalid(
                    "params.response_format.type: must be text, json_object or json_schema",
                ));
            }
        }
        tools::validate(&p.tools, p.tool_choice.as_ref())?;
        self.validate_turns()?;
        self.validate_metadata()?;
        if let Some(hook) = &self.webhook_url {
            let ok = url::Url::parse(hook)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(ApiError::invalid(
                    "webhook_url: must be an absolute http or https URL",
                ));
            }
        }
        Ok(())
    }

    /// Each message on its own: tool calls only from the assistant, images only from the user,
    /// `tool_call_id` only (and always) on tool messages.
    fn validate_turns(&self) -> Result<(), ApiError> {
        for (i, m) in self.messages.iter().enumerate() {
            if !m.tool_calls.is_empty() && m.role != Role::Assistant {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].tool_calls: only assistant messages make tool calls"
                )));
            }
            for (j, call) in m.tool_calls.iter().enumerate() {
                if call.id.is_empty() || call.function.name.is_empty() {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}].tool_calls[{j}]: needs an id and a function name"
                    )));
                }
            }
            if !m.images.is_empty() && m.role != Role::User {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].images: only user messages carry images"
                )));
            }
            if m.images.len() > MAX_IMAGES {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].images: at most {MAX_IMAGES} per message"
                )));
            }
            for (j, image) in m.images.iter().enumerate() {
                image.check(&format!("messages[{i}].images[{j}]"))?;
            }
            match (m.role, m.tool_call_id.is_some()) {
                (Role::Tool, false) => {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}].tool_call_id: required on tool messages"
                    )))
                }
                (Role::Tool, true) | (_, false) => {}
                (_, true) => {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}].tool_call_id: only tool messages answer tool calls"
                    )))
                }
            }
        }
        self.validate_tool_pairing()
    }

    /// OpenAI's rule, which every provider enforces in its own way: the tool messages right
    /// after an assistant turn answer each of its calls, once, before the conversation goes on.
    fn validate_tool_pairing(&self) -> Result<(), ApiError> {
        // The calls of the last assistant turn still waiting for a result, and that turn.
        let mut open: Vec<&str> = Vec::new();
        let mut asked_at = 0;
        // Call ids name their results, so one id may be used once in a conversation.
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.messages.iter().enumerate() {
            for (j, call) in m.tool_calls.iter().enumerate() {
                if !seen.insert(call.id.as_str()) {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}].tool_calls[{j}].id: `{}` is used by another call",
                        call.id
                    )));
                }
            }
            if let Some(id) = m.tool_call_id.as_deref() {
                let Some(k) = open.iter().position(|o| *o == id) else {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}].tool_call_id: `{id}` answers no open tool call of the \
                         assistant message before it"
                    )));
                };
                open.swap_remove(k);
                continue;
            }
            if !open.is_empty() {
                return Err(unanswered(asked_at, &open));
            }
            open = m.tool_calls.iter().map(|c| c.id.as_str()).collect();
            asked_at = i;
        }
        match open.is_empty() {
            true => Ok(()),
            false => Err(unanswered(asked_at, &open)),
        }
    }

    fn validate_metadata(&self) -> Result<(), ApiError> {
        if self.metadata.len() > MAX_METADATA_KEYS {
            return Err(ApiError::invalid(format!(
                "metadata: at most {MAX_METADATA_KEYS} keys"
            )));
        }
        for (key, value) in &self.metadata {
            if key.is_empty() || key.len() > MAX_METADATA_KEY_LEN {
                return Err(ApiError::invalid(format!(
                    "metadata: keys must be 1 to {MAX_METADATA_KEY_LEN} characters"
                )));
            }
            match value {
                Value::String(s) if s.len() <= MAX_METADATA_VALUE_LEN => {}
                Value::String(_) => {
                    return Err(ApiError::invalid(format!(
                        "metadata.{key}: at most {MAX_METADATA_VALUE_LEN} characters"
                    )))
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "metadata.{key}: values must be strings"
                    )))
                }
            }
        }
        Ok(())
    }

    /// A stable fingerprint of the whole body: same key + same fingerprint is a retry,
    /// same key + another fingerprint is a conflict. Field order is fixed by the struct and
    /// metadata keys are sorted, so equal bodies always hash equal.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let bytes = serde_json::to_vec(self).expect("submit body serializes");
        hex::encode(Sha256::digest(bytes))
    }

    pub fn chat_request(&self) -> ChatRequest {
        ChatRequest {
            messages: self.messages.clone(),
            params: self.params.clone(),
            simulate: self.simulate.clone(),
            ..ChatRequest::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: Value) -> SubmitBody {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> Value {
        serde_json::json!({"model": "chat-default", "idempotency_key": "k1",
            "messages": [{"role": "user", "content": "hi"}]})
    }

    #[test]
    fn a_minimal_body_is_valid() {
        body(base()).validate().unwrap();
    }

    #[test]
    fn out_of_range_params_name_the_field() {
        let mut v = base();
        v["params"] = serde_json::json!({"temperature": 3.5});
        let err = body(v).validate().unwrap_err();
        assert!(err.body.message.starts_with("params.temperature"), "{err}");
    }

    #[test]
    fn metadata_values_must_be_strings() {
        let mut v = base();
        v["metadata"] = serde_json::json!({"user": 5});
        let err = body(v).validate().unwrap_err();
        assert!(err.body.message.contains("metadata.user"));
    }

    #[test]
    fn fingerprint_ignores_metadata_key_order_but_not_content() {
        let mut a = base();
        a["metadata"] = serde_json::json!({"a": "1", "b": "2"});
        let b: SubmitBody =
            serde_json::from_str(r#"{"model":"chat-default","idempotency_key":"k1","messages":[{"role":"user","content":"hi"}],"metadata":{"b":"2","a":"1"}}"#).unwrap();
        assert_eq!(body(a.clone()).fingerprint(), b.fingerprint());
        a["messages"][0]["content"] = "other".into();
        assert_ne!(body(a).fingerprint(), b.fingerprint());
    }

    fn with_messages(messages: Value) -> Result<(), ApiError> {
        let mut v = base();
        v["messages"] = messages;
        body(v).validate()
    }

    fn call(id: &str) -> Value {
        serde_json::json!({"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}})
    }

    #[test]
    fn every_tool_call_is_answered_right_after_it() {
        let user = serde_json::json!({"role": "user", "content": "q"});
        let asks = serde_json::json!({"role": "assistant", "content": null,
            "tool_calls": [call("a"), call("b")]});
        let answer =
            |id: &str| serde_json::json!({"role": "tool", "tool_call_id": id, "content": "r"});
        // Answered in any order, then the conversation goes on.
        with_messages(serde_json::json!([
            user,
            asks,
            answer("b"),
            answer("a"),
            user
        ]))
        .unwrap();
        let err = |m: Value| with_messages(m).unwrap_err().body.message;
        let missing = err(serde_json::json!([user, asks, answer("a"), user]));
        assert!(
            missing.starts_with("messages[1].tool_calls: `b`"),
            "{missing}"
        );
        let at_end = err(serde_json::json!([user, asks, answer("a")]));
        assert!(at_end.contains("`b` must be answered"), "{at_end}");
        let twice = err(serde_json::json!([user, asks, answer("a"), answer("a")]));
        assert!(twice.starts_with("messages[3].tool_call_id"), "{twice}");
        let again = err(serde_json::json!([
            user,
            asks,
            answer("a"),
            answer("b"),
            user,
            asks
        ]));
        assert!(again.starts_with("messages[5].tool_calls[0].id"), "{again}");
        let late = err(serde_json::json!([
            user,
            asks,
            answer("a"),
            answer("b"),
            user,
            answer("a")
        ]));
        assert!(late.starts_with("messages[5].tool_call_id"), "{late}");
    }

    #[test]
    fn inline_images_are_checked_for_type_and_base64() {
        let user = |url: &str| serde_json::json!([{"role": "user", "content": "look", "images": [{"url": url}]}]);
        with_messages(user("data:image/png;base64,iVBORw0KGgo=")).unwrap();
        with_messages(user("https://example.test/cat.jpg")).unwrap();
        let err = |url: &str| with_messages(user(url)).unwrap_err().body.message;
        assert!(err("data:image/svg+xml;base64,PHN2Zz4=").contains("`image/svg+xml`"));
        assert!(err("data:image/png;base64,not base64!").contains("not valid base64"));
        assert!(err("ftp://example.test/cat.png").contains("http(s) URL"));
    }

    #[test]
    fn bad_webhook_urls_are_rejected() {
        let mut v = base();
        v["webhook_url"] = "ftp://x".into();
        assert!(body(v).validate().is_err());
    }
}
