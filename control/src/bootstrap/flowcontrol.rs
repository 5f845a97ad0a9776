//! API Priority and Fairness' default configuration, as upstream's API server keeps it: the
//! mandatory `exempt` and `catch-all` priority levels and flow schemas, and the suggested ones
//! for nodes, leader election, controllers and workloads. Served so that `kubectl get
//! flowschemas,prioritylevelconfigurations` and tools that read them find upstream's objects;
//! requests are not queued by them.

use serde_json::{Value, json};

/// A limited priority level: (name, nominal concurrency shares, lendable percent, queuing as
/// (queues, hand size, queue length limit), or None to reject when full).
type Limited = (&'static str, i64, i64, Option<(i64, i64, i64)>);

const LIMITED: &[Limited] = &[
    ("catch-all", 5, 0, None),
    ("system", 30, 33, Some((64, 6, 50))),
    ("node-high", 40, 25, Some((64, 6, 50))),
    ("leader-election", 10, 0, Some((16, 4, 50))),
    ("workload-high", 40, 50, Some((128, 6, 50))),
    ("workload-low", 100, 90, Some((128, 6, 50))),
    ("global-default", 20, 50, Some((128, 6, 50))),
];

fn metadata(name: &str) -> Value {
    json!({"name": name, "annotations": {"apf.kubernetes.io/autoupdate-spec": "true"}})
}

/// The default PriorityLevelConfigurations.
pub fn priority_levels() -> Vec<Value> {
    let mut out = vec![json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": metadata("exempt"),
        "spec": {"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}},
        "status": {},
    })];
    for (name, shares, lendable, queuing) in LIMITED {
        let limit_response = match queuing {
            Some((queues, hand_size, queue_length_limit)) => json!({"type": "Queue",
                "queuing": {"queues": queues, "handSize": hand_size, "queueLengthLimit": queue_length_limit}}),
            None => json!({"type": "Reject"}),
        };
        out.push(json!({
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "PriorityLevelConfiguration",
            "metadata": metadata(name),
            "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": shares,
                "lendablePercent": lendable, "limitResponse": limit_response}},
            "status": {},
        }));
    }
    out
}

fn group(name: &str) -> Value {
    json!({"kind": "Group", "group": {"name": name}})
}

fn user(name: &str) -> Value {
    json!({"kind": "User", "user": {"name": name}})
}

fn service_account(namespace: &str, name: &str) -> Value {
    json!({"kind": "ServiceAccount", "serviceAccount": {"namespace": namespace, "name": name}})
}

/// Every resource in every namespace and cluster-wide, and every non-resource URL.
fn everything() -> (Value, Value) {
    (
        json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}]),
        json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}]),
    )
}

fn leases(namespaces: &[&str]) -> Value {
    json!([{"verbs": ["get", "create", "update"], "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"], "namespaces": namespaces}])
}

/// One default FlowSchema: name, priority level, matching precedence, distinguisher method,
/// subjects, resource rules and non-resource rules.
type Schema = (
    &'static str,
    &'static str,
    i64,
    Option<&'static str>,
    Vec<Value>,
    Value,
    Value,
);

/// The default FlowSchemas.
pub fn flow_schemas() -> Vec<Value> {
    let all_users = || vec![group("system:unauthenticated"), group("system:authenticated")];
    let (all_resources, all_urls) = everything();
    let none = json!([]);
    let schemas: Vec<Schema> = vec![
        (
            "exempt",
            "exempt",
            1,
            None,
            vec![group("system:masters")],
            all_resources.clone(),
            all_urls.clone(),
        ),
        (
            "probes",
            "exempt",
            2,
            None,
            all_users(),
            none.clone(),
            json!([{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]}]),
        ),
        (
            "system-leader-election",
            "leader-election",
            100,
            Some("ByUser"),
            vec![
                user("system:kube-controller-manager"),
                user("system:kube-scheduler"),
            ],
            leases(&["kube-system"]),
            none.clone(),
        ),
        (
            "endpoint-controller",
            "workload-high",
            150,
            Some("ByUser"),
            vec![
                user("system:kube-controller-manager"),
                service_account("kube-system", "endpoint-controller"),
            ],
            json!([{"verbs": ["get", "create", "update"], "apiGroups": [""], "resources": ["endpoints"],
                "namespaces": ["*"]}]),
            none.clone(),
        ),
        (
            "workload-leader-election",
            "leader-election",
            200,
            Some("ByUser"),
            vec![service_account("kube-system", "*")],
            leases(&["kube-system"]),
            none.clone(),
        ),
        (
            "system-node-high",
            "node-high",
            400,
            Some("ByUser"),
            vec![group("system:nodes")],
            json!([{"verbs": ["*"], "apiGroups": [""], "resources": ["nodes", "nodes/status"], "clusterScope": true},
                {"verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "namespaces": ["kube-node-lease"]}]),
            none.clone(),
        ),
        (
            "system-nodes",
            "system",
            500,
            Some("ByUser"),
            vec![group("system:nodes")],
            all_resources.clone(),
            all_urls.clone(),
        ),
        (
            "kube-controller-manager",
            "workload-high",
            800,
            Some("ByNamespace"),
            vec![user("system:kube-controller-manager")],
            all_resources.clone(),
            all_urls.clone(),
        ),
        (
            "kube-scheduler",
            "workload-high",
            800,
            Some("ByNamespace"),
            vec![user("system:kube-scheduler")],
            all_resources.clone(),
            all_urls.clone(),
        ),
        (
            "kube-system-service-accounts",
            "workload-high",
            900,
            Some("ByNamespace"),
            vec![service_account("kube-system", "*")],
            all_resources.clone(),
            all_urls.clone(),
        ),
        (
            "service-accounts",
            "workload-low",
            9000,
            Some("ByUser"),
            vec![group("system:serviceaccounts")],
            all_resources.clone(),
            all_urls.clone(),
        ),
        (
            "global-default",
            "global-default",
            9900,
            Some("ByUser"),
            all_users(),
            all_resources.clone(),
            all_urls.clone(),
        ),
        (
            "catch-all",
            "catch-all",
            10000,
            Some("ByUser"),
            all_users(),
            all_resources,
            all_urls,
        ),
    ];
    schemas
        .into_iter()
        .map(|(name, level, precedence, distinguisher, subjects, resources, urls)| {
            let mut rule = json!({"subjects": subjects});
            if resources.as_array().is_some_and(|r| !r.is_empty()) {
                rule["resourceRules"] = resources;
            }
            if urls.as_array().is_some_and(|u| !u.is_empty()) {
                rule["nonResourceRules"] = urls;
            }
            let mut spec = json!({"priorityLevelConfiguration": {"name": level},
                "matchingPrecedence": precedence, "rules": [rule]});
            if let Some(d) = distinguisher {
                spec["distinguisherMethod"] = json!({"type": d});
            }
            json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                "kind": "FlowSchema",
                "metadata": metadata(name),
                "spec": spec,
                "status": {"conditions": [{"type": "Dangling", "status": "False", "reason": "Found",
                    "message": format!("This FlowSchema references the PriorityLevelConfiguration object named \"{level}\" and it exists"),
                    "lastTransitionTime": crate::objects::meta::now()}]},
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flow_schema_names_a_default_priority_level() {
        let levels: Vec<String> = priority_levels()
            .iter()
            .map(|l| l["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        let schemas = flow_schemas();
        assert_eq!(schemas.len(), 13);
        for s in &schemas {
            let level = s["spec"]["priorityLevelConfiguration"]["name"].as_str().unwrap();
            assert!(levels.iter().any(|l| l == level), "{level}");
        }
        assert_eq!(levels.len(), 8);
    }
}
