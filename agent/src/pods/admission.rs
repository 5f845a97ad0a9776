//! The kubelet's admission of a pod bound to this node: a pod whose host ports are taken by a
//! pod already running here is refused (phase `Failed`, reason `NodePorts`), never started, as
//! upstream's `GeneralPredicates` refuse it. The scheduler checks the same, but a pod created
//! with `nodeName` set skips the scheduler. And, as defence in depth behind the API server's
//! PodSecurity admission, a privileged pod (one that breaks the `baseline` level) in a namespace
//! whose enforced level is `baseline` or `restricted` is refused (reason `PodSecurity`): such a
//! pod got into the store around the admission (made before the namespace was labelled, or
//! written to the store directly), and the node does not run it.

use serde_json::Value;
use skiff_common::pod_security::{LABEL, Level, violations};

/// What makes `pod` privileged (its `baseline` violations, in upstream's words); empty for the
/// pods most namespaces hold, which the agent then admits without reading their namespace.
pub fn privileges(pod: &Value) -> Vec<String> {
    violations(&pod["spec"], Level::Baseline)
}

/// The refusal of a pod with `privileges` in `namespace`, when its enforced level forbids them.
pub fn pod_security_refusal(privileges: &[String], namespace: &Value) -> Option<Value> {
    let enforced = namespace["metadata"]["labels"][format!("{LABEL}enforce")]
        .as_str()
        .and_then(Level::parse)?;
    if enforced == Level::Privileged || privileges.is_empty() {
        return None;
    }
    let message = format!(
        "Pod Security \"{}\" of namespace \"{}\" forbids this privileged pod: {}",
        enforced.name(),
        namespace["metadata"]["name"].as_str().unwrap_or_default(),
        privileges.join(", ")
    );
    Some(serde_json::json!({"phase": "Failed", "reason": "PodSecurity", "message": message}))
}

/// The (host IP, host port, protocol) a pod's containers claim on the node.
fn host_ports(pod: &Value) -> Vec<(String, i64, String)> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| {
            let port = p["hostPort"].as_i64().filter(|p| *p > 0)?;
            let ip = p["hostIP"]
                .as_str()
                .filter(|ip| !ip.is_empty())
                .unwrap_or("0.0.0.0");
            Some((
                ip.to_owned(),
                port,
                p["protocol"].as_str().unwrap_or("TCP").to_owned(),
            ))
        })
        .collect()
}

/// Whether `pod` asks for host ports at all (most do not, and are admitted without a look).
pub fn wants_host_ports(pod: &Value) -> bool {
    !host_ports(pod).is_empty()
}

/// Whether one of `pod`'s host ports is taken by one of `others` (the pods running here): the
/// same port and protocol on the same address, or either on every address.
pub fn host_port_conflict<'a>(pod: &Value, others: impl IntoIterator<Item = &'a Value>) -> bool {
    let wanted = host_ports(pod);
    others.into_iter().any(|other| {
        host_ports(other).iter().any(|(ip, port, proto)| {
            wanted.iter().any(|(w_ip, w_port, w_proto)| {
                port == w_port && proto == w_proto && (ip == w_ip || ip == "0.0.0.0" || w_ip == "0.0.0.0")
            })
        })
    })
}

/// The status of a pod refused for its host ports.
pub fn host_ports_refused() -> Value {
    serde_json::json!({"phase": "Failed", "reason": "NodePorts", "message": "Predicate NodePorts failed"})
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_privileged_pod_is_refused_where_its_namespace_enforces_baseline_or_more() {
        let privileged = json!({"spec": {"hostPID": true, "containers": [{"name": "c",
            "securityContext": {"privileged": true}}]}});
        let found = privileges(&privileged);
        assert_eq!(
            found,
            [
                "host namespaces (hostPID=true)",
                "privileged (container \"c\" must not set securityContext.privileged=true)"
            ]
        );
        let ns = |level: &str| json!({"metadata": {"name": "team", "labels": {"pod-security.kubernetes.io/enforce": level}}});
        let refused = pod_security_refusal(&found, &ns("restricted")).unwrap();
        assert_eq!(refused["reason"], "PodSecurity");
        assert_eq!(
            refused["message"],
            "Pod Security \"restricted\" of namespace \"team\" forbids this privileged pod: host namespaces (hostPID=true), privileged (container \"c\" must not set securityContext.privileged=true)"
        );
        assert!(pod_security_refusal(&found, &ns("baseline")).is_some());
        assert!(pod_security_refusal(&found, &ns("privileged")).is_none());
        assert!(pod_security_refusal(&found, &json!({"metadata": {"name": "team"}})).is_none());
        // A plain pod is not privileged; one that is merely not restricted is not either.
        let plain = json!({"spec": {"containers": [{"name": "c", "image": "x"}]}});
        assert!(privileges(&plain).is_empty());
    }

    fn pod(ports: Value) -> Value {
        json!({"spec": {"containers": [{"name": "c", "ports": ports}]}})
    }

    #[test]
    fn the_same_host_port_and_protocol_conflict_on_overlapping_addresses() {
        let web = pod(json!([{"containerPort": 80, "hostPort": 21017}]));
        assert!(wants_host_ports(&web));
        assert!(!wants_host_ports(&pod(json!([{"containerPort": 80}]))));
        assert!(host_port_conflict(
            &web,
            [&pod(json!([{"containerPort": 1, "hostPort": 21017}]))]
        ));
        // Another protocol, another port, or two distinct addresses do not.
        assert!(!host_port_conflict(
            &web,
            [&pod(
                json!([{"containerPort": 1, "hostPort": 21017, "protocol": "UDP"}])
            )]
        ));
        assert!(!host_port_conflict(
            &web,
            [&pod(json!([{"containerPort": 1, "hostPort": 21018}]))]
        ));
        let on_a = pod(json!([{"containerPort": 1, "hostPort": 53, "hostIP": "10.0.0.1"}]));
        let on_b = pod(json!([{"containerPort": 1, "hostPort": 53, "hostIP": "10.0.0.2"}]));
        assert!(!host_port_conflict(&on_a, [&on_b]));
        // Every address overlaps each one.
        assert!(host_port_conflict(
            &pod(json!([{"containerPort": 1, "hostPort": 53}])),
            [&on_b]
        ));
    }
}
