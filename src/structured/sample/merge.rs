//! Two schemas as one, for `allOf`, a `$ref` with sibling keywords and an `anyOf` branch with
//! its parent: the generator then has a single set of constraints to satisfy.

use serde_json::{json, Value};

/// Both schemas at once (for `allOf`, `$ref` siblings and a branch with its parent): bounds
/// tighten, `required` and `properties` unite, a sub-schema given twice becomes an `allOf`.
pub(super) fn merge(a: &Value, b: &Value) -> Value {
    let (a, b) = match (a, b) {
        (Value::Bool(true), other) | (other, Value::Bool(true)) => return other.clone(),
        (Value::Object(a), Value::Object(b)) => (a, b),
        _ => return Value::Bool(false),
    };
    let mut out = a.clone();
    for (key, theirs) in b {
        let Some(ours) = a.get(key) else {
            out.insert(key.clone(), theirs.clone());
            continue;
        };
        let both_f64 = ours.as_f64().zip(theirs.as_f64());
        let merged = match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" => {
                let (Value::Object(x), Value::Object(y)) = (ours, theirs) else {
                    continue;
                };
                let mut union = x.clone();
                for (name, schema) in y {
                    let combined = match x.get(name) {
                        Some(first) => json!({ "allOf": [first, schema] }),
                        None => schema.clone(),
                    };
                    union.insert(name.clone(), combined);
                }
                Value::Object(union)
            }
            "required" => {
                let mut names = ours.as_array().cloned().unwrap_or_default();
                for name in theirs.as_array().into_iter().flatten() {
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
                Value::Array(names)
            }
            "type" => intersect_types(ours, theirs),
            "minimum" | "exclusiveMinimum" | "minLength" | "minItems" | "minProperties"
            | "minContains" => match both_f64 {
                Some((x, y)) => if x >= y { ours } else { theirs }.clone(),
                None => ours.clone(),
            },
            "maximum" | "exclusiveMaximum" | "maxLength" | "maxItems" | "maxProperties"
            | "maxContains" => match both_f64 {
                Some((x, y)) => if x <= y { ours } else { theirs }.clone(),
                None => ours.clone(),
            },
            "enum" => {
                let allowed = theirs.as_array().cloned().unwrap_or_default();
                let members = ours.as_array().into_iter().flatten();
                Value::Array(members.filter(|m| allowed.contains(m)).cloned().collect())
            }
            "items" | "additionalProperties" | "contains" | "propertyNames" | "additionalItems" => {
                match (ours, theirs) {
                    (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
                    _ => json!({ "allOf": [ours, theirs] }),
                }
            }
            "allOf" => {
                let mut parts = ours.as_array().cloned().unwrap_or_default();
                parts.extend(theirs.as_array().cloned().unwrap_or_default());
                Value::Array(parts)
            }
            _ => ours.clone(),
        };
        out.insert(key.clone(), merged);
    }
    Value::Object(out)
}

fn intersect_types(a: &Value, b: &Value) -> Value {
    let list = |t: &Value| -> Vec<String> {
        match t {
            Value::String(s) => vec![s.clone()],
            Value::Array(ts) => ts
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    };
    let (xs, ys) = (list(a), list(b));
    let mut common: Vec<Value> = Vec::new();
    for x in &xs {
        let meet = if ys.contains(x) {
            Some(x.as_str())
        } else if (x == "number" && ys.iter().any(|y| y == "integer"))
            || (x == "integer" && ys.iter().any(|y| y == "number"))
        {
            Some("integer")
        } else {
            None
        };
        if let Some(meet) = meet.map(|m| json!(m)).filter(|m| !common.contains(m)) {
            common.push(meet);
        }
    }
    match common.len() {
        1 => common.remove(0),
        _ => Value::Array(common),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_tighten_and_lists_unite() {
        let a = json!({
            "type": ["number", "null"],
            "minimum": 1,
            "required": ["a"],
            "properties": { "a": { "type": "string" } }
        });
        let b = json!({
            "type": "integer",
            "minimum": 3,
            "maximum": 9,
            "required": ["b"],
            "properties": { "a": { "minLength": 2 }, "b": {} }
        });
        assert_eq!(
            merge(&a, &b),
            json!({
                "type": "integer",
                "minimum": 3,
                "maximum": 9,
                "required": ["a", "b"],
                "properties": {
                    "a": { "allOf": [{ "type": "string" }, { "minLength": 2 }] },
                    "b": {}
                }
            })
        );
        assert_eq!(merge(&json!(true), &b), b);
        assert_eq!(merge(&a, &json!(false)), json!(false));
    }
}
