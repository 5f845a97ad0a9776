//! The events an operator looks for with `kubectl describe` and `kubectl get events`, with
//! upstream's reasons, through `core/v1` and `events.k8s.io/v1` both. A Deployment whose container
//! fails its liveness probe, a pod whose ConfigMap volume is missing and a pod no node fits give,
//! from the controllers, the scheduler and the agent: SuccessfulCreate, ScalingReplicaSet,
//! Scheduled, Pulling, Pulled, Created, Started, Unhealthy, Killing, FailedMount, FailedScheduling.
//! The other reasons of the operations issue are asserted where their cause is set up: BackOff,
//! OOMKilling and Evicted in `pods.rs`, NodeReady and NodeNotReady in `agent.rs`.

use serde_json::Value;
use skiff_tests::node::Cluster;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: probed}
spec:
  replicas: 1
  selector: {matchLabels: {app: probed}}
  template:
    metadata: {labels: {app: probed}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: IMAGE
        imagePullPolicy: Always
        command: ["sleep", "3600"]
        livenessProbe:
          exec: {command: ["cat", "/tmp/healthy"]}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: unmounted}
spec:
  containers:
  - name: app
    image: IMAGE
    command: ["sleep", "3600"]
    volumeMounts: [{name: cfg, mountPath: /cfg}]
  volumes: [{name: cfg, configMap: {name: missing}}]
---
apiVersion: v1
kind: Pod
metadata: {name: unplaced}
spec:
  nodeSelector: {disk: nowhere}
  containers:
  - name: app
    image: IMAGE
"#;

/// The reasons of the events `kubectl get` lists from `resource` (`events` or
/// `events.events.k8s.io`).
fn reasons(k: &Cluster, resource: &str) -> BTreeSet<String> {
    let out: Value = serde_json::from_str(&k.c.ok(&["get", resource, "-o", "json"])).expect("event list");
    out["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_events_operators_look_for_appear_with_upstreams_reasons() {
    let k = Cluster::start();
    let image = k.registry.busybox();
    k.c.ok_stdin(&["apply", "-f", "-"], &WORKLOAD.replace("IMAGE", &image));

    let wanted = [
        "SuccessfulCreate",
        "ScalingReplicaSet",
        "Scheduled",
        "Pulling",
        "Pulled",
        "Created",
        "Started",
        "Unhealthy",
        "Killing",
        "FailedMount",
        "FailedScheduling",
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = reasons(&k, "events");
        let missing: Vec<_> = wanted.iter().filter(|r| !seen.contains(**r)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no event with reason {missing:?} (seen: {seen:?}): {}",
            k.node.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The same events through events.k8s.io/v1.
    let seen = reasons(&k, "events.v1.events.k8s.io");
    for r in wanted {
        assert!(seen.contains(r), "{r} missing from events.k8s.io/v1: {seen:?}");
    }

    // And where an operator reads them: `kubectl describe`.
    let describe = k.c.ok(&["describe", "pod", "unmounted"]);
    assert!(
        describe.contains("FailedMount") && describe.contains("configmap \"missing\" not found"),
        "{describe}"
    );
    let describe = k.c.ok(&["describe", "pod", "unplaced"]);
    assert!(describe.contains("FailedScheduling"), "{describe}");
    let describe = k.c.ok(&["describe", "pods", "-l", "app=probed"]);
    assert!(
        describe.contains("Unhealthy") && describe.contains("Liveness probe failed"),
        "{describe}"
    );
}
