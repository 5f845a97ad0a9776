//! Node IPAM: every Node gets a pod CIDR (`spec.podCIDR`/`podCIDRs`) carved from `--cluster-cidr`,
//! as kube-controller-manager's range allocator does.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;

use super::edit_object;
use super::runtime::{Cache, Caches, sync_on_changes};
use crate::objects::Objects;
use crate::objects::cluster_cidr::ClusterCidr;
use crate::objects::keys;
use crate::objects::meta::meta_str;

async fn assign(app: &Objects, nodes: &Cache, range: ClusterCidr) {
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
        let key = keys::object(keys::NODES, None, meta_str(node, "name"));
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
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let Some(range) = app.cluster_cidr else { return };
    let nodes = caches.get(&app, keys::NODES);
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
