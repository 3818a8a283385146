//! Tool calling in canonical form (OpenAI's shapes, which every other wire format maps onto):
//! the functions a request offers, the calls a model makes, and the assembly of a call from the
//! fragments a stream delivers it in.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// The only kind of tool there is today; kept as a field so the JSON matches OpenAI's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    #[default]
    Function,
}

/// A function the model may call: one entry of `tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: ToolKind,
    pub function: FunctionSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object describing the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or one named function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(ToolMode),
    Named {
        #[serde(rename = "type")]
        kind: ToolKind,
        function: NamedFunction,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolMode {
    None,
    Auto,
    Required,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedFunction {
    pub name: String,
}

impl ToolChoice {
    /// The function the model must call, when one is named.
    pub fn named(&self) -> Option<&str> {
        match self {
            ToolChoice::Named { function, .. } => Some(&function.name),
            ToolChoice::Mode(_) => None,
        }
    }
}

/// A call the model made: the function and its arguments as JSON text (as generated; the
/// model may produce invalid JSON and callers must cope, exactly as with OpenAI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: ToolKind,
    pub function: FunctionCall,
    /// Provider data the call must take back upstream with it, in the shape Google's own
    /// OpenAI-compatible endpoint uses; clients return it on the assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_content: Option<ExtraContent>,
}

/// `extra_content` of a call. Not `deny_unknown_fields`: it is vendor data, and a namespace
/// Switchyard does not know is dropped rather than refusing a client that echoes it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtraContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google: Option<GoogleExtra>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoogleExtra {
    /// Gemini's `thoughtSignature` of the call: Gemini 3 refuses a history that lacks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
}

impl ExtraContent {
    pub fn thought_signature(signature: String) -> ExtraContent {
        ExtraContent {
            google: Some(GoogleExtra {
                thought_signature: Some(signature),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    /// The Gemini thought signature the call carries, if any.
    pub fn thought_signature(&self) -> Option<&str> {
        let google = self.extra_content.as_ref()?.google.as_ref()?;
        google.thought_signature.as_deref()
    }

    /// The arguments parsed, or an empty object when they are not valid JSON (formats that
    /// want an object, such as Anthropic's `input`, get one either way).
    pub fn arguments_object(&self) -> Value {
        match serde_json::from_str::<Value>(&self.function.arguments) {
            Ok(v @ Value::Object(_)) => v,
            _ => Value::Object(Default::default()),
        }
    }
}

/// One fragment of a streamed tool call: the first names it (id, function name), the rest
/// append to its arguments. `index` tells parallel calls apart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
    /// Gemini's `thoughtSignature` on the call's part.
    pub thought_signature: Option<String>,
}

/// Builds whole calls from fragments, in order of first appearance.
#[derive(Debug, Default)]
pub struct ToolCallAssembly {
    calls: Vec<(u32, ToolCall)>,
}

impl ToolCallAssembly {
    pub fn push(&mut self, delta: ToolCallDelta) {
        let slot = match self.calls.iter().position(|(i, _)| *i == delta.index) {
            Some(slot) => slot,
            None => {
                let call = ToolCall {
                    id: String::new(),
                    kind: ToolKind::Function,
                    function: FunctionCall {
                        name: String::new(),
                        arguments: String::new(),
                    },
                    extra_content: None,
                };
                self.calls.push((delta.index, call));
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[slot].1;
        if let Some(id) = delta.id.filter(|id| !id.is_empty()) {
            call.id = id;
        }
        if let Some(name) = delta.name.filter(|n| !n.is_empty()) {
            call.function.name = name;
        }
        call.function.arguments.push_str(&delta.arguments);
        if let Some(signature) = delta.thought_signature.filter(|s| !s.is_empty()) {
            call.extra_content = Some(ExtraContent::thought_signature(signature));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The finished calls. A provider that sent no id gets one derived from `id_prefix` (ids
    /// must be unique within the conversation for the tool results to refer to them).
    pub fn finish(self, id_prefix: &str) -> Vec<ToolCall> {
        self.calls
            .into_iter()
            .enumerate()
            .map(|(n, (_, mut call))| {
                if call.id.is_empty() {
                    call.id = format!("call_{id_prefix}_{n}");
                }
                call
            })
            .collect()
    }
}

const MAX_TOOLS: usize = 128;
const MAX_NAME: usize = 64;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks `tools` and `tool_choice` together: names well formed and unique, parameters an
/// object, a named choice among the tools.
pub fn validate(tools: &[Tool], choice: Option<&ToolChoice>) -> Result<(), ApiError> {
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid(format!(
            "params.tools: at most {MAX_TOOLS} tools"
        )));
    }
    for (i, tool) in tools.iter().enumerate() {
        let f = &tool.function;
        if !valid_name(&f.name) {
            return Err(ApiError::invalid(format!(
                "params.tools[{i}].function.name: 1 to {MAX_NAME} letters, digits, `_` or `-`"
            )));
        }
        if tools[..i].iter().any(|t| t.function.name == f.name) {
            return Err(ApiError::invalid(format!(
                "params.tools[{i}].function.name: `{}` is declared twice",
                f.name
            )));
        }
        if f.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(ApiError::invalid(format!(
                "params.tools[{i}].function.parameters: must be a JSON Schema object"
            )));
        }
    }
    match choice {
        Some(ToolChoice::Named { function, .. })
            if !tools.iter().any(|t| t.function.name == function.name) =>
        {
            Err(ApiError::invalid(format!(
                "params.tool_choice: `{}` is not one of the tools",
                function.name
            )))
        }
        Some(ToolChoice::Mode(ToolMode::Auto | ToolMode::Required))
        | Some(ToolChoice::Named { .. })
            if tools.is_empty() =>
        {
            Err(ApiError::invalid("params.tool_choice: needs params.tools"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(str::to_string),
            name: name.map(str::to_string),
            arguments: args.to_string(),
            thought_signature: None,
        }
    }

    #[test]
    fn fragments_assemble_into_calls_in_order_of_appearance() {
        let mut a = ToolCallAssembly::default();
        a.push(delta(1, Some("call_b"), Some("time"), ""));
        a.push(delta(0, None, Some("weather"), "{\"ci"));
        a.push(delta(1, None, None, "{}"));
        a.push(delta(0, None, None, "ty\":\"Oslo\"}"));
        let calls = a.finish("x");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].id, "call_b");
        assert_eq!(calls[0].function.name, "time");
        assert_eq!(calls[0].function.arguments, "{}");
        assert_eq!(calls[1].id, "call_x_1", "a call without an id gets one");
        assert_eq!(calls[1].function.arguments, "{\"city\":\"Oslo\"}");
        assert_eq!(calls[1].arguments_object()["city"], "Oslo");
        assert!(calls.iter().all(|c| c.extra_content.is_none()));
    }

    #[test]
    fn a_thought_signature_is_kept_and_serialized_as_googles_extra_content() {
        let mut a = ToolCallAssembly::default();
        a.push(ToolCallDelta {
            thought_signature: Some("c2ln".into()),
            ..delta(0, None, Some("weather"), "{}")
        });
        let call = a.finish("x").remove(0);
        assert_eq!(call.thought_signature(), Some("c2ln"));
        let json = serde_json::to_value(&call).unwrap();
        assert_eq!(
            json["extra_content"],
            serde_json::json!({"google": {"thought_signature": "c2ln"}})
        );
        let back: ToolCall = serde_json::from_value(json).unwrap();
        assert_eq!(back, call);
    }

    fn tool(name: &str) -> Tool {
        serde_json::from_value(serde_json::json!({"type": "function",
            "function": {"name": name, "parameters": {"type": "object"}}}))
        .unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let bad = validate(&[tool("a b")], None).unwrap_err();
        assert!(bad
            .body
            .message
            .starts_with("params.tools[0].function.name"));
        let twice = validate(&[tool("a"), tool("a")], None).unwrap_err();
        assert!(twice.body.message.contains("declared twice"));
        let choice: ToolChoice = serde_json::from_value(
            serde_json::json!({"type": "function", "function": {"name": "b"}}),
        )
        .unwrap();
        let unknown = validate(&[tool("a")], Some(&choice)).unwrap_err();
        assert!(unknown.body.message.contains("`b` is not one of the tools"));
        let required = ToolChoice::Mode(ToolMode::Required);
        assert!(validate(&[], Some(&required)).is_err());
        assert!(validate(&[], Some(&ToolChoice::Mode(ToolMode::None))).is_ok());
        assert!(validate(&[tool("get_weather")], Some(&required)).is_ok());
    }
}
