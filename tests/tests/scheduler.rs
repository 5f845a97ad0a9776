//! The scheduler against Node objects created through the API (no agents): filters, scores,
//! unschedulable reporting, and retry when the cluster changes.

use std::time::Duration;

use serde_json::Value;
use skiff_tests::Control;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn node(name: &str, cpu: &str, labels: &str, taints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec: {{taints: [{taints}]}}\nstatus:\n  allocatable: {{cpu: '{cpu}', memory: 8Gi, pods: '110', nvidia.com/gpu: '{gpu}'}}\n  capacity: {{cpu: '{cpu}', memory: 8Gi, pods: '110'}}\n  conditions: [{{type: Ready, status: 'True'}}]\n",
        gpu = if labels.contains("gpu") { "1" } else { "0" }
    )
}

fn pod(name: &str, cpu: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  containers: [{{name: c, image: registry.local/busybox:1.36, resources: {{requests: {{cpu: '{cpu}'}}}}}}]\n{extra_spec}"
    )
}

fn cluster(c: &Control) {
    c.ok_stdin(&["apply", "-f", "-"], &node("small", "1", "zone: a", ""));
    c.ok_stdin(&["apply", "-f", "-"], &node("big", "8", "zone: b", ""));
    c.ok_stdin(
        &["apply", "-f", "-"],
        &node(
            "gpu",
            "8",
            "zone: b, gpu: 'true'",
            "{key: dedicated, value: gpu, effect: NoSchedule}",
        ),
    );
}

#[test]
fn filters_choose_the_feasible_node() {
    let c = Control::start();
    cluster(&c);
    // Resources: only big (gpu is tainted) fits 4 CPUs.
    c.ok_stdin(&["apply", "-f", "-"], &pod("cpu-heavy", "4", ""));
    assert_eq!(c.scheduled_node("cpu-heavy"), "big");
    // nodeSelector.
    c.ok_stdin(
        &["apply", "-f", "-"],
        &pod("zone-a", "100m", "  nodeSelector: {zone: a}\n"),
    );
    assert_eq!(c.scheduled_node("zone-a"), "small");
    // Required node affinity with NotIn.
    let affinity = "  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: NotIn, values: [b]}]}]}}}\n";
    c.ok_stdin(&["apply", "-f", "-"], &pod("not-b", "100m", affinity));
    assert_eq!(c.scheduled_node("not-b"), "small");
    // Taints: only a tolerating pod lands on the GPU node; extended resources count.
    let gpu = "  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]\n  nodeSelector: {gpu: 'true'}\n";
    c.ok_stdin(
        &["apply", "-f", "-"],
        &pod("trainer", "100m", gpu).replace("cpu: '100m'", "cpu: '100m', nvidia.com/gpu: '1'"),
    );
    assert_eq!(c.scheduled_node("trainer"), "gpu");
    // Host ports: a second pod on the same port must go elsewhere.
    let port = "  nodeSelector: {zone: b}\n  tolerations: [{key: dedicated, operator: Exists}]\n";
    for name in ["port-1", "port-2"] {
        let p = pod(name, "100m", port).replace(
            "resources:",
            "ports: [{containerPort: 80, hostPort: 8080}], resources:",
        );
        c.ok_stdin(&["apply", "-f", "-"], &p);
    }
    assert_ne!(c.scheduled_node("port-1"), c.scheduled_node("port-2"));
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=Scheduled",
        "-o",
        "name",
    ]);
    assert!(events.lines().count() >= 5, "{events}");
}

#[test]
fn scores_spread_load_and_honour_preferences() {
    let c = Control::start();
    c.ok_stdin(&["apply", "-f", "-"], &node("n1", "4", "zone: a", ""));
    c.ok_stdin(&["apply", "-f", "-"], &node("n2", "4", "zone: b", ""));
    c.ok_stdin(&["apply", "-f", "-"], &pod("first", "2", ""));
    let first = c.scheduled_node("first");
    // Least allocated: the next pod goes to the emptier node.
    c.ok_stdin(&["apply", "-f", "-"], &pod("second", "1", ""));
    assert_ne!(c.scheduled_node("second"), first);
    // A strong preference wins over balance.
    let prefer = "  affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 100, preference: {matchExpressions: [{key: zone, operator: In, values: [a]}]}}]}}\n";
    c.ok_stdin(&["apply", "-f", "-"], &pod("likes-a", "100m", prefer));
    assert_eq!(c.scheduled_node("likes-a"), "n1");
}

#[test]
fn pods_without_requests_spread_over_equal_nodes() {
    // Scoring counts a pod that requests nothing as upstream's non-zero defaults (100m CPU,
    // 200 MiB), on the node it is bound to too: six such replicas on three equal nodes go two
    // to a node, not six to one.
    let c = Control::start();
    for n in ["e1", "e2", "e3"] {
        c.ok_stdin(&["apply", "-f", "-"], &node(n, "4", "zone: a", ""));
    }
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: plain, namespace: default}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: plain}}\n  template:\n    metadata: {labels: {app: plain}}\n    spec:\n      containers: [{name: c, image: registry.local/busybox:1.36}]\n";
    c.ok_stdin(&["apply", "-f", "-"], deployment);
    assert_eq!(pods_per_node(&c, "app=plain", 6), [2, 2, 2]);
}

/// How many of the `want` pods `selector` selects each node holds, once all are bound.
fn pods_per_node(c: &Control, selector: &str, want: usize) -> Vec<i32> {
    let mut per_node = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let pods = json(&c.ok(&["get", "pods", "-l", selector, "-o", "json"]));
        let nodes: Vec<String> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
            .collect();
        if nodes.len() == want {
            per_node.clear();
            for n in nodes {
                *per_node.entry(n).or_insert(0) += 1;
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    per_node.into_values().collect()
}

#[test]
fn replicas_spread_over_hosts_by_default() {
    // On nodes so large that the non-zero default requests move no resource score, upstream's
    // system default spread constraints (hosts maxSkew 3, zones maxSkew 5, ScheduleAnyway, over
    // the pods of the same Services and controllers) still spread a Deployment's replicas and a
    // Service's bare pods, where before every one went to the first node by name.
    let c = Control::start();
    for (n, zone) in [("h1", "a"), ("h2", "a"), ("h3", "b")] {
        let node = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {n}, labels: {{kubernetes.io/hostname: {n}, topology.kubernetes.io/zone: {zone}}}}}\nstatus:\n  allocatable: {{cpu: '256', memory: 2Ti, pods: '110'}}\n  capacity: {{cpu: '256', memory: 2Ti, pods: '110'}}\n  conditions: [{{type: Ready, status: 'True'}}]\n"
        );
        c.ok_stdin(&["apply", "-f", "-"], &node);
    }
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: registry.local/busybox:1.36}]\n";
    c.ok_stdin(&["apply", "-f", "-"], deployment);
    assert_eq!(pods_per_node(&c, "app=web", 6), [2, 2, 2]);
    // Bare pods a Service selects spread too.
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: cache, namespace: default}\nspec:\n  selector: {app: cache}\n  ports: [{port: 80}]\n",
    );
    for i in 0..3 {
        c.ok_stdin(
            &["apply", "-f", "-"],
            &labeled_pod(&format!("cache-{i}"), "cache", ""),
        );
        c.scheduled_node(&format!("cache-{i}"));
    }
    assert_eq!(pods_per_node(&c, "app=cache", 3), [1, 1, 1]);
}

#[test]
fn unschedulable_pods_say_why_and_are_retried_when_a_node_appears() {
    let c = Control::start();
    cluster(&c);
    c.ok_stdin(
        &["apply", "-f", "-"],
        &pod("huge", "16", "  nodeSelector: {zone: b}\n"),
    );
    let mut message = String::new();
    for _ in 0..200 {
        let p = json(&c.ok(&["get", "pod", "huge", "-o", "json"]));
        if let Some(cond) = p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
        {
            message = cond["message"].as_str().unwrap_or_default().to_owned();
            assert_eq!(cond["status"], "False");
            assert_eq!(cond["reason"], "Unschedulable");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        message,
        "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}."
    );
    let described = c.ok(&["describe", "pod", "huge"]);
    assert!(described.contains("FailedScheduling"), "{described}");
    c.ok_stdin(&["apply", "-f", "-"], &node("giant", "32", "zone: b", ""));
    assert_eq!(c.scheduled_node("huge"), "giant");
}

fn zoned_nodes(c: &Control) {
    for (name, zone) in [("n1", "a"), ("n2", "b"), ("n3", "b")] {
        c.ok_stdin(
            &["apply", "-f", "-"],
            &node(
                name,
                "8",
                &format!("zone: {zone}, kubernetes.io/hostname: {name}"),
                "",
            ),
        );
    }
}

fn labeled_pod(name: &str, app: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\nspec:\n  containers: [{{name: c, image: registry.local/busybox:1.36}}]\n{spec}"
    )
}

#[test]
fn pod_anti_affinity_and_affinity() {
    let c = Control::start();
    zoned_nodes(&c);
    let anti = "  affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{labelSelector: {matchLabels: {app: web}}, topologyKey: kubernetes.io/hostname}]}}\n";
    let mut hosts = Vec::new();
    for i in 0..3 {
        c.ok_stdin(
            &["apply", "-f", "-"],
            &labeled_pod(&format!("web-{i}"), "web", anti),
        );
        hosts.push(c.scheduled_node(&format!("web-{i}")));
    }
    hosts.sort();
    assert_eq!(hosts, ["n1", "n2", "n3"], "one web pod per host");
    c.ok_stdin(&["apply", "-f", "-"], &labeled_pod("web-3", "web", anti));
    let mut message = String::new();
    for _ in 0..200 {
        message = c.ok(&[
            "get",
            "pod",
            "web-3",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='PodScheduled')].message}",
        ]);
        if !message.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        message,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    // Required affinity: follow the cache pod's zone.
    let cache_host = c.scheduled_node("web-0");
    c.ok_stdin(
        &["apply", "-f", "-"],
        &labeled_pod(
            "cache",
            "cache",
            &format!("  nodeSelector: {{kubernetes.io/hostname: {cache_host}}}\n"),
        ),
    );
    assert_eq!(c.scheduled_node("cache"), cache_host);
    let follow = "  affinity: {podAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{labelSelector: {matchLabels: {app: cache}}, topologyKey: kubernetes.io/hostname}]}}\n";
    c.ok_stdin(
        &["apply", "-f", "-"],
        &labeled_pod("near-cache", "client", follow),
    );
    assert_eq!(c.scheduled_node("near-cache"), cache_host);
}

#[test]
fn topology_spread_balances_zones() {
    let c = Control::start();
    zoned_nodes(&c);
    let spread = "  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: spread}}}]\n";
    let mut zones = std::collections::BTreeMap::new();
    for i in 0..4 {
        let name = format!("s-{i}");
        c.ok_stdin(&["apply", "-f", "-"], &labeled_pod(&name, "spread", spread));
        let n = c.scheduled_node(&name);
        *zones.entry(if n == "n1" { "a" } else { "b" }).or_insert(0) += 1;
    }
    assert_eq!(zones.get("a"), Some(&2), "{zones:?}");
    assert_eq!(zones.get("b"), Some(&2), "{zones:?}");
}

#[test]
fn high_priority_pod_preempts_lower_priority_ones() {
    let c = Control::start();
    c.ok_stdin(&["apply", "-f", "-"], &node("only", "2", "zone: a", ""));
    c.ok_stdin(&["apply", "-f", "-"], "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: low}\nvalue: 10\n");
    let with_class =
        |name: &str, class: &str, cpu: &str| pod(name, cpu, &format!("  priorityClassName: {class}\n"));
    c.ok_stdin(&["apply", "-f", "-"], &with_class("low-1", "low", "1"));
    c.ok_stdin(&["apply", "-f", "-"], &with_class("low-2", "low", "1"));
    assert_eq!(c.scheduled_node("low-1"), "only");
    assert_eq!(c.scheduled_node("low-2"), "only");
    assert_eq!(
        c.ok(&["get", "pod", "low-1", "-o", "jsonpath={.spec.priority}"]),
        "10"
    );
    c.ok_stdin(&["apply", "-f", "-"], &with_class("important", "high", "1"));
    // One low-priority pod is chosen as the victim and the preemptor is nominated to the node.
    let mut victim = None;
    for _ in 0..200 {
        for v in ["low-1", "low-2"] {
            if !c
                .ok(&["get", "pod", v, "-o", "jsonpath={.metadata.deletionTimestamp}"])
                .is_empty()
            {
                victim = Some(v);
            }
        }
        if victim.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = victim.expect("a victim");
    let nominated = c.ok(&[
        "get",
        "pod",
        "important",
        "-o",
        "jsonpath={.status.nominatedNodeName}",
    ]);
    assert_eq!(nominated, "only");
    // Replacements of lower priority (a ReplicaSet's, say) arrive while the victim terminates:
    // the room is the nominated pod's, so they wait and the preemptor picks no more victims.
    for r in ["low-3", "low-4", "low-5"] {
        c.ok_stdin(&["apply", "-f", "-"], &with_class(r, "low", "1"));
    }
    // The kubelet (this test) finishes the victim; the preemptor then lands.
    c.ok(&["delete", "pod", victim, "--force", "--grace-period=0"]);
    assert_eq!(c.scheduled_node("important"), "only");
    for r in ["low-3", "low-4", "low-5"] {
        assert_eq!(
            c.ok(&["get", "pod", r, "-o", "jsonpath={.spec.nodeName}"]),
            "",
            "{r} took the room nominated to the preemptor"
        );
    }
    let survivor = if victim == "low-1" { "low-2" } else { "low-1" };
    assert!(
        c.ok(&[
            "get",
            "pod",
            survivor,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}"
        ])
        .is_empty()
    );
    let err = c.fails_stdin(&["apply", "-f", "-"], &with_class("nope", "missing", "100m"));
    assert!(
        err.contains("no PriorityClass with name missing was found"),
        "{err}"
    );
    // A class's value and preemption policy are fixed; its description is not.
    let err = c.fails(&["patch", "priorityclass", "high", "-p", r#"{"value": 5000}"#]);
    assert!(
        err.contains("Value: Forbidden: may not be changed in an update"),
        "{err}"
    );
    let err = c.fails(&[
        "patch",
        "priorityclass",
        "high",
        "-p",
        r#"{"preemptionPolicy": "Never"}"#,
    ]);
    assert!(
        err.contains("preemptionPolicy") && err.contains("field is immutable"),
        "{err}"
    );
    c.ok(&[
        "patch",
        "priorityclass",
        "high",
        "-p",
        r#"{"description": "urgent work"}"#,
    ]);
    assert_eq!(
        c.ok(&["get", "priorityclass", "high", "-o", "jsonpath={.value}"]),
        "1000"
    );
}

#[test]
fn drain_evicts_and_pods_are_rescheduled_elsewhere() {
    let c = Control::start();
    c.ok_stdin(&["apply", "-f", "-"], &node("old", "8", "zone: a", ""));
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, namespace: default}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: app}}\n  template:\n    metadata: {labels: {app: app}}\n    spec: {containers: [{name: c, image: registry.local/busybox:1.36}]}\n";
    c.ok_stdin(&["apply", "-f", "-"], deploy);
    let on = |c: &Control, node: &str| -> usize {
        let list: Value = json(&c.ok(&["get", "pods", "-l", "app=app", "-o", "json"]));
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["spec"]["nodeName"] == node && p["metadata"]["deletionTimestamp"].is_null())
            .count()
    };
    for _ in 0..200 {
        if on(&c, "old") == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(on(&c, "old"), 2);
    c.ok_stdin(&["apply", "-f", "-"], &node("new", "8", "zone: a", ""));
    // drain cordons, then evicts through the eviction API; the kubelet stand-in (grace 0) is kubectl.
    c.ok(&[
        "drain",
        "old",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--grace-period=0",
        "--force",
        "--timeout=30s",
    ]);
    assert_eq!(
        c.ok(&["get", "node", "old", "-o", "jsonpath={.spec.unschedulable}"]),
        "true"
    );
    let mut moved = false;
    for _ in 0..200 {
        if on(&c, "new") == 2 && on(&c, "old") == 0 {
            moved = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(moved, "pods were not rescheduled onto the remaining node");
    assert!(c.ok(&["get", "nodes"]).contains("SchedulingDisabled"));
}

fn make_ready(c: &Control, pod: &str) {
    let status = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    c.patch_pod_status(pod, status);
}

fn deleting(c: &Control, pod: &str) -> bool {
    !c.ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.deletionTimestamp}"])
        .is_empty()
}

#[test]
fn preemption_spares_pods_a_disruption_budget_protects() {
    let c = Control::start();
    c.ok_stdin(&["apply", "-f", "-"], &node("n1", "1", "zone: a", ""));
    c.ok_stdin(&["apply", "-f", "-"], &node("n2", "1", "zone: a", ""));
    c.ok_stdin(&["apply", "-f", "-"], "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: low}\nvalue: 10\n");
    // Two low-priority pods fill the two nodes; "guarded" is the one a budget protects. By name
    // alone n1 would be preferred, so pin "guarded" there.
    let low = |name: &str, node_name: &str| {
        pod(
            name,
            "1",
            &format!("  priorityClassName: low\n  nodeSelector: {{kubernetes.io/hostname: {node_name}}}\n"),
        )
        .replace(
            "namespace: default}",
            &format!("namespace: default, labels: {{app: {name}}}}}"),
        )
    };
    for (name, n) in [("guarded", "n1"), ("free", "n2")] {
        c.ok_stdin(&["apply", "-f", "-"], &low(name, n));
    }
    // The Node objects above carry no hostname label; add it so the selectors match.
    for n in ["n1", "n2"] {
        c.ok(&["label", "node", n, &format!("kubernetes.io/hostname={n}")]);
    }
    assert_eq!(c.scheduled_node("guarded"), "n1");
    assert_eq!(c.scheduled_node("free"), "n2");
    for p in ["guarded", "free"] {
        make_ready(&c, p);
    }
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: guard, namespace: default}\nspec: {minAvailable: 1, selector: {matchLabels: {app: guarded}}}\n",
    );
    for _ in 0..200 {
        if c.ok(&[
            "get",
            "pdb",
            "guard",
            "-o",
            "jsonpath={.status.currentHealthy}/{.status.disruptionsAllowed}",
        ]) == "1/0"
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ok_stdin(
        &["apply", "-f", "-"],
        &pod("urgent", "1", "  priorityClassName: high\n"),
    );
    for _ in 0..200 {
        if deleting(&c, "free") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(deleting(&c, "free"), "the unprotected pod is the victim");
    assert!(!deleting(&c, "guarded"), "the budget's pod is spared");
    assert_eq!(
        c.ok(&[
            "get",
            "pod",
            "urgent",
            "-o",
            "jsonpath={.status.nominatedNodeName}"
        ]),
        "n2"
    );
}

#[test]
fn image_locality_prefers_nodes_that_hold_the_image() {
    let c = Control::start();
    // Equal nodes apart from the images they report; by name alone "a-plain" would win.
    c.ok_stdin(&["apply", "-f", "-"], &node("a-plain", "4", "zone: a", ""));
    c.ok_stdin(&["apply", "-f", "-"], &node("b-cached", "4", "zone: a", ""));
    let images = r#"{"status":{"images":[{"names":["registry.local/big:1","registry.local/big@sha256:0123"],"sizeBytes":524288000}]}}"#;
    c.ok(&[
        "patch",
        "node",
        "b-cached",
        "--subresource=status",
        "--type=merge",
        "-p",
        images,
    ]);
    let with_image =
        |name: &str, image: &str| pod(name, "100m", "").replace("registry.local/busybox:1.36", image);
    c.ok_stdin(
        &["apply", "-f", "-"],
        &with_image("uses-big", "registry.local/big:1"),
    );
    assert_eq!(c.scheduled_node("uses-big"), "b-cached");
    // A pod whose image no node holds goes by the other scores (here: the name).
    c.ok_stdin(
        &["apply", "-f", "-"],
        &with_image("uses-other", "registry.local/other:1"),
    );
    assert_eq!(c.scheduled_node("uses-other"), "a-plain");
}

#[test]
fn host_ports_collide_only_on_the_same_protocol_and_address() {
    let c = Control::start();
    c.ok_stdin(&["apply", "-f", "-"], &node("only", "8", "zone: a", ""));
    let with_port = |name: &str, port: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeSelector: {{zone: a}}\n  containers: [{{name: c, image: registry.local/busybox:1.36, ports: [{port}]}}]\n"
        )
    };
    // As the conformance spec: the same port on two host addresses, and over UDP, all fit.
    for (name, port) in [
        (
            "loopback",
            "{containerPort: 80, hostPort: 54321, hostIP: 127.0.0.1}",
        ),
        (
            "other-ip",
            "{containerPort: 80, hostPort: 54321, hostIP: 192.0.2.9}",
        ),
        (
            "udp",
            "{containerPort: 80, hostPort: 54321, hostIP: 192.0.2.9, protocol: UDP}",
        ),
    ] {
        c.ok_stdin(&["apply", "-f", "-"], &with_port(name, port));
        assert_eq!(c.scheduled_node(name), "only", "{name}");
    }
    // Every address (no hostIP) takes the port on each of them.
    c.ok_stdin(
        &["apply", "-f", "-"],
        &with_port("everywhere", "{containerPort: 80, hostPort: 54321}"),
    );
    let mut message = String::new();
    for _ in 0..200 {
        message = c.ok(&[
            "get",
            "pod",
            "everywhere",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='PodScheduled')].message}",
        ]);
        if !message.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(message.contains("didn't have free ports"), "{message}");
}
