//! Node lifecycle: a node whose kubelet stops renewing its Lease (and posting status) for the
//! grace period gets `Ready=Unknown` and the `unreachable` taints; a node reporting `Ready=False`
//! gets the `not-ready` taints; both are removed when it is Ready again. Pods on a node with a
//! NoExecute taint are evicted when they do not tolerate it, or after their `tolerationSeconds`.
//! A node reporting memory, disk or PID pressure is tainted `NoSchedule` for it while it lasts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::edit_object;
use super::runtime::{Cache, Caches};
use super::write::call;
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{meta_str, now, parse_time};
use crate::objects::write::DeleteOptions;

const LEASE_PREFIX: &str = keys::NODE_LEASES;
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Conditions a node reports that taint it `NoSchedule` while they are True (upstream's
/// TaintNodesByCondition).
const CONDITION_TAINTS: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];

/// Adds the `NoSchedule` taints of the node's True pressure conditions and removes the others.
fn sync_condition_taints(node: &Value, taints: &mut Vec<Value>) {
    for (condition, key) in CONDITION_TAINTS {
        let on = node["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == condition && c["status"] == "True"));
        let has = taints
            .iter()
            .any(|t| t["key"] == key && t["effect"] == "NoSchedule");
        if on && !has {
            taints.push(json!({"key": key, "effect": "NoSchedule"}));
        } else if !on && has {
            taints.retain(|t| !(t["key"] == key && t["effect"] == "NoSchedule"));
        }
    }
}

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

/// When this controller last saw each node's heartbeat change, by its own clock (as upstream's
/// `nodeHealthMap`): the grace period counts from when a heartbeat was observed, not from the
/// timestamp the node wrote, so a node registered with an old `lastHeartbeatTime` (or a clock
/// that lags) gets its full grace period, and so does every node when a new leader starts.
#[derive(Debug, Default)]
struct Health {
    /// Node name → (Lease `renewTime`, Ready `lastHeartbeatTime`) as last seen, and when they
    /// last changed.
    seen: HashMap<String, ((String, String), Instant)>,
}

impl Health {
    /// Records the node's heartbeat marks at `now`; returns how long they have not changed, or
    /// None for a node no kubelet ever reported for (no Lease, no heartbeat), which is left alone.
    fn observe(
        &mut self,
        name: &str,
        lease: Option<&str>,
        status: Option<&str>,
        now: Instant,
    ) -> Option<Duration> {
        if lease.is_none() && status.is_none() {
            self.seen.remove(name);
            return None;
        }
        let marks = (
            lease.unwrap_or_default().to_owned(),
            status.unwrap_or_default().to_owned(),
        );
        let entry = self
            .seen
            .entry(name.to_owned())
            .or_insert_with(|| (marks.clone(), now));
        if entry.0 != marks {
            *entry = (marks, now);
        }
        Some(now.saturating_duration_since(entry.1))
    }

    /// Forgets nodes that are gone.
    fn retain(&mut self, names: &HashSet<String>) {
        self.seen.retain(|n, _| names.contains(n));
    }
}

async fn check_node(app: &Objects, node: &Value, leases: &Cache, health: &mut Health, grace: Duration) {
    let name = meta_str(node, "name").to_owned();
    let lease = leases.get(&format!("{LEASE_PREFIX}{name}"));
    let renewed = lease.as_ref().and_then(|l| l["spec"]["renewTime"].as_str());
    let heartbeat = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastHeartbeatTime"].as_str());
    let silent = health.observe(&name, renewed, heartbeat, Instant::now());
    let lost = silent.is_some_and(|d| d > grace);
    let taint_key = wanted_taints(node, lost);
    let key = keys::object(keys::NODES, None, &name);
    let went_unknown = std::sync::atomic::AtomicBool::new(false);
    let result = edit_object(app, &key, |n| {
        let mut changed = false;
        went_unknown.store(false, std::sync::atomic::Ordering::Relaxed);
        if lost && ready_status(n) != Some("Unknown") {
            went_unknown.store(true, std::sync::atomic::Ordering::Relaxed);
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
        sync_condition_taints(n, &mut taints);
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
    match result {
        // As upstream's node controller records the change on the Node.
        Ok(_) if went_unknown.load(std::sync::atomic::Ordering::Relaxed) => {
            let message = format!("Node {name} status is now: NodeNotReady");
            super::events::record(app, node, "node-controller", "Normal", "NodeNotReady", &message).await;
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(node = %name, error = %e, "node lifecycle update failed"),
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

async fn evict(app: &Objects, nodes: &Cache, pods: &Cache) {
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
                if let Err(e) = app.delete(&c, pod_name, &DeleteOptions::background()).await {
                    tracing::debug!(pod = %pod_name, error = %e, "eviction failed");
                }
            }
        }
    }
}

/// Starts the controller: a pass every quarter of the grace period (at most every second).
pub fn start(app: Arc<Objects>, caches: &Caches, grace: Duration) {
    let nodes = caches.get(&app, keys::NODES);
    let leases = caches.get(&app, LEASE_PREFIX);
    let pods = caches.get(&app, keys::PODS);
    tokio::spawn(async move {
        let period = (grace / 4).clamp(Duration::from_millis(250), Duration::from_secs(1));
        let mut health = Health::default();
        loop {
            tokio::time::sleep(period).await;
            if !app.store.is_leader().await {
                // A member that leads again starts every node's grace period afresh.
                health = Health::default();
                continue;
            }
            let pass = async {
                let all = nodes.list(None);
                health.retain(&all.iter().map(|n| meta_str(n, "name").to_owned()).collect());
                for node in all {
                    check_node(&app, &node, &leases, &mut health, grace).await;
                }
                evict(&app, &nodes, &pods).await;
            };
            app.store.as_leader(pass).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_conditions_taint_the_node_no_schedule_while_true() {
        let node = |memory: &str| {
            json!({"status": {"conditions": [
            {"type": "MemoryPressure", "status": memory}, {"type": "DiskPressure", "status": "False"}]}})
        };
        let other = json!({"key": "team", "value": "a", "effect": "NoSchedule"});
        let mut taints = vec![other.clone()];
        sync_condition_taints(&node("True"), &mut taints);
        assert_eq!(
            taints,
            [
                other.clone(),
                json!({"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"})
            ]
        );
        sync_condition_taints(&node("True"), &mut taints);
        assert_eq!(taints.len(), 2);
        sync_condition_taints(&node("False"), &mut taints);
        assert_eq!(taints, [other]);
    }

    #[test]
    fn the_grace_period_counts_from_when_a_heartbeat_was_seen_to_change() {
        let mut health = Health::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // First seen with a heartbeat written long ago: silent for no time yet.
        let old = Some("2020-01-01T00:00:00Z");
        assert_eq!(health.observe("n1", None, old, at(0)), Some(Duration::ZERO));
        assert_eq!(
            health.observe("n1", None, old, at(30)),
            Some(Duration::from_secs(30))
        );
        // A renewed Lease restarts the count.
        let renewed = Some("2020-01-01T00:00:31Z");
        assert_eq!(health.observe("n1", renewed, old, at(31)), Some(Duration::ZERO));
        assert_eq!(
            health.observe("n1", renewed, old, at(72)),
            Some(Duration::from_secs(41))
        );
        // A node nothing ever reported for is left alone.
        assert_eq!(health.observe("bare", None, None, at(100)), None);
        // Gone nodes are forgotten: seen again, they start afresh.
        health.retain(&HashSet::new());
        assert_eq!(health.observe("n1", renewed, old, at(200)), Some(Duration::ZERO));
    }
}
