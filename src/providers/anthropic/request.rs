//! Canonical request → Anthropic Messages body: system, turns, images, tools, choice, prefill.

use serde_json::{json, Value};

use crate::domain::request::Image;
use crate::domain::tools::{Tool, ToolChoice, ToolMode};
use crate::domain::Params;
use crate::providers::structured::{self, Native};
use crate::providers::turns::{conversation, stop_sequences, Part, Speaker, Turn};
use crate::providers::UpstreamRequest;
use crate::settings::ProviderKind;

/// Anthropic requires `max_tokens`; this is used when the request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The body sent upstream (also what the debug log records).
pub struct Prepared {
    pub body: Value,
    /// Whether trailing whitespace was cut from the prefill. Anthropic rejects a final
    /// assistant message that ends in whitespace, and a model continuing the trimmed text
    /// starts by writing that whitespace again, which the emitted text already has.
    pub trimmed_prefill: bool,
    /// The tool the answer is forced to call for structured output: its input is the answer
    /// text (see `stream::EventParser`).
    pub output_tool: Option<String>,
}

/// The body of `req`. Structured output is asked the way `structured::plan` decides: natively
/// as a forced call of one tool whose `input_schema` is the schema (Anthropic's documented way
/// to get JSON that follows a schema), else as a system instruction — for `json_object`, a
/// non-object schema, a request with tools of its own, and any continuation: a partial JSON
/// cannot be prefilled into a tool's input, while as plain text the model extends it.
pub fn request_body(req: &UpstreamRequest) -> Prepared {
    let json = structured::plan(ProviderKind::Anthropic, req);
    let messages = json.messages(&req.messages);
    let conv = conversation(&messages);
    let mut turns = conv.turns;
    let trimmed_prefill = trim_prefill(&mut turns);
    let messages: Vec<Value> = turns.iter().map(message).collect();
    let p = &req.params;
    let mut body = json!({
        "model": req.model,
        "max_tokens": p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "stream": true,
        "messages": messages,
    });
    if !conv.system.is_empty() {
        body["system"] = conv.system.join("\n\n").into();
    }
    // Anthropic's range is 0–1 where the canonical one is 0–2: a failover route should answer
    // rather than refuse a temperature its primary accepted.
    if let Some(t) = p.temperature {
        body["temperature"] = t.min(1.0).into();
    }
    if let Some(top_p) = p.top_p {
        body["top_p"] = top_p.into();
    }
    if let Some(stops) = stop_sequences(p) {
        body["stop_sequences"] = stops.into();
    }
    let mut output_tool = None;
    if let Native::Tool(t) = json.native {
        body["tools"] = json!([{"name": t.name, "description": t.description,
            "input_schema": t.schema}]);
        // One call: a second would be a second answer.
        body["tool_choice"] =
            json!({"type": "tool", "name": t.name, "disable_parallel_tool_use": true});
        output_tool = Some(t.name);
    } else if !p.tools.is_empty() {
        body["tools"] = p.tools.iter().map(tool).collect();
        if let Some(choice) = tool_choice(p) {
            body["tool_choice"] = choice;
        }
    } else if let Some(declared) = history_tools(&turns) {
        // Anthropic refuses tool blocks in a request that defines no tools (OpenAI does not):
        // the functions of the history are declared, and `none` keeps the model from calling.
        body["tools"] = declared;
        body["tool_choice"] = json!({"type": "none"});
    }
    if let Some(thinking) = p.thinking {
        // Anthropic refuses extended thinking with a prefilled answer and with a forced tool
        // call: a continuation and a structured answer go without it (README).
        let continuation = crate::routing::continued_turn(&req.messages).is_some();
        if output_tool.is_none() && !continuation {
            body["thinking"] = json!({"type": "enabled", "budget_tokens": thinking.budget_tokens});
            // Thinking requires the default sampling.
            if let Some(fields) = body.as_object_mut() {
                fields.remove("temperature");
                fields.remove("top_p");
            }
        }
    }
    Prepared {
        body,
        trimmed_prefill,
        output_tool,
    }
}

fn message(turn: &Turn<'_>) -> Value {
    let role = match turn.speaker {
        Speaker::User => "user",
        Speaker::Assistant => "assistant",
    };
    let blocks: Vec<Value> = turn.parts.iter().map(block).collect();
    json!({"role": role, "content": blocks})
}

/// One part as a content block. A call's `input` must be an object, whatever text the model
/// generated as its arguments; an empty result is sent without content rather than as an
/// empty string.
fn block(part: &Part<'_>) -> Value {
    match part {
        Part::Text(text) => json!({"type": "text", "text": text}),
        Part::Image(image) => json!({"type": "image", "source": image_source(image)}),
        Part::Call(call) => json!({"type": "tool_use", "id": call.id,
            "name": call.function.name, "input": call.arguments_object()}),
        Part::Thinking(block) => serde_json::to_value(block).unwrap_or_default(),
        Part::Result {
            call_id,
            content: "",
            ..
        } => json!({"type": "tool_result", "tool_use_id": call_id}),
        Part::Result {
            call_id, content, ..
        } => json!({"type": "tool_result", "tool_use_id": call_id, "content": content}),
    }
}

/// Where an image block's bytes come from: inline base64 for a data URL, else the URL, which
/// Anthropic fetches itself.
fn image_source(image: &Image) -> Value {
    match image.inline() {
        Some((media_type, data)) => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        None => json!({"type": "url", "url": image.url}),
    }
}

/// A function as Anthropic declares it; `input_schema` is required, so a function without
/// parameters gets the empty object schema.
fn tool(t: &Tool) -> Value {
    let f = &t.function;
    let schema = f
        .parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    let mut tool = json!({"name": f.name, "input_schema": schema});
    if let Some(description) = &f.description {
        tool["description"] = description.as_str().into();
    }
    tool
}

/// The functions the conversation's calls and results name, in order of first mention, each
/// declared with the loosest schema Anthropic takes; `None` without tool turns.
fn history_tools(turns: &[Turn<'_>]) -> Option<Value> {
    let mut names: Vec<&str> = Vec::new();
    for part in turns.iter().flat_map(|t| &t.parts) {
        let name = match part {
            Part::Call(call) => call.function.name.as_str(),
            Part::Result { function, .. } => function,
            Part::Text(_) | Part::Image(_) | Part::Thinking(_) => continue,
        };
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    let declared: Vec<Value> = names
        .into_iter()
        .map(|name| json!({"name": name, "input_schema": {"type": "object"}}))
        .collect();
    (!declared.is_empty()).then(|| declared.into())
}

/// `tool_choice` in Anthropic's words; `parallel_tool_calls: false` rides on it as
/// `disable_parallel_tool_use` (which `none` does not take: it calls nothing).
fn tool_choice(p: &Params) -> Option<Value> {
    let serial = p.parallel_tool_calls == Some(false);
    let mut choice = match &p.tool_choice {
        Some(ToolChoice::Mode(ToolMode::None)) => return Some(json!({"type": "none"})),
        // Anthropic's default is `auto`: spelled out only to carry the parallel flag.
        None if !serial => return None,
        None | Some(ToolChoice::Mode(ToolMode::Auto)) => json!({"type": "auto"}),
        Some(ToolChoice::Mode(ToolMode::Required)) => json!({"type": "any"}),
        Some(ToolChoice::Named { function, .. }) => json!({"type": "tool", "name": function.name}),
    };
    if serial {
        choice["disable_parallel_tool_use"] = true.into();
    }
    Some(choice)
}

/// Cuts trailing whitespace from a final assistant turn (dropping parts, or the turn, left
/// empty); returns whether anything was cut. A turn that ends with a call is left alone.
fn trim_prefill(turns: &mut Vec<Turn<'_>>) -> bool {
    let mut trimmed = false;
    while turns
        .last()
        .is_some_and(|t| t.speaker == Speaker::Assistant)
    {
        let turn = turns.last_mut().expect("checked above");
        match turn.parts.pop() {
            None => {
                turns.pop();
            }
            Some(Part::Text(text)) => {
                let kept = text.trim_end();
                trimmed |= kept.len() < text.len();
                if !kept.is_empty() {
                    turn.parts.push(Part::Text(kept));
                    break;
                }
            }
            Some(other) => {
                turn.parts.push(other);
                break;
            }
        }
    }
    trimmed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::Stop;
    use crate::domain::tools::{FunctionCall, ToolKind};
    use crate::domain::{Message, Params, Role, ToolCall};

    fn req(messages: Vec<Message>, params: Params) -> UpstreamRequest {
        UpstreamRequest {
            model: "claude-x".into(),
            messages,
            params,
            fault: None,
            structured: Default::default(),
        }
    }

    #[test]
    fn the_body_separates_system_merges_turns_and_maps_params() {
        let params = Params {
            temperature: Some(1.5),
            top_p: Some(0.9),
            stop: Some(Stop::One("END".into())),
            seed: Some(3),
            ..Params::default()
        };
        let p = request_body(&req(
            vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "a"),
                Message::new(Role::User, "b"),
                Message::new(Role::Assistant, "c"),
                Message::new(Role::User, "d"),
            ],
            params,
        ));
        assert!(!p.trimmed_prefill);
        assert_eq!(
            p.body,
            json!({
                "model": "claude-x",
                "max_tokens": 4096,
                "stream": true,
                "system": "be brief",
                "temperature": 1.0,
                "top_p": 0.9,
                "stop_sequences": ["END"],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
                    {"role": "user", "content": [{"type": "text", "text": "d"}]},
                ],
            })
        );
        let p = request_body(&req(
            vec![Message::new(Role::User, "a")],
            Params {
                max_tokens: Some(10),
                ..Params::default()
            },
        ));
        assert_eq!(p.body["max_tokens"], 10);
        assert!(p.body.get("system").is_none());
    }

    fn todo_format() -> Value {
        json!({"type": "json_schema", "json_schema": {"name": "todo list", "strict": true,
            "description": "the day's tasks",
            "schema": {"type": "object", "properties": {"title": {"type": "string"}},
                       "required": ["title"], "additionalProperties": false}}})
    }

    #[test]
    fn a_json_schema_is_asked_as_a_forced_call_of_one_tool() {
        let params = Params {
            response_format: Some(todo_format()),
            ..Params::default()
        };
        let p = request_body(&req(vec![Message::new(Role::User, "plan")], params));
        assert_eq!(p.output_tool.as_deref(), Some("todo_list"));
        let tools = p.body["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 1);
        assert_eq!(tools[0]["name"], "todo_list");
        assert_eq!(
            tools[0]["input_schema"],
            todo_format()["json_schema"]["schema"]
        );
        assert!(tools[0]["description"]
            .as_str()
            .unwrap()
            .contains("the day's tasks"));
        assert_eq!(
            p.body["tool_choice"],
            json!({"type": "tool", "name": "todo_list", "disable_parallel_tool_use": true})
        );
        assert!(p.body.get("system").is_none());
    }

    #[test]
    fn a_continuation_or_json_object_asks_by_instruction_instead() {
        let params = Params {
            response_format: Some(todo_format()),
            ..Params::default()
        };
        let p = request_body(&req(
            vec![
                Message::new(Role::User, "plan"),
                Message::new(Role::Assistant, "{\"title\": "),
            ],
            params,
        ));
        assert_eq!(p.output_tool, None);
        assert!(p.body.get("tools").is_none() && p.body.get("tool_choice").is_none());
        assert!(p.body["system"]
            .as_str()
            .unwrap()
            .contains("continue that same JSON value"));
        assert_eq!(p.body["messages"][1]["content"][0]["text"], "{\"title\":");

        let params = Params {
            response_format: Some(json!({"type": "json_object"})),
            ..Params::default()
        };
        let p = request_body(&req(
            vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "plan"),
            ],
            params,
        ));
        assert_eq!(p.output_tool, None);
        assert!(p.body.get("tools").is_none());
        let system = p.body["system"].as_str().unwrap();
        assert!(
            system.starts_with("be brief\n\nAnswer with a single JSON object"),
            "{system}"
        );
    }

    #[test]
    fn a_trailing_assistant_message_is_a_prefill_without_trailing_whitespace() {
        let p = request_body(&req(
            vec![
                Message::new(Role::User, "a"),
                Message::new(Role::Assistant, "w0 w1 "),
            ],
            Params::default(),
        ));
        assert!(p.trimmed_prefill);
        assert_eq!(p.body["messages"][1]["role"], "assistant");
        assert_eq!(p.body["messages"][1]["content"][0]["text"], "w0 w1");

        let p = request_body(&req(
            vec![
                Message::new(Role::User, "a"),
                Message::new(Role::Assistant, "  \n"),
            ],
            Params::default(),
        ));
        assert!(p.trimmed_prefill);
        assert_eq!(p.body["messages"].as_array().unwrap().len(), 1);

        let p = request_body(&req(
            vec![
                Message::new(Role::User, "a"),
                Message::new(Role::Assistant, "Hello wor"),
            ],
            Params::default(),
        ));
        assert!(!p.trimmed_prefill);
        assert_eq!(p.body["messages"][1]["content"][0]["text"], "Hello wor");
    }

    #[test]
    fn images_become_base64_or_url_blocks_before_the_text() {
        let user = Message {
            images: vec![
                Image {
                    url: "data:image/png;base64,iVBORw0KGgo=".into(),
                    detail: Some("high".into()),
                },
                Image {
                    url: "https://example.test/cat.jpg".into(),
                    detail: None,
                },
            ],
            ..Message::new(Role::User, "Which is the cat?")
        };
        let p = request_body(&req(vec![user], Params::default()));
        assert_eq!(
            p.body["messages"],
            json!([{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
                {"type": "text", "text": "Which is the cat?"},
            ]}])
        );
    }

    fn weather_call(id: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            kind: ToolKind::Function,
            function: FunctionCall {
                name: "get_weather".into(),
                arguments: arguments.into(),
            },
            extra_content: None,
        }
    }

    fn tools_params(choice: Option<ToolChoice>, parallel: Option<bool>) -> Params {
        let tools = serde_json::from_value(json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "now"}},
        ]))
        .unwrap();
        Params {
            tools,
            tool_choice: choice,
            parallel_tool_calls: parallel,
            ..Params::default()
        }
    }

    #[test]
    fn calls_and_results_become_tool_use_and_tool_result_blocks() {
        let messages = vec![
            Message::new(Role::User, "Weather in Oslo and Rome?"),
            Message {
                tool_calls: vec![
                    weather_call("call_1", r#"{"city":"Oslo"}"#),
                    weather_call("call_2", "{not json"),
                ],
                ..Message::new(Role::Assistant, "Checking.")
            },
            Message {
                tool_call_id: Some("call_1".into()),
                ..Message::new(Role::Tool, "3 degrees")
            },
            Message::new(Role::User, "Be quick."),
            Message {
                tool_call_id: Some("call_2".into()),
                ..Message::new(Role::Tool, "")
            },
        ];
        let p = request_body(&req(messages, tools_params(None, None)));
        assert_eq!(
            p.body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and Rome?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "3 degrees"},
                    {"type": "tool_result", "tool_use_id": "call_2"},
                    {"type": "text", "text": "Be quick."},
                ]},
            ])
        );
        assert_eq!(
            p.body["tools"],
            json!([
                {"name": "get_weather", "description": "Weather",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert!(p.body.get("tool_choice").is_none(), "auto is the default");
    }

    #[test]
    fn tool_choice_maps_to_anthropic_words_with_the_parallel_flag() {
        let mode = |m| Some(ToolChoice::Mode(m));
        let named: ToolChoice =
            serde_json::from_value(json!({"type": "function", "function": {"name": "now"}}))
                .unwrap();
        let cases = [
            (mode(ToolMode::Auto), None, json!({"type": "auto"})),
            (mode(ToolMode::Required), None, json!({"type": "any"})),
            (mode(ToolMode::None), Some(false), json!({"type": "none"})),
            (
                Some(named),
                Some(false),
                json!({"type": "tool", "name": "now", "disable_parallel_tool_use": true}),
            ),
            (
                None,
                Some(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (mode(ToolMode::Required), Some(true), json!({"type": "any"})),
        ];
        for (choice, parallel, expected) in cases {
            let p = request_body(&req(
                vec![Message::new(Role::User, "a")],
                tools_params(choice, parallel),
            ));
            assert_eq!(p.body["tool_choice"], expected);
        }
        let p = request_body(&req(
            vec![Message::new(Role::User, "a")],
            Params {
                tool_choice: mode(ToolMode::None),
                ..Params::default()
            },
        ));
        assert!(p.body.get("tools").is_none() && p.body.get("tool_choice").is_none());
    }

    #[test]
    fn tool_history_without_tools_declares_its_functions_and_calls_none() {
        let messages = vec![
            Message::new(Role::User, "Weather in Oslo?"),
            Message {
                tool_calls: vec![weather_call("call_1", r#"{"city":"Oslo"}"#)],
                ..Message::new(Role::Assistant, "")
            },
            Message {
                tool_call_id: Some("call_1".into()),
                ..Message::new(Role::Tool, "3 degrees")
            },
            Message::new(Role::User, "Thanks, and now a poem."),
        ];
        let p = request_body(&req(messages.clone(), Params::default()));
        assert_eq!(
            p.body["tools"],
            json!([{"name": "get_weather", "input_schema": {"type": "object"}}])
        );
        assert_eq!(p.body["tool_choice"], json!({"type": "none"}));
        // Offered tools are sent as they are, history or not.
        let p = request_body(&req(messages, tools_params(None, None)));
        assert_eq!(p.body["tools"].as_array().unwrap().len(), 2);
        assert!(p.body.get("tool_choice").is_none());
    }
}
