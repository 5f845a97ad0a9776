//! Node lifecycle: a node whose kubelet stops renewing its Lease (and posting status) for the
//! grace period gets `Ready=Unknown` and the `unreachable` taints; a node reporting `Ready=False`
//! gets the `not-ready` taints; both are removed when it is Ready again. Pods on a node with a
//! NoExecute taint are evicted when they do not tolerate it, or after their `tolerationSeconds`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::edit_object;
use super::runtime::{Cache, Caches};
use super::write::call;
use crate::api::App;
use crate::api::handlers::delete_one;
use crate::objects::keys;
use crate::objects::meta::{meta_str, now, parse_time};
use crate::objects::write::DeleteOptions;

const LEASE_PREFIX: &str = keys::NODE_LEASES;
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

fn age(ts: &Value) -> Option<i64> {
    parse_time(ts.as_str()?).map(|t| (time::OffsetDateTime::now_utc() - t).whole_milliseconds() as i64)
}

/// The node's Ready condition status ("True", "False", "Unknown", or None if absent).
fn ready_status(node: &Value) -> Option<&str> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
}

/// The taints a node should carry for its state, and whether it is lost.
fn wanted_taints(node: &Value, lost: bool) -> Option<&'static str> {
    if lost {
        Some(UNREACHABLE)
    } else if ready_status(node) == Some("False") {
        Some(NOT_READY)
    } else {
        None
    }
}

async fn check_node(app: &App, node: &Value, leases: &Cache, grace_ms: i64) {
    let name = meta_str(node, "name").to_owned();
    let lease = leases.get(&format!("{LEASE_PREFIX}{name}"));
    let lease_age = lease.as_ref().and_then(|l| age(&l["spec"]["renewTime"]));
    let status_age = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| age(&c["lastHeartbeatTime"]));
    // A node no kubelet ever reported for (no Lease, no heartbeat) is left alone.
    let heartbeat = match (lease_age, status_age) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let lost = heartbeat.is_some_and(|age| age > grace_ms);
    let taint_key = wanted_taints(node, lost);
    let key = keys::object(keys::NODES, None, &name);
    let result = edit_object(app, &key, |n| {
        let mut changed = false;
        if lost && ready_status(n) != Some("Unknown") {
            let mut conditions = n["status"]["conditions"].as_array().cloned().unwrap_or_default();
            for c in conditions.iter_mut() {
                if matches!(c["type"].as_str(), Some("Ready" | "MemoryPressure" | "DiskPressure" | "PIDPressure")) {
                    c["status"] = json!("Unknown");
                    c["reason"] = json!("NodeStatusUnknown");
                    c["message"] = json!("Kubelet stopped posting node status.");
                    c["lastTransitionTime"] = json!(now());
                }
            }
            if !conditions.iter().any(|c| c["type"] == "Ready") {
                conditions.push(json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.", "lastTransitionTime": now()}));
            }
            n["status"]["conditions"] = json!(conditions);
            changed = true;
        }
        let old_taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
        let mut taints = old_taints.clone();
        taints.retain(|t| {
            let k = t["key"].as_str().unwrap_or_default();
            !((k == UNREACHABLE || k == NOT_READY) && Some(k) != taint_key)
        });
        if let Some(k) = taint_key {
            for effect in ["NoSchedule", "NoExecute"] {
                if !taints.iter().any(|t| t["key"] == k && t["effect"] == effect) {
                    let mut t = json!({"key": k, "effect": effect});
                    if effect == "NoExecute" {
                        t["timeAdded"] = json!(now());
                    }
                    taints.push(t);
                }
            }
        }
        if taints != old_taints {
            changed = true;
            if taints.is_empty() {
                if let Some(spec) = n["spec"].as_object_mut() {
                    spec.remove("taints");
                }
            } else {
                n["spec"]["taints"] = json!(taints);
            }
        }
        changed
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(node = %name, error = %e, "node lifecycle update failed");
    }
}

/// How long (ms) until a pod must leave a node with these NoExecute taints; None = may stay.
fn eviction_due(pod: &Value, taints: &[Value]) -> Option<i64> {
    let mut due: Option<i64> = None;
    for taint in taints.iter().filter(|t| t["effect"] == "NoExecute") {
        let toleration = pod["spec"]["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| {
                let key_ok = t["key"]
                    .as_str()
                    .is_none_or(|k| k.is_empty() || Some(k) == taint["key"].as_str());
                let effect_ok = t["effect"]
                    .as_str()
                    .is_none_or(|e| e.is_empty() || e == "NoExecute");
                let value_ok = t["operator"] == "Exists"
                    || t["value"].as_str().unwrap_or_default() == taint["value"].as_str().unwrap_or_default();
                key_ok && effect_ok && value_ok
            });
        let remaining = match toleration {
            None => 0,
            Some(t) => match t["tolerationSeconds"].as_i64() {
                None => continue,
                Some(secs) => secs * 1000 - age(&taint["timeAdded"]).unwrap_or(0),
            },
        };
        due = Some(due.map_or(remaining, |d| d.min(remaining)));
    }
    due
}

async fn evict(app: &App, nodes: &Cache, pods: &Cache) {
    for node in nodes.list(None) {
        let taints: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
        if !taints.iter().any(|t| t["effect"] == "NoExecute") {
            continue;
        }
        let name = meta_str(&node, "name");
        for pod in pods
            .list(None)
            .into_iter()
            .filter(|p| p["spec"]["nodeName"] == name && !p["metadata"]["deletionTimestamp"].is_string())
        {
            if eviction_due(&pod, &taints).is_some_and(|ms| ms <= 0) {
                let ns = meta_str(&pod, "namespace");
                let c = call(app, "", "pods", ns, None, None, "node-lifecycle-controller");
                let pod_name = meta_str(&pod, "name");
                super::events::record(
                    app,
                    &pod,
                    "taint-eviction-controller",
                    "Normal",
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {ns}/{pod_name}"),
                )
                .await;
                if let Err(e) = delete_one(app, &c, pod_name, &DeleteOptions::background()).await {
                    tracing::debug!(pod = %pod_name, error = %e, "eviction failed");
                }
            }
        }
    }
}

/// Starts the controller: a pass every quarter of the grace period (at most every second).
pub fn start(app: Arc<App>, caches: &Caches) {
    let nodes = caches.get(&app, keys::NODES);
    let leases = caches.get(&app, LEASE_PREFIX);
    let pods = caches.get(&app, keys::PODS);
    tokio::spawn(async move {
        let grace_ms = app.node_grace.as_millis() as i64;
        let period = (app.node_grace / 4).clamp(Duration::from_millis(250), Duration::from_secs(1));
        loop {
            tokio::time::sleep(period).await;
            if !app.store.is_leader().await {
                continue;
            }
            for node in nodes.list(None) {
                check_node(&app, &node, &leases, grace_ms).await;
            }
            evict(&app, &nodes, &pods).await;
        }
    });
}
