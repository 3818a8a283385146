//! Sample data from a JSON Schema: a valid, deterministic value for testing mode and the mock
//! provider.
//!
//! There is no randomness: every choice is the first (or, for the items of an array, the n-th)
//! acceptable one, so the same schema always gives the same value. Choices that can be wrong (a
//! `default`, an `examples` entry, an `anyOf` branch, a string built from a `pattern`) are checked
//! with the `jsonschema` validator before they are kept, because a sample that fails the schema it
//! came from is worse than a dull one.

use std::collections::HashMap;

use regex_syntax::hir::{Class, Hir, HirKind};
use serde_json::{json, Map, Value};

/// `$ref` hops after which a recursive model is closed with its smallest valid value (empty
/// arrays, null where allowed, required fields only).
const MINIMAL_AFTER_REFS: u32 = 3;
/// `$ref` hops after which generation gives up: a required self-reference with no way out.
const MAX_REFS: u32 = 12;
/// The name a root without `$id` is registered under, so that a part of it can be validated
/// alone while its `#/...` references still resolve against the whole document.
const ROOT_URI: &str = "urn:switchyard:sample-root";

/// A value valid against `schema` (whenever this generator can find one), the same on every call.
pub fn sample(schema: &Value) -> Value {
    let mut gen = Gen::new(schema);
    gen.value(schema, Ctx::default())
}

/// Where in the value we are: the property name picks plausible strings and numbers, `refs`
/// bounds recursion and `variant` makes the items of one array differ.
#[derive(Clone, Copy, Default)]
struct Ctx<'n> {
    name: &'n str,
    refs: u32,
    variant: u32,
}

impl Ctx<'_> {
    fn minimal(&self) -> bool {
        self.refs >= MINIMAL_AFTER_REFS
    }
}

struct Gen<'a> {
    root: &'a Value,
    /// The root's own `$id`, else [`ROOT_URI`]: references inside it resolve against this.
    base: String,
    registry: Option<jsonschema::Registry<'static>>,
    /// One compiled validator per distinct part of the schema; `None` when it does not compile.
    validators: HashMap<String, Option<jsonschema::Validator>>,
}

impl<'a> Gen<'a> {
    fn new(root: &'a Value) -> Self {
        let base = root
            .get("$id")
            .and_then(Value::as_str)
            .map_or(ROOT_URI, |id| id.trim_end_matches('#'))
            .to_string();
        let registry = jsonschema::Registry::new()
            .add(&base, root.clone())
            .ok()
            .and_then(|builder| builder.prepare().ok());
        Gen {
            root,
            base,
            registry,
            validators: HashMap::new(),
        }
    }

    /// Whether `value` satisfies `schema` (a part of the root, formats asserted); `None` when
    /// that cannot be told.
    fn check(&mut self, schema: &Value, value: &Value) -> Option<bool> {
        let mut wrapped = absolute_refs(schema, &self.base);
        if let (Value::Object(part), Some(draft)) = (&mut wrapped, self.root.get("$schema")) {
            part.entry("$schema").or_insert_with(|| draft.clone());
        }
        let key = wrapped.to_string();
        if !self.validators.contains_key(&key) {
            let mut options = jsonschema::options().should_validate_formats(true);
            if let Some(registry) = &self.registry {
                options = options.with_registry(registry);
            }
            // a validator bug must not take the caller down with it: a panic counts as unknown
            let build = std::panic::AssertUnwindSafe(|| options.build(&wrapped).ok());
            let validator = std::panic::catch_unwind(build).ok().flatten();
            self.validators.insert(key.clone(), validator);
        }
        self.validators[&key].as_ref().map(|v| v.is_valid(value))
    }

    /// The part of the root a local reference (`#`, `#/$defs/x`, `#/properties/a`) points at.
    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let own_id = self.root.get("$id").and_then(Value::as_str).unwrap_or("#");
        let fragment = reference
            .strip_prefix('#')
            .or_else(|| {
                reference
                    .strip_prefix(own_id.trim_end_matches('#'))?
                    .strip_prefix('#')
            })
            .or_else(|| (reference == own_id).then_some(""))?;
        if fragment.is_empty() {
            return Some(self.root);
        }
        let fragment = percent_decode(fragment);
        if fragment.starts_with('/') {
            self.root.pointer(&fragment)
        } else {
            find_anchor(self.root, &fragment)
        }
    }

    fn value(&mut self, schema: &Value, cx: Ctx) -> Value {
        let obj = match schema {
            Value::Bool(false) => return Value::Null,
            Value::Object(obj) => obj,
            _ => return Value::String(plausible_string(cx.name, cx.variant)),
        };
        if let Some(given) = self.given_value(schema, obj, cx) {
            return given;
        }
        if let Some(Value::String(reference)) = obj.get("$ref") {
            if cx.refs >= MAX_REFS {
                return Value::Null;
            }
            if let Some(target) = self.resolve(reference) {
                let cx = Ctx {
                    refs: cx.refs + 1,
                    ..cx
                };
                let rest = without(obj, &["$ref", "default", "examples"]);
                if !has_constraints(&rest) {
                    return self.value(target, cx);
                }
                let both = json!({ "allOf": [target, Value::Object(rest)] });
                return self.value(&both, cx);
            }
        }
        if let Some(Value::Array(parts)) = obj.get("allOf") {
            let mut merged = Value::Object(without(obj, &["allOf"]));
            for part in parts {
                merged = merge(&merged, &self.flatten(part, 0));
            }
            return self.value(&merged, cx);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(alternatives)) = obj.get(key) {
                return self.alternative(schema, obj, key, alternatives, cx);
            }
        }
        if let Some(condition) = obj.get("if") {
            let base = Value::Object(without(obj, &["if", "then", "else"]));
            let plain = self.value(&base, cx);
            let branch = match self.check(condition, &plain) {
                Some(true) => obj.get("then"),
                _ => obj.get("else"),
            };
            if let Some(branch) = branch {
                let value = self.value(&merge(&base, branch), cx);
                if self.check(schema, &value) != Some(false) {
                    return value;
                }
            }
            return plain;
        }
        self.typed(schema, obj, cx)
    }

    /// `const`, then `examples`, `default` and `enum` when they are valid. A null `default` is
    /// passed over: Pydantic writes one on every optional field, and a sample made of nulls
    /// shows nothing of the model.
    fn given_value(&mut self, schema: &Value, obj: &Map<String, Value>, cx: Ctx) -> Option<Value> {
        if let Some(constant) = obj.get("const") {
            return Some(constant.clone());
        }
        let example = match obj.get("examples") {
            Some(Value::Array(examples)) => examples
                .get(cx.variant as usize)
                .or_else(|| examples.first()),
            _ => None,
        };
        let default = obj
            .get("default")
            .filter(|d| !d.is_null() && cx.variant == 0);
        for candidate in [example, default].into_iter().flatten() {
            if self.check(schema, candidate) == Some(true) {
                return Some(candidate.clone());
            }
        }
        if let Some(Value::Array(members)) = obj.get("enum") {
            let n = members.len();
            for i in 0..n {
                let member = &members[(cx.variant as usize + i) % n];
                if self.check(schema, member) != Some(false) {
                    return Some(member.clone());
                }
            }
            return members.first().cloned();
        }
        None
    }

    /// A schema with its top-level `$ref` and `allOf` folded in, for merging.
    fn flatten(&self, schema: &Value, depth: u32) -> Value {
        let Value::Object(obj) = schema else {
            return schema.clone();
        };
        let mut out = Value::Object(without(obj, &["$ref", "allOf"]));
        if depth > MAX_REFS {
            return out;
        }
        if let Some(target) = obj
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.resolve(r))
        {
            out = merge(&out, &self.flatten(target, depth + 1));
        }
        if let Some(Value::Array(parts)) = obj.get("allOf") {
            for part in parts {
                out = merge(&out, &self.flatten(part, depth + 1));
            }
        }
        out
    }

    /// The first alternative that is not null (null first once recursion must end) whose
    /// value satisfies the whole schema — for `oneOf`, that means exactly one branch.
    fn alternative(
        &mut self,
        schema: &Value,
        obj: &Map<String, Value>,
        key: &str,
        alternatives: &[Value],
        cx: Ctx,
    ) -> Value {
        let base = Value::Object(without(obj, &[key, "default", "examples"]));
        let (mut order, nulls): (Vec<&Value>, Vec<&Value>) =
            alternatives.iter().partition(|alt| !is_null_schema(alt));
        if cx.minimal() {
            order.splice(0..0, nulls);
        } else {
            order.extend(nulls);
        }
        let mut first = None;
        for alt in order {
            let value = self.value(&merge(&base, alt), cx);
            if self.check(schema, &value) != Some(false) {
                return value;
            }
            first.get_or_insert(value);
        }
        first.unwrap_or(Value::Null)
    }

    fn typed(&mut self, schema: &Value, obj: &Map<String, Value>, cx: Ctx) -> Value {
        let mut types: Vec<&str> = match obj.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![infer_type(obj)],
        };
        if obj.get("nullable") == Some(&Value::Bool(true)) && !types.contains(&"null") {
            types.push("null");
        }
        // null only when nothing else is allowed, or when a recursive model must end
        types.sort_by_key(|t| (*t == "null") != cx.minimal());
        let mut first = None;
        for t in types {
            let value = match t {
                "null" => Value::Null,
                "boolean" => Value::Bool(cx.variant.is_multiple_of(2)),
                "integer" => number(obj, true, cx),
                "number" => number(obj, false, cx),
                "string" => Value::String(string(obj, cx)),
                "array" => self.array(obj, cx),
                "object" => self.object(obj, cx),
                _ => continue,
            };
            if self.check(schema, &value) != Some(false) {
                return value;
            }
            first.get_or_insert(value);
        }
        // last resort for what is not modelled (`not`, `propertyNames`, ...): the simplest values
        for simple in [
            json!(null),
            json!(true),
            json!(0),
            json!(""),
            json!({}),
            json!([]),
        ] {
            if self.check(schema, &simple) == Some(true) {
                return simple;
            }
        }
        first.unwrap_or(Value::Null)
    }

    fn object(&mut self, obj: &Map<String, Value>, cx: Ctx) -> Value {
        let required: Vec<&str> = match obj.get("required") {
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let additional = obj.get("additionalProperties");
        let patterns = obj.get("patternProperties").and_then(Value::as_object);
        let mut out = Map::new();
        if let Some(Value::Object(properties)) = obj.get("properties") {
            for (name, schema) in properties {
                if cx.minimal() && !required.contains(&name.as_str()) {
                    continue;
                }
                let value = self.value(schema, Ctx { name, ..cx });
                out.insert(name.clone(), value);
            }
        }
        for name in required.clone() {
            if out.contains_key(name) {
                continue;
            }
            let by_pattern = patterns.and_then(|ps| {
                ps.iter()
                    .find(|(p, _)| regex::Regex::new(p).is_ok_and(|re| re.is_match(name)))
                    .map(|(_, s)| s)
            });
            let schema = by_pattern
                .or(additional.filter(|a| a.is_object()))
                .unwrap_or(&Value::Bool(true));
            let value = self.value(schema, Ctx { name, ..cx });
            out.insert(name.to_string(), value);
        }
        let min = obj
            .get("minProperties")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        let mut attempt = 0;
        while out.len() < min && attempt < min + 8 {
            attempt += 1;
            let pattern_key = patterns.and_then(|ps| {
                ps.iter().find_map(|(p, s)| {
                    let key = pattern_strings(p).find(|k| !k.is_empty() && !out.contains_key(k))?;
                    Some((key, s))
                })
            });
            let (key, schema) = match pattern_key {
                Some(found) => found,
                None if additional != Some(&Value::Bool(false)) => (
                    format!("extra_{attempt}"),
                    additional.unwrap_or(&Value::Bool(true)),
                ),
                None => break,
            };
            let value = self.value(schema, Ctx { name: &key, ..cx });
            out.insert(key, value);
        }
        if let Some(max) = obj.get("maxProperties").and_then(Value::as_u64) {
            let optional: Vec<String> = out
                .keys()
                .filter(|k| !required.contains(&k.as_str()))
                .cloned()
                .collect();
            for key in optional.iter().rev() {
                if out.len() as u64 <= max {
                    break;
                }
                out.remove(key);
            }
        }
        Value::Object(out)
    }

    fn array(&mut self, obj: &Map<String, Value>, cx: Ctx) -> Value {
        let (prefix, rest): (&[Value], Option<&Value>) =
            match (obj.get("prefixItems"), obj.get("items")) {
                (Some(Value::Array(prefix)), items) => (prefix, items),
                (None, Some(Value::Array(prefix))) => (prefix, obj.get("additionalItems")),
                (_, items) => (&[], items),
            };
        let min = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = obj
            .get("maxItems")
            .and_then(Value::as_u64)
            .map(|m| m as usize);
        let unique = obj.get("uniqueItems") == Some(&Value::Bool(true));
        let mut wanted = if cx.minimal() {
            min
        } else {
            // two items show that it is a list; one per level inside recursive models
            let usual = if cx.refs > 0 { 1 } else { 2 };
            min.max(usual).max(prefix.len())
        };
        if rest == Some(&Value::Bool(false)) {
            wanted = wanted.min(prefix.len());
        }
        if let Some(max) = max {
            wanted = wanted.min(max);
        }
        let item_schema = |i: usize| prefix.get(i).or(rest).unwrap_or(&Value::Bool(true));
        let mut out: Vec<Value> = Vec::new();
        if let Some(contains) = obj.get("contains") {
            let times = obj.get("minContains").and_then(Value::as_u64).unwrap_or(1) as usize;
            for i in 0..times.min(wanted.max(times)) {
                let both = json!({ "allOf": [item_schema(i), contains] });
                let value = self.value(
                    &both,
                    Ctx {
                        variant: cx.variant + i as u32,
                        ..cx
                    },
                );
                out.push(value);
            }
        }
        let mut attempt = out.len() as u32;
        while out.len() < wanted && attempt < wanted as u32 + 16 {
            let item = Ctx {
                variant: cx.variant + attempt,
                ..cx
            };
            attempt += 1;
            let value = self.value(item_schema(out.len()), item);
            if unique && out.contains(&value) {
                continue;
            }
            out.push(value);
        }
        Value::Array(out)
    }
}

/// A copy of `schema` whose local references name the registered root.
fn absolute_refs(schema: &Value, base: &str) -> Value {
    match schema {
        Value::Object(obj) => Value::Object(
            obj.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("$ref", Value::String(r)) if r.starts_with('#') => {
                            Value::String(format!("{base}{r}"))
                        }
                        ("const" | "enum" | "default" | "examples", _) => v.clone(),
                        _ => absolute_refs(v, base),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| absolute_refs(v, base)).collect()),
        other => other.clone(),
    }
}

/// The sub-schema declaring `"$anchor": anchor` (a `#name` reference).
fn find_anchor<'v>(schema: &'v Value, anchor: &str) -> Option<&'v Value> {
    match schema {
        Value::Object(obj) if obj.get("$anchor").and_then(Value::as_str) == Some(anchor) => {
            Some(schema)
        }
        Value::Object(obj) => obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "const" | "enum" | "default" | "examples"))
            .find_map(|(_, v)| find_anchor(v, anchor)),
        Value::Array(items) => items.iter().find_map(|v| find_anchor(v, anchor)),
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn without(obj: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    obj.iter()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether a schema says more than annotations (which a `$ref` sibling may carry harmlessly).
fn has_constraints(obj: &Map<String, Value>) -> bool {
    const ANNOTATIONS: &[&str] = &[
        "title",
        "description",
        "$comment",
        "$schema",
        "$id",
        "$defs",
        "definitions",
        "deprecated",
        "readOnly",
        "writeOnly",
    ];
    obj.keys().any(|k| !ANNOTATIONS.contains(&k.as_str()))
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type") == Some(&json!("null"))
        || schema.get("const") == Some(&Value::Null)
        || schema.get("enum") == Some(&json!([null]))
}

fn infer_type(obj: &Map<String, Value>) -> &'static str {
    let has = |keys: &[&str]| keys.iter().any(|k| obj.contains_key(*k));
    if has(&[
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
    ]) || has(&["minProperties", "maxProperties", "propertyNames"])
    {
        "object"
    } else if has(&[
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "contains",
        "uniqueItems",
    ]) {
        "array"
    } else if has(&[
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ]) {
        "number"
    } else {
        "string"
    }
}

/// Both schemas at once (for `allOf`, `$ref` siblings and a branch with its parent): bounds
/// tighten, `required` and `properties` unite, a sub-schema given twice becomes an `allOf`.
fn merge(a: &Value, b: &Value) -> Value {
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

/// A number inside the bounds, on the `multipleOf` grid, as close as allowed to a plausible
/// value for the field's name.
fn number(obj: &Map<String, Value>, integer: bool, cx: Ctx) -> Value {
    let target = plausible_number(cx.name, integer) + f64::from(cx.variant);
    let f = |k: &str| obj.get(k).and_then(Value::as_f64);
    let draft4_flag = |k: &str| obj.get(k) == Some(&Value::Bool(true));
    // (bound, exclusive); draft 4 spells exclusivity as a boolean beside minimum/maximum
    let mut lo = f("minimum").map(|m| (m, draft4_flag("exclusiveMinimum")));
    if let Some(x) = f("exclusiveMinimum").filter(|x| lo.is_none_or(|(m, _)| *x >= m)) {
        lo = Some((x, true));
    }
    let mut hi = f("maximum").map(|m| (m, draft4_flag("exclusiveMaximum")));
    if let Some(x) = f("exclusiveMaximum").filter(|x| hi.is_none_or(|(m, _)| *x <= m)) {
        hi = Some((x, true));
    }
    let step = match (f("multipleOf").filter(|s| *s > 0.0), integer) {
        (Some(s), true) => (1..=1000)
            .map(|k| s * f64::from(k))
            .find(|v| (v - v.round()).abs() < 1e-9)
            .map(f64::round),
        (Some(s), false) => Some(s),
        (None, true) => Some(1.0),
        (None, false) => None,
    };
    let value = match step {
        Some(step) => on_grid(target, lo, hi, step),
        None => between(target, lo, hi),
    };
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

fn on_grid(target: f64, lo: Option<(f64, bool)>, hi: Option<(f64, bool)>, step: f64) -> f64 {
    let mut k_min = f64::NEG_INFINITY;
    if let Some((lo, exclusive)) = lo {
        k_min = (lo / step).ceil();
        if exclusive && k_min * step <= lo {
            k_min += 1.0;
        }
    }
    let mut k_max = f64::INFINITY;
    if let Some((hi, exclusive)) = hi {
        k_max = (hi / step).floor();
        if exclusive && k_max * step >= hi {
            k_max -= 1.0;
        }
    }
    let k = (target / step).round().min(k_max).max(k_min);
    // round away the float noise of k * step (0.01 * 1999 = 19.990000000000002)
    let decimals = format!("{step}")
        .split_once('.')
        .map_or(0, |(_, d)| d.len().min(12)) as i32;
    let scale = 10f64.powi(decimals);
    (k * step * scale).round() / scale
}

fn between(target: f64, lo: Option<(f64, bool)>, hi: Option<(f64, bool)>) -> f64 {
    let above = |v: f64| lo.is_none_or(|(l, ex)| if ex { v > l } else { v >= l });
    let below = |v: f64| hi.is_none_or(|(h, ex)| if ex { v < h } else { v <= h });
    if above(target) && below(target) {
        return target;
    }
    let candidates = [
        lo.map(|(l, ex)| if ex { l + 1.0 } else { l }),
        hi.map(|(h, ex)| if ex { h - 1.0 } else { h }),
        lo.zip(hi).map(|((l, _), (h, _))| (l + h) / 2.0),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|v| above(*v) && below(*v))
        .unwrap_or(target)
}

/// A string honouring `format`, then `pattern`, then the length bounds, plausible for the
/// field's name where that is allowed.
fn string(obj: &Map<String, Value>, cx: Ctx) -> String {
    let min = obj.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
    let max = obj
        .get("maxLength")
        .and_then(Value::as_u64)
        .map(|m| m as usize);
    let fits = |s: &str| {
        let n = s.chars().count();
        n >= min && max.is_none_or(|m| n <= m)
    };
    let pattern = obj.get("pattern").and_then(Value::as_str);
    let matches =
        |s: &str| pattern.is_none_or(|p| regex::Regex::new(p).is_ok_and(|re| re.is_match(s)));
    let formatted = obj
        .get("format")
        .and_then(Value::as_str)
        .and_then(|f| format_value(f, cx));
    if let Some(s) = formatted.filter(|s| matches(s)) {
        return s;
    }
    let plausible = plausible_string(cx.name, cx.variant);
    if let Some(pattern) = pattern {
        if matches(&plausible) && fits(&plausible) {
            return plausible;
        }
        let mut shortest = None;
        for candidate in pattern_strings(pattern) {
            if fits(&candidate) {
                return candidate;
            }
            shortest.get_or_insert(candidate);
        }
        // an unanchored pattern may still match once padded to the length bounds
        if let Some(padded) = shortest.map(|s| fit(s, min, max)).filter(|s| matches(s)) {
            return padded;
        }
    }
    fit(plausible, min, max)
}

/// Pads with filler words or cuts, counting characters as JSON Schema does.
fn fit(mut s: String, min: usize, max: Option<usize>) -> String {
    const FILLER: [&str; 6] = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur"];
    let mut i = 0;
    while s.chars().count() < min {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(FILLER[i % FILLER.len()]);
        i += 1;
    }
    if let Some(max) = max {
        if s.chars().count() > max {
            s = s.chars().take(max).collect();
            // end on a whole word when the minimum allows it
            let whole_words = s.rsplit_once(' ').map(|(head, _)| head.trim_end());
            if let Some(head) = whole_words.filter(|h| h.chars().count() >= min.max(1)) {
                s = head.to_string();
            }
        }
    }
    s
}

/// Strings of the pattern's language, shortest first: each repetition taken its minimum number
/// of times, then a growing number more. Only those the `regex` crate agrees match are kept
/// (look-arounds and back-references do not parse, so they give none).
fn pattern_strings(pattern: &str) -> impl Iterator<Item = String> {
    let parsed = regex_syntax::Parser::new().parse(pattern).ok();
    let re = regex::Regex::new(pattern).ok();
    let mut previous = None;
    [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
        .into_iter()
        .filter_map(move |extra| {
            let (hir, re) = (parsed.as_ref()?, re.as_ref()?);
            let mut text = String::new();
            render(hir, extra, &mut 0, &mut text)?;
            let new = previous.as_ref() != Some(&text) && re.is_match(&text);
            previous = Some(text.clone());
            new.then_some(text)
        })
}

/// Longest string worth building from a pattern (nested repetitions grow fast).
const MAX_PATTERN_TEXT: usize = 4096;

fn render(hir: &Hir, extra: u32, counter: &mut usize, out: &mut String) -> Option<()> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(literal) => out.push_str(std::str::from_utf8(&literal.0).ok()?),
        HirKind::Class(class) => {
            let ranges: Vec<(char, char)> = match class {
                Class::Unicode(c) => c.ranges().iter().map(|r| (r.start(), r.end())).collect(),
                Class::Bytes(c) => c
                    .ranges()
                    .iter()
                    .filter(|r| r.start() < 0x80)
                    .map(|r| (char::from(r.start()), char::from(r.end().min(0x7f))))
                    .collect(),
            };
            out.push(pick_char(&ranges, *counter)?);
            *counter += 1;
        }
        HirKind::Repetition(rep) => {
            let times = rep.min.saturating_add(extra);
            let times = rep.max.map_or(times, |max| times.min(max));
            for _ in 0..times {
                render(&rep.sub, extra, counter, out)?;
                if out.len() > MAX_PATTERN_TEXT {
                    return None;
                }
            }
        }
        HirKind::Capture(capture) => render(&capture.sub, extra, counter, out)?,
        HirKind::Concat(parts) => {
            for part in parts {
                render(part, extra, counter, out)?;
            }
        }
        HirKind::Alternation(branches) => render(branches.first()?, extra, counter, out)?,
    }
    Some(())
}

/// A readable member of a character class: letters, digits and a few separators first, taken
/// in turn so that `[A-Z]{3}` gives "ABC" rather than "AAA".
fn pick_char(ranges: &[(char, char)], counter: usize) -> Option<char> {
    const READABLE: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ .";
    let inside = |c: char| ranges.iter().any(|(s, e)| (*s..=*e).contains(&c));
    let readable: Vec<char> = READABLE.chars().filter(|c| inside(*c)).collect();
    if !readable.is_empty() {
        return Some(readable[counter % readable.len()]);
    }
    ranges
        .iter()
        .flat_map(|(s, e)| (*s..=*e).take(256))
        .find(|c| !c.is_control())
        .or_else(|| ranges.first().map(|(s, _)| *s))
}

fn format_value(format: &str, cx: Ctx) -> Option<String> {
    let v = cx.variant;
    let day = 15 + v % 14;
    let s = match format {
        "date-time" => format!("2024-05-{day:02}T09:30:00Z"),
        "date" => format!("2024-05-{day:02}"),
        "time" => format!("09:{:02}:00Z", (30 + v) % 60),
        "email" | "idn-email" => pick(EMAILS, v),
        "uri" | "url" | "iri" => {
            let path = slug(cx.name);
            let path = if path.is_empty() { "page".into() } else { path };
            match v {
                0 => format!("https://example.com/{path}"),
                _ => format!("https://example.com/{path}/{}", v + 1),
            }
        }
        "uri-reference" | "iri-reference" => format!("/docs/page-{}", v + 1),
        "uri-template" => "https://example.com/items/{id}".into(),
        "uuid" => uuid(cx.name, v),
        "ipv4" => format!("192.0.2.{}", 10 + v % 240),
        "ipv6" => format!("2001:db8::{:x}", v + 1),
        "hostname" | "idn-hostname" => match v {
            0 => "api.example.com".into(),
            _ => format!("api{}.example.com", v + 1),
        },
        "duration" => format!("PT{}H30M", 1 + v),
        "json-pointer" => format!("/items/{v}"),
        "relative-json-pointer" => "1/name".into(),
        "regex" => "^[a-z]+$".into(),
        _ => return None,
    };
    Some(s)
}

const EMAILS: &[&str] = &[
    "ada.lovelace@example.com",
    "grace.hopper@example.com",
    "alan.turing@example.com",
];

/// `entries[variant]`, numbered once the entries run out so that array items stay distinct.
fn pick(entries: &[&str], variant: u32) -> String {
    let i = variant as usize;
    match entries.get(i) {
        Some(entry) => entry.to_string(),
        None => format!("{} {}", entries[i % entries.len()], i + 1),
    }
}

/// FNV-1a: a stable hash (std's hasher may change between releases) for ids and uuids.
fn fnv(text: &str, variant: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes().chain(variant.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn uuid(name: &str, variant: u32) -> String {
    let a = fnv(name, variant);
    let b = fnv(&format!("{name}#"), variant);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        8 + (b >> 60) % 4,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

fn slug(name: &str) -> String {
    snake(name).replace('_', "-")
}

/// `firstName`, `First-Name` and `first name` all become `first_name`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_uppercase() && previous_lower {
            out.push('_');
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        match c {
            '-' | ' ' | '.' => out.push('_'),
            c if c.is_alphanumeric() || c == '_' => out.extend(c.to_lowercase()),
            _ => {}
        }
    }
    out.trim_matches('_').to_string()
}

/// Plausible strings by field name: the whole name first, then its last word, then the
/// singular (`authors` → `author`).
const STRINGS: &[(&[&str], &[&str])] = &[
    (
        &["first_name", "given_name", "firstname"],
        &["Ada", "Grace", "Alan"],
    ),
    (
        &["last_name", "family_name", "surname", "lastname"],
        &["Lovelace", "Hopper", "Turing"],
    ),
    (
        &[
            "name",
            "full_name",
            "author",
            "fullname",
            "display_name",
            "contact",
            "person",
        ],
        &["Ada Lovelace", "Grace Hopper", "Alan Turing"],
    ),
    (
        &["username", "user_name", "login", "handle"],
        &["ada_lovelace", "grace_hopper", "alan_turing"],
    ),
    (&["email", "email_address", "mail"], EMAILS),
    (
        &["phone", "phone_number", "mobile", "telephone", "tel"],
        &["+1 555 0100", "+1 555 0101", "+1 555 0102"],
    ),
    (
        &["title", "headline", "subject"],
        &[
            "A Practical Guide to Streaming",
            "Notes on Failover",
            "Designing Event Logs",
        ],
    ),
    (
        &[
            "description",
            "summary",
            "abstract",
            "bio",
            "about",
            "content",
            "text",
            "body",
            "message",
            "comment",
            "note",
            "explanation",
            "reasoning",
            "answer",
            "final_answer",
            "output",
            "reason",
            "details",
            "overview",
            "caption",
            "step",
        ],
        &[
            "A short example sentence for this field.",
            "Another short example sentence.",
            "A third example sentence.",
        ],
    ),
    (
        &["question", "query", "prompt"],
        &["What is the capital of France?", "How does failover work?"],
    ),
    (&["city", "town"], &["Lisbon", "Berlin", "Toronto"]),
    (&["country"], &["Portugal", "Germany", "Canada"]),
    (&["country_code"], &["PT", "DE", "CA"]),
    (
        &["state", "region", "province"],
        &["California", "Bavaria", "Ontario"],
    ),
    (
        &[
            "address",
            "street",
            "street_address",
            "address_line",
            "line1",
        ],
        &["12 Market Street", "48 Harbour Road", "7 Mill Lane"],
    ),
    (
        &["zip", "zip_code", "postal_code", "postcode"],
        &["10115", "94105", "1100"],
    ),
    (
        &[
            "company",
            "organization",
            "organisation",
            "employer",
            "company_name",
            "publisher",
            "brand",
        ],
        &["Acme Corp", "Globex", "Initech"],
    ),
    (
        &["url", "website", "homepage", "link", "uri", "href"],
        &[
            "https://example.com",
            "https://example.org",
            "https://example.net",
        ],
    ),
    (
        &[
            "image",
            "avatar",
            "photo",
            "picture",
            "thumbnail",
            "image_url",
        ],
        &["https://example.com/image.png"],
    ),
    (
        &["domain", "host", "hostname"],
        &["example.com", "api.example.com"],
    ),
    (&["ip", "ip_address"], &["192.0.2.10", "192.0.2.11"]),
    (&["color", "colour"], &["teal", "orange", "purple"]),
    (&["language", "lang"], &["English", "Portuguese", "German"]),
    (&["locale"], &["en-US", "pt-PT", "de-DE"]),
    (
        &["timezone", "time_zone", "tz"],
        &["Europe/Lisbon", "America/New_York"],
    ),
    (
        &["status", "state_name"],
        &["active", "pending", "archived"],
    ),
    (&["currency", "currency_code"], &["USD", "EUR", "GBP"]),
    (&["sku"], &["SKU-10042", "SKU-10043", "SKU-10044"]),
    (&["code"], &["ABC123", "DEF456", "GHI789"]),
    (&["slug"], &["getting-started", "release-notes", "faq"]),
    (
        &["tag", "keyword", "label", "topic"],
        &["featured", "streaming", "routing"],
    ),
    (&["category", "genre"], &["Books", "Music", "Travel"]),
    (&["type", "kind"], &["standard", "premium", "basic"]),
    (&["role"], &["admin", "editor", "viewer"]),
    (&["version"], &["1.0.0", "1.1.0", "2.0.0"]),
    (&["unit"], &["kg", "cm", "pcs"]),
    (&["sentiment"], &["positive", "neutral", "negative"]),
    (
        &["priority", "level", "severity"],
        &["high", "medium", "low"],
    ),
    (
        &["file", "filename", "file_name", "path"],
        &["report.pdf", "notes.txt", "photo.jpg"],
    ),
    (&["password", "secret"], &["correct-horse-battery-staple"]),
    (
        &["token", "api_key", "key"],
        &["tok_3f9a1c7e2b", "tok_8d2e4f6a1c"],
    ),
    (
        &["date", "birthday", "birth_date", "dob", "due_date"],
        &["2024-05-15", "2024-05-16"],
    ),
    (
        &[
            "created_at",
            "updated_at",
            "timestamp",
            "datetime",
            "created",
            "updated",
        ],
        &["2024-05-15T09:30:00Z", "2024-05-16T09:30:00Z"],
    ),
    (&["time"], &["09:30", "14:00"]),
    (&["gender"], &["female", "male"]),
    (
        &["ingredient", "item", "product"],
        &["flour", "sugar", "butter"],
    ),
];

fn plausible_string(name: &str, variant: u32) -> String {
    let key = snake(name);
    let lookup = |key: &str| -> Option<String> {
        if key == "id" || key.ends_with("_id") || key == "uuid" {
            let prefix = key
                .strip_suffix("_id")
                .filter(|p| !p.is_empty())
                .unwrap_or("id");
            return Some(format!("{prefix}_{:08x}", fnv(key, variant) as u32));
        }
        let entries = STRINGS.iter().find(|(keys, _)| keys.contains(&key))?;
        Some(pick(entries.1, variant))
    };
    let last = key.rsplit('_').next().unwrap_or_default();
    let found = lookup(&key)
        .or_else(|| lookup(last))
        .or_else(|| lookup(key.strip_suffix('s')?))
        .or_else(|| lookup(last.strip_suffix('s')?));
    if let Some(found) = found {
        return found;
    }
    let words = key.replace('_', " ");
    let words = if words.is_empty() {
        "text".into()
    } else {
        words
    };
    match variant {
        0 => format!("sample {words}"),
        v => format!("sample {words} {}", v + 1),
    }
}

/// Plausible numbers by field name (integers are rounded); `1.5` otherwise so that a `number`
/// looks like one.
const NUMBERS: &[(&[&str], f64)] = &[
    (&["age"], 34.0),
    (&["year"], 2024.0),
    (&["month"], 5.0),
    (&["day"], 15.0),
    (
        &[
            "price",
            "cost",
            "amount",
            "total",
            "subtotal",
            "fee",
            "balance",
            "unit_price",
        ],
        19.99,
    ),
    (&["salary", "income", "revenue"], 52000.0),
    (
        &[
            "count", "quantity", "qty", "number", "items", "num", "stock", "copies",
        ],
        3.0,
    ),
    (&["rating", "stars"], 4.5),
    (&["score", "points", "grade"], 87.0),
    (&["latitude", "lat"], 38.7223),
    (&["longitude", "lng", "lon", "long"], -9.1393),
    (&["percent", "percentage", "pct", "progress"], 42.0),
    (&["id", "user_id", "order_id"], 1001.0),
    (
        &[
            "page", "index", "position", "rank", "order", "step", "level", "priority",
        ],
        1.0,
    ),
    (&["limit", "size", "per_page", "page_size"], 10.0),
    (&["duration", "seconds", "timeout", "delay", "ttl"], 30.0),
    (&["minutes"], 15.0),
    (&["temperature"], 0.7),
    (
        &["confidence", "probability", "ratio", "weight_factor"],
        0.9,
    ),
    (&["weight"], 72.5),
    (&["height"], 180.0),
    (&["width"], 1280.0),
    (&["length", "distance"], 12.5),
    (&["tokens", "max_tokens"], 256.0),
];

fn plausible_number(name: &str, integer: bool) -> f64 {
    let key = snake(name);
    let last = key.rsplit('_').next().unwrap_or_default().to_string();
    let lookup = |k: &str| {
        NUMBERS
            .iter()
            .find(|(keys, _)| keys.contains(&k))
            .map(|e| e.1)
    };
    let found = lookup(&key)
        .or_else(|| lookup(&last))
        .or_else(|| key.ends_with("_id").then_some(1001.0))
        .or_else(|| lookup(key.strip_suffix('s')?));
    match (found, integer) {
        (Some(n), true) => n.round(),
        (Some(n), false) => n,
        (None, true) => 1.0,
        (None, false) => 1.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real-world shapes: OpenAI's structured-output examples, Pydantic and zod-to-json-schema
    /// output, and the keywords the generator claims to honour.
    fn corpus() -> Vec<(&'static str, Value)> {
        vec![
            (
                "openai math reasoning",
                json!({
                    "type": "object",
                    "properties": {
                        "steps": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "explanation": { "type": "string" },
                                    "output": { "type": "string" }
                                },
                                "required": ["explanation", "output"],
                                "additionalProperties": false
                            }
                        },
                        "final_answer": { "type": "string" }
                    },
                    "required": ["steps", "final_answer"],
                    "additionalProperties": false
                }),
            ),
            (
                "openai ui component, recursive through #",
                json!({
                    "type": "object",
                    "properties": {
                        "type": {
                            "type": "string",
                            "enum": ["div", "button", "header", "section", "field", "form"]
                        },
                        "label": { "type": "string" },
                        "children": { "type": "array", "items": { "$ref": "#" } },
                        "attributes": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": { "type": "string" },
                                    "value": { "type": "string" }
                                },
                                "required": ["name", "value"],
                                "additionalProperties": false
                            }
                        }
                    },
                    "required": ["type", "label", "children", "attributes"],
                    "additionalProperties": false
                }),
            ),
            (
                "openai research paper extraction",
                json!({
                    "type": "object",
                    "properties": {
                        "title": { "type": "string" },
                        "authors": { "type": "array", "items": { "type": "string" } },
                        "abstract": { "type": "string" },
                        "keywords": { "type": "array", "items": { "type": "string" } }
                    },
                    "required": ["title", "authors", "abstract", "keywords"],
                    "additionalProperties": false
                }),
            ),
            (
                "openai linked list through $defs and anyOf null",
                json!({
                    "type": "object",
                    "properties": { "linked_list": { "$ref": "#/$defs/linked_list_node" } },
                    "$defs": {
                        "linked_list_node": {
                            "type": "object",
                            "properties": {
                                "value": { "type": "number" },
                                "next": {
                                    "anyOf": [
                                        { "$ref": "#/$defs/linked_list_node" },
                                        { "type": "null" }
                                    ]
                                }
                            },
                            "required": ["value", "next"],
                            "additionalProperties": false
                        }
                    },
                    "required": ["linked_list"],
                    "additionalProperties": false
                }),
            ),
            (
                "pydantic user with $defs, enum and optional model",
                json!({
                    "$defs": {
                        "Role": { "enum": ["admin", "editor", "viewer"], "title": "Role", "type": "string" },
                        "Address": {
                            "properties": {
                                "street": { "title": "Street", "type": "string" },
                                "city": { "title": "City", "type": "string" },
                                "postal_code": {
                                    "anyOf": [{ "type": "string" }, { "type": "null" }],
                                    "default": null,
                                    "title": "Postal Code"
                                }
                            },
                            "required": ["street", "city"],
                            "title": "Address",
                            "type": "object"
                        }
                    },
                    "properties": {
                        "id": { "title": "Id", "type": "integer" },
                        "name": { "title": "Name", "type": "string" },
                        "email": { "title": "Email", "type": "string", "format": "email" },
                        "role": { "$ref": "#/$defs/Role", "default": "viewer" },
                        "address": {
                            "anyOf": [{ "$ref": "#/$defs/Address" }, { "type": "null" }],
                            "default": null
                        },
                        "tags": { "items": { "type": "string" }, "title": "Tags", "type": "array" }
                    },
                    "required": ["id", "name", "email"],
                    "title": "User",
                    "type": "object"
                }),
            ),
            (
                "pydantic order with nested list, const, uuid and patterns",
                json!({
                    "$defs": {
                        "LineItem": {
                            "properties": {
                                "sku": { "pattern": "^[A-Z]{3}-\\d{4}$", "type": "string" },
                                "quantity": { "exclusiveMinimum": 0, "type": "integer" },
                                "unit_price": { "minimum": 0, "multipleOf": 0.01, "type": "number" }
                            },
                            "required": ["sku", "quantity", "unit_price"],
                            "title": "LineItem",
                            "type": "object"
                        }
                    },
                    "properties": {
                        "kind": { "const": "order", "default": "order", "type": "string" },
                        "order_id": { "format": "uuid", "type": "string" },
                        "created_at": { "format": "date-time", "type": "string" },
                        "items": { "items": { "$ref": "#/$defs/LineItem" }, "minItems": 1, "type": "array" },
                        "status": { "enum": ["pending", "paid", "shipped"], "default": "pending" },
                        "note": {
                            "anyOf": [{ "maxLength": 20, "type": "string" }, { "type": "null" }],
                            "default": null
                        }
                    },
                    "required": ["kind", "order_id", "created_at", "items"],
                    "title": "Order",
                    "type": "object"
                }),
            ),
            (
                "zod-to-json-schema with definitions and a root $ref",
                json!({
                    "$ref": "#/definitions/Product",
                    "definitions": {
                        "Product": {
                            "type": "object",
                            "properties": {
                                "name": { "type": "string", "minLength": 1 },
                                "price": { "type": "number", "exclusiveMinimum": 0 },
                                "currency": { "type": "string", "enum": ["USD", "EUR", "GBP"] },
                                "website": { "type": "string", "format": "uri" },
                                "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 5 },
                                "related": { "type": "array", "items": { "$ref": "#/definitions/Product" } }
                            },
                            "required": ["name", "price", "currency"],
                            "additionalProperties": false
                        }
                    },
                    "$schema": "http://json-schema.org/draft-07/schema#"
                }),
            ),
            (
                "zod-to-json-schema pointer refs into properties",
                json!({
                    "type": "object",
                    "properties": {
                        "billing": {
                            "type": "object",
                            "properties": {
                                "street": { "type": "string" },
                                "city": { "type": "string" },
                                "zip": { "type": "string", "pattern": "^\\d{5}$" }
                            },
                            "required": ["street", "city", "zip"],
                            "additionalProperties": false
                        },
                        "shipping": { "$ref": "#/properties/billing" },
                        "zip_again": { "$ref": "#/properties/billing/properties/zip" }
                    },
                    "required": ["billing", "shipping", "zip_again"],
                    "additionalProperties": false,
                    "$schema": "http://json-schema.org/draft-07/schema#"
                }),
            ),
            (
                "formats",
                json!({
                    "type": "object",
                    "properties": {
                        "created_at": { "type": "string", "format": "date-time" },
                        "birthday": { "type": "string", "format": "date" },
                        "alarm": { "type": "string", "format": "time" },
                        "contact": { "type": "string", "format": "email" },
                        "homepage": { "type": "string", "format": "uri" },
                        "callback": { "type": "string", "format": "url" },
                        "request": { "format": "uuid" },
                        "server": { "type": "string", "format": "ipv4" },
                        "server6": { "type": "string", "format": "ipv6" },
                        "host": { "type": "string", "format": "hostname" },
                        "timeout": { "type": "string", "format": "duration" }
                    },
                    "required": ["created_at", "birthday", "alarm", "contact", "homepage", "request"],
                    "additionalProperties": false
                }),
            ),
            (
                "numeric bounds, exclusive bounds and multipleOf",
                json!({
                    "type": "object",
                    "properties": {
                        "age": { "type": "integer", "minimum": 18, "maximum": 21 },
                        "rating": { "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 5, "multipleOf": 0.5 },
                        "temperature": { "type": "number", "minimum": 0, "maximum": 2 },
                        "score": { "type": "integer", "multipleOf": 5, "exclusiveMinimum": 40, "exclusiveMaximum": 50 },
                        "latitude": { "type": "number", "minimum": -90, "maximum": 90 },
                        "price": { "type": "number", "multipleOf": 0.01, "minimum": 100 },
                        "year": { "type": "integer", "maximum": 1999 },
                        "ratio": { "type": "number", "exclusiveMinimum": 0.25, "exclusiveMaximum": 0.5 },
                        "half": { "type": "integer", "multipleOf": 0.5, "minimum": 3 }
                    },
                    "required": ["age", "rating", "temperature", "score", "latitude", "price", "year", "ratio", "half"]
                }),
            ),
            (
                "string patterns and lengths",
                json!({
                    "type": "object",
                    "properties": {
                        "code": { "type": "string", "pattern": "^[A-Z]{3}-\\d{4}$" },
                        "phone": { "type": "string", "pattern": "^\\+?[0-9 ]{7,15}$" },
                        "handle": { "type": "string", "pattern": "^[a-z0-9-]+$", "minLength": 12 },
                        "nickname": { "type": "string", "minLength": 3, "maxLength": 5 },
                        "bio": { "type": "string", "minLength": 80 },
                        "hex": { "type": "string", "pattern": "^#[0-9a-fA-F]{6}$" },
                        "version": { "type": "string", "pattern": "^\\d+\\.\\d+\\.\\d+$" },
                        "ticket": { "type": "string", "pattern": "^(BUG|FEAT)-[0-9]{2,4}$" }
                    },
                    "required": ["code", "phone", "handle", "nickname", "bio", "hex", "version", "ticket"]
                }),
            ),
            (
                "const, closed object and invalid defaults",
                json!({
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "version": { "const": 2 },
                        "mode": { "type": "string", "enum": ["fast", "slow"], "default": "medium" },
                        "retries": { "type": "integer", "minimum": 1, "default": 0 },
                        "label": { "type": "string", "minLength": 5, "default": "ok" }
                    },
                    "required": ["version", "mode", "retries", "label"]
                }),
            ),
            (
                "uniqueItems with enum items",
                json!({
                    "type": "object",
                    "properties": {
                        "colors": {
                            "type": "array",
                            "items": { "enum": ["red", "green", "blue"] },
                            "uniqueItems": true,
                            "minItems": 3
                        },
                        "flags": { "type": "array", "items": { "type": "boolean" }, "uniqueItems": true, "minItems": 2 },
                        "ids": { "type": "array", "items": { "type": "string", "format": "uuid" }, "uniqueItems": true, "minItems": 4 }
                    },
                    "required": ["colors", "flags", "ids"]
                }),
            ),
            (
                "required arrays with minItems of objects",
                json!({
                    "type": "object",
                    "required": ["ingredients", "steps"],
                    "properties": {
                        "ingredients": {
                            "type": "array",
                            "minItems": 4,
                            "items": {
                                "type": "object",
                                "required": ["name", "quantity"],
                                "properties": {
                                    "name": { "type": "string" },
                                    "quantity": { "type": "number", "exclusiveMinimum": 0 },
                                    "unit": { "type": "string" }
                                }
                            }
                        },
                        "steps": {
                            "type": "array",
                            "minItems": 3,
                            "maxItems": 5,
                            "items": { "type": "string", "minLength": 10 }
                        },
                        "matrix": {
                            "type": "array",
                            "items": { "type": "array", "items": { "type": "integer" }, "minItems": 3 }
                        }
                    }
                }),
            ),
            (
                "oneOf discriminated union",
                json!({
                    "oneOf": [
                        {
                            "type": "object",
                            "properties": { "kind": { "const": "circle" }, "radius": { "type": "number", "exclusiveMinimum": 0 } },
                            "required": ["kind", "radius"]
                        },
                        {
                            "type": "object",
                            "properties": { "kind": { "const": "square" }, "side": { "type": "number" } },
                            "required": ["kind", "side"]
                        }
                    ]
                }),
            ),
            (
                "oneOf whose first branch also matches the second",
                json!({
                    "type": "object",
                    "properties": {
                        "amount": { "oneOf": [{ "type": "integer" }, { "type": "number", "minimum": 0 }] },
                        "word": { "oneOf": [{ "type": "string", "maxLength": 5 }, { "type": "string", "minLength": 3 }] }
                    },
                    "required": ["amount", "word"]
                }),
            ),
            (
                "allOf merge with if/then/else and nullable types",
                json!({
                    "allOf": [
                        { "$ref": "#/$defs/Base" },
                        {
                            "properties": { "country": { "type": "string" }, "postal_code": { "type": "string" } },
                            "required": ["country", "postal_code"]
                        }
                    ],
                    "if": { "properties": { "country": { "const": "US" } } },
                    "then": { "properties": { "postal_code": { "pattern": "^\\d{5}$" } } },
                    "else": { "properties": { "postal_code": { "pattern": "^[A-Z]\\d[A-Z] ?\\d[A-Z]\\d$" } } },
                    "$defs": {
                        "Base": {
                            "type": "object",
                            "properties": {
                                "name": { "type": ["string", "null"] },
                                "nickname": { "type": "string", "nullable": true }
                            },
                            "required": ["name"]
                        }
                    }
                }),
            ),
            (
                "minProperties through patternProperties",
                json!({
                    "type": "object",
                    "patternProperties": { "^x-[a-z]+$": { "type": "string" } },
                    "additionalProperties": false,
                    "minProperties": 2
                }),
            ),
            (
                "prefixItems tuple and contains",
                json!({
                    "type": "object",
                    "properties": {
                        "point": {
                            "type": "array",
                            "prefixItems": [{ "type": "string", "format": "date" }, { "type": "number" }],
                            "items": false,
                            "minItems": 2
                        },
                        "readings": {
                            "type": "array",
                            "items": { "type": "integer" },
                            "contains": { "minimum": 100 },
                            "minItems": 2
                        }
                    },
                    "required": ["point", "readings"]
                }),
            ),
            (
                "draft-04 boolean exclusiveMinimum and trivial not",
                json!({
                    "$schema": "http://json-schema.org/draft-04/schema#",
                    "type": "object",
                    "properties": {
                        "discount": { "type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 1 },
                        "anything": { "not": { "type": "string" } }
                    },
                    "required": ["discount", "anything"]
                }),
            ),
            (
                "missing types inferred from keywords",
                json!({
                    "properties": {
                        "count": { "minimum": 3 },
                        "labels": { "items": { "minLength": 2 }, "minItems": 1 },
                        "meta": { "required": ["source"] },
                        "free": {}
                    },
                    "required": ["count", "labels", "meta", "free"]
                }),
            ),
            (
                "$id root, absolute and $anchor references, unanchored pattern",
                json!({
                    "$id": "https://example.com/person.json",
                    "type": "object",
                    "properties": {
                        "friend": { "$ref": "#/$defs/Person" },
                        "manager": { "$ref": "https://example.com/person.json#/$defs/Person" },
                        "level": { "$ref": "#level" },
                        "motto": { "type": "string", "pattern": "\\bgo\\b", "minLength": 10 }
                    },
                    "required": ["friend", "manager", "level", "motto"],
                    "$defs": {
                        "Person": {
                            "type": "object",
                            "properties": { "email": { "type": "string", "format": "email" } },
                            "required": ["email"]
                        },
                        "Level": { "$anchor": "level", "type": "integer", "minimum": 5 }
                    }
                }),
            ),
        ]
    }

    fn validator(schema: &Value) -> jsonschema::Validator {
        jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .expect("corpus schema compiles")
    }

    #[test]
    fn corpus_samples_are_valid_and_deterministic() {
        let corpus = corpus();
        assert!(corpus.len() >= 15);
        for (name, schema) in corpus {
            let value = sample(&schema);
            let errors: Vec<String> = validator(&schema)
                .iter_errors(&value)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{name}: {value:#} is invalid: {errors:?}"
            );
            assert_eq!(value, sample(&schema), "{name}: not deterministic");
        }
    }

    #[test]
    fn strings_follow_the_field_name() {
        let schema = json!({
            "type": "object",
            "properties": {
                "email": { "type": "string" },
                "name": { "type": "string" },
                "city": { "type": "string" },
                "customer_id": { "type": "string" },
                "website": { "type": "string" },
                "favoriteFood": { "type": "string" }
            }
        });
        let value = sample(&schema);
        let email = value["email"].as_str().unwrap();
        assert!(email.contains('@') && email.contains('.'), "{email}");
        let name = value["name"].as_str().unwrap();
        assert_eq!(name.split(' ').count(), 2, "{name}");
        assert!(name.chars().next().unwrap().is_uppercase(), "{name}");
        assert_eq!(value["city"], "Lisbon");
        assert!(value["customer_id"]
            .as_str()
            .unwrap()
            .starts_with("customer_"));
        assert!(value["website"].as_str().unwrap().starts_with("https://"));
        assert_eq!(value["favoriteFood"], "sample favorite food");
    }

    #[test]
    fn numbers_follow_the_field_name() {
        let schema = json!({
            "type": "object",
            "properties": {
                "age": { "type": "integer" },
                "year": { "type": "integer" },
                "price": { "type": "number" },
                "latitude": { "type": "number" }
            }
        });
        let value = sample(&schema);
        assert_eq!(
            value,
            json!({ "age": 34, "year": 2024, "price": 19.99, "latitude": 38.7223 })
        );
    }

    #[test]
    fn valid_defaults_and_examples_are_used_invalid_ones_are_not() {
        let schema = json!({
            "type": "object",
            "properties": {
                "mode": { "type": "string", "enum": ["fast", "slow"], "default": "slow" },
                "bad_mode": { "type": "string", "enum": ["fast", "slow"], "default": "medium" },
                "city": { "type": "string", "examples": ["Porto", "Braga"] },
                "retries": { "type": "integer", "minimum": 1, "default": 0 }
            }
        });
        let value = sample(&schema);
        assert_eq!(value["mode"], "slow");
        assert_eq!(value["bad_mode"], "fast");
        assert_eq!(value["city"], "Porto");
        assert_eq!(value["retries"], 1);
    }

    #[test]
    fn recursion_ends_with_the_smallest_valid_value() {
        let schema = json!({
            "type": "object",
            "properties": {
                "value": { "type": "integer" },
                "children": { "type": "array", "items": { "$ref": "#" } },
                "parent": { "anyOf": [{ "$ref": "#" }, { "type": "null" }] }
            },
            "required": ["value", "children"]
        });
        let value = sample(&schema);
        let text = value.to_string();
        assert!(text.len() < 4000, "sample too big: {} bytes", text.len());
        assert!(text.contains("\"children\":[]"), "{text}");
        assert!(validator(&schema).is_valid(&value));
    }

    #[test]
    fn patterns_give_matching_strings() {
        for pattern in [
            "^[A-Z]{3}-\\d{4}$",
            "^\\+?[0-9 ]{7,15}$",
            "^[a-z0-9-]+$",
            "^v\\d+(\\.\\d+)*$",
        ] {
            let schema = json!({ "type": "string", "pattern": pattern });
            let value = sample(&schema);
            let text = value.as_str().unwrap();
            assert!(
                regex::Regex::new(pattern).unwrap().is_match(text),
                "{pattern}: {text}"
            );
        }
        assert_eq!(
            sample(&json!({ "type": "string", "pattern": "^[A-Z]{3}-\\d{4}$" })),
            "ABC-3456"
        );
    }
}
