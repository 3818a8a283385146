//! Structured output: what JSON a request asks for (`response_format`, a named structure),
//! and whether a finished answer is it. The answer is parsed as it stands — no fences stripped,
//! no prose trimmed — so `output.data` is always exactly what `output.text` says; an answer
//! that is not valid gets a repair attempt instead of a guess (see `actors::execution`).

pub mod sample;

use serde_json::Value;

use crate::domain::Params;

/// What the answer must be.
pub struct OutputSpec {
    check: Check,
}

enum Check {
    /// `json_object`: any JSON object.
    Object,
    Schema(Box<jsonschema::Validator>),
}

/// A schema that does not compile: where in it, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaError {
    /// JSON pointer into the schema (`""` for its root).
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{} (at {at})", self.message)
    }
}

/// Compiles a JSON Schema, checking it against its meta-schema. External `$ref`s are never
/// fetched (this build of the validator has no resolver): a schema must be self-contained.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, SchemaError> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(SchemaError {
            path: String::new(),
            message: "a JSON Schema is an object (or a boolean)".into(),
        });
    }
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| SchemaError {
            path: e.instance_path().to_string(),
            message: e.to_string(),
        })
}

/// The schema of a `json_schema` response format, if that is what it is.
pub fn format_schema(format: &Value) -> Option<&Value> {
    (format.get("type")? == "json_schema").then(|| format.get("json_schema")?.get("schema"))?
}

impl OutputSpec {
    /// The spec a request's parameters ask for: `None` for plain text.
    pub fn of(params: &Params) -> Result<Option<OutputSpec>, SchemaError> {
        let Some(format) = &params.response_format else {
            return Ok(None);
        };
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => Ok(Some(OutputSpec {
                check: Check::Object,
            })),
            Some("json_schema") => {
                let spec = &format["json_schema"];
                let schema = spec.get("schema").unwrap_or(&Value::Bool(true));
                Ok(Some(OutputSpec {
                    check: Check::Schema(Box::new(compile(schema)?)),
                }))
            }
            _ => Ok(None),
        }
    }

    /// The answer as data, or why it is not valid (one line per problem, at most a few).
    pub fn check(&self, text: &str) -> Result<Value, Vec<String>> {
        let data: Value = serde_json::from_str(text)
            .map_err(|e| vec![format!("the answer is not valid JSON: {e}")])?;
        match &self.check {
            Check::Object if !data.is_object() => {
                Err(vec!["the answer must be a JSON object".into()])
            }
            Check::Object => Ok(data),
            Check::Schema(validator) => {
                let errors: Vec<String> = validator
                    .iter_errors(&data)
                    .take(MAX_REPORTED)
                    .map(|e| {
                        let at = e.instance_path().to_string();
                        let at = if at.is_empty() { "/".into() } else { at };
                        format!("at {at}: {e}")
                    })
                    .collect();
                if errors.is_empty() {
                    Ok(data)
                } else {
                    Err(errors)
                }
            }
        }
    }
}

/// Validation problems reported (to the record and to a repair prompt): enough to fix an
/// answer, not a wall of text.
const MAX_REPORTED: usize = 8;

/// The follow-up turn of a repair attempt: what was wrong, and what to answer instead.
pub fn repair_instruction(errors: &[String]) -> String {
    let mut text =
        String::from("Your previous answer is not valid for the required JSON format:\n");
    for e in errors {
        text.push_str("- ");
        text.push_str(e);
        text.push('\n');
    }
    text.push_str("Answer again with only the corrected JSON value: no prose, no code fences.");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(format: Value) -> OutputSpec {
        let params = Params {
            response_format: Some(format),
            ..Params::default()
        };
        OutputSpec::of(&params).unwrap().unwrap()
    }

    #[test]
    fn plain_text_and_text_format_ask_for_nothing() {
        assert!(OutputSpec::of(&Params::default()).unwrap().is_none());
        let text = Params {
            response_format: Some(json!({"type": "text"})),
            ..Params::default()
        };
        assert!(OutputSpec::of(&text).unwrap().is_none());
    }

    #[test]
    fn json_mode_wants_an_object() {
        let s = spec(json!({"type": "json_object"}));
        assert_eq!(s.check(r#"{"a": 1}"#).unwrap(), json!({"a": 1}));
        assert!(s.check("[1]").is_err());
        assert!(
            s.check("```json\n{}\n```").is_err(),
            "fences are not stripped"
        );
        assert!(s.check(r#"{"a": 1"#).unwrap_err()[0].contains("not valid JSON"));
    }

    #[test]
    fn a_schema_reports_where_the_answer_is_wrong() {
        let s = spec(
            json!({"type": "json_schema", "json_schema": {"name": "person",
            "schema": {"type": "object", "required": ["age"],
                "properties": {"age": {"type": "integer", "minimum": 0},
                    "email": {"type": "string", "format": "email"}}}}}),
        );
        assert!(s.check(r#"{"age": 3}"#).is_ok());
        let errors = s.check(r#"{"age": -1, "email": "nope"}"#).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.starts_with("at /age")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("at /email")),
            "{errors:?}"
        );
        assert!(s.check("{}").unwrap_err()[0].contains("age"));
    }

    #[test]
    fn a_broken_schema_is_refused_with_its_path() {
        let err = compile(&json!({"type": "object", "properties": {"a": {"type": "strnig"}}}))
            .unwrap_err();
        assert!(err.path.contains("properties/a"), "{err}");
        assert!(compile(&json!("object")).is_err());
        let external = compile(&json!({"$ref": "https://example.test/schema.json"}));
        assert!(external.is_err(), "remote references are never fetched");
    }

    #[test]
    fn the_repair_turn_lists_the_problems() {
        let text = repair_instruction(&["at /age: -1 is less than 0".into()]);
        assert!(text.contains("- at /age: -1 is less than 0"));
        assert!(text.contains("only the corrected JSON"));
    }
}
