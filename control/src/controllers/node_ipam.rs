//! Node IPAM: every Node gets a pod CIDR (`spec.podCIDR`/`podCIDRs`) carved from `--cluster-cidr`,
//! as kube-controller-manager's range allocator does.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::json;

use super::edit_object;
use super::runtime::{Cache, Caches, sync_on_changes};
use crate::api::App;
use crate::objects::meta::meta_str;
use crate::scheduler::NODE_PREFIX;

/// The cluster's pod range and the size of each node's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    base: u32,
    prefix: u8,
    node_prefix: u8,
}

impl ClusterCidr {
    /// Parses `a.b.c.d/n` with the per-node mask size.
    pub fn parse(cidr: &str, node_prefix: u8) -> Result<Self, String> {
        let (ip, len) = cidr
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR {cidr:?}"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("invalid CIDR {cidr:?}"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("invalid CIDR {cidr:?}"))?;
        if node_prefix < prefix || node_prefix > 30 {
            return Err(format!(
                "node CIDR mask size {node_prefix} does not fit in {cidr}"
            ));
        }
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Ok(ClusterCidr {
            base: u32::from(ip) & mask,
            prefix,
            node_prefix,
        })
    }

    /// The `i`th node subnet, if the range has one.
    fn subnet(&self, i: u32) -> Option<String> {
        let count = 1u64 << (self.node_prefix - self.prefix);
        if u64::from(i) >= count {
            return None;
        }
        let base = self.base + (i << (32 - self.node_prefix));
        Some(format!("{}/{}", Ipv4Addr::from(base), self.node_prefix))
    }
}

async fn assign(app: &App, nodes: &Cache, range: ClusterCidr) {
    let all = nodes.list(None);
    let mut used: HashSet<String> = all
        .iter()
        .filter_map(|n| n["spec"]["podCIDR"].as_str().map(str::to_owned))
        .collect();
    for node in all.iter().filter(|n| n["spec"]["podCIDR"].is_null()) {
        let Some(cidr) = (0..).map_while(|i| range.subnet(i)).find(|c| !used.contains(c)) else {
            tracing::warn!(
                node = meta_str(node, "name"),
                "the cluster CIDR has no free node range left"
            );
            return;
        };
        let key = format!("{NODE_PREFIX}{}", meta_str(node, "name"));
        let c = cidr.clone();
        let result = edit_object(app, &key, move |n| {
            if !n["spec"]["podCIDR"].is_null() {
                return false;
            }
            n["spec"]["podCIDR"] = json!(c);
            n["spec"]["podCIDRs"] = json!([c]);
            true
        })
        .await;
        match result {
            Ok(()) => {
                used.insert(cidr);
            }
            Err(e) => tracing::warn!(error = %e, "assigning a pod CIDR failed"),
        }
    }
}

/// Starts the allocator.
pub fn start(app: Arc<App>, caches: &Caches) {
    let Some(range) = app.cluster_cidr else { return };
    let nodes = caches.get(&app, NODE_PREFIX);
    let (a, n) = (app.clone(), nodes.clone());
    sync_on_changes(app, &nodes, move || {
        let (app, nodes) = (a.clone(), n.clone());
        async move { assign(&app, &nodes, range).await }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carves_node_ranges() {
        let r = ClusterCidr::parse("10.42.0.0/16", 24).unwrap();
        assert_eq!(r.subnet(0).as_deref(), Some("10.42.0.0/24"));
        assert_eq!(r.subnet(255).as_deref(), Some("10.42.255.0/24"));
        assert_eq!(r.subnet(256), None);
        assert!(ClusterCidr::parse("10.42.0.0/16", 8).is_err());
    }
}
