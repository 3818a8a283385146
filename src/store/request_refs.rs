//! How a debug log refers to the request instead of copying it: a request body logged for
//! an attempt embeds the prompt (every message's text, every inline image) again, once per
//! attempt. Before it is written, each string in the body that is one of the request's large
//! pieces is replaced by `{"$request_piece": n}`; reading the log puts the piece back from
//! the `requests` tree, so `GET /v1/executions/{id}/log` still shows the exact body sent.
//!
//! Pieces, in order: per message, its text, then per image its URL and (a data URL) its
//! base64 payload — what the wire formats copy verbatim. Text a continuation rewrote is not a
//! piece and is logged as it is. A body object that happens to look like a reference (or like
//! an escape) is written inside `{"$escaped": …}` and read back unchanged.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use crate::domain::ChatRequest;

/// Shorter strings are copied: a reference would save next to nothing.
const MIN_PIECE: usize = 256;
const REF: &str = "$request_piece";
const ESCAPED: &str = "$escaped";

/// The request's large strings, in a fixed order.
pub(super) fn pieces(request: &ChatRequest) -> Vec<&str> {
    let mut out = Vec::new();
    for message in &request.messages {
        out.push(message.content.as_str());
        for image in &message.images {
            out.push(image.url.as_str());
            if let Some((_, data)) = image.inline() {
                out.push(data);
            }
        }
    }
    out.retain(|p| p.len() >= MIN_PIECE);
    out
}

/// Serializes `value` with pieces of the request replaced by references.
pub(super) struct Referencing<'a> {
    pub value: &'a Value,
    pub pieces: &'a [&'a str],
}

impl Serialize for Referencing<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let nested = |value| Referencing {
            value,
            pieces: self.pieces,
        };
        match self.value {
            Value::String(s) if s.len() >= MIN_PIECE => {
                match self
                    .pieces
                    .iter()
                    .position(|p| p.len() == s.len() && p == s)
                {
                    Some(n) => {
                        let mut map = serializer.serialize_map(Some(1))?;
                        map.serialize_entry(REF, &n)?;
                        map.end()
                    }
                    None => s.serialize(serializer),
                }
            }
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&nested(item))?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let escape = looks_special(fields);
                let mut map =
                    serializer.serialize_map(Some(if escape { 1 } else { fields.len() }))?;
                if escape {
                    map.serialize_key(ESCAPED)?;
                    map.serialize_value(&Fields(fields, self.pieces))?;
                } else {
                    for (k, v) in fields {
                        map.serialize_entry(k, &nested(v))?;
                    }
                }
                map.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// An object's fields, referenced, as an object (the inside of an escape).
struct Fields<'a>(&'a serde_json::Map<String, Value>, &'a [&'a str]);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(
                k,
                &Referencing {
                    value: v,
                    pieces: self.1,
                },
            )?;
        }
        map.end()
    }
}

fn looks_special(fields: &serde_json::Map<String, Value>) -> bool {
    fields.len() == 1 && (fields.contains_key(REF) || fields.contains_key(ESCAPED))
}

/// Whether a stored value holds any reference or escape (cheap check before resolving).
pub(super) fn has_refs(value: &Value) -> bool {
    match value {
        Value::Object(fields) => looks_special(fields) || fields.values().any(has_refs),
        Value::Array(items) => items.iter().any(has_refs),
        _ => false,
    }
}

/// Puts the pieces back: the inverse of [`Referencing`].
pub(super) fn resolve(value: &mut Value, pieces: &[&str]) {
    match value {
        Value::Object(fields) if fields.len() == 1 && fields.contains_key(ESCAPED) => {
            let mut inner = fields.remove(ESCAPED).unwrap_or(Value::Null);
            if let Value::Object(inner_fields) = &mut inner {
                for v in inner_fields.values_mut() {
                    resolve(v, pieces);
                }
            }
            *value = inner;
        }
        Value::Object(fields) if fields.len() == 1 && fields.contains_key(REF) => {
            let piece = fields[REF].as_u64().and_then(|n| pieces.get(n as usize));
            if let Some(piece) = piece {
                *value = Value::String((*piece).to_string());
            }
        }
        Value::Object(fields) => fields.values_mut().for_each(|v| resolve(v, pieces)),
        Value::Array(items) => items.iter_mut().for_each(|v| resolve(v, pieces)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Message, Params, Role};
    use serde_json::json;

    #[test]
    fn large_pieces_become_references_and_come_back_exactly() {
        let prompt = "p".repeat(1000);
        let request = ChatRequest {
            messages: vec![
                Message::new(Role::System, "short"),
                Message::new(Role::User, prompt.clone()),
            ],
            params: Params::default(),
            ..ChatRequest::default()
        };
        let pieces = pieces(&request);
        assert_eq!(pieces, [prompt.as_str()]);
        let body = json!({
            "messages": [{"role": "user", "content": prompt}, {"content": "short"}],
            "tools": [{"$request_piece": 0}, {"$escaped": {"a": 1}}, {"$escaped": 1, "b": 2}],
            "other": "q".repeat(1000),
        });
        let stored = serde_json::to_vec(&Referencing {
            value: &body,
            pieces: &pieces,
        })
        .unwrap();
        assert!(stored.len() < 1000 + 300, "the prompt is not copied");
        let mut read: Value = serde_json::from_slice(&stored).unwrap();
        assert!(has_refs(&read));
        resolve(&mut read, &pieces);
        assert_eq!(read, body);
    }
}
