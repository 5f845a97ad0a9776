//! The roles and bindings upstream's API server bootstraps (`rbac-defaults`), reconciled at every
//! start as upstream does for objects marked `rbac.authorization.kubernetes.io/autoupdate`: a
//! missing one is created, a present one gets back any default rule, label or subject it lacks
//! (what an operator added stays).

use serde_json::{Value, json};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

fn metadata(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    json!({"name": name, "labels": l,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": metadata(name, labels), "rules": rules})
}

/// A ClusterRole made of the rules of the ClusterRoles labelled `aggregate-to-NAME`.
fn aggregated(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut role = cluster_role(name, labels, Vec::new());
    role["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{name}"): "true"}}]});
    role
}

fn aggregate_to(role: &str) -> (String, String) {
    (
        format!("rbac.authorization.k8s.io/aggregate-to-{role}"),
        "true".to_owned(),
    )
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let to_admin = aggregate_to("admin");
    let to_edit = aggregate_to("edit");
    let to_view = aggregate_to("view");
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", &[]),
        aggregated("edit", &[(&to_admin.0, &to_admin.1)]),
        aggregated("view", &[(&to_edit.0, &to_edit.1)]),
        cluster_role(
            "system:aggregate-to-admin",
            &[(&to_admin.0, &to_admin.1)],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
                rule(
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                    ALL_WRITE,
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(&to_edit.0, &to_edit.1)],
            vec![
                rule(
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                    READ,
                ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                    WRITE,
                ),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
                rule(&["batch"], &["cronjobs", "jobs"], WRITE),
                rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
                rule(&["policy"], &["poddisruptionbudgets"], WRITE),
                rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
                rule(&[""], &["endpoints"], WRITE),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(&to_view.0, &to_view.1)],
            vec![
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                    READ,
                ),
                rule(
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                    READ,
                ),
                rule(&[""], &["namespaces"], READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                    READ,
                ),
                rule(
                    &["autoscaling"],
                    &["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
                    READ,
                ),
                rule(
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                    READ,
                ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                    READ,
                ),
                rule(
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                    READ,
                ),
            ],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
            ],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        // metrics-server's role: `kubectl top` for whoever may view.
        cluster_role(
            "system:aggregated-metrics-reader",
            &[
                (&to_view.0, &to_view.1),
                (&to_edit.0, &to_edit.1),
                (&to_admin.0, &to_admin.1),
            ],
            vec![rule(
                &["metrics.k8s.io"],
                &["pods", "nodes"],
                &["get", "list", "watch"],
            )],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![urls(
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
            ],
        ),
    ]
}

fn group(name: &str) -> Value {
    json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": name})
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    let binding = |name: &str, subjects: Vec<Value>| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": metadata(name, &[]),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subjects})
    };
    vec![
        binding("cluster-admin", vec![group("system:masters")]),
        binding("system:basic-user", vec![group("system:authenticated")]),
        binding("system:discovery", vec![group("system:authenticated")]),
        binding("system:monitoring", vec![group("system:monitoring")]),
        // Bootstrap tokens may ask for a certificate and nothing else (kubeadm's binding).
        binding("system:node-bootstrapper", vec![group("system:bootstrappers")]),
        binding(
            "system:public-info-viewer",
            vec![group("system:authenticated"), group("system:unauthenticated")],
        ),
    ]
}

/// The default Roles (namespace, role): what aggregated API servers bind to read how to
/// authenticate the front proxy.
pub fn roles() -> Vec<Value> {
    let mut meta = metadata("extension-apiserver-authentication-reader", &[]);
    meta["namespace"] = json!("kube-system");
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"],
            "resourceNames": ["extension-apiserver-authentication"]}]}),
    ]
}

/// `current` with what `default` has and it lacks: rules, subjects, labels (only when it is
/// marked for automatic updates). None when nothing changes.
pub fn reconcile(current: &Value, default: &Value) -> Option<Value> {
    if current["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] != "true" {
        return None;
    }
    let mut next = current.clone();
    for list in ["rules", "subjects"] {
        for item in default[list].as_array().into_iter().flatten() {
            let present = next[list].as_array().is_some_and(|l| l.contains(item));
            if !present {
                match next[list].as_array_mut() {
                    Some(l) => l.push(item.clone()),
                    None => next[list] = json!([item]),
                }
            }
        }
    }
    for (k, v) in default["metadata"]["labels"].as_object().into_iter().flatten() {
        if next["metadata"]["labels"][k] != *v {
            next["metadata"]["labels"][k] = v.clone();
        }
    }
    if default.get("aggregationRule").is_some() && next["aggregationRule"] != default["aggregationRule"] {
        next["aggregationRule"] = default["aggregationRule"].clone();
    }
    (next != *current).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciling_adds_what_is_missing_and_keeps_additions() {
        let default = cluster_roles().remove(0);
        let mut current = default.clone();
        current["rules"] = json!([{"apiGroups": ["example.com"], "resources": ["x"], "verbs": ["get"]}]);
        let next = reconcile(&current, &default).unwrap();
        assert_eq!(next["rules"].as_array().unwrap().len(), 3);
        assert_eq!(reconcile(&next, &default), None);
        current["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] = json!("false");
        assert_eq!(reconcile(&current, &default), None);
    }
}
