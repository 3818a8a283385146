//! Sample data from a JSON Schema: a valid, deterministic value for testing mode and the mock
//! provider.
//!
//! There is no randomness: every choice is the first (or, for the items of an array, the n-th)
//! acceptable one, so the same schema always gives the same value. Choices that can be wrong (a
//! `default`, an `examples` entry, an `anyOf` branch, a string built from a `pattern`) are checked
//! with the `jsonschema` validator before they are kept, because a sample that fails the schema it
//! came from is worse than a dull one.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use merge::merge;
use pattern::pattern_strings;
use plausible::{format_value, plausible_number, plausible_string};

mod merge;
mod pattern;
mod plausible;

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
    /// The field holding the current object, which says what a generic `name` names.
    parent: &'n str,
    refs: u32,
    variant: u32,
}

impl<'n> Ctx<'n> {
    fn minimal(&self) -> bool {
        self.refs >= MINIMAL_AFTER_REFS
    }

    fn child<'c>(&self, name: &'c str) -> Ctx<'c>
    where
        'n: 'c,
    {
        Ctx {
            name,
            parent: self.name,
            ..*self
        }
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
            _ => return Value::String(plausible_string(cx.name, cx.parent, cx.variant)),
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
        // a oneOf value that also fits another branch may not with another enum member or number
        let variants = if key == "oneOf" { 4 } else { 1 };
        for alt in order {
            let merged = merge(&base, alt);
            for offset in 0..variants {
                let variant = cx.variant + offset;
                let value = self.value(&merged, Ctx { variant, ..cx });
                if self.check(schema, &value) != Some(false) {
                    return value;
                }
                first.get_or_insert(value);
            }
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
        // last resort for what is not modelled (`not`, `propertyNames`, look-arounds in a
        // `pattern` such as password rules, ...): the simplest values, then a strong password
        let simple = [
            json!(null),
            json!(true),
            json!(0),
            json!(""),
            json!({}),
            json!([]),
        ];
        for simple in simple.into_iter().chain([json!("Sample-2024!")]) {
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
                let value = self.value(schema, cx.child(name));
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
            let value = self.value(schema, cx.child(name));
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
            let value = self.value(schema, cx.child(&key));
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
            for i in 0..times {
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
        .and_then(|f| format_value(f, cx.name, cx.variant));
    if let Some(s) = formatted.filter(|s| matches(s)) {
        return s;
    }
    let plausible = plausible_string(cx.name, cx.parent, cx.variant);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Real-world shapes: OpenAI's structured-output examples, Pydantic and zod-to-json-schema
    /// output, and each keyword the generator claims to honour.
    fn corpus() -> Vec<(String, Value)> {
        let corpus: Vec<Value> = serde_json::from_str(include_str!("sample/corpus.json")).unwrap();
        corpus
            .into_iter()
            .map(|case| {
                (
                    case["name"].as_str().unwrap().to_string(),
                    case["schema"].clone(),
                )
            })
            .collect()
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
    fn odd_schemas_give_a_value_without_panicking() {
        for schema in [
            json!(null),
            json!(5),
            json!({ "type": "unknown" }),
            json!({ "$ref": "#/$defs/missing" }),
            json!({ "$ref": "https://example.com/elsewhere.json" }),
            json!({ "type": "string", "pattern": "(unclosed" }),
            json!({ "$defs": { "a": { "allOf": [{ "$ref": "#/$defs/a" }] } }, "$ref": "#/$defs/a" }),
            json!({ "type": "object", "properties": { "x": { "$ref": "#/properties/x" } }, "required": ["x"] }),
        ] {
            assert_eq!(sample(&schema), sample(&schema), "{schema}");
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
                "favoriteFood": { "type": "string" },
                "company": { "type": "object", "properties": { "name": { "type": "string" } } },
                "ingredients": {
                    "type": "array",
                    "items": { "type": "object", "properties": { "name": { "type": "string" } } }
                },
                "tag_ids": { "type": "array", "items": { "type": "string" } }
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
        assert_eq!(value["company"]["name"], "Acme Corp");
        assert_eq!(value["ingredients"][1]["name"], "sugar");
        assert!(value["tag_ids"][0].as_str().unwrap().starts_with("tag_"));
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
