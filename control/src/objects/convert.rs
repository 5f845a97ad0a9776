//! Kinds served in one API version and stored as another: `events.k8s.io/v1` Events are kept as
//! `core/v1` Events (upstream keeps both under one key space), so both APIs see the same events;
//! `autoscaling/v1` HorizontalPodAutoscalers are kept as `autoscaling/v2` (see `autoscaling.rs`);
//! custom resources of a CRD with several versions are kept at its storage version and served at
//! any served one (conversion strategy `None`: only `apiVersion` changes; strategy `Webhook`: the
//! CRD's conversion webhook is sent a `ConversionReview`, through the admission webhooks'
//! [`Backend`](super::admission::webhooks::Backend)). An object is converted to its stored form
//! before it is written and back when it is read.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::registry::ResourceInfo;
use super::status::ApiError;

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

/// Whether `info` is `autoscaling/v1` HorizontalPodAutoscalers (stored as v2).
fn hpa_v1(info: &ResourceInfo) -> bool {
    info.crd.is_none() && info.version == "v1" && super::autoscaling::is_hpa(&info.group, &info.kind)
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

/// The conversion webhook of a custom resource whose CRD converts with one.
pub fn webhook(info: &ResourceInfo) -> Option<&Value> {
    let conversion = &info.crd.as_ref()?["spec"]["conversion"];
    (conversion["strategy"] == "Webhook").then_some(&conversion["webhook"])
}

/// `obj` (as `info` serves it) in the form it is stored in (a webhook-converted custom resource
/// as it is: [`Objects::storage_form`] converts those).
pub fn to_storage<'a>(info: &ResourceInfo, obj: &'a Value) -> Cow<'a, Value> {
    if converted(info) {
        return Cow::Owned(renamed(obj, "v1", true));
    }
    if hpa_v1(info) {
        return Cow::Owned(super::autoscaling::from_v1(obj));
    }
    if webhook(info).is_some() {
        return Cow::Borrowed(obj);
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
    if hpa_v1(info) {
        return super::autoscaling::to_v1(&obj);
    }
    if info.crd.is_some() && obj.is_object() && webhook(info).is_none() {
        let served = info.api_version();
        if obj["apiVersion"].as_str() != Some(served.as_str()) {
            obj["apiVersion"] = json!(served);
        }
    }
    obj
}

/// How long a conversion webhook may take (upstream's fixed 30 seconds).
const WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a conversion webhook answered for `objects`, converted to `desired`; the metadata stays
/// the API server's but for labels and annotations, as upstream keeps it.
fn converted_objects(
    answer: &[u8],
    uid: &str,
    desired: &str,
    objects: &[Value],
) -> Result<Vec<Value>, String> {
    let answer: Value = serde_json::from_slice(answer).map_err(|e| format!("invalid response: {e}"))?;
    let response = &answer["response"];
    if response["uid"] != uid {
        return Err(format!(
            "expected response.uid={uid:?}, got {:?}",
            response["uid"].as_str().unwrap_or_default()
        ));
    }
    if response["result"]["status"] != "Success" {
        return Err(format!(
            "conversion failed: {}",
            response["result"]["message"]
                .as_str()
                .unwrap_or("without explanation")
        ));
    }
    let out = response["convertedObjects"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if out.len() != objects.len() {
        return Err(format!(
            "expected {} converted objects, got {}",
            objects.len(),
            out.len()
        ));
    }
    out.into_iter()
        .zip(objects)
        .map(|(mut new, old)| {
            if new["apiVersion"] != desired {
                return Err(format!(
                    "invalid converted object: expected apiVersion {desired}, got {}",
                    new["apiVersion"].as_str().unwrap_or_default()
                ));
            }
            let mut meta = old["metadata"].clone();
            for k in ["labels", "annotations"] {
                match new["metadata"].get(k) {
                    Some(v) if !v.is_null() => meta[k] = v.clone(),
                    _ => {
                        if let Some(m) = meta.as_object_mut() {
                            m.remove(k);
                        }
                    }
                }
            }
            new["metadata"] = meta;
            Ok(new)
        })
        .collect()
}

impl super::Objects {
    /// Converts the objects of `objects` that are not at `desired` (an apiVersion) with the
    /// CRD's conversion webhook, all in one review; nothing for other kinds.
    pub async fn convert_to(
        &self,
        info: &ResourceInfo,
        objects: &mut [Value],
        desired: &str,
    ) -> Result<(), ApiError> {
        let Some(hook) = webhook(info) else {
            return Ok(());
        };
        let at: Vec<usize> = (0..objects.len())
            .filter(|i| objects[*i].is_object() && objects[*i]["apiVersion"] != desired)
            .collect();
        if at.is_empty() {
            return Ok(());
        }
        let failed = |e: String| {
            ApiError::internal(format!(
                "conversion webhook for {}, Kind={} failed: {e}",
                info.api_version(),
                info.kind
            ))
        };
        let backend = self
            .webhooks
            .get()
            .ok_or_else(|| failed("no webhook transport".into()))?;
        let versions: Vec<&str> = hook["conversionReviewVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let review_version = if versions.contains(&"v1") || versions.is_empty() {
            "v1"
        } else {
            "v1beta1"
        };
        let originals: Vec<Value> = at.iter().map(|i| objects[*i].clone()).collect();
        let uid = super::meta::new_uid();
        let review = json!({
            "apiVersion": format!("apiextensions.k8s.io/{review_version}"),
            "kind": "ConversionReview",
            "request": {"uid": uid, "desiredAPIVersion": desired, "objects": originals},
        });
        let config = &hook["clientConfig"];
        let url = super::admission::webhooks::url_of(config, WEBHOOK_TIMEOUT.as_secs());
        let path = super::admission::webhooks::path_of(&url);
        let body = serde_json::to_vec(&review).map_err(|e| failed(e.to_string()))?;
        let answer = match tokio::time::timeout(WEBHOOK_TIMEOUT, backend.call(config, &path, body)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(failed(format!("Post \"{url}\": {e}"))),
            Err(_) => return Err(failed(format!("Post \"{url}\": context deadline exceeded"))),
        };
        let converted = converted_objects(&answer, &uid, desired, &originals).map_err(failed)?;
        for (i, obj) in at.into_iter().zip(converted) {
            objects[i] = obj;
        }
        Ok(())
    }

    /// Stored objects of `info` (already decoded) as `info` serves them.
    pub async fn served_form(&self, info: &ResourceInfo, objects: &mut [Value]) -> Result<(), ApiError> {
        self.convert_to(info, objects, &info.api_version()).await
    }

    /// `obj` (as `info` serves it) in the form it is stored in.
    pub async fn storage_form<'a>(
        &self,
        info: &ResourceInfo,
        obj: &'a Value,
    ) -> Result<Cow<'a, Value>, ApiError> {
        if webhook(info).is_none() {
            return Ok(to_storage(info, obj));
        }
        let Some(version) = info.crd.as_ref().and_then(|crd| {
            crd["spec"]["versions"]
                .as_array()?
                .iter()
                .find(|v| v["storage"] == json!(true))?["name"]
                .as_str()
                .map(str::to_owned)
        }) else {
            return Ok(Cow::Borrowed(obj));
        };
        let mut one = [obj.clone()];
        self.convert_to(info, &mut one, &format!("{}/{version}", info.group))
            .await?;
        let [stored] = one;
        Ok(Cow::Owned(stored))
    }
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
