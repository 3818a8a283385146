//! Function parameters and response schemas in the subset of JSON Schema that Gemini's
//! `parameters` and `generationConfig.responseSchema` fields take: the fields of its `Schema`
//! object (an OpenAPI 3.0 subset). Gemini refuses the whole request
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

/// How deep `$ref`s are followed: a recursive model stops being described past this.
const MAX_REF_DEPTH: usize = 8;

/// The schema with unknown keys dropped at every level. A JSON Schema type list such as
/// `["string", "null"]` becomes Gemini's single type plus `nullable`. Local `$ref`s (Pydantic
/// puts nested models in `$defs`) are inlined first, so nested models keep their shape.
pub fn subset(schema: &Value) -> Value {
    Narrowing { root: schema }.narrow(schema, 0)
}

struct Narrowing<'a> {
    /// The whole schema, which local `$ref`s point into.
    root: &'a Value,
}

impl Narrowing<'_> {
    fn narrow(&self, schema: &Value, depth: usize) -> Value {
        let Value::Object(fields) = schema else {
            return schema.clone();
        };
        if let Some(inlined) = self.inline_ref(fields, depth) {
            return self.narrow(&inlined, depth + 1);
        }
        let mut out = Map::new();
        for (key, value) in fields {
            let value = match key.as_str() {
                "properties" => self.each_value(value, depth),
                "items" => self.narrow(value, depth),
                "anyOf" => self.each_item(value, depth),
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

    /// `{"$ref": "#/$defs/X", …}` as the definition it names, the sibling keys (a
    /// description, say) kept over it; `None` when there is no resolvable local `$ref` or the
    /// depth is spent (the `$ref` is then dropped like any unknown key).
    fn inline_ref(&self, fields: &Map<String, Value>, depth: usize) -> Option<Value> {
        let pointer = fields.get("$ref")?.as_str()?.strip_prefix('#')?;
        if depth >= MAX_REF_DEPTH {
            return None;
        }
        let Value::Object(target) = self.root.pointer(pointer)? else {
            return None;
        };
        let mut merged = target.clone();
        for (key, value) in fields.iter().filter(|(k, _)| *k != "$ref") {
            merged.insert(key.clone(), value.clone());
        }
        Some(Value::Object(merged))
    }

    /// `properties`: names are the caller's, only the schemas under them are narrowed.
    fn each_value(&self, value: &Value, depth: usize) -> Value {
        match value {
            Value::Object(props) => props
                .iter()
                .map(|(name, schema)| (name.clone(), self.narrow(schema, depth)))
                .collect::<Map<_, _>>()
                .into(),
            other => other.clone(),
        }
    }

    fn each_item(&self, value: &Value, depth: usize) -> Value {
        match value {
            Value::Array(schemas) => schemas.iter().map(|s| self.narrow(s, depth)).collect(),
            other => other.clone(),
        }
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

    #[test]
    fn local_refs_are_inlined_so_nested_models_keep_their_shape() {
        // What Pydantic generates for a model with a nested and a recursive one.
        let schema = json!({
            "$defs": {
                "Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}},
            },
            "type": "object",
            "properties": {
                "where": {"$ref": "#/$defs/Place", "description": "the place"},
                "chain": {"$ref": "#/$defs/Node"},
                "elsewhere": {"$ref": "https://example.test/schema.json"},
            },
        });
        let narrowed = subset(&schema);
        assert!(narrowed.get("$defs").is_none());
        assert_eq!(
            narrowed["properties"]["where"],
            json!({"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "description": "the place"})
        );
        // A recursive model is followed a bounded number of times, then cut.
        let mut node = &narrowed["properties"]["chain"];
        let mut levels = 0;
        while let Some(next) = node["properties"].get("next") {
            node = next;
            levels += 1;
        }
        assert_eq!(levels, MAX_REF_DEPTH);
        assert_eq!(narrowed["properties"]["elsewhere"], json!({}));
    }
}
