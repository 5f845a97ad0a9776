//! The `scale` subresource: a workload seen as an `autoscaling/v1` `Scale`, and a `Scale` written
//! back to its workload.

use serde_json::{Value, json};

use super::{Request, Result};
use crate::objects::status::ApiError;
use crate::store::KeyValue;

/// The `Scale` view of a workload.
pub fn to_scale(obj: &Value) -> Value {
    // A ReplicationController's selector is a plain label map.
    let selector = if obj["kind"] == "ReplicationController" {
        &obj["spec"]["selector"]
    } else {
        &obj["spec"]["selector"]["matchLabels"]
    };
    let selector_str = selector
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector_str},
    })
}

/// Applies a `Scale` to its workload.
pub fn from_scale(obj: &Value, scale: &Value, current: &KeyValue, req: &Request) -> Result<Value> {
    let rv = scale["metadata"]["resourceVersion"].as_str().unwrap_or_default();
    if !rv.is_empty() && rv != current.mod_revision.to_string() {
        return Err(ApiError::conflict(req.target(req.name())));
    }
    let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::invalid(
            req.target(req.name()),
            &[(
                "spec.replicas".into(),
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        ));
    }
    let mut obj = obj.clone();
    obj["spec"]["replicas"] = json!(replicas);
    Ok(obj)
}
