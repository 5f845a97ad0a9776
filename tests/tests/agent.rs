//! skiff-agent joins a real control plane with the node token, registers its Node, and keeps it
//! alive with Lease heartbeats; a stopped agent's node goes NotReady.

use skiff_tests::BoundedOutput;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use skiff_tests::Control;
use skiff_tests::node::{Node, agent_bin, cluster_cidr, unique_prefix};

/// Waits (bounded) until the node's Ready condition is `want`; false if it never is.
fn wait_for_ready(c: &Control, name: &str, want: &str) -> bool {
    for _ in 0..200 {
        if ready(c, name).as_deref() == Some(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn ready(c: &Control, name: &str) -> Option<String> {
    let out = c.kubectl(&["get", "node", name, "-o", "json"]);
    let node: Value = serde_json::from_slice(&out.stdout).ok()?;
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn agent_joins_registers_and_heartbeats() {
    // The agent runs with the test's own bridge, cgroup subtree and pod range (see `Node`).
    let prefix = unique_prefix();
    let c = Control::start_with(&[
        "--node-monitor-grace-period",
        "3s",
        "--cluster-cidr",
        &cluster_cidr(&prefix),
    ]);
    let mut agent = Node::start(&c, &prefix);
    let name = agent.name.clone();
    let dir = agent.data_dir();
    let ok = wait_for_ready(&c, &name, "True");
    assert!(ok, "node never became Ready");
    let node: Value = serde_json::from_str(&c.ok(&["get", "node", &name, "-o", "json"])).unwrap();
    assert!(
        node["status"]["capacity"]["cpu"]
            .as_str()
            .is_some_and(|c| c.parse::<u32>().unwrap() >= 1)
    );
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.32.0-skiff");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/os"], "linux");
    let holder = c.ok(&[
        "-n",
        "kube-node-lease",
        "get",
        "lease",
        &name,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, name);
    // The node's identity is its own certificate, kept for restarts.
    assert!(dir.join("node.crt").exists() && dir.join("node.key").exists());
    // With it, a node may read, but not act as an administrator.
    let as_node = |args: &[&str]| {
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        Command::new("kubectl")
            .env("KUBECONFIG", "/dev/null")
            .args([
                "--server",
                &c.url(),
                "--certificate-authority",
                &p("ca.crt"),
                "--client-certificate",
                &p("node.crt"),
                "--client-key",
                &p("node.key"),
            ])
            .args(args)
            .bounded_output()
            .unwrap()
    };
    assert!(as_node(&["get", "nodes"]).status.success());
    let denied = as_node(&["delete", "namespace", "default"]);
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && err.contains("Forbidden") && err.contains(&format!("system:node:{name}")),
        "{err}"
    );
    assert!(!as_node(&["label", "node", "other-node", "x=y"]).status.success());

    // Node restriction: a node reads only the secrets, config maps and claims of the pods bound to
    // it, never the whole set, and writes the status of (or deletes) only its own pods.
    c.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: used}}
stringData: {{k: v}}
---
apiVersion: v1
kind: Secret
metadata: {{name: unused}}
stringData: {{k: v}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: used-cm}}
data: {{k: v}}
---
apiVersion: v1
kind: Pod
metadata: {{name: theirs}}
spec:
  nodeName: another-node
  containers: [{{name: c, image: 127.0.0.1:9/none}}]
  volumes: [{{name: s, secret: {{secretName: unused}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: mine}}
spec:
  nodeName: {name}
  containers:
  - name: c
    image: 127.0.0.1:9/none
    env: [{{name: K, valueFrom: {{configMapKeyRef: {{name: used-cm, key: k}}}}}}]
  volumes: [{{name: s, secret: {{secretName: used}}}}]
"#
        ),
    );
    let refused = |args: &[&str], why: &str| {
        let out = as_node(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Forbidden") && err.contains(why),
            "{args:?}: {err}"
        );
    };
    assert!(as_node(&["get", "secret", "used"]).status.success());
    assert!(as_node(&["get", "configmap", "used-cm"]).status.success());
    refused(&["get", "secret", "unused"], "no relationship found between node");
    refused(&["get", "secrets"], "cannot list resource \"secrets\"");
    refused(
        &["get", "--raw", "/api/v1/namespaces/default/configmaps?watch=1"],
        "cannot watch resource \"configmaps\"",
    );
    let status = r#"{"status":{"message":"hello"}}"#;
    refused(
        &[
            "patch",
            "pod",
            "theirs",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
        "can only update pod status or delete pods bound to it",
    );
    refused(
        &["delete", "pod", "theirs"],
        "can only update pod status or delete pods bound to it",
    );
    let ok = as_node(&[
        "patch",
        "pod",
        "mine",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Node isolation: no other Node or Lease, no control-plane label on itself, events only
    // about itself and its pods.
    let manifests = tempfile::tempdir().unwrap();
    let file = |name: &str, yaml: String| {
        let path = manifests.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path.to_string_lossy().into_owned()
    };
    let other_node = file(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: impostor}\n".into(),
    );
    refused(
        &["create", "-f", &other_node],
        &format!("node \"{name}\" is not allowed to modify node \"impostor\""),
    );
    let other_lease = file(
        "lease.yaml",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: impostor, namespace: kube-node-lease}\n".into(),
    );
    refused(
        &["create", "-f", &other_lease],
        "can only access node lease with the same name as the requesting node",
    );
    refused(
        &["label", "node", &name, "node-role.kubernetes.io/control-plane="],
        "is not allowed to modify labels: node-role.kubernetes.io/control-plane",
    );
    let own_label = as_node(&["label", "node", &name, "node.kubernetes.io/pool=a"]);
    assert!(
        own_label.status.success(),
        "{}",
        String::from_utf8_lossy(&own_label.stderr)
    );
    let event = |file_name: &str, kind: &str, about: &str| {
        file(
            file_name,
            format!(
                "apiVersion: v1\nkind: Event\nmetadata: {{name: {file_name}, namespace: default}}\ninvolvedObject: {{kind: {kind}, name: {about}, namespace: default}}\nreason: Test\nmessage: hi\n"
            ),
        )
    };
    let about_mine = as_node(&["create", "-f", &event("mine", "Pod", "mine")]);
    assert!(
        about_mine.status.success(),
        "{}",
        String::from_utf8_lossy(&about_mine.stderr)
    );
    refused(
        &["create", "-f", &event("theirs", "Pod", "theirs")],
        "can only create events about itself or pods bound to it",
    );
    refused(
        &["create", "-f", &event("web", "Deployment", "web")],
        "can only create events about itself or pods bound to it",
    );
    c.ok(&["delete", "pod", "mine", "theirs", "--grace-period=0", "--force"]);
    agent.kill9();
    let lost = wait_for_ready(&c, &name, "Unknown");
    assert!(lost, "a stopped agent's node did not go NotReady");
    // Restarting with the stored credentials brings it back.
    agent.restart();
    let back = wait_for_ready(&c, &name, "True");
    assert!(back, "the node did not come back after the agent restarted");
}

#[test]
fn a_wrong_token_is_refused_with_one_line() {
    let c = Control::start();
    let token = std::fs::read_to_string(c.data_dir().join("node-token")).unwrap();
    let (hash, _) = token.trim().split_once("::").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(agent_bin())
        .args([
            "--server",
            &c.url(),
            "--token",
            &format!("{hash}::node:wrong"),
            "--node-name",
            "intruder",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .bounded_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rejected the node token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A token pinning another CA is refused before anything is sent.
    let out = Command::new(agent_bin())
        .args([
            "--server",
            &c.url(),
            "--token",
            &format!("K10{}::node:x", "0".repeat(64)),
            "--node-name",
            "intruder",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .bounded_output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match the node token"));
    assert!(c.fails(&["get", "node", "intruder"]).contains("not found"));
    // The right token does not take over a name whose node exists (its agent holds a
    // certificate): the operator removes that node first.
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: taken}\n",
    );
    let out = Command::new(agent_bin())
        .args([
            "--server",
            &c.url(),
            "--token",
            token.trim(),
            "--node-name",
            "taken",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .bounded_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("node \"taken\" already exists") && err.contains("kubectl delete node taken"),
        "{err}"
    );
    assert!(!dir.path().join("node.crt").exists());
}

#[test]
fn the_node_stream_resumes_after_the_control_plane_ends_it() {
    // The control plane ends each node stream after 1-2 s here (30-60 min by default); the agent
    // must carry on from its last revision without a new snapshot and miss nothing.
    let prefix = unique_prefix();
    let c = Control::start_with(&[
        "--node-stream-timeout",
        "1s",
        "--cluster-cidr",
        &cluster_cidr(&prefix),
    ]);
    let agent = Node::start(&c, &prefix);
    assert!(wait_for_ready(&c, &agent.name, "True"), "node never became Ready");
    let resumes = |log: &str| log.matches("node stream resumed").count();
    let mut waited = 0;
    while resumes(&agent.log()) < 2 && waited < 300 {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert!(
        resumes(&agent.log()) >= 2,
        "the stream never resumed: {}",
        agent.log()
    );
    // A pod bound to the node after the resumes reaches it (its status comes from the agent) ...
    c.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: late}}\nspec:\n  nodeName: {}\n  containers: [{{name: late, image: \"Bad/Image:1\"}}]\n",
            agent.name
        ),
    );
    let mut reason = String::new();
    for _ in 0..300 {
        reason = c
            .kubectl(&[
                "get",
                "pod",
                "late",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
            ])
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect();
        if reason == "InvalidImageName" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        reason,
        "InvalidImageName",
        "the agent never saw the pod: {}",
        agent.log()
    );
    // ... and so does its deletion, which the agent confirms.
    c.ok(&["delete", "pod", "late", "--timeout=60s"]);
    let log = agent.log();
    assert_eq!(
        log.matches("node stream started with a snapshot").count(),
        1,
        "a resume needs no new snapshot: {log}"
    );
}
