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
    // An extended resource advertised in the node's capacity (as the Kubernetes docs show, and
    // the conformance suite's preemption specs do) becomes allocatable, so pods asking for it land.
    c.ok(&[
        "patch",
        "node",
        &name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"capacity":{"example.com/dongle":"2"}}}"#,
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.ok(&[
        "get",
        "node",
        &name,
        "-o",
        "jsonpath={.status.allocatable.example\\.com/dongle}",
    ]) != "2"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the extended resource never became allocatable"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: dongled}\nspec:\n  containers:\n  - name: c\n    image: registry.local/none:1\n    resources: {limits: {example.com/dongle: 1}}\n",
    );
    assert_eq!(c.scheduled_node("dongled"), name);
    c.ok(&["delete", "pod", "dongled", "--grace-period=0", "--force"]);
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
    // Each change is an event on the Node, with upstream's reasons and words: NodeReady from the
    // agent at registration and again after it came back, NodeNotReady from the node controller.
    let node_events = || -> Vec<(String, String)> {
        let list: Value =
            serde_json::from_str(&c.ok(&["get", "events", "-n", "default", "-o", "json"])).unwrap();
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["kind"] == "Node" && e["involvedObject"]["name"] == name.as_str())
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let mut events = node_events();
    for _ in 0..100 {
        if events.iter().filter(|(r, _)| r == "NodeReady").count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        events = node_events();
    }
    let ready = (
        "NodeReady".to_owned(),
        format!("Node {name} status is now: NodeReady"),
    );
    assert_eq!(events.iter().filter(|e| **e == ready).count(), 2, "{events:?}");
    assert!(
        events.contains(&(
            "NodeNotReady".to_owned(),
            format!("Node {name} status is now: NodeNotReady")
        )),
        "{events:?}"
    );
}

#[test]
fn agents_outside_the_version_skew_are_refused_with_one_line() {
    // The control plane says its Skiff version to anyone (an agent checks its own against it when
    // it starts), and refuses the tunnel of an agent newer than itself, or more than one minor
    // version older, saying which side to upgrade; an agent one minor version older is let in.
    let prefix = unique_prefix();
    let c = Control::start_with(&["--cluster-cidr", &cluster_cidr(&prefix)]);
    let agent = Node::start(&c, &prefix);
    assert!(wait_for_ready(&c, &agent.name, "True"), "node never became Ready");
    let dir = agent.data_dir();
    let curl = |user_agent: &str, path: &str| -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--http1.1",
                "--max-time",
                "5",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
            ])
            .arg("--cacert")
            .arg(dir.join("ca.crt"))
            .arg("--cert")
            .arg(dir.join("node.crt"))
            .arg("--key")
            .arg(dir.join("node.key"))
            .args(["-H", &format!("User-Agent: {user_agent}")])
            .args(["-H", "Connection: Upgrade", "-H", "Upgrade: skiff-tunnel/1"])
            .arg(format!("{}{path}", c.url()))
            .bounded_output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let version: Value =
        serde_json::from_str(curl("curl", "/skiff/v1/version").rsplit_once('\n').unwrap().0).unwrap();
    let ours = env!("CARGO_PKG_VERSION");
    assert_eq!(version["version"], ours, "{version}");
    let newer = curl("skiff-agent/99.0.0", "/skiff/v1/tunnel");
    assert!(newer.ends_with("\n400"), "{newer}");
    let status: Value = serde_json::from_str(newer.rsplit_once('\n').unwrap().0).unwrap();
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(
        status["message"],
        format!(
            "skiff-agent 99.0.0 is newer than the control plane ({ours}): upgrade the control plane first"
        ),
    );
    let garbled = curl("skiff-agent/latest", "/skiff/v1/tunnel");
    assert!(
        garbled.ends_with("\n400") && garbled.contains("not versions"),
        "{garbled}"
    );
    // One minor version behind (0.0 for 0.1, 1.x for 2.0 and so on) is within the skew: the tunnel
    // opens (curl gives up waiting on the upgraded connection, having seen 101).
    let (major, minor) = {
        let mut parts = ours.split('.').map(|p| p.parse::<u64>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    };
    let behind = if minor > 0 {
        format!("{major}.{}.0", minor - 1)
    } else {
        format!("{major}.0.0")
    };
    let opened = curl(&format!("skiff-agent/{behind}"), "/skiff/v1/tunnel");
    assert!(opened.ends_with("\n101"), "{opened}");
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

/// A kubeconfig file for the cluster `c` with the credentials `user` (`kubectl config
/// set-credentials` flags), written as a user would with kubectl itself.
fn kubeconfig(c: &Control, dir: &std::path::Path, name: &str, user: &[&str]) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    let ca = c.data_dir().join("pki/ca.crt");
    let config = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&path)
            .arg("config")
            .args(args)
            .bounded_output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    config(&[
        "set-cluster",
        "skiff",
        "--server",
        &c.url(),
        &format!("--certificate-authority={}", ca.display()),
        "--embed-certs",
    ]);
    config(&[&["set-credentials", name], user].concat());
    config(&["set-context", name, "--cluster", "skiff", "--user", name]);
    config(&["use-context", name]);
    path
}

/// A client certificate for `user` in `groups` through the CertificateSigningRequest API (the
/// `kube-apiserver-client` signer), approved with `kubectl certificate approve`: (cert, key) files.
fn client_certificate(c: &Control, dir: &std::path::Path, user: &str, groups: &[&str]) -> (String, String) {
    let key = dir.join(format!("{user}.key"));
    let csr = dir.join(format!("{user}.csr"));
    let subject: String = std::iter::once(format!("/CN={user}"))
        .chain(groups.iter().map(|g| format!("/O={g}")))
        .collect();
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(["-subj", &subject])
        .bounded_output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use base64::Engine;
    let request = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&csr).unwrap());
    c.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {user}}}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n"
        ),
    );
    c.ok(&["certificate", "approve", user]);
    let mut cert = String::new();
    for _ in 0..200 {
        cert = c.ok(&["get", "csr", user, "-o", "jsonpath={.status.certificate}"]);
        if !cert.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cert = base64::engine::general_purpose::STANDARD
        .decode(cert.trim())
        .expect("a signed certificate");
    let cert_path = dir.join(format!("{user}.crt"));
    std::fs::write(&cert_path, cert).unwrap();
    (cert_path.display().to_string(), key.display().to_string())
}

#[test]
fn each_identity_may_do_what_its_kubeconfig_grants_and_no_more() {
    // Six kubeconfigs as operators make them: the admin's; an `edit` user in one namespace and a
    // cluster-wide `view` user, both with certificates from the CSR API; the node's own
    // certificate; a service account's token; a bootstrap token. `kubectl auth can-i` (and
    // `--list`) answers for each as its requests are then served.
    let prefix = unique_prefix();
    let c = Control::start_with(&["--cluster-cidr", &cluster_cidr(&prefix)]);
    let agent = Node::start(&c, &prefix);
    assert!(wait_for_ready(&c, &agent.name, "True"), "node never became Ready");
    let dir = tempfile::tempdir().unwrap();
    c.ok(&["create", "namespace", "team"]);
    let (edit_crt, edit_key) = client_certificate(&c, dir.path(), "erin", &["editors"]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "editors",
        "--clusterrole=edit",
        "--group=editors",
    ]);
    let (view_crt, view_key) = client_certificate(&c, dir.path(), "vic", &[]);
    c.ok(&[
        "create",
        "clusterrolebinding",
        "vic-views",
        "--clusterrole=view",
        "--user=vic",
    ]);
    let node_dir = agent.data_dir();
    let file = |f: &str| node_dir.join(f).display().to_string();
    c.ok(&["-n", "team", "create", "serviceaccount", "builder"]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "builder",
        "--clusterrole=edit",
        "--serviceaccount=team:builder",
    ]);
    let sa_token = c
        .ok(&["-n", "team", "create", "token", "builder"])
        .trim()
        .to_owned();
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bootstrap-token-abcdef, namespace: kube-system}\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: abcdef\n  token-secret: 0123456789abcdef\n  usage-bootstrap-authentication: 'true'\n  expiration: '2099-01-01T00:00:00Z'\n",
    );
    let path = |p: &std::path::Path| p.display().to_string();
    let configs = [
        ("admin", path(&c.kubeconfig())),
        (
            "edit",
            path(&kubeconfig(
                &c,
                dir.path(),
                "erin",
                &[
                    &format!("--client-certificate={edit_crt}"),
                    &format!("--client-key={edit_key}"),
                    "--embed-certs",
                ],
            )),
        ),
        (
            "view",
            path(&kubeconfig(
                &c,
                dir.path(),
                "vic",
                &[
                    &format!("--client-certificate={view_crt}"),
                    &format!("--client-key={view_key}"),
                    "--embed-certs",
                ],
            )),
        ),
        (
            "node",
            path(&kubeconfig(
                &c,
                dir.path(),
                "node",
                &[
                    &format!("--client-certificate={}", file("node.crt")),
                    &format!("--client-key={}", file("node.key")),
                    "--embed-certs",
                ],
            )),
        ),
        (
            "sa",
            path(&kubeconfig(
                &c,
                dir.path(),
                "builder",
                &[&format!("--token={sa_token}")],
            )),
        ),
        (
            "bootstrap",
            path(&kubeconfig(
                &c,
                dir.path(),
                "bootstrap",
                &["--token=abcdef.0123456789abcdef"],
            )),
        ),
    ];
    let run = |who: &str, args: &[&str]| {
        let config = &configs.iter().find(|(n, _)| *n == who).unwrap().1;
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(config)
            .args(args)
            .bounded_output()
            .unwrap()
    };
    let kubectl = |who: &str, args: &[&str]| {
        let out = run(who, args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // The answer (kubectl warns on stderr about a namespace given for a cluster-wide resource).
    let can = |who: &str, args: &[&str]| {
        String::from_utf8_lossy(&run(who, &[&["auth", "can-i"], args].concat()).stdout)
            .trim()
            .to_owned()
    };
    let whoami = |who: &str| {
        kubectl(
            who,
            &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        )
    };
    assert_eq!(whoami("admin"), "skiff-admin");
    assert_eq!(whoami("edit"), "erin");
    assert_eq!(whoami("view"), "vic");
    assert_eq!(whoami("node"), format!("system:node:{}", agent.name));
    assert_eq!(whoami("sa"), "system:serviceaccount:team:builder");
    assert_eq!(whoami("bootstrap"), "system:bootstrap:abcdef");

    // The admin: everything.
    let list = kubectl("admin", &["auth", "can-i", "--list"]);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["*.*", "[]", "[]", "[*]"]),
        "{list}"
    );
    // `edit` in its namespace: workloads and secrets, no RBAC; nothing elsewhere.
    for (who, label) in [("edit", "erin"), ("sa", "builder")] {
        assert_eq!(
            can(who, &["create", "deployments", "-n", "team"]),
            "yes",
            "{label}"
        );
        assert_eq!(can(who, &["get", "secrets", "-n", "team"]), "yes", "{label}");
        assert_eq!(
            can(who, &["create", "rolebindings", "-n", "team"]),
            "no",
            "{label}"
        );
        assert_eq!(
            can(who, &["create", "deployments", "-n", "default"]),
            "no",
            "{label}"
        );
        let list = kubectl(who, &["auth", "can-i", "--list", "-n", "team"]);
        let pods = list
            .lines()
            .find(|l| l.starts_with("pods "))
            .unwrap_or_else(|| panic!("{label}: {list}"));
        for verb in ["create", "delete", "get", "list", "patch", "update", "watch"] {
            assert!(pods.contains(verb), "{label}: {pods}");
        }
        assert!(
            !list.lines().any(|l| l.starts_with("roles.rbac")),
            "{label}: {list}"
        );
    }
    assert!(kubectl("edit", &["-n", "team", "create", "configmap", "made-by-erin"]).contains("created"));
    assert!(kubectl("edit", &["-n", "default", "create", "configmap", "x"]).contains("forbidden"));
    // `view` everywhere: reads, but not secrets, and no writes.
    assert_eq!(can("view", &["list", "pods", "--all-namespaces"]), "yes");
    assert_eq!(can("view", &["get", "secrets", "-n", "team"]), "no");
    assert_eq!(can("view", &["create", "pods", "-n", "team"]), "no");
    let list = kubectl("view", &["auth", "can-i", "--list", "-n", "team"]);
    let deployments = list
        .lines()
        .find(|l| l.starts_with("deployments.apps "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(deployments.ends_with("[get list watch]"), "{deployments}");
    assert!(kubectl("view", &["-n", "team", "get", "configmap", "made-by-erin"]).contains("made-by-erin"));
    assert!(kubectl("view", &["-n", "team", "delete", "configmap", "made-by-erin"]).contains("forbidden"));
    // The node: what the node authorizer allows, asked as its requests are decided.
    let node = agent.name.as_str();
    assert_eq!(can("node", &["get", "nodes"]), "yes");
    assert_eq!(can("node", &["patch", &format!("node/{node}")]), "yes");
    assert_eq!(can("node", &["patch", "node/someone-else"]), "no");
    assert_eq!(can("node", &["list", "secrets", "-n", "team"]), "no");
    assert_eq!(can("node", &["delete", "namespaces"]), "no");
    let list = kubectl("node", &["auth", "can-i", "--list"]);
    assert!(!list.contains("*.*"), "{list}");
    // The bootstrap token: ask for a certificate, nothing else.
    assert_eq!(can("bootstrap", &["create", "certificatesigningrequests"]), "yes");
    assert_eq!(can("bootstrap", &["list", "pods", "-n", "team"]), "no");
    let list = kubectl("bootstrap", &["auth", "can-i", "--list"]);
    assert!(
        list.lines().any(
            |l| l.starts_with("certificatesigningrequests.certificates.k8s.io ") && l.contains("create")
        ),
        "{list}"
    );
    assert!(!list.lines().any(|l| l.starts_with("pods ")), "{list}");

    // A forged token (another signature), an expired one and one of an account that no longer
    // exists are 401s.
    let (head, _) = sa_token.rsplit_once('.').unwrap();
    let forged = format!("{head}.{}", "A".repeat(86));
    let ca = c.data_dir().join("pki/ca.crt");
    let with_token = |token: &str| {
        let out = Command::new("kubectl")
            .args(["--kubeconfig=/dev/null", "--server", &c.url()])
            .arg(format!("--certificate-authority={}", ca.display()))
            .arg(format!("--token={token}"))
            .args(["get", "pods", "-n", "team"])
            .bounded_output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(with_token(&forged).contains("Unauthorized"), "forged");
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bootstrap-token-old123, namespace: kube-system}\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: old123\n  token-secret: 0123456789abcdef\n  usage-bootstrap-authentication: 'true'\n  expiration: '2020-01-01T00:00:00Z'\n",
    );
    let expired = with_token("old123.0123456789abcdef");
    assert!(expired.contains("Unauthorized"), "expired: {expired}");
    c.ok(&["-n", "team", "delete", "serviceaccount", "builder"]);
    assert!(with_token(&sa_token).contains("Unauthorized"), "deleted account");
}

#[test]
fn logs_are_json_lines_on_request_and_their_filter_changes_at_run_time() {
    // `--log-format json`: one JSON object per line. `PUT /debug/flags/v` (kubectl replace --raw)
    // sets the filter from a klog verbosity or a filter, on skiff-control and, through the node
    // proxy, on an agent.
    let prefix = unique_prefix();
    let c = Control::start_with(&["--cluster-cidr", &cluster_cidr(&prefix), "--log-format", "json"]);
    let agent = Node::start(&c, &prefix);
    let lines: Vec<Value> = c
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["fields"]["message"] == "skiff-control serving")
        .unwrap_or_else(|| panic!("{}", c.log()));
    assert_eq!(serving["level"], "INFO");
    assert!(
        serving["timestamp"].as_str().is_some() && serving["fields"]["listen"].is_string(),
        "{serving}"
    );

    let dir = tempfile::tempdir().unwrap();
    let put = |path: &str, body: &str| {
        let file = dir.path().join("body");
        std::fs::write(&file, body).unwrap();
        c.kubectl(&["replace", "--raw", path, "-f", &file.display().to_string()])
    };
    let ok = |path: &str, body: &str| {
        let out = put(path, body);
        assert!(
            out.status.success(),
            "{path} {body}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        ok("/debug/flags/v", "4").starts_with("successfully set klog.logging.verbosity to 4"),
        "control"
    );
    let changed = |log: &str, filter: &str| {
        log.lines()
            .any(|l| l.contains("log filter changed") && l.contains(filter))
    };
    assert!(changed(&c.log(), "debug,openraft=warn"), "{}", c.log());
    // At `warn`, the change itself (an info line) is no longer written.
    ok("/debug/flags/v", "warn");
    assert!(!changed(&c.log(), "\"warn\""), "{}", c.log());
    let refused = put("/debug/flags/v", "skiff_control=loud");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid filter"),
        "{refused:?}"
    );

    // The agent's, through the node proxy (update on nodes/proxy).
    let node = format!("/api/v1/nodes/{}/proxy/debug/flags/v", agent.name);
    let answer = ok(&node, "skiff_agent=debug,info");
    assert_eq!(
        answer.trim(),
        "successfully set the log filter to skiff_agent=debug,info"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !changed(&agent.log(), "skiff_agent=debug") {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A viewer may read the node's metrics but not change its logging.
    let viewer = c.kubectl(&[
        "--as=someone",
        "replace",
        "--raw",
        &node,
        "-f",
        &dir.path().join("body").display().to_string(),
    ]);
    assert!(
        !viewer.status.success() && String::from_utf8_lossy(&viewer.stderr).contains("forbidden"),
        "{viewer:?}"
    );
}

#[test]
fn preflight_checks_say_one_line_each_and_fail_on_a_taken_port() {
    let run = |port: u16| {
        skiff_tests::output_within(
            Command::new(agent_bin()).args(["preflight", "--port", &port.to_string()]),
            None,
            Duration::from_secs(60),
        )
    };
    let free = skiff_tests::free_port();
    let out = run(free);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(
        names,
        [
            "kernel",
            "config",
            "btf",
            "cgroups",
            "overlayfs",
            "bpffs",
            "port",
            "clock",
            "kube-proxy"
        ],
        "{text}"
    );
    assert!(
        text.lines()
            .all(|l| ["ok ", "warn ", "FAIL "].iter().any(|p| l.starts_with(p))),
        "{text}"
    );
    assert!(
        text.contains(&format!("ok   port       {free}/tcp is free")),
        "{text}"
    );
    // A port someone holds: the check fails, names the holder, and the exit status says so.
    let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let out = run(taken);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("FAIL port       {taken}/tcp is in use by ")),
        "{text}"
    );
}

/// `deploy/agent-daemonset.yaml` rolls new agent binaries out through `kubectl apply`: its pod
/// hands its image's binary to the node's agent, which re-executes in place (same pid), and the
/// pod is Ready once the agent runs it; a second version rolls over the first. A workload pod
/// runs on throughout, never restarted, and still answers `kubectl exec`.
#[test]
fn the_agent_daemonset_rolls_new_binaries_out_in_place_and_pods_keep_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = stripped(&agent_bin(), dir.path());
    // Each version is the binary with a different trailer (ELF ignores it): a different file that
    // runs the same.
    let version = |n: u32| {
        let mut bytes = v1.clone();
        bytes.extend_from_slice(format!("\nskiff-test-version-{n}\n").as_bytes());
        (n.to_string(), bytes)
    };
    roll_agent_daemonset(dir.path(), &v1, &[version(2), version(3)], |_, _| {});
}

/// The version skew, for real: the previous release's agent (one minor version older, built by
/// `cargo xtask test` from its tagged commit) joins this control plane, runs a pod, and rolls
/// over to this build's agent in place through the DaemonSet; the pod its shims started keeps
/// running under the new agent. The node reports each agent's version while it runs.
#[test]
fn the_previous_release_agent_works_and_upgrades_in_place_under_a_running_pod() {
    let (previous, path) = skiff_tests::node::previous_release_agent();
    let ours = env!("CARGO_PKG_VERSION");
    let minor = |v: &str| -> (u64, u64) {
        let mut parts = v.split('.').map(|p| p.parse::<u64>().expect("a numeric version"));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    let (ours_major, ours_minor) = minor(ours);
    assert_eq!(
        minor(&previous),
        (ours_major, ours_minor - 1),
        "xtask/previous-release names the release one minor version before this one ({ours})"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let old = stripped(&path, dir.path());
    let new = stripped(&agent_bin(), &dir.path().join("new"));
    let runtime_version = |k: &skiff_tests::node::Cluster| {
        k.c.ok(&[
            "get",
            "node",
            &k.node.name,
            "-o",
            "jsonpath={.status.nodeInfo.containerRuntimeVersion}",
        ])
    };
    roll_agent_daemonset(dir.path(), &old, &[(ours.to_owned(), new)], |k, step| {
        let want = if step == 0 { &previous } else { ours };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while runtime_version(k) != format!("skiff://{want}") {
            assert!(
                std::time::Instant::now() < deadline,
                "the node reports {} with the agent of {want} running",
                runtime_version(k)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}

/// `bin` without debug sections (smaller images), copied into `dir`; its bytes.
fn stripped(bin: &std::path::Path, dir: &std::path::Path) -> Vec<u8> {
    std::fs::create_dir_all(dir).expect("a directory for the stripped agent");
    let out = dir.join("skiff-agent");
    let strip = Command::new("strip")
        .arg("--strip-debug")
        .arg(bin)
        .arg("-o")
        .arg(&out)
        .bounded_output()
        .expect("running strip (binutils)");
    assert!(strip.status.success(), "{strip:?}");
    std::fs::read(&out).expect("the stripped agent")
}

/// Starts a cluster whose agent runs `first` (from a copy in `dir`, which the upgrades replace) with
/// a workload pod, then rolls each of `next` (an image tag, the binary) out through the DaemonSet
/// manifest: each time the agent re-executes the new binary in place (same pid), the handover pod
/// of the old version goes, and the workload runs on, never restarted, still answering `kubectl
/// exec`. `check(cluster, n)` runs with the first binary running (0) and after each roll (1..).
fn roll_agent_daemonset(
    dir: &std::path::Path,
    first: &[u8],
    next: &[(String, Vec<u8>)],
    check: impl Fn(&skiff_tests::node::Cluster, usize),
) {
    use skiff_tests::node::Cluster;
    // The agent runs from a copy, which the upgrade replaces.
    let bin = dir.join("skiff-agent");
    std::fs::write(&bin, first).expect("the agent's copy");
    let mut perms = std::fs::metadata(&bin).expect("the agent's copy").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&bin, perms).expect("the agent's copy executable");
    let k = Cluster::start_with_agent(&bin);
    let pid = k.node.pid().expect("the agent runs");
    let data = k.node.data_dir();
    let pid_file = std::fs::read_to_string(data.join("agent.pid")).expect("the agent's pid file");
    assert_eq!(pid_file.trim(), pid.to_string());

    let image = k.registry.busybox();
    k.c.ok(&["run", "workload", "--image", &image, "--", "sleep", "3600"]);
    let container_id = || {
        k.c.ok(&["get", "pod", "workload", "-o", "jsonpath={.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount} {.status.phase}"])
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !container_id().ends_with(" 0 Running") {
        assert!(
            std::time::Instant::now() < deadline,
            "the workload never ran: {}",
            k.node.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let before = container_id();
    check(&k, 0);

    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent-daemonset.yaml"),
    )
    .expect("deploy/agent-daemonset.yaml");
    let shipped = format!(
        "image: registry.example.com/skiff/agent:{}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        manifest.contains(&shipped),
        "the manifest ships this version: {shipped}"
    );
    for (n, (tag, bytes)) in next.iter().enumerate() {
        let images = tempfile::tempdir().expect("tempdir");
        let archive = skiff_tests::image::busybox_oci_archive_with_files(
            images.path(),
            &["PATH=/usr/local/bin:/bin"],
            &[("usr/local/bin/skiff-agent", bytes)],
        );
        let name = format!("skiff/agent:{tag}");
        k.registry.push(&archive, &name);
        let reference = format!("{}/{name}", k.registry.host);
        let yaml = manifest
            .replace(
                &format!("registry.example.com/skiff/agent:{}", env!("CARGO_PKG_VERSION")),
                &reference,
            )
            .replace("/var/lib/skiff/agent", &data.display().to_string());
        k.c.ok_stdin(&["apply", "-f", "-"], &yaml);
        let rolled = k.c.ok(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "daemonset/skiff-agent",
            "--timeout=180s",
        ]);
        assert!(rolled.contains("successfully rolled out"), "{rolled}");
        let exe = std::fs::read(format!("/proc/{pid}/exe")).expect("the agent still runs, same pid");
        assert!(
            exe == *bytes,
            "version {tag}: the agent (pid {pid}) does not run the new binary: {}",
            k.node.log()
        );
        assert!(
            std::fs::read(&bin).expect("the agent's binary") == *bytes,
            "the binary on disk is replaced"
        );
        // The old version's pod goes (its grace period is short).
        let pods = || {
            k.c.ok(&[
                "-n",
                "kube-system",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=skiff-agent",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ])
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while pods() != reference {
            assert!(
                std::time::Instant::now() < deadline,
                "one handover pod, of the new version: {}",
                pods()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        assert_eq!(container_id(), before, "the workload was not restarted");
        assert_eq!(
            k.c.ok(&["exec", "workload", "--", "echo", "still here"]),
            "still here\n"
        );
        check(&k, n + 1);
    }
    assert!(wait_for_ready(&k.c, &k.node.name, "True"), "the node stays Ready");
    // The shims the first image started are the new image's children: it reaps them, so the pod
    // stops and leaves no zombie.
    k.c.ok(&["delete", "pod", "workload", "--timeout=60s"]);
    let zombies = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str())
            })
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while zombies() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent leaves zombie children"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
