//! Cluster DNS endpoints. Every agent answers DNS for the cluster domain on its pod bridge address
//! (the first address of its `spec.podCIDR`); the `kube-system/kube-dns` Service (created at
//! bootstrap at the tenth address of the service range, upstream's convention, with
//! `internalTrafficPolicy: Local`) is backed by one EndpointSlice, `kube-dns-nodes`, that this
//! controller keeps listing each node's DNS address with its `nodeName`: each node's proxy sends its
//! pods to its own agent, as NodeLocal DNSCache does.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::error::Error;
use super::runtime::{Cache, Caches, sync_on_changes};
use super::write::{call, put_object};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::meta_str;

/// The Service's namespace and name.
pub const NAMESPACE: &str = "kube-system";
/// The Service's name.
pub const SERVICE: &str = "kube-dns";
/// The EndpointSlice this controller keeps.
const SLICE: &str = "kube-dns-nodes";
const MANAGER: &str = "skiff-cluster-dns";

/// The `kube-dns` Service for cluster IP `ip`.
pub fn service(ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE,
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "KubeDNS"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip.to_string(),
            "clusterIPs": [ip.to_string()],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Local",
            "sessionAffinity": "None",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
        "status": {"loadBalancer": {}},
    })
}

/// Where a node's agent answers DNS: the first address of its pod range.
fn dns_address(node: &Value) -> Option<Ipv4Addr> {
    let cidr = node["spec"]["podCIDR"].as_str()?;
    let base: Ipv4Addr = cidr.split('/').next()?.parse().ok()?;
    Some(Ipv4Addr::from(u32::from(base) + 1))
}

fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The slice's endpoints: every node with a pod range, ready while the node is.
pub fn endpoints(nodes: &[Arc<Value>]) -> Vec<Value> {
    let mut out: Vec<Value> = nodes
        .iter()
        .filter_map(|n| {
            let ip = dns_address(n)?;
            let ready = node_ready(n);
            Some(json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": meta_str(n, "name"),
            }))
        })
        .collect();
    out.sort_by(|a, b| a["nodeName"].as_str().cmp(&b["nodeName"].as_str()));
    out
}

async fn sync(app: &Objects, nodes: &Cache, slices: &Cache) -> Result<(), Error> {
    let wanted = endpoints(&nodes.list(None));
    let ports = json!([
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]);
    let slice_key = keys::object(keys::ENDPOINT_SLICES, Some(NAMESPACE), SLICE);
    match slices.get(&slice_key) {
        Some(slice) => {
            if slice["endpoints"].as_array().cloned().unwrap_or_default() == wanted {
                return Ok(());
            }
            let mut next = (*slice).clone();
            next["endpoints"] = json!(wanted);
            next["ports"] = ports;
            put_object(app, next, "discovery.k8s.io", "endpointslices", None, MANAGER).await?;
        }
        None => {
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": SLICE, "namespace": NAMESPACE,
                             "labels": {"kubernetes.io/service-name": SERVICE, "endpointslice.kubernetes.io/managed-by": MANAGER}},
                "addressType": "IPv4",
                "endpoints": wanted,
                "ports": ports,
            });
            let c = call(
                app,
                "discovery.k8s.io",
                "endpointslices",
                NAMESPACE,
                None,
                None,
                MANAGER,
            );
            app.create(&c, slice).await?;
        }
    }
    Ok(())
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let nodes = caches.get(&app, keys::NODES);
    let slices = caches.get(&app, keys::ENDPOINT_SLICES);
    let (a, n) = (app.clone(), nodes.clone());
    sync_on_changes(app, &nodes, move || {
        let (app, nodes, slices) = (a.clone(), n.clone(), slices.clone());
        async move {
            if let Err(e) = sync(&app, &nodes, &slices).await {
                tracing::warn!(error = %e, "updating the cluster DNS endpoints failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_with_a_range_serves_dns_on_its_bridge_address() {
        let nodes = vec![
            Arc::new(
                json!({"metadata": {"name": "b"}, "spec": {"podCIDR": "10.42.1.0/24"},
                            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            ),
            Arc::new(
                json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.42.0.0/24"},
                            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
            ),
            Arc::new(json!({"metadata": {"name": "c"}, "spec": {}})),
        ];
        let e = endpoints(&nodes);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0]["nodeName"], "a");
        assert_eq!(e[0]["addresses"], json!(["10.42.0.1"]));
        assert_eq!(e[0]["conditions"]["ready"], false);
        assert_eq!(e[1]["addresses"], json!(["10.42.1.1"]));
        assert_eq!(e[1]["conditions"]["ready"], true);
    }
}
