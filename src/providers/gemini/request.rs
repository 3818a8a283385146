//! Canonical request → Gemini body: contents, images, tools, choice, thought signatures, config
//! (structured output included: `responseMimeType` and `responseSchema`).

use serde_json::{json, Map, Value};

use super::schema;
use crate::domain::request::Image;
use crate::domain::tools::{Tool, ToolChoice, ToolMode};
use crate::providers::structured::{self, Native};
use crate::providers::turns::{conversation, stop_sequences, Part, Speaker, Turn};
use crate::providers::UpstreamRequest;
use crate::settings::ProviderKind;

/// The signature Gemini's docs name for a call it did not sign (made on another route, or
/// whose signature a client dropped): it tells Gemini 3 to skip the check that would refuse
/// the turn.
const DUMMY_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// The JSON body sent upstream (also what the debug log records). Gemini has no prefill: a
/// trailing `model` turn is sent as is, which is why its default continuation is `instruction`.
pub fn request_body(req: &UpstreamRequest) -> Value {
    let json = structured::plan(ProviderKind::Gemini, req);
    let messages = json.messages(&req.messages);
    let conv = conversation(&messages);
    let contents: Vec<Value> = conv.turns.iter().map(content).collect();
    let mut body = json!({ "contents": contents });
    if !conv.system.is_empty() {
        let parts: Vec<Value> = conv.system.iter().map(|t| json!({"text": t})).collect();
        body["systemInstruction"] = json!({ "parts": parts });
    }
    let p = &req.params;
    if !p.tools.is_empty() {
        let declarations: Vec<Value> = p.tools.iter().map(declaration).collect();
        body["tools"] = json!([{ "functionDeclarations": declarations }]);
        if let Some(choice) = &p.tool_choice {
            body["toolConfig"] = json!({ "functionCallingConfig": calling_config(choice) });
        }
    }
    let mut config = Map::new();
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            config.insert(key.to_string(), v);
        }
    };
    set("temperature", p.temperature.map(Value::from));
    set("topP", p.top_p.map(Value::from));
    set("maxOutputTokens", p.max_tokens.map(Value::from));
    set("stopSequences", stop_sequences(p).map(Value::from));
    set("presencePenalty", p.presence_penalty.map(Value::from));
    set("frequencyPenalty", p.frequency_penalty.map(Value::from));
    set("seed", p.seed.map(Value::from));
    if let Native::JsonMime { schema } = json.native {
        set("responseMimeType", Some("application/json".into()));
        set("responseSchema", schema.map(schema::subset));
    }
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    body
}

/// A turn as `Content`; tool results travel in `user` turns, as the current docs show.
fn content(turn: &Turn<'_>) -> Value {
    let role = match turn.speaker {
        Speaker::User => "user",
        Speaker::Assistant => "model",
    };
    let mut parts: Vec<Value> = turn.parts.iter().filter_map(part).collect();
    if let Some(first) = unsigned_first_call(turn) {
        parts[first]["thoughtSignature"] = DUMMY_THOUGHT_SIGNATURE.into();
    }
    json!({"role": role, "parts": parts})
}

/// Where a turn's calls need the dummy signature: at its first call, when none of its calls
/// carries a signature. Gemini 3 refuses a step whose first call is unsigned; Gemini signs only
/// the first of parallel calls, so a turn with any signature is sent as it came.
fn unsigned_first_call(turn: &Turn<'_>) -> Option<usize> {
    let signed = |p: &Part<'_>| matches!(p, Part::Call(c) if c.thought_signature().is_some());
    if turn.parts.iter().any(signed) {
        return None;
    }
    turn.parts.iter().position(|p| matches!(p, Part::Call(_)))
}

/// One part. A call goes back with the thought signature it came with; Gemini's calls carry
/// `args` as an object and its results a `response` object named by function, not by call id.
/// Another model's thinking blocks mean nothing to Gemini: left out.
fn part(part: &Part<'_>) -> Option<Value> {
    Some(match part {
        Part::Text(text) => json!({"text": text}),
        Part::Image(image) => image_part(image),
        Part::Call(call) => {
            let mut part = json!({"functionCall": {
                "name": call.function.name, "args": call.arguments_object()}});
            if let Some(signature) = call.thought_signature() {
                part["thoughtSignature"] = signature.into();
            }
            part
        }
        Part::Result {
            function, content, ..
        } => json!({"functionResponse": {"name": function, "response": response(content)}}),
        Part::Thinking(_) => return None,
    })
}

/// An image: inline data for a data URL, else a `fileData` part that names the URL (Gemini
/// needs the media type either way).
fn image_part(image: &Image) -> Value {
    match image.inline() {
        Some((mime_type, data)) => json!({"inlineData": {"mimeType": mime_type, "data": data}}),
        None => json!({"fileData": {"mimeType": image.media_type(), "fileUri": image.url}}),
    }
}

/// A tool result as the object `response` must be: a JSON object result as is, any other text
/// wrapped as `{"result": text}`.
fn response(content: &str) -> Value {
    match serde_json::from_str::<Value>(content) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "result": content }),
    }
}

fn declaration(t: &Tool) -> Value {
    let f = &t.function;
    let mut declaration = json!({"name": f.name});
    if let Some(description) = &f.description {
        declaration["description"] = description.as_str().into();
    }
    if let Some(parameters) = &f.parameters {
        declaration["parameters"] = schema::subset(parameters);
    }
    declaration
}

/// `tool_choice` as a `functionCallingConfig`; a named function is `ANY` limited to it.
fn calling_config(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Mode(ToolMode::None) => json!({"mode": "NONE"}),
        ToolChoice::Mode(ToolMode::Auto) => json!({"mode": "AUTO"}),
        ToolChoice::Mode(ToolMode::Required) => json!({"mode": "ANY"}),
        ToolChoice::Named { function, .. } => {
            json!({"mode": "ANY", "allowedFunctionNames": [function.name]})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tools::{ExtraContent, FunctionCall, ToolKind};
    use crate::domain::{Message, Params, Role, ToolCall};

    #[test]
    fn the_body_maps_roles_system_and_generation_config() {
        let req = UpstreamRequest {
            model: "gemini-x".into(),
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "a"),
                Message::new(Role::User, "b"),
                Message::new(Role::Assistant, "w0 w1 "),
                Message::new(Role::User, "go on"),
            ],
            params: Params {
                temperature: Some(0.5),
                top_p: Some(0.9),
                max_tokens: Some(64),
                stop: Some(crate::domain::request::Stop::Many(vec!["X".into()])),
                ..Params::default()
            },
            fault: None,
            structured: Default::default(),
        };
        assert_eq!(
            request_body(&req),
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
                    {"role": "model", "parts": [{"text": "w0 w1 "}]},
                    {"role": "user", "parts": [{"text": "go on"}]},
                ],
                "systemInstruction": {"parts": [{"text": "be brief"}]},
                "generationConfig": {"temperature": 0.5, "topP": 0.9, "maxOutputTokens": 64, "stopSequences": ["X"]},
            })
        );
        let bare = UpstreamRequest {
            params: Params::default(),
            messages: vec![Message::new(Role::User, "a")],
            ..req
        };
        assert_eq!(
            request_body(&bare),
            json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}]})
        );
    }

    #[test]
    fn structured_output_asks_json_with_the_schema_narrowed_to_gemini_s_subset() {
        let format = json!({"type": "json_schema", "json_schema": {"name": "todo", "strict": true,
            "schema": {"type": "object", "additionalProperties": false,
                       "properties": {"title": {"type": "string"},
                                      "due": {"type": ["string", "null"], "format": "date"}},
                       "required": ["title"]}}});
        let mut req = UpstreamRequest {
            model: "gemini-x".into(),
            messages: vec![Message::new(Role::User, "plan my day")],
            params: Params {
                response_format: Some(format),
                temperature: Some(0.1),
                ..Params::default()
            },
            structured: Default::default(),
            fault: None,
        };
        let body = request_body(&req);
        assert_eq!(
            body["generationConfig"],
            json!({"temperature": 0.1, "responseMimeType": "application/json",
                   "responseSchema": {"type": "object",
                       "properties": {"title": {"type": "string"},
                                      "due": {"type": "string", "nullable": true, "format": "date"}},
                       "required": ["title"]}})
        );
        assert!(body.get("systemInstruction").is_none());

        req.structured = crate::settings::StructuredMode::JsonMode;
        let body = request_body(&req);
        assert_eq!(
            body["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert!(body["generationConfig"].get("responseSchema").is_none());
        let instruction = body["systemInstruction"]["parts"][0]["text"]
            .as_str()
            .unwrap();
        assert!(
            instruction.contains("additionalProperties"),
            "the whole schema: {instruction}"
        );

        req.structured = crate::settings::StructuredMode::Instructions;
        let body = request_body(&req);
        assert!(body["generationConfig"].get("responseMimeType").is_none());
        assert!(body["systemInstruction"]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Answer with a single JSON value"));

        req.structured = crate::settings::StructuredMode::Native;
        req.params.response_format = Some(json!({"type": "json_object"}));
        assert_eq!(
            request_body(&req)["generationConfig"],
            json!({"temperature": 0.1, "responseMimeType": "application/json"})
        );
    }

    #[test]
    fn images_become_inline_data_or_file_data_parts_before_the_text() {
        let user = Message {
            images: vec![
                Image {
                    url: "data:image/webp;base64,UklGRg==".into(),
                    detail: Some("low".into()),
                },
                Image {
                    url: "https://example.test/cat.PNG?size=2".into(),
                    detail: None,
                },
            ],
            ..Message::new(Role::User, "Which is the cat?")
        };
        let req = UpstreamRequest {
            model: "gemini-x".into(),
            messages: vec![user],
            params: Params::default(),
            fault: None,
            structured: Default::default(),
        };
        assert_eq!(
            request_body(&req)["contents"],
            json!([{"role": "user", "parts": [
                {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
                {"fileData": {"mimeType": "image/png",
                              "fileUri": "https://example.test/cat.PNG?size=2"}},
                {"text": "Which is the cat?"},
            ]}])
        );
    }

    #[test]
    fn calls_results_tools_and_choice_take_gemini_shapes() {
        let call = |id: &str, name: &str, arguments: &str| ToolCall {
            id: id.into(),
            kind: ToolKind::Function,
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
            extra_content: None,
        };
        let result = |id: &str, content: &str| Message {
            tool_call_id: Some(id.into()),
            ..Message::new(Role::Tool, content)
        };
        let tools = serde_json::from_value(json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "additionalProperties": false,
                               "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}},
        ]))
        .unwrap();
        let named = serde_json::from_value(
            json!({"type": "function", "function": {"name": "get_weather"}}),
        )
        .unwrap();
        let req = UpstreamRequest {
            model: "gemini-x".into(),
            messages: vec![
                Message::new(Role::User, "Weather in Oslo? And the time?"),
                Message {
                    tool_calls: vec![
                        call("c1", "get_weather", r#"{"city":"Oslo"}"#),
                        call("c2", "now", ""),
                    ],
                    ..Message::new(Role::Assistant, "")
                },
                result("c1", r#"{"temp": 3}"#),
                result("c2", "12:00"),
            ],
            params: Params {
                tools,
                tool_choice: Some(named),
                ..Params::default()
            },
            fault: None,
            structured: Default::default(),
        };
        assert_eq!(
            request_body(&req),
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "Weather in Oslo? And the time?"}]},
                    {"role": "model", "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                         "thoughtSignature": "skip_thought_signature_validator"},
                        {"functionCall": {"name": "now", "args": {}}},
                    ]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"temp": 3}}},
                        {"functionResponse": {"name": "now", "response": {"result": "12:00"}}},
                    ]},
                ],
                "tools": [{"functionDeclarations": [
                    {"name": "get_weather", "description": "Weather",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}},
                    {"name": "now"},
                ]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                         "allowedFunctionNames": ["get_weather"]}},
            })
        );
        for (mode, expected) in [
            (ToolMode::Auto, "AUTO"),
            (ToolMode::Required, "ANY"),
            (ToolMode::None, "NONE"),
        ] {
            let config = calling_config(&ToolChoice::Mode(mode));
            assert_eq!(config, json!({ "mode": expected }));
        }
    }

    #[test]
    fn signed_calls_go_back_with_their_signature_and_unsigned_turns_get_the_dummy() {
        let call = |id: &str, signature: Option<&str>| ToolCall {
            id: id.into(),
            kind: ToolKind::Function,
            function: FunctionCall {
                name: "now".into(),
                arguments: "{}".into(),
            },
            extra_content: signature.map(|s| ExtraContent::thought_signature(s.into())),
        };
        let step = |calls: Vec<ToolCall>| {
            let answers = calls.iter().map(|c| Message {
                tool_call_id: Some(c.id.clone()),
                ..Message::new(Role::Tool, "12:00")
            });
            let asking = Message {
                tool_calls: calls.clone(),
                ..Message::new(Role::Assistant, "")
            };
            std::iter::once(asking).chain(answers).collect::<Vec<_>>()
        };
        let mut messages = vec![Message::new(Role::User, "Time?")];
        // Gemini's parallel calls: only the first is signed.
        messages.extend(step(vec![call("a", Some("c2ln")), call("b", None)]));
        // Calls another route made.
        messages.extend(step(vec![call("c", None), call("d", None)]));
        let req = UpstreamRequest {
            model: "gemini-x".into(),
            messages,
            params: Params::default(),
            fault: None,
            structured: Default::default(),
        };
        let contents = request_body(&req)["contents"].clone();
        let signatures = |turn: usize| -> Vec<Value> {
            contents[turn]["parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["thoughtSignature"].clone())
                .collect()
        };
        assert_eq!(signatures(1), [json!("c2ln"), Value::Null]);
        assert_eq!(signatures(3), [json!(DUMMY_THOUGHT_SIGNATURE), Value::Null]);
        assert_eq!(
            signatures(2),
            [Value::Null, Value::Null],
            "results carry none"
        );
    }
}
