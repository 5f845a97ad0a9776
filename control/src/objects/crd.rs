//! CustomResourceDefinitions: validation, and turning stored CRDs into served resources.

use std::sync::Arc;

use serde_json::{Value, json};

use super::registry::ResourceInfo;
use super::validation::Causes;

/// Validates a CRD's spec (structural schema checks come later).
pub fn validate(obj: &Value, causes: &mut Causes) {
    let spec = &obj["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if group.is_empty() {
        causes.push(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        causes.push(("spec.names.plural".into(), "Required value".into()));
    }
    if spec["names"]["kind"].as_str().is_none_or(str::is_empty) {
        causes.push(("spec.names.kind".into(), "Required value".into()));
    }
    if !["Namespaced", "Cluster"].contains(&spec["scope"].as_str().unwrap_or_default()) {
        causes.push((
            "spec.scope".into(),
            "Unsupported value: supported values: \"Cluster\", \"Namespaced\"".into(),
        ));
    }
    let conversion = &spec["conversion"];
    match conversion["strategy"].as_str() {
        None | Some("None") => {}
        Some("Webhook") => {
            let hook = &conversion["webhook"];
            let versions: Vec<&str> = hook["conversionReviewVersions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !versions.iter().any(|v| matches!(*v, "v1" | "v1beta1")) {
                causes.push((
                    "spec.conversion.webhook.conversionReviewVersions".into(),
                    "Required value: must include at least one of v1, v1beta1".into(),
                ));
            }
            let config = &hook["clientConfig"];
            if config["url"].is_string() == config["service"].is_object() {
                causes.push((
                    "spec.conversion.webhook.clientConfig".into(),
                    "Required value: exactly one of url or service is required".into(),
                ));
            }
        }
        Some(other) => causes.push((
            "spec.conversion.strategy".into(),
            format!("Unsupported value: \"{other}\": supported values: \"None\", \"Webhook\""),
        )),
    }
    let versions = spec["versions"].as_array();
    let storage_versions = versions
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if storage_versions != 1 {
        causes.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    for (i, v) in versions.into_iter().flatten().enumerate() {
        check_patterns(
            &v["schema"]["openAPIV3Schema"],
            &format!("spec.versions[{i}].schema.openAPIV3Schema"),
            causes,
        );
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
}

/// Every `pattern` in a schema must compile (RE2 syntax, as upstream's validator reads it), and
/// every CEL rule (`x-kubernetes-validations`).
fn check_patterns(schema: &Value, path: &str, causes: &mut Causes) {
    let Some(map) = schema.as_object() else { return };
    if let Some(p) = map.get("pattern").and_then(Value::as_str)
        && let Err(e) = super::schema_constraints::compile(p)
    {
        causes.push((
            format!("{path}.pattern"),
            format!("Invalid value: \"{p}\": must be a valid regular expression, but isn't: {e}"),
        ));
    }
    for (i, rule) in map
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(why) = super::cel::check_rule(rule) {
            causes.push((format!("{path}.x-kubernetes-validations[{i}].rule"), why));
        }
    }
    for key in ["properties", "patternProperties", "definitions"] {
        for (name, sub) in map.get(key).and_then(Value::as_object).into_iter().flatten() {
            check_patterns(sub, &format!("{path}.{key}[{name}]"), causes);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = map.get(key) {
            check_patterns(sub, &format!("{path}.{key}"), causes);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, sub) in map
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_patterns(sub, &format!("{path}.{key}[{i}]"), causes);
        }
    }
}

/// The resources a CRD serves (one per served version).
pub fn resources(crd: &Value) -> Vec<Arc<ResourceInfo>> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let shared = Arc::new(crd.clone());
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"] != json!(false))
        .map(|v| {
            let kind = names["kind"].as_str().unwrap_or_default().to_owned();
            let mut subresources = Vec::new();
            if v["subresources"].get("status").is_some() {
                subresources.push("status".to_owned());
            }
            if v["subresources"].get("scale").is_some() {
                subresources.push("scale".to_owned());
            }
            Arc::new(ResourceInfo {
                group: spec["group"].as_str().unwrap_or_default().to_owned(),
                version: v["name"].as_str().unwrap_or_default().to_owned(),
                singular: names["singular"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| kind.to_lowercase()),
                kind,
                plural: names["plural"].as_str().unwrap_or_default().to_owned(),
                namespaced: spec["scope"] == "Namespaced",
                short_names: strs(&names["shortNames"]),
                categories: strs(&names["categories"]),
                subresources,
                crd: Some(shared.clone()),
            })
        })
        .collect()
}

/// The status a CRD gets once its names are served.
pub fn established_status(crd: &Value, now: &str) -> Value {
    let names = crd["spec"]["names"].clone();
    // Every version objects were ever stored at stays listed (until an operator migrates them
    // and trims the list), the current storage version last.
    let mut storage: Vec<Value> = crd["status"]["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for v in crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
    {
        if !storage.contains(&v["name"]) {
            storage.push(v["name"].clone());
        }
    }
    json!({
        "acceptedNames": names,
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    })
}

/// The printer columns of a CRD version, as `(name, type, jsonPath, priority)`.
pub fn printer_columns(info: &ResourceInfo) -> Vec<(String, String, String, i64)> {
    let Some(crd) = &info.crd else { return Vec::new() };
    crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["name"] == info.version.as_str())
        .flat_map(|v| {
            v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["type"].as_str().unwrap_or("string").to_owned(),
                c["jsonPath"].as_str().unwrap_or_default().to_owned(),
                c["priority"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// The `openAPIV3Schema` of the CRD version `info` serves.
fn version_schema(info: &ResourceInfo) -> Option<Value> {
    schema_of(info).cloned()
}

fn schema_of(info: &ResourceInfo) -> Option<&Value> {
    let crd = info.crd.as_deref()?;
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == info.version.as_str())
        .map(|v| &v["schema"]["openAPIV3Schema"])
        .filter(|s| s.is_object())
}

/// Fills in the schema's `default`s where a field is missing (or null and not nullable), inside
/// the defaults filled too, as upstream's structural defaulting does.
fn apply_defaults(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (key, sub) in props {
                    let Some(default) = sub.get("default") else {
                        continue;
                    };
                    let missing = match map.get(key) {
                        None => true,
                        Some(Value::Null) => sub["nullable"] != json!(true),
                        Some(_) => false,
                    };
                    if missing {
                        map.insert(key.clone(), default.clone());
                    }
                }
                for (key, v) in map.iter_mut() {
                    if let Some(sub) = props.get(key) {
                        apply_defaults(v, sub);
                    }
                }
            } else if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in map.values_mut() {
                    apply_defaults(v, additional);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items").filter(|s| s.is_object()) {
                for v in items {
                    apply_defaults(v, item);
                }
            }
        }
        _ => {}
    }
}

/// A custom resource as read from storage: the defaults its schema has now, including those
/// added after it was written (upstream defaults on reads too).
pub fn default_stored(info: &ResourceInfo, obj: &mut Value) {
    if let Some(schema) = schema_of(info) {
        apply_defaults(obj, schema);
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validates `value` against a structural schema, pruning (or, when `strict`, reporting) fields
/// the schema does not declare.
fn check(
    value: &mut Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    strict: bool,
    causes: &mut Causes,
    unknown: &mut Vec<String>,
) {
    let shown = |v: &Value| match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    };
    if value.is_null() && schema["nullable"] == json!(true) {
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == json!(true);
    if let Some(want) = schema["type"].as_str() {
        let have = type_name(value);
        let ok = have == want
            || (want == "number" && have == "integer")
            || (int_or_string && (have == "integer" || have == "string"));
        if !ok {
            causes.push((
                path.to_owned(),
                format!("Invalid value: \"{have}\": {path} in body must be of type {want}: \"{have}\""),
            ));
            return;
        }
    } else if int_or_string && !matches!(type_name(value), "integer" | "string") {
        causes.push((
            path.to_owned(),
            format!("Invalid value: {}: must be an integer or a string", shown(value)),
        ));
        return;
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        let list: Vec<String> = options.iter().map(shown).collect();
        causes.push((
            path.to_owned(),
            format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                list.join(", ")
            ),
        ));
    }
    super::schema_constraints::check(value, schema, path, causes);
    match value {
        Value::Object(map) => {
            for req in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(req) {
                    causes.push((join(path, req), "Required value".into()));
                }
            }
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
            let props = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let here = join(path, &key);
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props
                    .and_then(|p| p.get(&key))
                    .or_else(|| additional.is_object().then_some(additional));
                match sub {
                    Some(sub) => {
                        if let Some(v) = map.get_mut(&key) {
                            let old = old.and_then(|o| o.get(&key));
                            check(v, old, sub, &here, strict, causes, unknown);
                        }
                    }
                    None if preserve || additional == &json!(true) => {}
                    None if strict => unknown.push(format!("unknown field \"{here}\"")),
                    None => {
                        map.remove(&key);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    let old = old_item(schema, old, item);
                    check(
                        item,
                        old,
                        item_schema,
                        &format!("{path}[{i}]"),
                        strict,
                        causes,
                        unknown,
                    );
                }
            }
        }
        _ => {}
    }
    causes.extend(super::cel::validate(schema, value, old, path));
}

/// The item of the old list that `item` replaces, for transition rules: lists of type `map` pair
/// items by their keys; other lists have no such pairing, as upstream.
fn old_item<'a>(schema: &Value, old: Option<&'a Value>, item: &Value) -> Option<&'a Value> {
    if schema["x-kubernetes-list-type"] != "map" {
        return None;
    }
    let keys = schema["x-kubernetes-list-map-keys"].as_array()?;
    old?.as_array()?.iter().find(|o| {
        keys.iter()
            .filter_map(Value::as_str)
            .all(|k| o.get(k) == item.get(k))
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// What a custom resource's schema found wrong.
#[derive(Debug, Default)]
pub struct SchemaReport {
    /// Invalid values `(field, message)`.
    pub causes: Causes,
    /// Fields the schema does not declare (reported only when strict).
    pub unknown: Vec<String>,
}

/// Validates a custom resource against its CRD's structural schema. Undeclared fields are pruned,
/// as upstream does, or reported when `strict` (`fieldValidation=Strict`, kubectl's default).
pub fn validate_custom(
    info: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
    strict: bool,
) -> SchemaReport {
    let mut report = SchemaReport::default();
    if let Some(schema) = version_schema(info) {
        apply_defaults(obj, &schema);
        let mut walk = || {
            check(
                obj,
                old,
                &schema,
                "",
                strict,
                &mut report.causes,
                &mut report.unknown,
            )
        };
        // CEL rules run on a stack of their own (see `cel`); one thread for the whole object.
        if has_rules(&schema) {
            super::cel::on_big_stack(walk);
        } else {
            walk();
        }
    }
    report
}

/// Whether any node of `schema` carries CEL rules (a walk, not a serialization: it runs on
/// every write of a custom resource).
fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map.contains_key("x-kubernetes-validations") || map.values().any(has_rules),
        Value::Array(items) => items.iter().any(has_rules),
        _ => false,
    }
}

/// The finalizer that holds a CRD until its custom resources are gone.
pub const CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

/// The finalizer list a new CRD starts with.
pub fn initial_finalizers(existing: &Value) -> Value {
    let mut list: Vec<Value> = existing.as_array().cloned().unwrap_or_default();
    if !list.iter().any(|f| f == CLEANUP) {
        list.push(json!(CLEANUP));
    }
    Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget_info() -> ResourceInfo {
        let crd = json!({"spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer"},
                "colour": {"type": "string", "enum": ["red", "blue"]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }}}}}}]}});
        resources(&crd).remove(0).as_ref().clone()
    }

    #[test]
    fn defaults_fill_missing_and_null_fields_on_writes_and_on_reads_from_storage() {
        let crd = json!({"spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "default": {}, "properties": {
                "size": {"type": "integer", "default": 3},
                "colour": {"type": "string", "default": "red"},
                "note": {"type": "string", "nullable": true, "default": "n"},
                "ports": {"type": "array", "items": {"type": "object", "properties": {
                    "protocol": {"type": "string", "default": "TCP"}}}},
                "byName": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                    "weight": {"type": "integer", "default": 1}}}}
            }}}}}}]}});
        let info = resources(&crd).remove(0).as_ref().clone();
        // A request without a spec gets the spec's default, then the defaults inside it.
        let mut empty = json!({"metadata": {"name": "w"}});
        let report = validate_custom(&info, &mut empty, None, true);
        assert!(report.causes.is_empty(), "{report:?}");
        assert_eq!(empty["spec"], json!({"size": 3, "colour": "red", "note": "n"}));
        // Set values stay; a null is defaulted unless the field is nullable; lists and maps too.
        let mut set = json!({"spec": {"size": 7, "colour": null, "note": null,
            "ports": [{"protocol": "UDP"}, {}], "byName": {"a": {}}}});
        default_stored(&info, &mut set);
        assert_eq!(
            set["spec"],
            json!({"size": 7, "colour": "red", "note": null, "ports": [{"protocol": "UDP"}, {"protocol": "TCP"}],
                   "byName": {"a": {"weight": 1}}})
        );
    }

    #[test]
    fn types_required_enum_and_pruning() {
        let info = widget_info();
        let mut ok = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 1, "colour": "red", "labels": {"a": "b"}, "free": {"x": 1}, "extra": true}});
        let report = validate_custom(&info, &mut ok, None, false);
        assert!(
            report.causes.is_empty() && report.unknown.is_empty(),
            "{report:?}"
        );
        assert!(ok["spec"].get("extra").is_none());
        assert_eq!(ok["spec"]["free"]["x"], 1);
        let mut strict = json!({"spec": {"size": 1, "extra": true}});
        assert_eq!(
            validate_custom(&info, &mut strict, None, true).unknown,
            vec!["unknown field \"spec.extra\"".to_owned()]
        );
        let mut bad = json!({"spec": {"size": "big", "colour": "green"}});
        let report = validate_custom(&info, &mut bad, None, false);
        assert_eq!(report.causes.len(), 2, "{report:?}");
        let mut missing = json!({"spec": {}});
        assert_eq!(
            validate_custom(&info, &mut missing, None, false).causes[0].1,
            "Required value"
        );
    }
}
