//! Registration and heartbeats: the Node object with its capacity, conditions and system info,
//! a Lease in `kube-node-lease` renewed every few seconds, and the Ready condition's heartbeat.

use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use super::capacity;
use super::client::{ApiClient, status_code};

use skiff_common::time::{now, now_micro};

fn conditions() -> Value {
    let ts = now();
    let c = |kind: &str, status: &str, reason: &str, message: &str| json!({"type": kind, "status": status, "lastHeartbeatTime": ts, "lastTransitionTime": ts, "reason": reason, "message": message});
    let pressure = crate::pods::pressure::current();
    json!([
        if pressure.memory {
            c(
                "MemoryPressure",
                "True",
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            c(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if pressure.disk {
            c(
                "DiskPressure",
                "True",
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            c(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "skiff-agent is posting ready status"
        ),
    ])
}

fn status(name: &str, max_pods: u32) -> Value {
    let cap = capacity::capacity(max_pods);
    json!({
        "capacity": cap,
        "allocatable": cap,
        "conditions": conditions(),
        "addresses": [{"type": "Hostname", "address": name}],
        "nodeInfo": capacity::node_info(),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
    })
}

/// Records an event about the Node `name` (in `default`, as the kubelet does: `NodeReady`,
/// `OOMKilling`, ...). A failure is logged, never fatal.
pub async fn node_event(api: &ApiClient, name: &str, kind: &str, reason: &str, message: &str) {
    let ts = now();
    let ev = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": "default"},
        // The kubelet names its Node by name in the uid field too.
        "involvedObject": {"kind": "Node", "name": name, "uid": name, "apiVersion": "v1"},
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": "kubelet", "host": name},
        "reportingComponent": "kubelet",
        "reportingInstance": name,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    });
    if let Err(e) = api
        .json(Method::POST, "/api/v1/namespaces/default/events", Some(&ev))
        .await
    {
        tracing::debug!(error = %e, "posting a node event failed");
    }
}

/// The Ready condition's status the Node has now (None when it has none, or no Node).
async fn ready_now(api: &ApiClient, name: &str) -> Option<String> {
    let node = api
        .json(Method::GET, &format!("/api/v1/nodes/{name}"), None)
        .await
        .ok()?;
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
        .map(str::to_owned)
}

/// Creates the Node, or refreshes its status if it exists; a Node that was not Ready before gets
/// the kubelet's `NodeReady` event.
pub async fn register(
    api: &ApiClient,
    name: &str,
    max_pods: u32,
    node_ip: &str,
    port: u16,
) -> anyhow::Result<()> {
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": capacity::arch(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": capacity::arch(),
        }},
        "status": status(name, max_pods),
    });
    let was_ready = match api.json(Method::POST, "/api/v1/nodes", Some(&node)).await {
        Ok(_) => false,
        Err(e) if status_code(&e) == Some(409) => ready_now(api, name).await.as_deref() == Some("True"),
        Err(e) => return Err(e.context("registering the node")),
    };
    let mut patch = json!({"status": status(name, max_pods)});
    patch["status"]["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": port}});
    patch["status"]["addresses"] =
        json!([{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": name}]);
    api.with_type(
        Method::PATCH,
        &format!("/api/v1/nodes/{name}/status"),
        "application/merge-patch+json",
        Some(&patch),
    )
    .await?;
    if !was_ready {
        node_event(
            api,
            name,
            "Normal",
            "NodeReady",
            &format!("Node {name} status is now: NodeReady"),
        )
        .await;
    }
    Ok(())
}

/// Renews the node's Lease (creating it the first time).
pub async fn renew_lease(api: &ApiClient, name: &str, duration: Duration) -> anyhow::Result<()> {
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}");
    let spec = json!({"holderIdentity": name, "leaseDurationSeconds": duration.as_secs().max(1), "renewTime": now_micro()});
    let patch = json!({"spec": spec});
    match api
        .with_type(Method::PATCH, &path, "application/merge-patch+json", Some(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": spec});
            api.json(
                Method::POST,
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                Some(&lease),
            )
            .await
            .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Merge-patches the Node's status.
async fn patch_status(api: &ApiClient, name: &str, status: Value) -> anyhow::Result<()> {
    api.with_type(
        Method::PATCH,
        &format!("/api/v1/nodes/{name}/status"),
        "application/merge-patch+json",
        Some(&json!({ "status": status })),
    )
    .await
    .map(|_| ())
}

/// Writes the conditions now (the node's pressure changed).
pub async fn post_conditions(api: &ApiClient, name: &str) -> anyhow::Result<()> {
    patch_status(api, name, json!({"conditions": conditions()})).await
}

/// Refreshes the conditions' heartbeat and the list of images the node holds, and makes the
/// extended resources someone advertised in the node's capacity allocatable (as the kubelet does:
/// `example.com/dongle: 4` patched into `status.capacity` is schedulable at the next update).
pub async fn post_status(api: &ApiClient, name: &str, images: Value) -> anyhow::Result<()> {
    let mut status = json!({"conditions": conditions(), "images": images});
    match api
        .json(Method::GET, &format!("/api/v1/nodes/{name}"), None)
        .await
    {
        Ok(node) => {
            if let Some(allocatable) = extended_allocatable(&node) {
                status["allocatable"] = allocatable;
            }
        }
        Err(e) => tracing::debug!(error = %e, "reading the node for its extended resources"),
    }
    patch_status(api, name, status).await
}

/// The merge patch of `status.allocatable` that makes it hold the node's extended resources
/// (names with a `/` outside `kubernetes.io/`) as its capacity has them, `None` when it does.
fn extended_allocatable(node: &Value) -> Option<Value> {
    let extended = |k: &str| k.contains('/') && !k.starts_with("kubernetes.io/");
    let empty = serde_json::Map::new();
    let capacity = node["status"]["capacity"].as_object().unwrap_or(&empty);
    let allocatable = node["status"]["allocatable"].as_object().unwrap_or(&empty);
    let mut patch = serde_json::Map::new();
    for (k, v) in capacity.iter().filter(|(k, _)| extended(k)) {
        if allocatable.get(k) != Some(v) {
            patch.insert(k.clone(), v.clone());
        }
    }
    for k in allocatable
        .keys()
        .filter(|k| extended(k) && !capacity.contains_key(*k))
    {
        patch.insert(k.clone(), Value::Null);
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_resources_in_capacity_become_allocatable() {
        let node = json!({"status": {
            "capacity": {"cpu": "2", "example.com/fakecpu": "1k", "example.com/same": "1"},
            "allocatable": {"cpu": "2", "example.com/gone": "3", "example.com/same": "1"},
        }});
        assert_eq!(
            extended_allocatable(&node),
            Some(json!({"example.com/fakecpu": "1k", "example.com/gone": null}))
        );
        let settled = json!({"status": {"capacity": {"cpu": "2", "a.b/c": "1"}, "allocatable": {"cpu": "1", "a.b/c": "1"}}});
        assert_eq!(extended_allocatable(&settled), None);
    }
}
