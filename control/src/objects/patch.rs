//! Applying PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes'
//! strategic merge patch for the built-in kinds.
//!
//! Strategic merge patch merges lists of objects by a key (containers by `name`, ports by
//! `containerPort`, ...) instead of replacing them, and understands the `$patch`,
//! `$setElementOrder/`, `$deleteFromPrimitiveList/` and `$retainKeys` directives that kubectl sends.
//! The merge keys are upstream's `x-kubernetes-patch-merge-key` tags for the kinds Skiff serves.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::schema::{Field, Message};

/// The PATCH content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// Maps a Content-Type header to a patch type.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies an RFC 6902 JSON patch.
pub fn apply_json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let patch: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| e.to_string())?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &patch).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Applies an RFC 7386 JSON merge patch.
pub fn apply_merge_patch(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// How a list field merges: by a key, as a set of primitives, or not at all (replace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListStrategy {
    MergeKey(&'static str),
    PrimitiveSet,
    Replace,
}

/// The type context of a value being merged: a message from the schema, a map whose values are
/// messages, or unknown (custom resources, fields outside the schema).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ctx {
    Msg(&'static Message),
    MapOf(Option<&'static Message>),
    Unknown,
}

impl Ctx {
    /// The root context for a kind.
    pub(crate) fn root(root: Option<&'static Message>) -> Self {
        root.map_or(Ctx::Unknown, Ctx::Msg)
    }

    /// The schema field for `key`, when this is a message.
    pub(crate) fn field(self, key: &str) -> Option<&'static Field> {
        match self {
            Ctx::Msg(m) => m.field(key),
            _ => None,
        }
    }

    /// The context of the value at `key`.
    pub(crate) fn child(self, key: &str) -> Ctx {
        match self {
            Ctx::Msg(m) => match m.field(key) {
                Some(f) if f.is_map() => Ctx::MapOf(f.message()),
                Some(f) => f.message().map_or(Ctx::Unknown, Ctx::Msg),
                None => Ctx::Unknown,
            },
            Ctx::MapOf(Some(m)) => Ctx::Msg(m),
            _ => Ctx::Unknown,
        }
    }

    /// The context of a list's items.
    pub(crate) fn items(self, key: &str) -> Ctx {
        match self.field(key).and_then(Field::message) {
            Some(m) => Ctx::Msg(m),
            None => Ctx::Unknown,
        }
    }
}

/// Upstream's patch strategy for the list at `field`: from the schema's `patchStrategy` and
/// `patchMergeKey`, or for values without a schema from the field's name.
pub(crate) fn list_strategy(ctx: Ctx, path: &[String], field: &str) -> ListStrategy {
    if let Ctx::Msg(_) = ctx {
        return match ctx.field(field) {
            Some(f) if f.strategy.split(',').any(|s| s == "merge") && !f.merge_key.is_empty() => {
                ListStrategy::MergeKey(f.merge_key)
            }
            Some(f) if f.strategy.split(',').any(|s| s == "merge") => ListStrategy::PrimitiveSet,
            _ => ListStrategy::Replace,
        };
    }
    let in_container = path
        .iter()
        .any(|p| p == "containers" || p == "initContainers" || p == "ephemeralContainers");
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets" => {
            ListStrategy::MergeKey("name")
        }
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "ports" if in_container => ListStrategy::MergeKey("containerPort"),
        "conditions" => ListStrategy::MergeKey("type"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "finalizers" if path.last().is_some_and(|p| p == "metadata") => ListStrategy::PrimitiveSet,
        _ => ListStrategy::Replace,
    }
}

/// Applies a strategic merge patch to `target`, merging lists as the kind's schema (`root`) says.
pub fn apply_strategic_patch(
    target: &Value,
    patch: &Value,
    root: Option<&'static Message>,
) -> Result<Value, String> {
    let mut path = Vec::new();
    merge_value(Some(target), patch, Ctx::root(root), &mut path).map(|v| v.unwrap_or(Value::Null))
}

/// Merges `patch` into `target`; `None` means "delete this value".
fn merge_value(
    target: Option<&Value>,
    patch: &Value,
    ctx: Ctx,
    path: &mut Vec<String>,
) -> Result<Option<Value>, String> {
    match patch {
        Value::Null => Ok(None),
        Value::Object(p) => {
            match p.get("$patch").and_then(Value::as_str) {
                Some("delete") => return Ok(None),
                Some("replace") => {
                    let mut clean = p.clone();
                    clean.remove("$patch");
                    return Ok(Some(strip_directives(Value::Object(clean))));
                }
                Some(other) if other != "merge" => return Err(format!("unknown patch type: {other}")),
                _ => {}
            }
            let base = match target {
                Some(Value::Object(t)) => t.clone(),
                _ => Map::new(),
            };
            merge_map(base, p, ctx, path).map(|m| Some(Value::Object(m)))
        }
        other => Ok(Some(other.clone())),
    }
}

fn merge_map(
    mut out: Map<String, Value>,
    patch: &Map<String, Value>,
    ctx: Ctx,
    path: &mut Vec<String>,
) -> Result<Map<String, Value>, String> {
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, pv) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (out.get_mut(field), pv) {
                let remove: HashSet<String> = remove.iter().map(Value::to_string).collect();
                list.retain(|v| !remove.contains(&v.to_string()));
            }
            continue;
        }
        let current = out.get(key);
        let merged = match (current, pv) {
            (Some(Value::Array(cur)), Value::Array(items)) => {
                Some(Value::Array(merge_list(cur, items, ctx, path, key)?))
            }
            (None, Value::Array(items)) => Some(Value::Array(merge_list(&[], items, ctx, path, key)?)),
            _ => {
                path.push(key.clone());
                let merged = merge_value(current, pv, ctx.child(key), path);
                path.pop();
                merged?
            }
        };
        match merged {
            Some(v) => {
                out.insert(key.clone(), v);
            }
            None => {
                out.remove(key);
            }
        }
    }
    Ok(out)
}

fn merge_list(
    current: &[Value],
    patch: &[Value],
    ctx: Ctx,
    path: &mut Vec<String>,
    field: &str,
) -> Result<Vec<Value>, String> {
    match list_strategy(ctx, path, field) {
        ListStrategy::Replace => Ok(patch.iter().cloned().map(strip_directives).collect()),
        ListStrategy::PrimitiveSet => {
            let mut out = current.to_vec();
            let mut seen: HashSet<String> = out.iter().map(Value::to_string).collect();
            for v in patch {
                if seen.insert(v.to_string()) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeKey(merge_key) => {
            if patch.iter().any(|p| {
                p.get("$patch").and_then(Value::as_str) == Some("replace") && p.get(merge_key).is_none()
            }) {
                let items = patch
                    .iter()
                    .filter(|p| p.get("$patch").is_none())
                    .cloned()
                    .map(strip_directives);
                return Ok(items.collect());
            }
            let item_ctx = ctx.items(field);
            // Items by merge key, so that merging n items into m is linear, not n x m.
            let mut out: Vec<Option<Value>> = current.iter().cloned().map(Some).collect();
            let mut index: HashMap<String, usize> = HashMap::new();
            for (i, c) in current.iter().enumerate() {
                if let Some(k) = c.get(merge_key) {
                    index.entry(k.to_string()).or_insert(i);
                }
            }
            path.push(field.to_owned());
            for item in patch {
                let Some(key_value) = item.get(merge_key) else {
                    path.pop();
                    return Err(format!(
                        "map: {item} does not contain declared merge key: {merge_key}"
                    ));
                };
                let key = key_value.to_string();
                let pos = index.get(&key).copied();
                let deleting = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, deleting) {
                    (Some(i), true) => {
                        out[i] = None;
                        index.remove(&key);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        if let Some(v) = merge_value(out[i].as_ref(), item, item_ctx, path)? {
                            out[i] = Some(v);
                        }
                    }
                    (None, false) => {
                        if let Some(v) = merge_value(None, item, item_ctx, path)? {
                            index.insert(key, out.len());
                            out.push(Some(v));
                        }
                    }
                }
            }
            path.pop();
            Ok(out.into_iter().flatten().collect())
        }
    }
}

/// Removes patch directives from a value that is inserted as a whole.
fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_schema() -> Option<&'static Message> {
        crate::objects::schema::message_for("v1", "Pod")
    }

    #[test]
    fn container_ports_merge_by_container_port_from_the_schema() {
        let pod = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}]}]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 81}]}]}});
        let out = apply_strategic_patch(&pod, &patch, pod_schema()).unwrap();
        assert_eq!(out["spec"]["containers"][0]["ports"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "b", "image": "y:1"}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "x:2", "env": [{"name": "B", "value": "2"}]}]
        }});
        let out = apply_strategic_patch(&pod, &patch, pod_schema()).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "x:2");
        assert_eq!(out["spec"]["containers"][0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["containers"][1]["image"], "y:1");
    }

    #[test]
    fn delete_directives_and_nulls() {
        let obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
                         "spec": {"ports": [{"port": 80}, {"port": 443}]}});
        let patch = json!({"metadata": {"labels": {"a": null}, "$deleteFromPrimitiveList/finalizers": ["x"]},
                           "spec": {"ports": [{"port": 443, "$patch": "delete"}]}});
        let out = apply_strategic_patch(&obj, &patch, crate::objects::schema::message_for("v1", "Service"))
            .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(out["spec"]["ports"], json!([{"port": 80}]));
    }

    #[test]
    fn thousands_of_keyed_items_merge_in_linear_time() {
        let containers = |image: &str| -> Vec<Value> {
            (0..5000)
                .map(|i| json!({"name": format!("c{i}"), "image": image, "env": [{"name": "A", "value": "1"}]}))
                .collect()
        };
        let pod = json!({"spec": {"containers": containers("x:1")}});
        let patch = json!({"spec": {"containers": containers("x:2")}});
        let start = std::time::Instant::now();
        let out = apply_strategic_patch(&pod, &patch, pod_schema()).unwrap();
        eprintln!("5,000 containers merged in {:?}", start.elapsed());
        let merged = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(merged.len(), 5000);
        assert!(merged.iter().all(|c| c["image"] == "x:2"));
        assert_eq!(merged[4999]["name"], "c4999");
    }

    #[test]
    fn unkeyed_lists_are_replaced() {
        let obj = json!({"spec": {"tolerations": [{"key": "a"}], "args": ["1"]}});
        let out = apply_strategic_patch(&obj, &json!({"spec": {"args": ["2"]}}), pod_schema()).unwrap();
        assert_eq!(out["spec"]["args"], json!(["2"]));
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "a"}]));
    }
}
