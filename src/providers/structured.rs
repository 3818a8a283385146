//! Structured output as each provider kind asks for it: the canonical `response_format`
//! (OpenAI's shapes) read once, the route's `structured_output` mode applied, and the one
//! system instruction that carries the schema wherever the provider's own mechanism cannot.
//! Whatever is asked, the JSON comes back as plain answer text.

use std::borrow::Cow;

use serde_json::{json, Value};

use crate::domain::{Message, Params, Role};
use crate::providers::UpstreamRequest;
use crate::settings::{ProviderKind, StructuredMode};

/// The forced tool's name when the schema's name cannot be one.
pub const DEFAULT_TOOL_NAME: &str = "json_output";
/// Anthropic's tool names: `^[a-zA-Z0-9_-]{1,64}$` (OpenAI's schema names follow the same rule).
const MAX_TOOL_NAME: usize = 64;

/// The JSON a request asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format<'a> {
    /// `json_object`: any JSON object.
    Object,
    /// `json_schema`: a value matching `schema` (any JSON value when it has none).
    Schema {
        name: Option<&'a str>,
        description: Option<&'a str>,
        schema: Option<&'a Value>,
    },
}

impl<'a> Format<'a> {
    /// `params.response_format`; `None` for plain text (`text`, or no format).
    pub fn of(params: &'a Params) -> Option<Format<'a>> {
        let format = params.response_format.as_ref()?;
        match format.get("type").and_then(Value::as_str)? {
            "json_object" => Some(Format::Object),
            "json_schema" => {
                let spec = format.get("json_schema");
                let field = |key: &str| spec.and_then(|s| s.get(key));
                Some(Format::Schema {
                    name: field("name").and_then(Value::as_str),
                    description: field("description").and_then(Value::as_str),
                    schema: field("schema").filter(|s| s.is_object()),
                })
            }
            _ => None,
        }
    }

    fn schema(&self) -> Option<&'a Value> {
        match self {
            Format::Object => None,
            Format::Schema { schema, .. } => *schema,
        }
    }
}

/// What one request to one provider kind carries for structured output.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<'a> {
    pub native: Native<'a>,
    /// A system instruction to add to the conversation (see [`Plan::messages`]).
    pub instruction: Option<String>,
}

/// What goes into the provider's own request fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Native<'a> {
    /// Nothing: plain text, or the instruction alone asks for the JSON.
    None,
    /// OpenAI's `response_format`: the request's own (native), or `{"type": "json_object"}`
    /// (`json_mode`).
    ResponseFormat(Cow<'a, Value>),
    /// Gemini's `responseMimeType: application/json`, with the response schema when there is
    /// one (the Gemini module narrows it to the subset Gemini takes).
    JsonMime { schema: Option<&'a Value> },
    /// Anthropic: a forced call of this tool, whose input is the answer.
    Tool(OutputTool<'a>),
}

/// The tool an Anthropic answer is forced to call.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTool<'a> {
    pub name: String,
    pub description: String,
    pub schema: &'a Value,
}

impl Plan<'_> {
    fn plain() -> Plan<'static> {
        Plan {
            native: Native::None,
            instruction: None,
        }
    }

    /// The conversation with the instruction added as a system message after the leading
    /// ones (so it has the last word over a system prompt that asks for prose), or as it was.
    pub fn messages<'m>(&self, messages: &'m [Message]) -> Cow<'m, [Message]> {
        let Some(text) = &self.instruction else {
            return Cow::Borrowed(messages);
        };
        let at = messages
            .iter()
            .take_while(|m| m.role == Role::System)
            .count();
        let mut out = messages.to_vec();
        out.insert(at, Message::new(Role::System, text.as_str()));
        Cow::Owned(out)
    }
}

/// What `req` asks of a provider of `kind` for its `response_format`, under the route's mode:
/// - `native`: OpenAI's `response_format` as given (plus a short instruction when a
///   `json_object` request never says "JSON", which OpenAI requires); Gemini's JSON MIME type
///   and response schema; on Anthropic a forced tool call (see [`anthropic_tool`] for when it
///   falls back to the instruction).
/// - `json_mode`: `{"type": "json_object"}` on OpenAI-compatible APIs, the MIME type alone on
///   Gemini, each with the schema in the instruction; Anthropic has no JSON mode, so it gets
///   the instruction alone.
/// - `instructions`: the instruction alone.
///
/// A continuation (the request ends with the partial answer, or with the partial answer and
/// the continue instruction) always gets the instruction alone: every native mechanism
/// constrains the output to be a whole JSON value, which cannot continue a partial one, and
/// Anthropic's tool input cannot be prefilled at all. The mock answers for itself.
pub fn plan(kind: ProviderKind, req: &UpstreamRequest) -> Plan<'_> {
    let Some(format) = Format::of(&req.params) else {
        return Plan::plain();
    };
    let continuing = continues_an_answer(&req.messages);
    let mode = if continuing {
        StructuredMode::Instructions
    } else {
        req.structured
    };
    let instructed = || Plan {
        native: Native::None,
        instruction: Some(instruction(&format, continuing)),
    };
    match (kind, mode) {
        (ProviderKind::Mock, _) => Plan::plain(),
        (_, StructuredMode::Instructions) | (ProviderKind::Anthropic, StructuredMode::JsonMode) => {
            instructed()
        }
        (ProviderKind::Openai, StructuredMode::Native) => Plan {
            native: Native::ResponseFormat(Cow::Borrowed(
                req.params
                    .response_format
                    .as_ref()
                    .expect("a format was read"),
            )),
            instruction: (format == Format::Object && !mentions_json(&req.messages))
                .then(|| instruction(&format, false)),
        },
        (ProviderKind::Openai, StructuredMode::JsonMode) => Plan {
            native: Native::ResponseFormat(Cow::Owned(json!({"type": "json_object"}))),
            instruction: match format {
                Format::Object if mentions_json(&req.messages) => None,
                _ => Some(instruction(&format, false)),
            },
        },
        (ProviderKind::Gemini, StructuredMode::Native) => Plan {
            native: Native::JsonMime {
                schema: format.schema(),
            },
            instruction: None,
        },
        (ProviderKind::Gemini, StructuredMode::JsonMode) => Plan {
            native: Native::JsonMime { schema: None },
            instruction: format.schema().map(|_| instruction(&format, false)),
        },
        (ProviderKind::Anthropic, StructuredMode::Native) => match anthropic_tool(&format, req) {
            Some(tool) => Plan {
                native: Native::Tool(tool),
                instruction: None,
            },
            None => instructed(),
        },
    }
}

/// The forced tool for Anthropic, or `None` where it cannot serve and the instruction is used
/// instead:
/// - `json_object`, or a `json_schema` without a schema: there is nothing to declare.
/// - a schema whose root is not an object: a tool's `input_schema` must be one.
/// - a request that offers its own tools or has tool turns: forcing our tool would take the
///   model's choice of the caller's tools away.
fn anthropic_tool<'a>(format: &Format<'a>, req: &UpstreamRequest) -> Option<OutputTool<'a>> {
    let Format::Schema {
        name,
        description,
        schema: Some(schema),
    } = *format
    else {
        return None;
    };
    let tool_turns = req
        .messages
        .iter()
        .any(|m| !m.tool_calls.is_empty() || m.tool_call_id.is_some());
    if schema.get("type").and_then(Value::as_str) != Some("object")
        || !req.params.tools.is_empty()
        || tool_turns
    {
        return None;
    }
    let purpose = description.map_or(String::new(), |d| format!(" It is: {d}"));
    Some(OutputTool {
        name: tool_name(name.unwrap_or_default()),
        description: format!(
            "Give your answer by calling this tool: its input is the answer, as JSON matching \
             the schema.{purpose}"
        ),
        schema,
    })
}

/// A schema name as a tool name: characters outside `[a-zA-Z0-9_-]` become `_`, cut to the
/// length limit; an empty name is [`DEFAULT_TOOL_NAME`].
pub fn tool_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_TOOL_NAME)
        .collect();
    if cleaned.is_empty() {
        DEFAULT_TOOL_NAME.into()
    } else {
        cleaned
    }
}

/// Whether the request continues an interrupted answer.
fn continues_an_answer(messages: &[Message]) -> bool {
    crate::routing::continued_turn(messages).is_some()
}

/// OpenAI refuses `json_object` unless "JSON" appears somewhere in the messages.
fn mentions_json(messages: &[Message]) -> bool {
    messages
        .iter()
        .any(|m| m.content.to_ascii_lowercase().contains("json"))
}

/// The system instruction asking for one JSON value (matching the schema, when there is one)
/// and nothing else. A continuation is told to go on with the cut-off value instead of
/// starting over.
pub fn instruction(format: &Format<'_>, continuing: bool) -> String {
    const BARE: &str = "and nothing else: no text before or after it, no Markdown code fences.";
    let mut text = match format {
        Format::Object => format!("Answer with a single JSON object {BARE}"),
        Format::Schema { schema: None, .. } => format!("Answer with a single JSON value {BARE}"),
        Format::Schema {
            name,
            description,
            schema: Some(schema),
        } => {
            let mut text =
                format!("Answer with a single JSON value that matches this JSON Schema, {BARE}");
            if let Some(name) = name {
                text.push_str(&format!("\nSchema name: {name}"));
            }
            if let Some(description) = description {
                text.push_str(&format!("\nWhat it describes: {description}"));
            }
            text.push_str(&format!("\nSchema: {schema}"));
            text
        }
    };
    if continuing {
        text.push_str(
            "\nYour answer so far was cut off: continue that same JSON value exactly where it \
             stopped, without starting a new one.",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::CONTINUE_INSTRUCTION;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"city": {"type": "string"}},
               "required": ["city"], "additionalProperties": false})
    }

    fn json_schema() -> Value {
        json!({"type": "json_schema", "json_schema": {
            "name": "weather report", "description": "a city's weather",
            "schema": schema(), "strict": true}})
    }

    fn req(format: Option<Value>, mode: StructuredMode, messages: Vec<Message>) -> UpstreamRequest {
        UpstreamRequest {
            model: "m".into(),
            messages,
            params: Params {
                response_format: format,
                ..Params::default()
            },
            structured: mode,
            fault: None,
        }
    }

    fn ask(text: &str) -> Vec<Message> {
        vec![
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, text),
        ]
    }

    use ProviderKind::{Anthropic, Gemini, Mock, Openai};
    use StructuredMode::{Instructions, JsonMode, Native as Own};

    #[test]
    fn plain_text_asks_nothing_of_any_kind() {
        for format in [None, Some(json!({"type": "text"}))] {
            for kind in [Openai, Anthropic, Gemini, Mock] {
                let r = req(format.clone(), Own, ask("hi"));
                assert_eq!(plan(kind, &r), Plan::plain(), "{kind:?}");
            }
        }
    }

    #[test]
    fn openai_native_passes_the_format_through_and_names_json_when_the_messages_do_not() {
        let r = req(Some(json_schema()), Own, ask("hi"));
        let p = plan(Openai, &r);
        assert_eq!(p.native, Native::ResponseFormat(Cow::Owned(json_schema())));
        assert_eq!(p.instruction, None);

        let r = req(Some(json!({"type": "json_object"})), Own, ask("hi"));
        let p = plan(Openai, &r);
        assert_eq!(
            p.native,
            Native::ResponseFormat(Cow::Owned(json!({"type": "json_object"})))
        );
        assert!(p.instruction.unwrap().contains("JSON object"));
        let r = req(
            Some(json!({"type": "json_object"})),
            Own,
            ask("as json, please"),
        );
        assert_eq!(plan(Openai, &r).instruction, None);
    }

    #[test]
    fn json_mode_sends_json_object_and_the_schema_in_the_instruction() {
        let r = req(Some(json_schema()), JsonMode, ask("hi"));
        let p = plan(Openai, &r);
        assert_eq!(
            p.native,
            Native::ResponseFormat(Cow::Owned(json!({"type": "json_object"})))
        );
        let text = p.instruction.unwrap();
        assert!(text.contains(&schema().to_string()), "{text}");
        assert!(text.contains("weather report") && text.contains("a city's weather"));

        let p = plan(Gemini, &r);
        assert_eq!(p.native, Native::JsonMime { schema: None });
        assert!(p.instruction.unwrap().contains(&schema().to_string()));
        let p = plan(Anthropic, &r);
        assert_eq!(p.native, Native::None, "anthropic has no JSON mode");
        assert!(p.instruction.is_some());
    }

    #[test]
    fn instructions_send_no_format_field() {
        for kind in [Openai, Anthropic, Gemini] {
            let r = req(Some(json_schema()), Instructions, ask("hi"));
            let p = plan(kind, &r);
            assert_eq!(p.native, Native::None, "{kind:?}");
            let text = p.instruction.unwrap();
            assert!(text.starts_with("Answer with a single JSON value that matches"));
            assert!(text.contains("no Markdown code fences"));
        }
        let r = req(Some(json_schema()), Instructions, ask("hi"));
        assert_eq!(plan(Mock, &r), Plan::plain());
    }

    #[test]
    fn gemini_native_asks_the_mime_type_and_the_schema() {
        let r = req(Some(json_schema()), Own, ask("hi"));
        let schema = schema();
        assert_eq!(
            plan(Gemini, &r),
            Plan {
                native: Native::JsonMime {
                    schema: Some(&schema)
                },
                instruction: None
            }
        );
        let r = req(Some(json!({"type": "json_object"})), Own, ask("hi"));
        assert_eq!(plan(Gemini, &r).native, Native::JsonMime { schema: None });
    }

    #[test]
    fn anthropic_native_forces_a_tool_named_after_the_schema() {
        let r = req(Some(json_schema()), Own, ask("hi"));
        let Native::Tool(tool) = plan(Anthropic, &r).native else {
            panic!("a tool")
        };
        assert_eq!(tool.name, "weather_report");
        assert_eq!(tool.schema, &schema());
        assert!(tool.description.ends_with("It is: a city's weather"));
    }

    #[test]
    fn anthropic_falls_back_to_the_instruction_where_a_tool_cannot_serve() {
        let cases = [
            json!({"type": "json_object"}),
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            json!({"type": "json_schema", "json_schema": {"name": "x",
                   "schema": {"type": "array", "items": {"type": "string"}}}}),
        ];
        for format in cases {
            let r = req(Some(format.clone()), Own, ask("hi"));
            let p = plan(Anthropic, &r);
            assert_eq!(p.native, Native::None, "{format}");
            assert!(p.instruction.is_some());
        }
        let mut r = req(Some(json_schema()), Own, ask("hi"));
        r.params.tools =
            vec![
                serde_json::from_value(json!({"type": "function", "function": {"name": "f"}}))
                    .unwrap(),
            ];
        assert_eq!(plan(Anthropic, &r).native, Native::None, "its own tools");
    }

    #[test]
    fn a_continuation_gets_the_instruction_alone_on_every_kind() {
        let mut prefill = ask("hi");
        prefill.push(Message::new(Role::Assistant, "{\"ci"));
        let mut instructed = prefill.clone();
        instructed.push(Message::new(Role::User, CONTINUE_INSTRUCTION));
        for messages in [prefill, instructed] {
            for kind in [Openai, Anthropic, Gemini] {
                let r = req(Some(json_schema()), Own, messages.clone());
                let p = plan(kind, &r);
                assert_eq!(p.native, Native::None, "{kind:?}");
                assert!(p.instruction.unwrap().contains("cut off"));
            }
        }
        // A user turn after an answer is a new question, not a continuation.
        let mut later = ask("hi");
        later.push(Message::new(Role::Assistant, "{}"));
        later.push(Message::new(Role::User, "and Bergen?"));
        let r = req(Some(json_schema()), Own, later);
        assert!(matches!(plan(Anthropic, &r).native, Native::Tool(_)));
    }

    #[test]
    fn the_instruction_goes_after_the_leading_system_messages() {
        let r = req(Some(json_schema()), Instructions, ask("hi"));
        let p = plan(Openai, &r);
        let messages = p.messages(&r.messages);
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::System, Role::User]);
        assert_eq!(messages[0].content, "be brief");
        assert_eq!(Some(&messages[1].content), p.instruction.as_ref());
        assert!(matches!(
            Plan::plain().messages(&r.messages),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn tool_names_follow_anthropics_rule() {
        assert_eq!(tool_name("weather report.v2"), "weather_report_v2");
        assert_eq!(tool_name(""), DEFAULT_TOOL_NAME);
        assert_eq!(tool_name(&"x".repeat(100)).len(), MAX_TOOL_NAME);
        assert_eq!(tool_name("Ünïcode-ok_1"), "_n_code-ok_1");
    }
}
