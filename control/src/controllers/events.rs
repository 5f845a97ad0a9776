//! Events that controllers record about the objects they act on (`kubectl describe` shows them).

use serde_json::{Value, json};

use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{meta_str, now, to_stored};

/// Records a `Normal` or `Warning` event about `object`, as `component`.
pub async fn record(app: &Objects, object: &Value, component: &str, kind: &str, reason: &str, message: &str) {
    let ns = match meta_str(object, "namespace") {
        "" => "default",
        ns => ns,
    };
    let name = format!(
        "{}.{:x}",
        meta_str(object, "name"),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let ts = now();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns, "uid": crate::objects::meta::new_uid(), "creationTimestamp": ts},
        "involvedObject": {
            "apiVersion": object["apiVersion"],
            "kind": object["kind"],
            "name": meta_str(object, "name"),
            "namespace": meta_str(object, "namespace"),
            "uid": meta_str(object, "uid"),
            "resourceVersion": meta_str(object, "resourceVersion"),
        },
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
        "type": kind,
        "reportingComponent": component,
        "reportingInstance": "skiff-control",
    });
    let key = keys::object(keys::EVENTS, Some(ns), &name);
    if let Err(e) = app.store.create(&key, to_stored(&event)).await {
        tracing::debug!(error = %e, "event not recorded");
    }
}
