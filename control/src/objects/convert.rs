//! Kinds served in one API version and stored as another: `events.k8s.io/v1` Events are kept as
//! `core/v1` Events (upstream keeps both under one key space), so both APIs see the same events;
//! custom resources of a CRD with several versions are kept at its storage version and served at
//! any served one (conversion strategy `None`: only `apiVersion` changes). An object is converted
//! to its stored form before it is written and back when it is read.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::registry::ResourceInfo;

/// `events.k8s.io/v1` field names and the `core/v1` names they are stored under (the rest —
/// metadata, eventTime, series, reportingInstance, action, reason, related, type — are the same).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Whether objects of `info` are stored as another kind.
pub fn converted(info: &ResourceInfo) -> bool {
    info.group == "events.k8s.io" && info.kind == "Event"
}

fn renamed(obj: &Value, api_version: &str, from_served: bool) -> Value {
    let Some(fields) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::with_capacity(fields.len());
    for (k, v) in fields {
        let name = EVENT_FIELDS
            .iter()
            .find_map(|(served, stored)| match from_served {
                true if k == served => Some(*stored),
                false if k == stored => Some(*served),
                _ => None,
            })
            .unwrap_or(k);
        out.insert(name.to_owned(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    Value::Object(out)
}

/// The version a custom resource of `info` is stored at, when it is not the one `info` serves.
fn other_storage_version(info: &ResourceInfo) -> Option<&str> {
    let crd = info.crd.as_ref()?;
    let storage = crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["storage"] == json!(true))?["name"]
        .as_str()?;
    (storage != info.version).then_some(storage)
}

/// `obj` (as `info` serves it) in the form it is stored in.
pub fn to_storage<'a>(info: &ResourceInfo, obj: &'a Value) -> Cow<'a, Value> {
    if converted(info) {
        return Cow::Owned(renamed(obj, "v1", true));
    }
    match other_storage_version(info) {
        Some(version) => {
            let mut stored = obj.clone();
            stored["apiVersion"] = json!(format!("{}/{version}", info.group));
            Cow::Owned(stored)
        }
        None => Cow::Borrowed(obj),
    }
}

/// A stored object as `info` serves it.
pub fn to_served(info: &ResourceInfo, mut obj: Value) -> Value {
    if converted(info) {
        return renamed(&obj, &info.api_version(), false);
    }
    if info.crd.is_some() && obj.is_object() {
        let served = info.api_version();
        if obj["apiVersion"].as_str() != Some(served.as_str()) {
            obj["apiVersion"] = json!(served);
        }
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::registry::Registry;

    #[test]
    fn events_convert_both_ways_and_other_kinds_are_left_alone() {
        let registry = Registry::new();
        let events = registry.lookup("events.k8s.io", "v1", "events").unwrap();
        let served = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Started",
            "reportingController": "skiff.io/agent", "reportingInstance": "node-a",
            "eventTime": "2026-12-02T10:00:00.000000Z", "type": "Normal", "deprecatedCount": 2});
        let stored = to_storage(&events, &served).into_owned();
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["involvedObject"]["name"], "p");
        assert_eq!(stored["message"], "hello");
        assert_eq!(stored["reportingComponent"], "skiff.io/agent");
        assert_eq!(stored["count"], 2);
        assert!(stored.get("note").is_none());
        assert_eq!(to_served(&events, stored), served);
        let pods = registry.lookup("", "v1", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "note": "kept"});
        assert!(matches!(to_storage(&pods, &pod), Cow::Borrowed(_)));
        assert_eq!(to_served(&pods, pod.clone()), pod);
    }
}
