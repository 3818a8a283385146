//! The conversation of a Messages request: `system` and `messages` with their content blocks,
//! turned into canonical messages, each remembering where it came from.
//!
//! Blocks are read one by one (each by its `type`) so that an error names the exact block and
//! field; a block the canonical request cannot carry is a 400 naming it, never a silent drop.
//! `cache_control` is a caching hint that does not change the answer: accepted and ignored.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::domain::request::Image;
use crate::domain::tools::{FunctionCall, ToolKind};
use crate::domain::{Message, Role, ThinkingBlock, ToolCall};
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum System {
    Text(String),
    Blocks(Vec<Value>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InMessage {
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
struct TextBlock {
    text: String,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
    /// `null` as Anthropic's answers carry it, echoed back in the history; citations
    /// themselves (of documents, which are not supported) are refused.
    #[serde(default)]
    citations: Option<Vec<Value>>,
}

impl TextBlock {
    fn read(value: Value, field: &str) -> Result<String, ApiError> {
        let b: TextBlock = block(value, field)?;
        match b.citations {
            Some(c) if !c.is_empty() => {
                Err(unsupported(&format!("{field}.citations"), "citations"))
            }
            _ => Ok(b.text),
        }
    }
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
struct ThinkingIn {
    thinking: String,
    signature: String,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactedIn {
    data: String,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolUseBlock {
    id: String,
    name: String,
    input: Value,
    #[serde(default, rename = "cache_control")]
    _cache_control: Option<Value>,
    /// Who made the call: only the model itself (`direct`, what the canonical call means).
    #[serde(default)]
    caller: Option<Value>,
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

/// Reads one block (or other object) into its shape; errors name `field`.
pub(super) fn block<T: DeserializeOwned>(value: Value, field: &str) -> Result<T, ApiError> {
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

pub(super) fn unsupported(field: &str, what: &str) -> ApiError {
    ApiError::invalid(format!("{field}: {what} is not supported by this gateway"))
}

/// Text blocks joined by newlines (the canonical message has one text).
fn texts(blocks: Vec<Value>, field: &str) -> Result<String, ApiError> {
    let mut out = Vec::with_capacity(blocks.len());
    for (j, value) in blocks.into_iter().enumerate() {
        let at = format!("{field}[{j}]");
        match block_type(&value, &at)?.as_str() {
            "text" => out.push(TextBlock::read(strip_type(value), &at)?),
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
    pub(super) messages: Vec<Message>,
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
            ("text", _) => text.push(TextBlock::read(value, &at)?),
            ("image", Role::User) => {
                msg.images
                    .push(image(block::<ImageBlock>(value, &at)?.source));
                origin.blocks.push(j);
            }
            ("tool_use", Role::Assistant) => {
                let b: ToolUseBlock = block(value, &at)?;
                if b.caller
                    .as_ref()
                    .is_some_and(|c| !c.is_null() && c["type"] != "direct")
                {
                    return Err(unsupported(
                        &format!("{at}.caller"),
                        "a call not made by the model",
                    ));
                }
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
            // Thinking sent back with the turn it began (Anthropic routes need it with tool
            // results when thinking is on; other formats leave it out).
            ("thinking", Role::Assistant) => {
                let b: ThinkingIn = block(value, &at)?;
                msg.thinking.push(ThinkingBlock::Thinking {
                    thinking: b.thinking,
                    signature: b.signature,
                });
                origin.blocks.push(j);
            }
            ("redacted_thinking", Role::Assistant) => {
                let b: RedactedIn = block(value, &at)?;
                msg.thinking
                    .push(ThinkingBlock::RedactedThinking { data: b.data });
                origin.blocks.push(j);
            }
            ("thinking" | "redacted_thinking", _) => {
                return Err(ApiError::invalid(format!(
                    "{at}: a `{kind}` block belongs in an assistant message"
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
pub(super) fn conversation(
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
