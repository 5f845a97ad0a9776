//! Node-pressure eviction, as the kubelet's: an agent whose memory threshold is always met
//! (`memory.available<1Ti`) reports `MemoryPressure`, the control plane taints its Node
//! `node.kubernetes.io/memory-pressure:NoSchedule`, a new BestEffort pod is refused at admission,
//! and the running pods are evicted one per pass — the one using more memory than it requests
//! first — each `Failed` with reason `Evicted` and the kubelet's message.

use serde_json::Value;
use skiff_tests::node::Cluster;
use std::time::{Duration, Instant};

fn pod(k: &Cluster, name: &str) -> Value {
    serde_json::from_str(&k.c.ok(&["get", "pod", name, "-o", "json"])).expect("pod json")
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

fn wait(k: &Cluster, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: {}", k.node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn memory_pressure_taints_the_node_refuses_best_effort_pods_and_evicts_the_largest_excess_first() {
    let k = Cluster::start_with_eviction_hard("memory.available<1Ti");
    let node = k.node.name.clone();
    wait(&k, "the node never reported MemoryPressure", || {
        k.c.ok(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"MemoryPressure\")].status}",
        ]) == "True"
    });
    wait(&k, "the node was never tainted", || {
        k.c.ok(&["get", "node", &node, "-o", "jsonpath={.spec.taints[*].key}"])
            .contains("node.kubernetes.io/memory-pressure")
    });

    // Bound to the node directly (the taint keeps the scheduler away).
    let image = k.registry.busybox();
    let manifest = |name: &str, resources: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {image}
    command: ["sleep", "3600"]
    resources: {resources}
"#
        )
    };
    k.c.ok_stdin(&["apply", "-f", "-"], &manifest("best-effort", "{}"));
    wait(&k, "the BestEffort pod was not refused", || {
        phase(&pod(&k, "best-effort")) == "Failed"
    });
    let refused = pod(&k, "best-effort");
    assert_eq!(refused["status"]["reason"], "Evicted");
    assert_eq!(
        refused["status"]["message"],
        "The node had condition: [MemoryPressure]. "
    );

    // Burstable pods are admitted; the one over its request goes first.
    k.c.ok_stdin(
        &["apply", "-f", "-"],
        &(manifest("hog", "{requests: {memory: 1Ki}}")
            + "---"
            + &manifest("modest", "{requests: {memory: 1Gi}}")),
    );
    wait(&k, "the hog was not evicted", || {
        phase(&pod(&k, "hog")) == "Failed"
    });
    assert_ne!(
        phase(&pod(&k, "modest")),
        "Failed",
        "the pod within its request went first"
    );
    let hog = pod(&k, "hog");
    assert_eq!(hog["status"]["reason"], "Evicted");
    let message = hog["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: 1Ti, available: ")
            && message.contains("Container app was using ")
            && message.contains("request is 1Ki, has larger consumption of memory."),
        "{message}"
    );
    // Its container is gone, not restarted.
    assert_eq!(
        hog["status"]["containerStatuses"][0]["state"]["running"],
        Value::Null,
        "{hog}"
    );

    // The pressure lasts: the next pass takes the other pod too.
    wait(&k, "the second pod was not evicted", || {
        phase(&pod(&k, "modest")) == "Failed"
    });
    let events =
        k.c.ok(&["get", "events", "-A", "-o", "jsonpath={.items[*].reason}"]);
    assert!(
        events.contains("EvictionThresholdMet") && events.contains("Evicted"),
        "{events}"
    );
}
