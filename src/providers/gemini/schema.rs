//! Function parameters in the subset of JSON Schema that Gemini's `parameters` field takes:
//! the fields of its `Schema` object (an OpenAPI 3.0 subset). Gemini refuses the whole request
//! over a key it does not know (`additionalProperties`, `$schema`, `$ref`, `oneOf`, …), so
//! those are dropped: the model loses a constraint rather than the route failing.

use serde_json::{Map, Value};

/// The `Schema` fields of the Gemini API reference, in JSON spelling.
const KNOWN: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// The schema with unknown keys dropped at every level. A JSON Schema type list such as
/// `["string", "null"]` becomes Gemini's single type plus `nullable`.
pub fn subset(schema: &Value) -> Value {
    let Value::Object(fields) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in fields {
        let value = match key.as_str() {
            "properties" => each_value(value),
            "items" => subset(value),
            "anyOf" => each_item(value),
            "type" => match value {
                Value::Array(types) => {
                    if types.iter().any(|t| t == "null") {
                        out.insert("nullable".into(), true.into());
                    }
                    match types.iter().find(|t| *t != "null") {
                        Some(t) => t.clone(),
                        None => continue,
                    }
                }
                _ => value.clone(),
            },
            known if KNOWN.contains(&known) => value.clone(),
            _ => continue,
        };
        out.insert(key.clone(), value);
    }
    Value::Object(out)
}

/// `properties`: names are the caller's, only the schemas under them are narrowed.
fn each_value(value: &Value) -> Value {
    match value {
        Value::Object(props) => props
            .iter()
            .map(|(name, schema)| (name.clone(), subset(schema)))
            .collect::<Map<_, _>>()
            .into(),
        other => other.clone(),
    }
}

fn each_item(value: &Value) -> Value {
    match value {
        Value::Array(schemas) => schemas.iter().map(subset).collect(),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_keys_go_at_every_level_and_property_names_stay() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "$schema": {"type": "string", "description": "a property named like a key"},
                "city": {"type": "string", "minLength": 1, "const": "x"},
                "tags": {"type": "array", "items": {"type": "string", "additionalProperties": 1}},
                "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
                "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "integer", "$comment": "epoch"}]},
            },
            "required": ["city"],
        });
        assert_eq!(
            subset(&schema),
            json!({
                "type": "object",
                "properties": {
                    "$schema": {"type": "string", "description": "a property named like a key"},
                    "city": {"type": "string", "minLength": 1},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "unit": {"type": "string", "nullable": true, "enum": ["c", "f"]},
                    "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "integer"}]},
                },
                "required": ["city"],
            })
        );
    }
}
