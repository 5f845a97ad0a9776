//! Storage in the control plane, driven with kubectl against Node objects (no agents):
//! PersistentVolumes and claims, immediate and WaitForFirstConsumer binding, volume node affinity
//! in the scheduler, the built-in local-path provisioner, StatefulSet volumeClaimTemplates, and
//! what happens to a volume when its claim goes.

use std::time::Duration;

use skiff_tests::Control;

fn node(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}}}}}\nstatus:\n  allocatable: {{cpu: '4', memory: 8Gi, pods: '110'}}\n  capacity: {{cpu: '4', memory: 8Gi, pods: '110'}}\n  conditions: [{{type: Ready, status: 'True'}}]\n"
    )
}

fn local_pv(name: &str, size: &str, class: &str, node: &str, policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}}}\nspec:\n  capacity: {{storage: {size}}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: {policy}\n  storageClassName: {class}\n  local: {{path: /mnt/disks/{name}}}\n  nodeAffinity: {{required: {{nodeSelectorTerms: [{{matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{node}]}}]}}]}}}}\n"
    )
}

fn claim(name: &str, size: &str, class: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: {class}\n  resources: {{requests: {{storage: {size}}}}}\n"
    )
}

fn pod_with_claim(name: &str, claim: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  containers: [{{name: c, image: registry.local/busybox:1.36, volumeMounts: [{{name: data, mountPath: /data}}]}}]\n  volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]\n{extra_spec}"
    )
}

/// Polls `kubectl args` (bounded) until its output passes `check`; returns that output.
fn poll(c: &Control, args: &[&str], want: &str, check: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        last = c.ok(args);
        if check(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("kubectl {args:?}: wanted {want:?}, last saw {last:?}");
}

fn eventually(c: &Control, args: &[&str], want: &str) -> String {
    poll(c, args, want, |out| out == want)
}

fn eventually_contains(c: &Control, args: &[&str], want: &str) -> String {
    poll(c, args, want, |out| out.contains(want))
}

fn setup(c: &Control) {
    c.ok_stdin(&["apply", "-f", "-"], &node("a"));
    c.ok_stdin(&["apply", "-f", "-"], &node("b"));
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: local}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\n",
    );
}

#[test]
fn claims_bind_and_pods_follow_their_volumes() {
    let c = Control::start();
    setup(&c);
    // The built-in default class is there, and kubectl prints the kinds as upstream does.
    let classes = c.ok(&["get", "storageclass"]);
    assert!(
        classes.contains("local-path (default)") && classes.contains("skiff.io/local-path"),
        "{classes}"
    );
    assert!(classes.contains("WaitForFirstConsumer"), "{classes}");

    // Immediate binding (a class with no StorageClass object): the claim binds at once to the
    // smallest fitting volume, and a pod using it goes to that volume's node.
    c.ok_stdin(
        &["apply", "-f", "-"],
        &local_pv("manual-small", "1Gi", "manual", "b", "Retain"),
    );
    c.ok_stdin(
        &["apply", "-f", "-"],
        &local_pv("manual-big", "10Gi", "manual", "a", "Retain"),
    );
    c.ok_stdin(&["apply", "-f", "-"], &claim("manual-claim", "512Mi", "manual"));
    eventually(
        &c,
        &["get", "pvc", "manual-claim", "-o", "jsonpath={.status.phase}"],
        "Bound",
    );
    assert_eq!(
        c.ok(&[
            "get",
            "pvc",
            "manual-claim",
            "-o",
            "jsonpath={.spec.volumeName} {.status.capacity.storage}"
        ]),
        "manual-small 1Gi"
    );
    eventually(
        &c,
        &["get", "pv", "manual-small", "-o", "jsonpath={.status.phase}"],
        "Bound",
    );
    let pvs = c.ok(&["get", "pv"]);
    let line = pvs
        .lines()
        .find(|l| l.starts_with("manual-small"))
        .unwrap_or_default();
    for column in ["1Gi", "RWO", "Retain", "Bound", "default/manual-claim", "manual"] {
        assert!(line.contains(column), "{column} missing in: {pvs}");
    }
    assert_eq!(
        c.ok(&["get", "pv", "manual-big", "-o", "jsonpath={.status.phase}"]),
        "Available"
    );
    c.ok_stdin(
        &["apply", "-f", "-"],
        &pod_with_claim("on-manual", "manual-claim", ""),
    );
    eventually(
        &c,
        &["get", "pod", "on-manual", "-o", "jsonpath={.spec.nodeName}"],
        "b",
    );

    // A bound volume's node affinity and the pod's selector that contradicts it.
    c.ok_stdin(
        &["apply", "-f", "-"],
        &pod_with_claim(
            "conflict",
            "manual-claim",
            "  nodeSelector: {kubernetes.io/hostname: a}\n",
        ),
    );
    eventually_contains(
        &c,
        &[
            "get",
            "pod",
            "conflict",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had volume node affinity conflict.",
    );

    // A missing claim and an unbound immediate claim keep the pod off every node.
    c.ok_stdin(&["apply", "-f", "-"], &pod_with_claim("no-claim", "missing", ""));
    eventually_contains(
        &c,
        &[
            "get",
            "pod",
            "no-claim",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        "0/2 nodes are available: persistentvolumeclaim \"missing\" not found.",
    );
    c.ok_stdin(&["apply", "-f", "-"], &claim("too-big", "100Gi", "manual"));
    eventually(
        &c,
        &["get", "pvc", "too-big", "-o", "jsonpath={.status.phase}"],
        "Pending",
    );
    c.ok_stdin(
        &["apply", "-f", "-"],
        &pod_with_claim("on-too-big", "too-big", ""),
    );
    eventually_contains(
        &c,
        &[
            "get",
            "pod",
            "on-too-big",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        "pod has unbound immediate PersistentVolumeClaims",
    );
    // The claim that was missing appears: the waiting pod is retried and scheduled.
    c.ok_stdin(
        &["apply", "-f", "-"],
        &local_pv("late", "1Gi", "manual", "a", "Retain"),
    );
    c.ok_stdin(&["apply", "-f", "-"], &claim("missing", "1Gi", "manual"));
    eventually(
        &c,
        &["get", "pod", "no-claim", "-o", "jsonpath={.spec.nodeName}"],
        "a",
    );

    // WaitForFirstConsumer: the claim waits for a pod, the scheduler picks the node that has a
    // fitting volume, and the claim binds to the volume there.
    c.ok_stdin(
        &["apply", "-f", "-"],
        &local_pv("disk-a", "1Gi", "local", "a", "Retain"),
    );
    c.ok_stdin(
        &["apply", "-f", "-"],
        &local_pv("disk-b", "5Gi", "local", "b", "Retain"),
    );
    c.ok_stdin(&["apply", "-f", "-"], &claim("wait", "3Gi", "local"));
    eventually(
        &c,
        &["get", "pvc", "wait", "-o", "jsonpath={.status.phase}"],
        "Pending",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.ok(&["get", "pvc", "wait", "-o", "jsonpath={.spec.volumeName}"]),
        ""
    );
    c.ok_stdin(&["apply", "-f", "-"], &pod_with_claim("consumer", "wait", ""));
    eventually(
        &c,
        &["get", "pod", "consumer", "-o", "jsonpath={.spec.nodeName}"],
        "b",
    );
    eventually(
        &c,
        &["get", "pvc", "wait", "-o", "jsonpath={.spec.volumeName}"],
        "disk-b",
    );
    assert_eq!(
        c.ok(&[
            "get",
            "pvc",
            "wait",
            "-o",
            "jsonpath={.metadata.annotations.volume\\.kubernetes\\.io/selected-node}"
        ]),
        "b"
    );
    // No volume of the class is big enough anywhere.
    c.ok_stdin(&["apply", "-f", "-"], &claim("huge", "50Gi", "local"));
    c.ok_stdin(&["apply", "-f", "-"], &pod_with_claim("on-huge", "huge", ""));
    eventually_contains(
        &c,
        &[
            "get",
            "pod",
            "on-huge",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind.",
    );

    // Reclaim: a Retain volume whose claim is deleted is Released, not reused.
    c.ok(&["delete", "pod", "on-manual", "conflict", "--wait=false"]);
    c.ok(&["delete", "pvc", "manual-claim"]);
    eventually(
        &c,
        &["get", "pv", "manual-small", "-o", "jsonpath={.status.phase}"],
        "Released",
    );
}

#[test]
fn statefulset_claims_are_provisioned_on_the_pods_nodes() {
    let c = Control::start();
    setup(&c);
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: web, namespace: default}\nspec:\n  replicas: 2\n  podManagementPolicy: Parallel\n  serviceName: web\n  selector: {matchLabels: {app: web}}\n  persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: registry.local/busybox:1.36, volumeMounts: [{name: data, mountPath: /data}]}]\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 2Gi}}}\n",
    );
    for ordinal in 0..2 {
        let pod = format!("web-{ordinal}");
        let claim = format!("data-web-{ordinal}");
        // The claim got the default class, then a volume provisioned on the pod's node.
        eventually(
            &c,
            &["get", "pvc", &claim, "-o", "jsonpath={.status.phase}"],
            "Bound",
        );
        let node = c.scheduled_node(&pod);
        assert!(node == "a" || node == "b", "{pod} on {node:?}");
        assert_eq!(
            c.ok(&[
                "get",
                "pvc",
                &claim,
                "-o",
                "jsonpath={.spec.storageClassName} {.metadata.labels.app}"
            ]),
            "local-path web"
        );
        let volume = c.ok(&["get", "pvc", &claim, "-o", "jsonpath={.spec.volumeName}"]);
        assert!(volume.starts_with("pvc-"), "{volume}");
        let pv = c.ok(&[
            "get",
            "pv",
            &volume,
            "-o",
            "jsonpath={.spec.hostPath.path} {.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]} {.spec.capacity.storage} {.spec.claimRef.name}",
        ]);
        assert_eq!(
            pv,
            format!("/var/lib/skiff/storage/{volume}_default_{claim} {node} 2Gi {claim}")
        );
        assert_eq!(
            c.ok(&[
                "get",
                "pod",
                &pod,
                "-o",
                "jsonpath={.spec.volumes[0].persistentVolumeClaim.claimName}"
            ]),
            claim
        );
    }
    // Scaling down with `whenScaled: Delete` deletes the removed ordinal's claim, and a
    // provisioned volume goes with its claim (reclaim policy Delete).
    let volume = c.ok(&["get", "pvc", "data-web-1", "-o", "jsonpath={.spec.volumeName}"]);
    c.ok(&[
        "patch",
        "statefulset",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":1,"persistentVolumeClaimRetentionPolicy":{"whenScaled":"Delete"}}}"#,
    ]);
    for _ in 0..200 {
        if !c.kubectl(&["get", "pvc", "data-web-1"]).status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !c.kubectl(&["get", "pvc", "data-web-1"]).status.success(),
        "the removed ordinal's claim is deleted"
    );
    assert!(
        c.kubectl(&["get", "pvc", "data-web-0"]).status.success(),
        "the kept ordinal's claim stays"
    );
    for _ in 0..200 {
        if c.kubectl(&["get", "pv", &volume]).status.success() {
            std::thread::sleep(Duration::from_millis(50));
        } else {
            return;
        }
    }
    panic!("volume {volume} outlived its claim");
}
