//! `POST /v1/responses` bodies: OpenAI's Responses request read into the canonical submit
//! (the conversation as chat messages, sampling as `params`) and the [`Meta`] the response
//! object echoes. Whatever cannot be honoured is a 400 naming the field, never dropped.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::meta::Meta;
use crate::domain::request::Image;
use crate::domain::tools::{FunctionCall, FunctionSpec, Tool, ToolChoice, ToolKind};
use crate::domain::{Message, Params, Role, SubmitBody, ToolCall};
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    model: String,
    input: Input,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, rename = "stream_options")]
    _stream_options: Option<StreamOptions>,
    #[serde(default)]
    background: bool,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    text: Option<Value>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    /// An end-user id for abuse monitoring: echoed, changes nothing.
    #[serde(default)]
    user: Option<String>,
    /// Only `disabled` (the default): Switchyard never drops turns to fit a context window.
    #[serde(default)]
    truncation: Option<String>,
    /// Extra output data to include; none is available, so only an empty list.
    #[serde(default)]
    include: Option<Vec<String>>,
}

/// Only `include_obfuscation`: random padding on deltas, which Switchyard does not add (it
/// changes no answer).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default, rename = "include_obfuscation")]
    _include_obfuscation: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Value>),
}

fn invalid(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("{field}: {why}"))
}

fn str_field<'a>(item: &'a Value, field: &str, at: &str) -> Result<&'a str, ApiError> {
    item.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&format!("{at}.{field}"), "required, a string"))
}

/// Fails on any key of `item` outside `known`, naming it.
fn only_keys(item: &Value, known: &[&str], at: &str) -> Result<(), ApiError> {
    if let Some(obj) = item.as_object() {
        if let Some(key) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(invalid(
                &format!("{at}.{key}"),
                "unknown or unsupported field",
            ));
        }
    }
    Ok(())
}

/// Builds the conversation from input items, and the items as they are listed back
/// (`input_items`: OpenAI's shapes; ids are given when listed, see `mod.rs`).
struct Conversation {
    messages: Vec<Message>,
    items: Vec<Value>,
}

impl Conversation {
    fn push_text(&mut self, role: Role, text: String) {
        self.push_message(role, text, Vec::new());
    }

    fn push_message(&mut self, role: Role, text: String, images: Vec<Image>) {
        let mut content = vec![json!({"type": part_type(role), "text": text})];
        if role == Role::Assistant {
            content[0]["annotations"] = json!([]);
        }
        for image in &images {
            content.push(json!({"type": "input_image", "image_url": image.url,
                "detail": image.detail.as_deref().unwrap_or("auto")}));
        }
        let item = json!({"type": "message", "status": "completed",
            "role": role_name(role), "content": content});
        self.items.push(item);
        let mut message = Message::new(role, text);
        message.images = images;
        self.messages.push(message);
    }

    fn message(&mut self, item: &Value, at: &str) -> Result<(), ApiError> {
        only_keys(item, &["type", "id", "role", "content", "status"], at)?;
        let role = match str_field(item, "role", at)? {
            "user" => Role::User,
            "system" | "developer" => Role::System,
            "assistant" => Role::Assistant,
            other => {
                return Err(invalid(
                    &format!("{at}.role"),
                    format!("must be user, system, developer or assistant, got `{other}`"),
                ))
            }
        };
        let (text, images) = match item.get("content") {
            Some(Value::String(text)) => (text.clone(), Vec::new()),
            Some(Value::Array(parts)) => content_parts(parts, role, &format!("{at}.content"))?,
            _ => {
                return Err(invalid(
                    &format!("{at}.content"),
                    "required, a string or a list of content parts",
                ))
            }
        };
        self.push_message(role, text, images);
        Ok(())
    }

    fn function_call(&mut self, item: &Value, at: &str) -> Result<(), ApiError> {
        only_keys(
            item,
            &["type", "id", "call_id", "name", "arguments", "status"],
            at,
        )?;
        let call = ToolCall {
            id: str_field(item, "call_id", at)?.to_string(),
            kind: ToolKind::Function,
            function: FunctionCall {
                name: str_field(item, "name", at)?.to_string(),
                arguments: str_field(item, "arguments", at)?.to_string(),
            },
            extra_content: None,
        };
        self.items.push(json!({"type": "function_call",
            "call_id": call.id, "name": call.function.name, "arguments": call.function.arguments,
            "status": "completed"}));
        // Calls right after an assistant turn are that turn's (one chat message makes them all).
        match self.messages.last_mut() {
            Some(last) if last.role == Role::Assistant => last.tool_calls.push(call),
            _ => {
                let mut turn = Message::new(Role::Assistant, "");
                turn.tool_calls.push(call);
                self.messages.push(turn);
            }
        }
        Ok(())
    }

    fn function_call_output(&mut self, item: &Value, at: &str) -> Result<(), ApiError> {
        only_keys(item, &["type", "id", "call_id", "output", "status"], at)?;
        let call_id = str_field(item, "call_id", at)?.to_string();
        let output = match item.get("output") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                content_parts(parts, Role::Tool, &format!("{at}.output"))?.0
            }
            _ => {
                return Err(invalid(
                    &format!("{at}.output"),
                    "required, a string or a list of input_text parts",
                ))
            }
        };
        self.items.push(json!({"type": "function_call_output",
            "call_id": call_id, "output": output, "status": "completed"}));
        let mut message = Message::new(Role::Tool, output);
        message.tool_call_id = Some(call_id);
        self.messages.push(message);
        Ok(())
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn part_type(role: Role) -> &'static str {
    match role {
        Role::Assistant => "output_text",
        _ => "input_text",
    }
}

/// A message's content parts: text (`input_text`, or `output_text` echoed back on an
/// assistant turn) and `input_image` by URL.
fn content_parts(parts: &[Value], role: Role, at: &str) -> Result<(String, Vec<Image>), ApiError> {
    let mut text = String::new();
    let mut images = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("input_text") | Some("output_text") => {
                only_keys(part, &["type", "text", "annotations", "logprobs"], &at)?;
                text.push_str(str_field(part, "text", &at)?);
            }
            Some("input_image") if role == Role::User => {
                only_keys(part, &["type", "image_url", "detail", "file_id"], &at)?;
                if part.get("file_id").is_some_and(|f| !f.is_null()) {
                    return Err(invalid(
                        &format!("{at}.file_id"),
                        "file ids are not supported; send image_url (an http(s) or data URL)",
                    ));
                }
                images.push(Image {
                    url: str_field(part, "image_url", &at)?.to_string(),
                    detail: part
                        .get("detail")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
            Some(other) => {
                return Err(invalid(
                    &format!("{at}.type"),
                    format!("`{other}` parts are not supported here"),
                ))
            }
            None => return Err(invalid(&format!("{at}.type"), "required")),
        }
    }
    Ok((text, images))
}

/// One Responses function tool (`{"type": "function", "name", "parameters", …}`).
fn tool(value: &Value, at: &str) -> Result<Tool, ApiError> {
    match value.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(invalid(
                &format!("{at}.type"),
                format!("only function tools are supported, got `{other}`"),
            ))
        }
        None => return Err(invalid(&format!("{at}.type"), "required")),
    }
    only_keys(
        value,
        &["type", "name", "description", "parameters", "strict"],
        at,
    )?;
    Ok(Tool {
        kind: ToolKind::Function,
        function: FunctionSpec {
            name: str_field(value, "name", at)?.to_string(),
            description: value
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            parameters: value.get("parameters").filter(|p| !p.is_null()).cloned(),
            strict: value.get("strict").and_then(Value::as_bool),
        },
    })
}

fn tool_choice(value: &Value) -> Result<ToolChoice, ApiError> {
    let canonical = match value {
        Value::String(mode) if matches!(mode.as_str(), "none" | "auto" | "required") => {
            json!(mode)
        }
        Value::Object(obj) if obj.get("type") == Some(&json!("function")) => {
            only_keys(value, &["type", "name"], "tool_choice")?;
            json!({"type": "function", "function": {"name": str_field(value, "name", "tool_choice")?}})
        }
        _ => {
            return Err(invalid(
                "tool_choice",
                "must be none, auto, required or {\"type\": \"function\", \"name\": …}",
            ))
        }
    };
    serde_json::from_value(canonical).map_err(|e| invalid("tool_choice", e))
}

/// `text.format` as the canonical `response_format` (`None` for plain text).
fn response_format(text: &Value) -> Result<Option<Value>, ApiError> {
    only_keys(text, &["format"], "text")?;
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            only_keys(
                format,
                &["type", "name", "schema", "description", "strict"],
                "text.format",
            )?;
            let mut schema = Map::new();
            schema.insert(
                "name".into(),
                json!(str_field(format, "name", "text.format")?),
            );
            match format.get("schema") {
                Some(s @ Value::Object(_)) => schema.insert("schema".into(), s.clone()),
                _ => {
                    return Err(invalid(
                        "text.format.schema",
                        "required, a JSON Schema object",
                    ))
                }
            };
            for key in ["description", "strict"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(invalid(
            "text.format.type",
            "must be text, json_object or json_schema",
        )),
    }
}

impl CreateRequest {
    /// The canonical submit and the meta to keep beside it. `prior` is the conversation of
    /// `previous_response_id` (its input and output), which goes before this input.
    pub fn into_submit(
        self,
        prior: Vec<Message>,
        idempotency_key: String,
    ) -> Result<(SubmitBody, Meta), ApiError> {
        if self.truncation.as_deref().is_some_and(|t| t != "disabled") {
            return Err(invalid(
                "truncation",
                "only `disabled` is supported (conversations are never truncated)",
            ));
        }
        if self.include.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(invalid("include", "no additional output data is available"));
        }
        if self.background && self.store == Some(false) {
            return Err(invalid("store", "background responses must be stored"));
        }
        let mut conv = Conversation {
            messages: Vec::new(),
            items: Vec::new(),
        };
        match self.input {
            Input::Text(text) => conv.push_text(Role::User, text),
            Input::Items(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("input[{i}]");
                    match item.get("type").and_then(Value::as_str) {
                        None | Some("message") => conv.message(item, &at)?,
                        Some("function_call") => conv.function_call(item, &at)?,
                        Some("function_call_output") => conv.function_call_output(item, &at)?,
                        Some(other) => {
                            return Err(invalid(
                                &format!("{at}.type"),
                                format!("`{other}` items are not supported"),
                            ))
                        }
                    }
                }
            }
        }
        let mut messages = Vec::with_capacity(prior.len() + conv.messages.len() + 1);
        if let Some(instructions) = &self.instructions {
            messages.push(Message::new(Role::System, instructions.clone()));
        }
        messages.extend(prior);
        messages.extend(conv.messages);
        let tools = self.tools.unwrap_or_default();
        let canonical_tools = tools
            .iter()
            .enumerate()
            .map(|(i, t)| tool(t, &format!("tools[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let canonical_choice = self.tool_choice.as_ref().map(tool_choice).transpose()?;
        let format = match &self.text {
            Some(text) => response_format(text)?,
            None => None,
        };
        let body = SubmitBody {
            model: self.model,
            messages,
            idempotency_key,
            params: Params {
                temperature: self.temperature,
                top_p: self.top_p,
                max_tokens: self.max_output_tokens,
                response_format: format,
                tools: canonical_tools,
                tool_choice: canonical_choice,
                parallel_tool_calls: self.parallel_tool_calls,
                ..Params::default()
            },
            metadata: self.metadata.unwrap_or_default(),
            webhook_url: None,
            ..SubmitBody::default()
        };
        let text = match self.text {
            Some(Value::Object(mut t)) => {
                t.entry("format").or_insert(json!({"type": "text"}));
                Some(Value::Object(t))
            }
            _ => None,
        };
        let meta = Meta {
            background: self.background,
            store: self.store.unwrap_or(true),
            instructions: self.instructions,
            previous_response_id: self.previous_response_id,
            input: conv.items,
            tools,
            tool_choice: self.tool_choice,
            text,
            temperature: self.temperature,
            top_p: self.top_p,
            max_output_tokens: self.max_output_tokens,
            parallel_tool_calls: self.parallel_tool_calls,
            user: self.user,
        };
        Ok((body, meta))
    }
}

/// Field names as this API has them: validation of the canonical submit says `params.…` and
/// `messages[i]…`.
pub fn own_field_names(mut err: ApiError) -> ApiError {
    let message = &err.body.message;
    let renamed = [
        ("params.max_tokens", "max_output_tokens"),
        ("params.response_format", "text.format"),
        ("params.tool_choice", "tool_choice"),
        ("params.tools", "tools"),
        ("params.", ""),
        ("messages", "input"),
    ]
    .iter()
    .find_map(|(from, to)| message.strip_prefix(from).map(|rest| format!("{to}{rest}")));
    if let Some(renamed) = renamed {
        err.body.message = renamed;
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<(SubmitBody, Meta), ApiError> {
        let req: CreateRequest = serde_json::from_value(body).map_err(|e| invalid("body", e))?;
        req.into_submit(Vec::new(), "k".into())
    }

    #[test]
    fn a_string_input_is_one_user_turn_after_the_instructions() {
        let (body, meta) =
            parse(json!({"model": "m", "input": "hi", "instructions": "be brief"})).unwrap();
        assert_eq!(body.messages.len(), 2);
        assert_eq!(body.messages[0].role, Role::System);
        assert_eq!(body.messages[1].content, "hi");
        assert_eq!(meta.input[0]["content"][0]["type"], "input_text");
    }

    #[test]
    fn function_calls_join_the_assistant_turn_and_outputs_answer_them() {
        let (body, _) = parse(json!({"model": "m", "input": [
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": "rainy"}]}))
        .unwrap();
        assert_eq!(body.messages.len(), 4);
        assert_eq!(body.messages[1].tool_calls.len(), 2);
        assert_eq!(body.messages[3].tool_call_id.as_deref(), Some("c2"));
        body.validate().unwrap();
    }

    #[test]
    fn json_schema_becomes_the_response_format() {
        let (body, meta) = parse(json!({"model": "m", "input": "x", "text": {"format": {
            "type": "json_schema", "name": "t", "schema": {"type": "object"}, "strict": true}}}))
        .unwrap();
        assert_eq!(
            body.params.response_format,
            Some(json!({"type": "json_schema", "json_schema":
                {"name": "t", "schema": {"type": "object"}, "strict": true}}))
        );
        assert_eq!(meta.text.unwrap()["format"]["name"], "t");
    }

    #[test]
    fn what_cannot_be_honoured_names_the_field() {
        let msg = |v: Value| parse(v).err().unwrap().body.message;
        assert!(msg(json!({"model": "m", "input": "x", "reasoning": {}})).contains("reasoning"));
        assert!(msg(json!({"model": "m", "input": [{"type": "reasoning"}]}))
            .starts_with("input[0].type"));
        assert!(
            msg(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}))
                .starts_with("tools[0].type")
        );
        assert!(
            msg(json!({"model": "m", "input": [{"role": "user", "content": "x", "foo": 1}]}))
                .starts_with("input[0].foo")
        );
        assert!(
            msg(json!({"model": "m", "input": "x", "truncation": "auto"}))
                .starts_with("truncation")
        );
    }

    #[test]
    fn images_are_user_parts_by_url() {
        let (body, meta) = parse(json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "https://example.test/a.png", "detail": "low"}]}]}))
        .unwrap();
        assert_eq!(body.messages[0].content, "look");
        assert_eq!(body.messages[0].images[0].url, "https://example.test/a.png");
        assert_eq!(body.messages[0].images[0].detail.as_deref(), Some("low"));
        assert_eq!(meta.input[0]["content"][1]["type"], "input_image");
        let err = parse(json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "file_id": "file_1"}]}]}))
        .err()
        .unwrap();
        assert!(
            err.body.message.starts_with("input[0].content[0].file_id"),
            "{err}"
        );
    }
}
