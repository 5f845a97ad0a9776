//! The value constraints of a CRD's structural schema that are not about shape, as upstream's
//! OpenAPI validator checks them: numeric bounds and `multipleOf`, string lengths, `pattern` and
//! the common `format`s, item and property counts, `uniqueItems`, and `x-kubernetes-list-type`
//! `set`/`map` uniqueness. Messages are upstream's, with the field path in front.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::{Value, json};

use super::validation::Causes;

/// Compiled `pattern`s, shared by every custom resource (a CRD has few; the cache is bounded).
fn pattern(re: &str) -> Option<regex::Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = cache.get(re) {
        return r.clone();
    }
    if cache.len() >= 512 {
        cache.clear();
    }
    let compiled = compile(re).ok();
    cache.insert(re.to_owned(), compiled.clone());
    compiled
}

/// A schema's `pattern` as a regular expression (RE2 syntax, as upstream's Go validator reads
/// it), with a bound on its compiled size.
pub fn compile(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(re).size_limit(1 << 20).build()
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// Checks `value` (already of the schema's type) against `schema`'s constraints.
pub fn check(value: &Value, schema: &Value, path: &str, causes: &mut Causes) {
    let mut fail = |detail: String| causes.push((path.to_owned(), detail));
    match value {
        Value::Number(n) => {
            let Some(x) = n.as_f64() else { return };
            let exclusive = |key: &str| schema[key] == json!(true);
            if let Some(min) = schema["minimum"].as_f64() {
                if exclusive("exclusiveMinimum") && x <= min {
                    fail(format!(
                        "Invalid value: {n}: {path} in body should be greater than {}",
                        schema["minimum"]
                    ));
                } else if x < min {
                    fail(format!(
                        "Invalid value: {n}: {path} in body should be greater than or equal to {}",
                        schema["minimum"]
                    ));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                if exclusive("exclusiveMaximum") && x >= max {
                    fail(format!(
                        "Invalid value: {n}: {path} in body should be less than {}",
                        schema["maximum"]
                    ));
                } else if x > max {
                    fail(format!(
                        "Invalid value: {n}: {path} in body should be less than or equal to {}",
                        schema["maximum"]
                    ));
                }
            }
            if let Some(m) = schema["multipleOf"].as_f64().filter(|m| *m > 0.0)
                && ((x / m).round() * m - x).abs() > 1e-9 * x.abs().max(1.0)
            {
                fail(format!(
                    "Invalid value: {n}: {path} in body should be a multiple of {}",
                    schema["multipleOf"]
                ));
            }
        }
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && chars > max
            {
                fail(format!("Too long: may not be more than {max} bytes"));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && chars < min
            {
                fail(format!(
                    "Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
                ));
            }
            if let Some(p) = schema["pattern"].as_str()
                && pattern(p).is_some_and(|re| !re.is_match(s))
            {
                fail(format!(
                    "Invalid value: \"{s}\": {path} in body should match '{p}'"
                ));
            }
            if let Some(format) = schema["format"].as_str()
                && !format_ok(format, s)
            {
                fail(format!(
                    "Invalid value: \"{s}\": {path} in body must be of type {format}: \"{s}\""
                ));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = schema["maxItems"].as_u64()
                && len > max
            {
                fail(format!("Too many: {len}: must have at most {max} items"));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && len < min
            {
                fail(format!(
                    "Invalid value: {len}: {path} in body should have at least {min} items"
                ));
            }
            let list_type = schema["x-kubernetes-list-type"].as_str();
            if schema["uniqueItems"] == json!(true) || list_type == Some("set") {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        causes.push((
                            format!("{path}[{i}]"),
                            format!("Duplicate value: {}", shown(item)),
                        ));
                    }
                }
            }
            if list_type == Some("map") {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let key_of = |item: &Value| -> Vec<Value> { keys.iter().map(|k| item[*k].clone()).collect() };
                for (i, item) in items.iter().enumerate() {
                    let key = key_of(item);
                    if items[..i].iter().any(|other| key_of(other) == key) {
                        let shown_key: serde_json::Map<String, Value> =
                            keys.iter().map(|k| ((*k).to_owned(), item[*k].clone())).collect();
                        causes.push((
                            format!("{path}[{i}]"),
                            format!("Duplicate value: {}", Value::Object(shown_key)),
                        ));
                    }
                }
            }
        }
        Value::Object(map) => {
            let len = map.len() as u64;
            if let Some(max) = schema["maxProperties"].as_u64()
                && len > max
            {
                fail(format!("Too many: {len}: must have at most {max} items"));
            }
            if let Some(min) = schema["minProperties"].as_u64()
                && len < min
            {
                fail(format!(
                    "Invalid value: {len}: {path} in body should have at least {min} properties"
                ));
            }
        }
        _ => {}
    }
}

/// The `format`s upstream checks on strings (others are accepted as any string).
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => skiff_common::time::parse(s).is_some(),
        "date" => {
            let parts: Vec<&str> = s.split('-').collect();
            parts.len() == 3
                && parts[0].len() == 4
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s
            .split_once('/')
            .is_some_and(|(ip, len)| ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok()),
        "uuid" => uuid::Uuid::parse_str(s).is_ok(),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(value: Value, schema: Value) -> Vec<String> {
        let mut causes = Causes::new();
        check(&value, &schema, "spec.x", &mut causes);
        causes.into_iter().map(|(f, d)| format!("{f}: {d}")).collect()
    }

    #[test]
    fn numbers_strings_lists_and_maps_meet_their_bounds() {
        assert!(fails(json!(5), json!({"minimum": 1, "maximum": 5})).is_empty());
        assert_eq!(
            fails(json!(0), json!({"minimum": 1})),
            ["spec.x: Invalid value: 0: spec.x in body should be greater than or equal to 1"]
        );
        assert_eq!(
            fails(json!(5), json!({"maximum": 5, "exclusiveMaximum": true})),
            ["spec.x: Invalid value: 5: spec.x in body should be less than 5"]
        );
        assert_eq!(fails(json!(7), json!({"multipleOf": 5})).len(), 1);
        assert!(fails(json!(1.5), json!({"multipleOf": 0.5})).is_empty());
        assert_eq!(
            fails(json!("abcdef"), json!({"maxLength": 5})),
            ["spec.x: Too long: may not be more than 5 bytes"]
        );
        assert_eq!(
            fails(json!("Ab"), json!({"pattern": "^[a-z]+$", "minLength": 3})),
            [
                "spec.x: Invalid value: \"Ab\": spec.x in body should be at least 3 chars long",
                "spec.x: Invalid value: \"Ab\": spec.x in body should match '^[a-z]+$'"
            ]
        );
        assert_eq!(fails(json!("10.0.0.300"), json!({"format": "ipv4"})).len(), 1);
        assert!(fails(json!("2026-12-02T10:00:00Z"), json!({"format": "date-time"})).is_empty());
        assert_eq!(
            fails(json!([1, 2, 3]), json!({"maxItems": 2})),
            ["spec.x: Too many: 3: must have at most 2 items"]
        );
        assert_eq!(
            fails(json!(["a", "b", "a"]), json!({"x-kubernetes-list-type": "set"})),
            ["spec.x[2]: Duplicate value: \"a\""]
        );
        assert_eq!(
            fails(
                json!([{"name": "a", "v": 1}, {"name": "a", "v": 2}]),
                json!({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
            ),
            ["spec.x[1]: Duplicate value: {\"name\":\"a\"}"]
        );
        assert_eq!(
            fails(json!({"a": 1}), json!({"minProperties": 2})),
            ["spec.x: Invalid value: 1: spec.x in body should have at least 2 properties"]
        );
    }

    #[test]
    fn patterns_are_re2_and_bounded() {
        assert!(compile("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").is_ok());
        // Backreferences are not RE2 (upstream's Go validator refuses them too).
        assert!(compile("(a)\\1").is_err());
        assert!(compile("(a{1000}){1000}").is_err(), "too large to compile");
    }
}
