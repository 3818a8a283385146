//! An Anthropic Messages request as clients send it, and the canonical submit it amounts to.
//!
//! Content blocks are read one by one (each by its `type`) so that an error names the exact
//! block and field; what the canonical request cannot carry is a 400 naming the field, never a
//! silent drop. `cache_control` on blocks and tools is a caching hint that does not change the
//! answer: it is accepted and ignored.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::domain::request::{Image, Stop};
use crate::domain::tools::{FunctionCall, FunctionSpec, NamedFunction, Tool, ToolKind};
use crate::domain::tools::{ToolChoice, ToolMode};
use crate::domain::{Message, Params, Role, SubmitBody, ToolCall};
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
    /// Extended thinking: the canonical answer has no thinking blocks (README).
    #[serde(default)]
    thinking: Option<Value>,
    /// `auto` and `standard_only` both mean "whatever the route gives".
    #[serde(default)]
    service_tier: Option<String>,
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
}

#[derive(Deserialize)]
#[serde(untagged)]
enum System {
    Text(String),
    Blocks(Vec<Value>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InMessage {
    role: String,
    content: Content,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Value>),
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
struct TextBlock {
    text: String,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageBlock {
    source: ImageSource,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolUseBlock {
    id: String,
    name: String,
    input: Value,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolResultBlock {
    tool_use_id: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    is_error: bool,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
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
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
}

/// Reads one block (or other object) into its shape; errors name `field`.
fn block<T: DeserializeOwned>(value: Value, field: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match path.as_str() {
            "." => ApiError::invalid(format!("{field}: {inner}")),
            _ => ApiError::invalid(format!("{field}.{path}: {inner}")),
        }
    })
}

fn block_type(value: &Value, field: &str) -> Result<String, ApiError> {
    match value.get("type").and_then(Value::as_str) {
        Some(kind) => Ok(kind.to_string()),
        None => Err(ApiError::invalid(format!(
            "{field}.type: required on every content block"
        ))),
    }
}

fn unsupported(field: &str, what: &str) -> ApiError {
    ApiError::invalid(format!("{field}: {what} is not supported by this gateway"))
}

/// Text blocks joined by newlines (the canonical message has one text).
fn texts(blocks: Vec<Value>, field: &str) -> Result<String, ApiError> {
    let mut out = Vec::with_capacity(blocks.len());
    for (j, value) in blocks.into_iter().enumerate() {
        let at = format!("{field}[{j}]");
        match block_type(&value, &at)?.as_str() {
            "text" => out.push(block::<TextBlock>(strip_type(value), &at)?.text),
            other => return Err(unsupported(&at, &format!("a `{other}` block here"))),
        }
    }
    Ok(out.join("\n"))
}

/// The block without its `type` (already dispatched on).
fn strip_type(mut value: Value) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.remove("type");
    }
    value
}

fn image(source: ImageSource) -> Image {
    match source {
        ImageSource::Base64 { media_type, data } => Image {
            url: format!("data:{media_type};base64,{data}"),
            detail: None,
        },
        ImageSource::Url { url } => Image { url, detail: None },
    }
}

/// Where a canonical message came from, so that errors found in the canonical form name the
/// field the client sent: the index in `messages` (`None`: `system`), and the content blocks
/// its images, tool calls or tool result came from, in order.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    message: Option<usize>,
    blocks: Vec<usize>,
}

/// The canonical messages with the origin of each.
pub struct Conversation {
    messages: Vec<Message>,
    origins: Vec<Origin>,
}

/// The canonical messages of one Anthropic message: a user message's `tool_result` blocks
/// become `tool` messages (ahead of its other content, as the canonical order wants them).
fn convert_message(i: usize, m: InMessage, out: &mut Conversation) -> Result<(), ApiError> {
    let field = format!("messages[{i}]");
    let role = match m.role.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(ApiError::invalid(format!(
                "{field}.role: must be `user` or `assistant`, got `{other}`"
            )))
        }
    };
    let blocks = match m.content {
        Content::Text(text) => {
            out.push(Message::new(role, text), Origin::at(i));
            return Ok(());
        }
        Content::Blocks(blocks) => blocks,
    };
    let mut msg = Message::new(role, String::new());
    let mut origin = Origin::at(i);
    let mut text = Vec::new();
    for (j, value) in blocks.into_iter().enumerate() {
        let at = format!("{field}.content[{j}]");
        let kind = block_type(&value, &at)?;
        let value = strip_type(value);
        match (kind.as_str(), role) {
            ("text", _) => text.push(block::<TextBlock>(value, &at)?.text),
            ("image", Role::User) => {
                msg.images
                    .push(image(block::<ImageBlock>(value, &at)?.source));
                origin.blocks.push(j);
            }
            ("tool_use", Role::Assistant) => {
                let b: ToolUseBlock = block(value, &at)?;
                if !b.input.is_object() {
                    return Err(ApiError::invalid(format!("{at}.input: must be an object")));
                }
                msg.tool_calls.push(ToolCall {
                    id: b.id,
                    kind: ToolKind::Function,
                    function: FunctionCall {
                        name: b.name,
                        arguments: b.input.to_string(),
                    },
                    extra_content: None,
                });
                origin.blocks.push(j);
            }
            ("tool_result", Role::User) => {
                let b: ToolResultBlock = block(value, &at)?;
                let content = match b.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t,
                    Some(Content::Blocks(blocks)) => texts(blocks, &format!("{at}.content"))?,
                };
                // The canonical result has no error flag: the text says it instead.
                let content = match b.is_error {
                    true => format!("Error: {content}"),
                    false => content,
                };
                let mut result = Message::new(Role::Tool, content);
                result.tool_call_id = Some(b.tool_use_id);
                out.push(
                    result,
                    Origin {
                        message: Some(i),
                        blocks: vec![j],
                    },
                );
            }
            ("image" | "tool_result", _) => {
                return Err(ApiError::invalid(format!(
                    "{at}: a `{kind}` block belongs in a user message"
                )))
            }
            ("tool_use", _) => {
                return Err(ApiError::invalid(format!(
                    "{at}: a `tool_use` block belongs in an assistant message"
                )))
            }
            (other, _) => return Err(unsupported(&at, &format!("a `{other}` block"))),
        }
    }
    msg.content = text.join("\n");
    // A user message of only tool results adds no user turn of its own.
    if role == Role::Assistant || !msg.content.is_empty() || !msg.images.is_empty() {
        out.push(msg, origin);
    }
    Ok(())
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
                    strict: None,
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

impl Origin {
    fn at(message: usize) -> Origin {
        Origin {
            message: Some(message),
            blocks: Vec::new(),
        }
    }
}

impl Conversation {
    fn push(&mut self, message: Message, origin: Origin) {
        self.messages.push(message);
        self.origins.push(origin);
    }

    /// Renames the canonical fields an error names (`messages[3].images[0].url`) to the ones
    /// the client sent (`messages[2].content[1].source`).
    pub fn own_field_names(&self, err: ApiError) -> ApiError {
        let mut err = own_field_names(err);
        let message = &err.body.message;
        let Some(rest) = message.strip_prefix("messages[") else {
            return err;
        };
        let Some((k, rest)) = rest.split_once(']') else {
            return err;
        };
        let Some(origin) = k.parse::<usize>().ok().and_then(|k| self.origins.get(k)) else {
            return err;
        };
        let head = match origin.message {
            Some(i) => format!("messages[{i}]"),
            None => "system".to_string(),
        };
        // `.images[j]…`, `.tool_calls[j]…`: the j-th block of that kind.
        let nth_block = |rest: &str, prefix: &str| -> Option<String> {
            let (j, tail) = rest.strip_prefix(prefix)?.split_once(']')?;
            let b = origin.blocks.get(j.parse::<usize>().ok()?)?;
            Some(format!(".content[{b}]{}", tail.replace(".url", ".source")))
        };
        let rest = nth_block(rest, ".images[")
            .or_else(|| nth_block(rest, ".tool_calls["))
            .or_else(|| {
                let tail = rest.strip_prefix(".tool_call_id")?;
                Some(format!(
                    ".content[{}].tool_use_id{tail}",
                    origin.blocks.first()?
                ))
            })
            .unwrap_or_else(|| rest.to_string());
        err.body.message = format!("{head}{rest}");
        err
    }
}

/// The conversation: the system prompt first, then each message.
fn conversation(
    system: Option<System>,
    messages: Vec<InMessage>,
) -> Result<Conversation, ApiError> {
    let mut out = Conversation {
        messages: Vec::with_capacity(messages.len() + 1),
        origins: Vec::with_capacity(messages.len() + 1),
    };
    match system {
        None => {}
        Some(System::Text(text)) => out.push(Message::new(Role::System, text), Origin::default()),
        Some(System::Blocks(blocks)) => {
            let text = texts(blocks, "system")?;
            out.push(Message::new(Role::System, text), Origin::default());
        }
    }
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: must contain at least one message",
        ));
    }
    for (i, m) in messages.into_iter().enumerate() {
        convert_message(i, m, &mut out)?;
    }
    Ok(out)
}

fn refuse_thinking(thinking: &Option<Value>) -> Result<(), ApiError> {
    // `{"type": "disabled"}` asks for nothing this gateway would have to drop.
    match thinking {
        Some(t) if t.get("type").and_then(Value::as_str) != Some("disabled") => Err(unsupported(
            "thinking",
            "extended thinking (the answer carries no thinking blocks)",
        )),
        _ => Ok(()),
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
        refuse_thinking(&self.thinking)?;
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
                ..Params::default()
            },
            metadata,
            webhook_url: None,
        };
        Ok((body, conversation))
    }
}

impl CountRequest {
    /// The same conversation as a submit would carry (checked the same way).
    pub fn into_submit(self) -> Result<(SubmitBody, Conversation), ApiError> {
        refuse_thinking(&self.thinking)?;
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

/// Validation names fields as the executions API has them (`params.stop`); this API has
/// Anthropic's names.
fn own_field_names(mut err: ApiError) -> ApiError {
    const RENAMES: [(&str, &str); 4] = [
        ("params.stop", "stop_sequences"),
        ("params.tool_choice", "tool_choice"),
        ("params.tools", "tools"),
        ("params.", ""),
    ];
    let message = &mut err.body.message;
    if let Some((from, to)) = RENAMES.iter().find(|(from, _)| message.starts_with(from)) {
        *message = format!("{to}{}", &message[from.len()..]);
        *message = message
            .replace(".function.name", ".name")
            .replace(".function.parameters", ".input_schema");
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

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
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "citations": []}]}]}),
        );
        assert!(extra.starts_with("messages[0].content[0]"), "{extra}");
        assert!(extra.contains("citations"), "{extra}");
        let mut no_max = base.clone();
        no_max.as_object_mut().unwrap().remove("max_tokens");
        assert!(submit(no_max)
            .unwrap_err()
            .body
            .message
            .contains("max_tokens"));
    }
}
