//! Server-side apply: field ownership in `managedFields`, conflicts between appliers, and removal of
//! fields an applier stopped setting.
//!
//! Field sets use upstream's `FieldsV1` element notation (`f:spec`, `k:{"name":"app"}`, `v:"x"`).
//! Ownership is tracked for `Apply` managers; conflicts arise when another applier owns a field this
//! apply would change (`force=true` takes it over).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::patch::{Ctx, ListStrategy, apply_strategic_patch, list_strategy};
use super::schema::Message;
use super::status::ApiError;
use super::write::Request;
use crate::objects::meta::now;

type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
];

/// How server-side apply identifies list items: by key fields, by value, or not at all.
enum ListKind {
    Map(Vec<&'static str>),
    Set,
    Atomic,
}

fn list_kind(ctx: Ctx, names: &[String], field: &str) -> ListKind {
    if let Some(f) = ctx.field(field) {
        match f.list_type {
            "map" if !f.map_keys.is_empty() => return ListKind::Map(f.map_keys.to_vec()),
            "set" => return ListKind::Set,
            "atomic" => return ListKind::Atomic,
            _ => {}
        }
    }
    match list_strategy(ctx, names, field) {
        ListStrategy::MergeKey(key) => ListKind::Map(vec![key]),
        ListStrategy::PrimitiveSet => ListKind::Set,
        ListStrategy::Replace => ListKind::Atomic,
    }
}

fn collect(value: &Value, ctx: Ctx, path: &mut Path, names: &mut Vec<String>, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                if path.is_empty() && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                if path.len() == 1 && path[0] == "f:metadata" && IGNORED_META.contains(&k.as_str()) {
                    continue;
                }
                path.push(format!("f:{k}"));
                match v {
                    Value::Array(items) => collect_list(items, ctx, path, names, k, out),
                    _ => {
                        names.push(k.clone());
                        collect(v, ctx.child(k), path, names, out);
                        names.pop();
                    }
                }
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

fn collect_list(
    items: &[Value],
    ctx: Ctx,
    path: &mut Path,
    names: &mut Vec<String>,
    field: &str,
    out: &mut FieldSet,
) {
    match list_kind(ctx, names, field) {
        ListKind::Map(keys) => {
            let item_ctx = ctx.items(field);
            names.push(field.to_owned());
            for item in items {
                let mut k = Map::new();
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                for key in sorted {
                    if let Some(v) = item.get(key) {
                        k.insert(key.to_owned(), v.clone());
                    }
                }
                path.push(format!("k:{}", Value::Object(k)));
                let mut marker = path.clone();
                marker.push(".".into());
                out.insert(marker);
                collect(item, item_ctx, path, names, out);
                path.pop();
            }
            names.pop();
        }
        ListKind::Set => {
            for item in items {
                path.push(format!("v:{item}"));
                out.insert(path.clone());
                path.pop();
            }
        }
        ListKind::Atomic => {
            out.insert(path.clone());
        }
    }
}

/// The fields an applied configuration sets.
fn field_set(obj: &Value, root: Option<&'static Message>) -> FieldSet {
    let mut out = FieldSet::new();
    collect(obj, Ctx::root(root), &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for el in path {
            cur = cur
                .entry(el.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are maps");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(tree: &Value, path: &mut Path, out: &mut FieldSet) {
    match tree.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                path.push(k.clone());
                from_fields_v1(v, path, out);
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

/// Looks up many field paths in the same objects: list items are found through an index built
/// once per list and key (instead of a scan per path, which made every write to an object with
/// thousands of list items quadratic).
#[derive(Default)]
struct Finder {
    /// (list address, key field names) → key values → position.
    keyed: std::collections::HashMap<(usize, Vec<String>), std::collections::HashMap<String, usize>>,
    /// list address → item → position.
    sets: std::collections::HashMap<usize, std::collections::HashMap<String, usize>>,
}

impl Finder {
    /// The value at a field path, if present.
    fn lookup<'a>(&mut self, obj: &'a Value, path: &[String]) -> Option<&'a Value> {
        let mut cur = obj;
        for el in path {
            if el == "." {
                return Some(cur);
            }
            cur = self.step(cur, el)?;
        }
        Some(cur)
    }

    fn step<'a>(&mut self, cur: &'a Value, el: &str) -> Option<&'a Value> {
        if let Some(f) = el.strip_prefix("f:") {
            return cur.get(f);
        }
        let items = cur.as_array()?;
        let addr = items.as_ptr() as usize;
        if let Some(k) = el.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).ok()?;
            let names: Vec<String> = key.keys().cloned().collect();
            let wanted = key_string(names.iter().map(|n| key.get(n)))?;
            let index = self.keyed.entry((addr, names)).or_insert_with_key(|(_, names)| {
                let mut index = std::collections::HashMap::new();
                for (i, item) in items.iter().enumerate() {
                    if let Some(k) = key_string(names.iter().map(|n| item.get(n))) {
                        index.entry(k).or_insert(i);
                    }
                }
                index
            });
            index.get(&wanted).map(|i| &items[*i])
        } else if let Some(v) = el.strip_prefix("v:") {
            let v: Value = serde_json::from_str(v).ok()?;
            let index = self.sets.entry(addr).or_insert_with(|| {
                let mut index = std::collections::HashMap::new();
                for (i, item) in items.iter().enumerate() {
                    index.entry(item.to_string()).or_insert(i);
                }
                index
            });
            index.get(&v.to_string()).map(|i| &items[*i])
        } else {
            None
        }
    }
}

/// The key values of a list item as one string, or None when one is missing.
fn key_string<'a>(values: impl Iterator<Item = Option<&'a Value>>) -> Option<String> {
    let mut out = String::new();
    for v in values {
        out.push_str(&v?.to_string());
        out.push('\u{0}');
    }
    Some(out)
}

/// Removes the field at `path` from `obj`.
fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if last == "." {
        remove(obj, parents);
        return;
    }
    let mut cur = obj;
    for el in parents {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = el.strip_prefix("k:") {
            let key: Option<Map<String, Value>> = serde_json::from_str(k).ok();
            match (key, cur.as_array_mut()) {
                (Some(key), Some(items)) => items
                    .iter_mut()
                    .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv))),
                _ => None,
            }
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(key), Some(items)) = (serde_json::from_str::<Map<String, Value>>(k), cur.as_array_mut()) {
            items.retain(|i| !key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
        }
    } else if let Some(v) = last.strip_prefix("v:")
        && let (Ok(v), Some(items)) = (serde_json::from_str::<Value>(v), cur.as_array_mut())
    {
        items.retain(|i| *i != v);
    }
}

fn display_path(path: &[String]) -> String {
    path.iter()
        .filter(|e| *e != ".")
        .map(|e| match e.split_at(2) {
            ("f:", f) => format!(".{f}"),
            ("k:", k) => format!(
                "[{}]",
                k.trim_start_matches('{')
                    .trim_end_matches('}')
                    .replace("\":", "=")
                    .replace('"', "")
            ),
            ("v:", v) => format!("[{v}]"),
            _ => e.clone(),
        })
        .collect()
}

/// Applies `patch` (an applied configuration) to `base` for the request's field manager.
pub fn apply(req: &Request, base: &Value, patch: &Value) -> Result<Value, ApiError> {
    let manager = req.options.manager.as_ref().filter(|m| !m.is_empty()).ok_or_else(|| {
        ApiError::new(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
    })?;
    let force = req.options.force;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    }
    let ours = field_set(patch, req.info.schema());
    let av = req.info.api_version();
    let mut entries: Vec<Value> = base["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut previous = FieldSet::new();
    let mut conflicts = Vec::new();
    let (mut in_base, mut in_patch) = (Finder::default(), Finder::default());
    for entry in &mut entries {
        let mut set = FieldSet::new();
        from_fields_v1(&entry["fieldsV1"], &mut Vec::new(), &mut set);
        if entry["manager"] == manager.as_str() && entry["operation"] == "Apply" {
            previous = set;
            continue;
        }
        let mut taken = Vec::new();
        for path in set.intersection(&ours) {
            if path.last().is_some_and(|e| e == ".") {
                continue;
            }
            if in_base.lookup(base, path) != in_patch.lookup(patch, path) {
                taken.push(path.clone());
                conflicts.push(format!(
                    "conflict with \"{}\": {}",
                    entry["manager"].as_str().unwrap_or_default(),
                    display_path(path)
                ));
            }
        }
        if force {
            let remaining: FieldSet = set.difference(&ours).cloned().collect();
            entry["fieldsV1"] = to_fields_v1(&remaining);
        }
    }
    if !conflicts.is_empty() && !force {
        let message = if conflicts.len() == 1 {
            format!("Apply failed with 1 conflict: {}", conflicts[0])
        } else {
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                conflicts.join("\n")
            )
        };
        return Err(ApiError::new(409, "Conflict", message));
    }
    let others: FieldSet = entries
        .iter()
        .filter(|e| !(e["manager"] == manager.as_str() && e["operation"] == "Apply"))
        .flat_map(|e| {
            let mut s = FieldSet::new();
            from_fields_v1(&e["fieldsV1"], &mut Vec::new(), &mut s);
            s
        })
        .collect();
    let mut result = base.clone();
    for gone in previous.difference(&ours) {
        if !others.contains(gone) {
            remove(&mut result, gone);
        }
    }
    let mut clean = patch.clone();
    if let Some(m) = clean.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    let mut merged =
        apply_strategic_patch(&result, &clean, req.info.schema()).map_err(ApiError::bad_request)?;
    entries.retain(|e| !(e["manager"] == manager.as_str() && e["operation"] == "Apply"));
    entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
    entries.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": av,
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(&ours),
    }));
    merged["metadata"]["managedFields"] = Value::Array(entries);
    Ok(merged)
}

/// The `fieldsV1` tree of every field `value` sets, built in one walk (what `to_fields_v1` of
/// `field_set` gives, without the intermediate paths).
fn fields_tree(value: &Value, ctx: Ctx, names: &mut Vec<String>, top: bool, meta: bool) -> Value {
    let Value::Object(map) = value else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, v) in map {
        if (top && (k == "apiVersion" || k == "kind")) || (meta && IGNORED_META.contains(&k.as_str())) {
            continue;
        }
        let child = match v {
            Value::Array(items) => match list_kind(ctx, names, k) {
                ListKind::Map(keys) => {
                    let item_ctx = ctx.items(k);
                    names.push(k.clone());
                    let mut list = Map::new();
                    let mut sorted = keys.clone();
                    sorted.sort_unstable();
                    for item in items {
                        let key: Map<String, Value> = sorted
                            .iter()
                            .filter_map(|name| item.get(*name).map(|v| ((*name).to_owned(), v.clone())))
                            .collect();
                        let mut node = match fields_tree(item, item_ctx, names, false, false) {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        node.insert(".".into(), json!({}));
                        list.insert(format!("k:{}", Value::Object(key)), Value::Object(node));
                    }
                    names.pop();
                    Value::Object(list)
                }
                ListKind::Set => Value::Object(items.iter().map(|i| (format!("v:{i}"), json!({}))).collect()),
                ListKind::Atomic => json!({}),
            },
            Value::Object(m) if !m.is_empty() => {
                names.push(k.clone());
                let t = fields_tree(v, ctx.child(k), names, false, top && k == "metadata");
                names.pop();
                t
            }
            _ => json!({}),
        };
        out.insert(format!("f:{k}"), child);
    }
    Value::Object(out)
}

/// Records field ownership for a write that is not an apply (create, update, patch): the fields
/// it changed move to its manager's `Update` entry, and fields that no longer exist leave every
/// entry. Server-side apply then conflicts with them as upstream does.
/// A managedFields entry of `manager`'s `Update` owning `fields` (FieldsV1), built by moving them
/// in (`json!` would copy the tree, which is as large as the object).
fn update_entry(manager: String, req: &Request, fields: Value, subresource: Option<&str>) -> Value {
    let mut entry = Map::new();
    entry.insert("manager".into(), Value::String(manager));
    entry.insert("operation".into(), "Update".into());
    entry.insert("apiVersion".into(), Value::String(req.info.api_version()));
    entry.insert("time".into(), Value::String(now()));
    entry.insert("fieldsType".into(), "FieldsV1".into());
    entry.insert("fieldsV1".into(), fields);
    if let Some(sub) = subresource {
        entry.insert("subresource".into(), sub.into());
    }
    Value::Object(entry)
}

pub fn track_update(req: &Request, old: Option<&Value>, new: &mut Value) {
    let root = req.info.schema();
    let manager = req.options.manager.clone().unwrap_or_else(|| "unknown".into());
    let Some(old_obj) = old else {
        // A create owns everything it sets: one walk, no comparisons.
        let tree = fields_tree(new, Ctx::root(root), &mut Vec::new(), true, false);
        if tree.as_object().is_some_and(|m| !m.is_empty()) {
            let entry = update_entry(manager, req, tree, req.sub.as_deref());
            new["metadata"]["managedFields"] = Value::Array(vec![entry]);
        }
        return;
    };
    let present = field_set(new, root);
    let (mut in_old, mut in_new) = (Finder::default(), Finder::default());
    // A list item's `.` marker (its existence) belongs to whoever added the item.
    let changed: FieldSet = present
        .iter()
        .filter(|p| match p.last() {
            Some(e) if e == "." => in_old.lookup(old_obj, p).is_none(),
            _ => in_old.lookup(old_obj, p) != in_new.lookup(new, p),
        })
        .cloned()
        .collect();
    let mut entries: Vec<Value> = old_obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let subresource = req.sub.clone().unwrap_or_default();
    let mut mine = None;
    for entry in &mut entries {
        let mut set = FieldSet::new();
        from_fields_v1(&entry["fieldsV1"], &mut Vec::new(), &mut set);
        let is_mine = entry["manager"] == manager.as_str()
            && entry["operation"] == "Update"
            && entry["subresource"].as_str().unwrap_or_default() == subresource;
        let kept: FieldSet = set
            .into_iter()
            .filter(|p| in_new.lookup(new, p).is_some() && (is_mine || !changed.contains(p)))
            .collect();
        if is_mine {
            mine = Some(kept);
            entry["fieldsV1"] = json!({});
        } else {
            entry["fieldsV1"] = to_fields_v1(&kept);
        }
    }
    entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
    let mut mine = mine.unwrap_or_default();
    mine.extend(changed);
    if !mine.is_empty() {
        let sub = Some(subresource.as_str()).filter(|s| !s.is_empty());
        entries.push(update_entry(manager, req, to_fields_v1(&mine), sub));
    }
    if entries.is_empty() {
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        new["metadata"]["managedFields"] = Value::Array(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_walk_tree_matches_the_path_set() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}]}],
                     "tolerations": [{"key": "k"}]}});
        let root = crate::objects::schema::message_for("v1", "Pod");
        let tree = fields_tree(&pod, Ctx::root(root), &mut Vec::new(), true, false);
        assert_eq!(tree, to_fields_v1(&field_set(&pod, root)));
    }
}
