//! Routes between nodes' pod ranges: for every other Node with a `spec.podCIDR` and an
//! `InternalIP`, a route `podCIDR via InternalIP` in the node's network namespace (over
//! rtnetlink), so pods on different nodes reach each other unchanged (no NAT between pods). The
//! pod ranges also go into the masquerade table's `pod-cidrs` set, so traffic between pods is not
//! masqueraded. Routes (and set elements) of nodes that go away are removed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::Context;
use rtnetlink::Handle;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::node::watch::Event;

/// One route to another node's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRoute {
    /// The node's pod range.
    pub cidr: (Ipv4Addr, u8),
    /// The node's address.
    pub via: Ipv4Addr,
}

/// The route a Node object asks for, unless it is this node's own.
pub fn route_of(node: &Value, own: &str) -> Option<(String, NodeRoute)> {
    let name = node["metadata"]["name"].as_str()?;
    if name == own {
        return None;
    }
    let cidr = crate::network::pod_net::parse_cidr(node["spec"]["podCIDR"].as_str()?).ok()?;
    let via = node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .parse()
        .ok()?;
    Some((name.to_owned(), NodeRoute { cidr, via }))
}

fn message(r: &NodeRoute) -> rtnetlink::packet_route::route::RouteMessage {
    crate::network::pod_net::agent_route(r.cidr.0, r.cidr.1)
        .gateway(r.via)
        .build()
}

async fn add(h: &Handle, r: &NodeRoute) -> anyhow::Result<()> {
    crate::network::pod_net::replace_route(h, message(r))
        .await
        .with_context(|| format!("adding a route to {}/{} via {}", r.cidr.0, r.cidr.1, r.via))
}

async fn remove(h: &Handle, r: &NodeRoute) -> anyhow::Result<()> {
    match h.route().del(message(r)).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(nix::errno::Errno::ESRCH as i32) => {
            Ok(())
        }
        other => other.with_context(|| format!("removing the route to {}/{}", r.cidr.0, r.cidr.1)),
    }
}

/// Keeps the routes to other nodes' pods until the process ends. `masquerade_table` names the
/// node's masquerade table whose `pod-cidrs` set gets each range (when the agent masquerades).
pub async fn run(
    mut rx: mpsc::Receiver<Event>,
    own: String,
    masquerade_table: Option<String>,
) -> anyhow::Result<()> {
    let h = crate::network::pod_net::connect()?;
    let mut have: BTreeMap<String, NodeRoute> = BTreeMap::new();
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Listed(items) => {
                nodes = items
                    .into_iter()
                    .filter_map(|n| Some((n["metadata"]["name"].as_str()?.to_owned(), n)))
                    .collect();
            }
            Event::Applied(n) => {
                if let Some(name) = n["metadata"]["name"].as_str() {
                    nodes.insert(name.to_owned(), n);
                }
            }
            Event::Deleted(n) => {
                if let Some(name) = n["metadata"]["name"].as_str() {
                    nodes.remove(name);
                }
            }
        }
        if !rx.is_empty() {
            continue;
        }
        let want: BTreeMap<String, NodeRoute> = nodes.values().filter_map(|n| route_of(n, &own)).collect();
        for (name, r) in &have {
            if want.get(name) == Some(r) {
                continue;
            }
            if let Err(e) = remove(&h, r).await {
                tracing::warn!(node = %name, error = %format!("{e:#}"), "removing a node route failed");
            }
            if let Some(table) = &masquerade_table {
                let script = format!(
                    "delete element ip {table} pod-cidrs {{ {}/{} }}\n",
                    r.cidr.0, r.cidr.1
                );
                if let Err(e) = crate::network::pod_net::nft(&script).await {
                    tracing::warn!(node = %name, error = %format!("{e:#}"), "removing a pod range from the masquerade exemptions failed");
                }
            }
        }
        for (name, r) in &want {
            if have.get(name) == Some(r) {
                continue;
            }
            if let Err(e) = add(&h, r).await {
                tracing::warn!(node = %name, error = %format!("{e:#}"), "adding a node route failed");
                continue;
            }
            if let Some(table) = &masquerade_table {
                let script = format!(
                    "add element ip {table} pod-cidrs {{ {}/{} }}\n",
                    r.cidr.0, r.cidr.1
                );
                if let Err(e) = crate::network::pod_net::nft(&script).await {
                    tracing::warn!(node = %name, error = %format!("{e:#}"), "exempting a pod range from masquerading failed");
                }
            }
            tracing::info!(node = %name, cidr = %format!("{}/{}", r.cidr.0, r.cidr.1), via = %r.via, "route to node's pods");
        }
        have = want;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn other_nodes_with_a_range_and_an_address_get_a_route() {
        let node = |name: &str, cidr: Option<&str>, ip: &str| {
            json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr},
                   "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}})
        };
        assert_eq!(
            route_of(&node("b", Some("10.42.1.0/24"), "172.20.0.3"), "a"),
            Some((
                "b".to_string(),
                NodeRoute {
                    cidr: (Ipv4Addr::new(10, 42, 1, 0), 24),
                    via: Ipv4Addr::new(172, 20, 0, 3)
                }
            ))
        );
        assert_eq!(
            route_of(&node("a", Some("10.42.0.0/24"), "172.20.0.2"), "a"),
            None
        );
        assert_eq!(route_of(&node("c", None, "172.20.0.4"), "a"), None);
    }
}
