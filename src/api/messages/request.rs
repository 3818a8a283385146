//! An Anthropic Messages request as clients send it — its settings, tools and tool choice —
//! and the canonical submit it amounts to (the conversation itself is `conversation`'s job).
//! What the canonical request cannot carry is a 400 naming the field, never a silent drop.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::conversation::{block, conversation, unsupported, Conversation, InMessage, System};
use crate::domain::request::Stop;
use crate::domain::tools::{FunctionSpec, NamedFunction, Tool, ToolKind};
use crate::domain::tools::{ToolChoice, ToolMode};
use crate::domain::{Params, SubmitBody, ThinkingParam};
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesRequest {
    pub model: String,
    messages: Vec<InMessage>,
    /// Required, as Anthropic requires it.
    max_tokens: u32,
    #[serde(default)]
    system: Option<System>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    /// Accepted so the refusal can name it: no route format is asked for it.
    #[serde(default)]
    top_k: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<InToolChoice>,
    /// Extended thinking: `{"type": "enabled", "budget_tokens"}` or `{"type": "disabled"}`.
    #[serde(default)]
    thinking: Option<Value>,
    /// `auto` and `standard_only` both mean "whatever the route gives".
    #[serde(default)]
    service_tier: Option<String>,
    /// A prompt-caching marker: a hint that does not change the answer, ignored.
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
}

/// `POST /v1/messages/count_tokens` takes the same conversation without the answer settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountRequest {
    pub model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    system: Option<System>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<InToolChoice>,
    #[serde(default)]
    thinking: Option<Value>,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InToolChoice {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolDef {
    name: String,
    #[serde(default)]
    description: Option<String>,
    input_schema: Value,
    /// Only `custom` (a client tool): server tools run at Anthropic, not on every route.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// Arguments held to the schema: passed on as the canonical `strict`.
    #[serde(default)]
    strict: Option<bool>,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
}

fn convert_tools(tools: Vec<Value>) -> Result<Vec<Tool>, ApiError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let at = format!("tools[{i}]");
            let def: ToolDef = block(value, &at)?;
            if let Some(kind) = def.kind.filter(|k| k != "custom") {
                return Err(unsupported(
                    &format!("{at}.type"),
                    &format!("the server tool `{kind}`"),
                ));
            }
            Ok(Tool {
                kind: ToolKind::Function,
                function: FunctionSpec {
                    name: def.name,
                    description: def.description,
                    parameters: Some(def.input_schema),
                    strict: def.strict,
                },
            })
        })
        .collect()
}

fn convert_choice(choice: InToolChoice) -> Result<(ToolChoice, Option<bool>), ApiError> {
    let parallel = choice.disable_parallel_tool_use.map(|d| !d);
    let mode = |m| Ok((ToolChoice::Mode(m), parallel));
    match (choice.kind.as_str(), choice.name) {
        ("auto", None) => mode(ToolMode::Auto),
        ("any", None) => mode(ToolMode::Required),
        ("none", None) => mode(ToolMode::None),
        ("tool", Some(name)) => Ok((
            ToolChoice::Named {
                kind: ToolKind::Function,
                function: NamedFunction { name },
            },
            parallel,
        )),
        ("tool", None) => Err(ApiError::invalid(
            "tool_choice.name: required when type is `tool`",
        )),
        ("auto" | "any" | "none", Some(_)) => Err(ApiError::invalid(
            "tool_choice.name: only allowed when type is `tool`",
        )),
        (other, _) => Err(ApiError::invalid(format!(
            "tool_choice.type: must be auto, any, tool or none, got `{other}`"
        ))),
    }
}

/// `thinking` as the canonical parameter, checked as Anthropic checks it: a budget of at
/// least 1024 tokens, below `max_tokens`.
fn thinking_param(
    thinking: Option<Value>,
    max_tokens: Option<u32>,
) -> Result<Option<ThinkingParam>, ApiError> {
    let Some(thinking) = thinking else {
        return Ok(None);
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok(None),
        Some("enabled") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Enabled {
                #[serde(rename = "type")]
                _kind: String,
                budget_tokens: u32,
            }
            let enabled: Enabled = block(thinking, "thinking")?;
            if enabled.budget_tokens < 1024 {
                return Err(ApiError::invalid(
                    "thinking.budget_tokens: must be at least 1024",
                ));
            }
            if max_tokens.is_some_and(|max| enabled.budget_tokens >= max) {
                return Err(ApiError::invalid(
                    "thinking.budget_tokens: must be less than max_tokens",
                ));
            }
            Ok(Some(ThinkingParam {
                budget_tokens: enabled.budget_tokens,
            }))
        }
        _ => Err(ApiError::invalid(
            "thinking.type: must be enabled or disabled",
        )),
    }
}

impl MessagesRequest {
    /// The canonical submit this request amounts to.
    pub fn into_submit(
        self,
        idempotency_key: String,
    ) -> Result<(SubmitBody, Conversation), ApiError> {
        if self.top_k.is_some() {
            return Err(unsupported("top_k", "top_k sampling"));
        }
        let thinking = thinking_param(self.thinking, Some(self.max_tokens))?;
        match self.service_tier.as_deref() {
            None | Some("auto" | "standard_only") => {}
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "service_tier: must be auto or standard_only, got `{other}`"
                )))
            }
        }
        // Anthropic's range, stricter than the canonical 0 to 2.
        if let Some(t) = self.temperature.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(ApiError::invalid(format!(
                "temperature: must be between 0 and 1, got {t}"
            )));
        }
        if self.max_tokens == 0 {
            return Err(ApiError::invalid("max_tokens: must be at least 1"));
        }
        let tools = convert_tools(self.tools.unwrap_or_default())?;
        let (tool_choice, parallel_tool_calls) = match self.tool_choice {
            Some(c) => {
                let (choice, parallel) = convert_choice(c)?;
                (Some(choice), parallel)
            }
            None => (None, None),
        };
        let mut metadata = Map::new();
        if let Some(user) = self.metadata.and_then(|m| m.user_id) {
            metadata.insert("user_id".into(), Value::String(user));
        }
        let mut conversation = conversation(self.system, self.messages)?;
        let body = SubmitBody {
            model: self.model,
            messages: std::mem::take(&mut conversation.messages),
            idempotency_key,
            params: Params {
                temperature: self.temperature,
                top_p: self.top_p,
                max_tokens: Some(self.max_tokens),
                stop: self.stop_sequences.map(Stop::Many),
                tools,
                tool_choice,
                parallel_tool_calls,
                thinking,
                ..Params::default()
            },
            metadata,
            webhook_url: None,
            ..SubmitBody::default()
        };
        Ok((body, conversation))
    }
}

impl CountRequest {
    /// The same conversation as a submit would carry (checked the same way).
    pub fn into_submit(self) -> Result<(SubmitBody, Conversation), ApiError> {
        // Thinking changes what is produced, not what is counted.
        thinking_param(self.thinking, None)?;
        let tool_choice = self.tool_choice.map(convert_choice).transpose()?;
        let mut conversation = conversation(self.system, self.messages)?;
        let body = SubmitBody {
            model: self.model,
            messages: std::mem::take(&mut conversation.messages),
            idempotency_key: "count_tokens".into(),
            params: Params {
                tools: convert_tools(self.tools.unwrap_or_default())?,
                tool_choice: tool_choice.map(|(c, _)| c),
                ..Params::default()
            },
            metadata: Map::new(),
            webhook_url: None,
            ..SubmitBody::default()
        };
        Ok((body, conversation))
    }
}

/// The estimate `count_tokens` answers: characters / 4 over the whole prompt — texts, tool
/// calls and results, tool definitions — the same rough measure admission counts by.
pub fn estimate_input_tokens(body: &SubmitBody) -> u64 {
    let messages: usize = body
        .messages
        .iter()
        .map(|m| {
            m.content.len()
                + m.tool_calls
                    .iter()
                    .map(|c| c.function.name.len() + c.function.arguments.len())
                    .sum::<usize>()
        })
        .sum();
    let tools: usize = body
        .params
        .tools
        .iter()
        .map(|t| serde_json::to_string(&t.function).map_or(0, |s| s.len()))
        .sum();
    ((messages + tools) / 4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    fn submit(body: Value) -> Result<SubmitBody, ApiError> {
        let req: MessagesRequest = crate::api::body::parse_json(body.to_string().as_bytes())?;
        req.into_submit("k".into()).map(|(body, _)| body)
    }

    #[test]
    fn a_tool_round_trip_becomes_canonical_turns() {
        let body = serde_json::json!({"model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "text", "text": "thanks"}]}],
            "tools": [{"name": "w", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"}});
        let s = submit(body).unwrap();
        let roles: Vec<Role> = s.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(
            s.messages[2].tool_calls[0].function.arguments,
            r#"{"city":"Oslo"}"#
        );
        assert_eq!(s.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(
            s.params.tool_choice,
            Some(ToolChoice::Mode(ToolMode::Required))
        );
        s.validate().unwrap();
    }

    #[test]
    fn unsupported_fields_and_blocks_are_named() {
        let base = serde_json::json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]});
        let err = |patch: Value| {
            let mut b = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                b[k] = v.clone();
            }
            match submit(b) {
                Err(e) => e.body.message,
                Ok(_) => panic!("accepted {patch}"),
            }
        };
        assert!(err(serde_json::json!({"top_k": 5})).starts_with("top_k"));
        assert!(err(serde_json::json!({"bogus": 1})).contains("bogus"));
        assert!(
            err(serde_json::json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}))
                .starts_with("thinking")
        );
        let doc = err(
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
        );
        assert!(
            doc.starts_with("messages[0].content[0]: a `document` block"),
            "{doc}"
        );
        let extra = err(
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cited": []}]}]}),
        );
        assert!(extra.starts_with("messages[0].content[0]"), "{extra}");
        assert!(extra.contains("cited"), "{extra}");
        let cited = err(
            serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x", "citations": [{"type": "char_location"}]}]}]}),
        );
        assert!(
            cited.starts_with("messages[0].content[0].citations"),
            "{cited}"
        );
        let echoed = serde_json::json!({"model": "m", "max_tokens": 10, "cache_control": {"type": "ephemeral"},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "citations": null}]}]});
        assert_eq!(submit(echoed).unwrap().messages[0].content, "x");
        let mut no_max = base.clone();
        no_max.as_object_mut().unwrap().remove("max_tokens");
        assert!(submit(no_max)
            .unwrap_err()
            .body
            .message
            .contains("max_tokens"));
    }
}
