//! Helpers for objects as JSON: metadata access, stored form, timestamps and generated names.

use rand::Rng;
use serde_json::{Value, json};

use crate::store::KeyValue;

pub use skiff_common::time::{format as format_time, now, parse as parse_time};

/// The ConfigMap every namespace holds with the cluster CA (which pods' `kube-api-access-*`
/// volumes project as `ca.crt`).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// The bytes stored for an object: its JSON without `resourceVersion`, which the store derives.
pub fn to_stored(obj: &Value) -> Vec<u8> {
    serde_json::to_vec(&Stored(obj)).unwrap_or_default()
}

/// An object as [`to_stored`] writes it: without `metadata.resourceVersion`, serialized from the
/// object as it is rather than from a copy. The bytes are those of removing the field from a
/// copy (serde_json's `remove`, a swap with the last field) and serializing that.
struct Stored<'a>(&'a Value);

impl serde::Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(fields) = self.0 else {
            return self.0.serialize(s);
        };
        let mut out = s.serialize_map(Some(fields.len()))?;
        for (k, v) in fields {
            match v {
                Value::Object(meta) if k == "metadata" => out.serialize_entry(k, &WithoutVersion(meta))?,
                v => out.serialize_entry(k, v)?,
            }
        }
        out.end()
    }
}

/// `metadata` without `resourceVersion`, its last field in its place.
struct WithoutVersion<'a>(&'a serde_json::Map<String, Value>);

impl serde::Serialize for WithoutVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let meta = self.0;
        let Some(at) = meta.keys().position(|k| k == "resourceVersion") else {
            return meta.serialize(s);
        };
        let last = meta.len() - 1;
        let mut out = s.serialize_map(Some(last))?;
        for (i, (k, v)) in meta.iter().enumerate().take(last) {
            let (k, v) = if i == at {
                meta.iter().next_back().unwrap_or((k, v))
            } else {
                (k, v)
            };
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

/// An object read from the store, with `resourceVersion` set from its mod revision.
pub fn from_kv(kv: &KeyValue) -> Value {
    let mut obj: Value = serde_json::from_slice(&kv.value).unwrap_or_else(|_| json!({}));
    set_resource_version(&mut obj, kv.mod_revision);
    obj
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(obj: &mut Value, rev: u64) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["resourceVersion"] = json!(rev.to_string());
}

/// `metadata.<field>` as a string, or "".
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

/// The finalizers of an object.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

/// A name from `generateName`: the prefix plus five random characters, as upstream.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let max = 63 - 5;
    let prefix = if prefix.len() > max {
        &prefix[..max]
    } else {
        prefix
    };
    format!("{prefix}{suffix}")
}

/// The items of the list at `key`, if `value` has one (unlike `value[key]`, inserts nothing).
pub fn items_mut<'a>(value: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    value
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// A new object uid.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The owner reference of `obj`'s controller, if it has one.
pub fn controller_ref(obj: &Value) -> Option<&Value> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == json!(true))
}

/// The name of the controller that owns `obj` with the given kind, if any.
pub fn controller_of<'a>(obj: &'a Value, kind: &str) -> Option<&'a str> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == json!(true) && r["kind"] == kind)
        .and_then(|r| r["name"].as_str())
}

/// Whether a pod is Ready.
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Whether a pod has been Ready for at least `min_ready` seconds.
pub fn pod_available(pod: &Value, min_ready: i64) -> bool {
    if !pod_ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    let since = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| parse_time(c["lastTransitionTime"].as_str().unwrap_or_default()));
    since.is_some_and(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds() >= min_ready)
}

/// Pods that count toward a controller: not terminating and not finished.
pub fn active(pod: &Value) -> bool {
    !pod["metadata"]["deletionTimestamp"].is_string()
        && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// The owner reference a controller puts on what it creates.
pub fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta_str(owner, "name"),
        "uid": meta_str(owner, "uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A pod from `template`, owned by `owner`, named `prefix` plus a random suffix (or exactly
/// `name` when given).
pub fn pod_from_template(template: &Value, owner: &Value, prefix: &str, name: Option<&str>) -> Value {
    let mut meta = json!({
        "namespace": meta_str(owner, "namespace"),
        "labels": template["metadata"]["labels"].clone(),
        "ownerReferences": [owner_ref(owner)],
    });
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(format!("{prefix}-")),
    }
    if let Some(a) = template["metadata"].get("annotations").filter(|a| a.is_object()) {
        meta["annotations"] = a.clone();
    }
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"].clone()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_is_the_bytes_of_a_copy_without_the_resource_version() {
        let copy_without = |obj: &Value| {
            let mut obj = obj.clone();
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            serde_json::to_vec(&obj).unwrap()
        };
        for obj in [
            json!({"kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "7", "uid": "u", "labels": {"x": "y"}}, "data": {"k": "v"}}),
            json!({"metadata": {"name": "a", "uid": "u", "resourceVersion": "7"}, "spec": {}}),
            json!({"metadata": {"resourceVersion": "7"}}),
            json!({"metadata": {"name": "a"}, "spec": {"resourceVersion": "kept"}}),
            json!({"metadata": "not an object"}),
            json!({"kind": "Pod"}),
            json!([1, 2]),
        ] {
            assert_eq!(to_stored(&obj), copy_without(&obj), "{obj}");
        }
    }

    #[test]
    fn owners_readiness_and_templates() {
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"}});
        let template = json!({"metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let pod = pod_from_template(&template, &rs, "web-1", None);
        assert_eq!(pod["metadata"]["generateName"], "web-1-");
        assert_eq!(pod["metadata"]["namespace"], "shop");
        assert_eq!(pod["metadata"]["annotations"], json!({"a": "b"}));
        assert_eq!(pod["metadata"]["ownerReferences"][0], owner_ref(&rs));
        assert_eq!(controller_of(&pod, "ReplicaSet"), Some("web-1"));
        assert_eq!(controller_of(&pod, "Job"), None);
        assert_eq!(
            pod_from_template(&template, &rs, "x", Some("exact"))["metadata"]["name"],
            "exact"
        );

        let mut ready = pod.clone();
        ready["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2000-01-01T00:00:00Z"}]});
        assert!(!pod_ready(&pod) && pod_ready(&ready));
        assert!(pod_available(&ready, 0) && pod_available(&ready, 60));
        ready["status"]["conditions"][0]["lastTransitionTime"] = json!(now());
        assert!(!pod_available(&ready, 3600));
        assert!(active(&ready));
        ready["status"]["phase"] = json!("Succeeded");
        assert!(!active(&ready));
    }
}
