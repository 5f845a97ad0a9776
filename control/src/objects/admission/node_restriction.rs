//! Upstream's NodeRestriction plugin, for what a node's own writes carry (the node authorizer in
//! `api/authz.rs` and `api/noderestriction.rs` decide what a node may address at all): a node
//! creates and changes only its own Node and Lease, sets no `kubernetes.io`/`k8s.io` labels on
//! itself but the kubelet's own (a node cannot make itself `node-role.kubernetes.io/control-plane`
//! to draw control-plane workloads), and writes events only about itself and the pods bound to
//! it.

use serde_json::Value;

use super::{Attributes, Lookup, Operation, Plugin};
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::status::ApiError;

/// Holds nodes to their own objects.
pub struct NodeRestriction;

/// The labels a kubelet sets on its Node (upstream's `kubeletLabels`).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// Whether a node may set label `key` on itself.
fn node_may_set(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    let within = |ns: &str| prefix == ns || prefix.ends_with(&format!(".{ns}"));
    if within("node-restriction.kubernetes.io") {
        return false;
    }
    if !(within("kubernetes.io") || within("k8s.io")) {
        return true;
    }
    KUBELET_LABELS.contains(&key) || within("kubelet.kubernetes.io") || within("node.kubernetes.io")
}

/// The node a request comes from, unless it is also a cluster administrator.
fn requesting_node<'a>(attrs: &'a Attributes<'_>) -> Option<&'a str> {
    let user = attrs.user?;
    if user.groups.iter().any(|g| g == "system:masters") || !user.groups.iter().any(|g| g == "system:nodes") {
        return None;
    }
    user.username.strip_prefix("system:node:")
}

fn forbidden(attrs: &Attributes<'_>, name: &str, why: String) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!("{} \"{name}\" is forbidden: {why}", attrs.info.plural),
    )
}

/// The labels that differ between `old` and `new` (added, changed or removed) that a node may
/// not touch, sorted.
fn forbidden_labels(old: Option<&Value>, new: &Value) -> Vec<String> {
    let labels = |o: Option<&Value>| {
        o.and_then(|o| o["metadata"]["labels"].as_object().cloned())
            .unwrap_or_default()
    };
    let (before, after) = (labels(old), labels(Some(new)));
    let mut out: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k) && !node_may_set(k))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[tonic::async_trait]
impl Plugin for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    async fn validate(
        &self,
        lookup: &dyn Lookup,
        attrs: &Attributes<'_>,
        obj: &Value,
    ) -> Result<(), ApiError> {
        let Some(node) = requesting_node(attrs) else {
            return Ok(());
        };
        let name = meta_str(obj, "name");
        let info = attrs.info;
        match (info.group.as_str(), info.kind.as_str()) {
            ("", "Node") if info.crd.is_none() => {
                if name != node {
                    return Err(forbidden(
                        attrs,
                        name,
                        format!("node \"{node}\" is not allowed to modify node \"{name}\""),
                    ));
                }
                let bad = forbidden_labels(attrs.old, obj);
                if !bad.is_empty() {
                    let what = if attrs.operation == Operation::Create {
                        "set the following labels"
                    } else {
                        "modify labels"
                    };
                    return Err(forbidden(
                        attrs,
                        name,
                        format!("node \"{node}\" is not allowed to {what}: {}", bad.join(", ")),
                    ));
                }
            }
            ("coordination.k8s.io", "Lease")
                if attrs.namespace == Some("kube-node-lease") && name != node =>
            {
                return Err(forbidden(
                    attrs,
                    name,
                    "can only access node lease with the same name as the requesting node".into(),
                ));
            }
            ("" | "events.k8s.io", "Event") if info.crd.is_none() && attrs.operation == Operation::Create => {
                let about = if obj["regarding"].is_object() {
                    &obj["regarding"]
                } else {
                    &obj["involvedObject"]
                };
                let (kind, about_name) = (
                    about["kind"].as_str().unwrap_or_default(),
                    about["name"].as_str().unwrap_or_default(),
                );
                let allowed = match kind {
                    "Node" => about_name == node,
                    "Pod" => {
                        let ns = about["namespace"]
                            .as_str()
                            .or(attrs.namespace)
                            .unwrap_or_default();
                        lookup
                            .get_local(&keys::object(keys::PODS, Some(ns), about_name))?
                            .is_some_and(|pod| pod["spec"]["nodeName"] == node)
                    }
                    _ => false,
                };
                if !allowed {
                    return Err(forbidden(
                        attrs,
                        name,
                        format!("node \"{node}\" can only create events about itself or pods bound to it"),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::UserInfo;
    use super::super::testing::{Objects, block_on, create, resource};
    use super::*;

    fn node_user(name: &str) -> UserInfo {
        UserInfo {
            username: format!("system:node:{name}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        }
    }

    #[test]
    fn a_node_keeps_to_its_own_node_lease_and_labels() {
        let user = node_user("n1");
        let nodes = resource("", "v1", "nodes");
        let mut attrs = create(&nodes, "");
        attrs.user = Some(&user);
        let none = Objects::default();
        let other = json!({"metadata": {"name": "n2"}});
        let err = block_on(NodeRestriction.validate(&none, &attrs, &other)).unwrap_err();
        assert_eq!(
            err.message,
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
        let own = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux", "node.kubernetes.io/pool": "a", "example.com/x": "y"}}});
        block_on(NodeRestriction.validate(&none, &attrs, &own)).unwrap();
        let promoted =
            json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}}});
        let err = block_on(NodeRestriction.validate(&none, &attrs, &promoted)).unwrap_err();
        assert_eq!(
            err.message,
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to set the following labels: node-role.kubernetes.io/control-plane"
        );
        attrs.operation = Operation::Update;
        attrs.old = Some(&promoted);
        // Removing a label set by someone else is a change too.
        let err = block_on(NodeRestriction.validate(&none, &attrs, &own)).unwrap_err();
        assert!(
            err.message
                .contains("is not allowed to modify labels: node-role.kubernetes.io/control-plane"),
            "{}",
            err.message
        );
        let leases = resource("coordination.k8s.io", "v1", "leases");
        let mut attrs = create(&leases, "kube-node-lease");
        attrs.user = Some(&user);
        let err = block_on(NodeRestriction.validate(&none, &attrs, &json!({"metadata": {"name": "n2"}})))
            .unwrap_err();
        assert_eq!(err.code, 403);
        block_on(NodeRestriction.validate(&none, &attrs, &json!({"metadata": {"name": "n1"}}))).unwrap();
    }

    #[test]
    fn a_node_writes_events_about_itself_and_its_pods_only() {
        let user = node_user("n1");
        let events = resource("", "v1", "events");
        let mut attrs = create(&events, "shop");
        attrs.user = Some(&user);
        let mut pods = Objects::default();
        pods.0.insert(
            "/registry/core/pods/shop/mine".into(),
            json!({"spec": {"nodeName": "n1"}}),
        );
        pods.0.insert(
            "/registry/core/pods/shop/theirs".into(),
            json!({"spec": {"nodeName": "n2"}}),
        );
        let event = |kind: &str, name: &str| json!({"metadata": {"name": "e"}, "involvedObject": {"kind": kind, "name": name, "namespace": "shop"}});
        block_on(NodeRestriction.validate(&pods, &attrs, &event("Pod", "mine"))).unwrap();
        block_on(NodeRestriction.validate(&pods, &attrs, &event("Node", "n1"))).unwrap();
        for (kind, name) in [("Pod", "theirs"), ("Node", "n2"), ("Deployment", "web")] {
            let err = block_on(NodeRestriction.validate(&pods, &attrs, &event(kind, name))).unwrap_err();
            assert!(
                err.message
                    .contains("can only create events about itself or pods bound to it"),
                "{kind}"
            );
        }
    }
}
