//! Services through the agent's eBPF socket hooks: a ClusterIP reached from a pod lands on every
//! ready replica; with no endpoints, `connect()` is refused; scaling up brings the new backends in;
//! `bpftool` dumps the pinned maps with field names. Real kubectl, real pods from a real registry.
//!
//! Cgroups: this machine is hybrid; the agent places each pod in a cgroup2 directory of its own
//! subtree (`/sys/fs/cgroup/unified/<prefix>/...`), where the hooks are attached.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::Control;
use skiff_tests::image::Registry;
use skiff_tests::node::{Node, cluster_cidr, unique_prefix};

struct Cluster {
    // Field order is drop order: the node goes first, while the control plane still answers.
    node: Node,
    registry: Registry,
    c: Control,
}

fn cluster() -> Cluster {
    let prefix = unique_prefix();
    let c = Control::start_with(&["--cluster-cidr", &cluster_cidr(&prefix)]);
    let registry = Registry::start_with_busybox();
    let node = Node::start(&c, &prefix);
    Cluster { node, registry, c }
}

impl Cluster {
    fn wait(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !check() {
            if Instant::now() > deadline {
                let pods = self.c.kubectl(&["get", "pods", "-o", "wide"]);
                panic!(
                    "{what} never happened.\npods:\n{}\nagent log:\n{}",
                    String::from_utf8_lossy(&pods.stdout),
                    self.node.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs a shell command in the client pod; returns stdout and stderr together.
    fn in_client(&self, script: &str) -> String {
        let out = self.c.kubectl(&["exec", "client", "--", "sh", "-c", script]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn ready_pod_names(&self) -> BTreeSet<String> {
        let out = self.c.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Host names that answer through the service over `n` requests.
    fn answers(&self, vip: &str, n: usize) -> BTreeSet<String> {
        let script = format!("for i in $(seq {n}); do timeout 5 wget -q -O - http://{vip}/ 2>&1; done");
        self.in_client(&script)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

fn bpftool_dump(map: &Path) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(map)
        .output()
        .expect("running bpftool (package bpftool)");
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        map.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON")
}

fn octets(ip: &str) -> Value {
    let ip: std::net::Ipv4Addr = ip.parse().expect("an IPv4 address");
    serde_json::json!(ip.octets())
}

#[test]
fn cluster_ip_balances_refuses_without_endpoints_and_follows_scaling() {
    let k = cluster();
    let image = k.registry.busybox();
    k.c.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {image}
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: sh
    image: {image}
    command: ["sleep", "3600"]
"#
        ),
    );
    let vip =
        k.c.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    k.wait("3 ready replicas and a running client", || {
        k.ready_pod_names().len() == 3
            && k.c
                .ok(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"])
                == "Running"
    });

    // Traffic lands on every replica (30 requests, each replica picked at random).
    let replicas = k.ready_pod_names();
    k.wait("every replica answering through the service", || {
        k.answers(&vip, 30) == replicas
    });

    // The pinned maps dump with field names: the service port and its three backends.
    let services = bpftool_dump(&k.node.bpf_dir().join("services_v1"));
    let entry = services
        .iter()
        .find(|e| e["formatted"]["key"]["addr"] == octets(&vip) && e["formatted"]["key"]["port"] == 80)
        .unwrap_or_else(|| panic!("no services_v1 entry for {vip}:80 in {services:#?}"));
    assert_eq!(entry["formatted"]["key"]["protocol"], 6, "{entry:#}");
    assert_eq!(entry["formatted"]["value"]["count"], 3, "{entry:#}");
    let id = entry["formatted"]["value"]["id"].clone();
    let backends: BTreeSet<String> = bpftool_dump(&k.node.bpf_dir().join("backends_v1"))
        .iter()
        .filter(|e| e["formatted"]["key"]["id"] == id)
        .map(|e| {
            let b = &e["formatted"]["value"];
            format!("{}:{}", b["addr"], b["port"])
        })
        .collect();
    let out = k.c.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let expected: BTreeSet<String> = out
        .split_whitespace()
        .map(|ip| format!("{}:8080", octets(ip)))
        .collect();
    assert_eq!(backends, expected);

    // No endpoints: connecting is refused right away (as kube-proxy's reject rules do).
    k.c.ok(&["scale", "deployment", "web", "--replicas=0"]);
    k.wait("the service refusing connections", || {
        k.in_client(&format!(
            "timeout 5 wget -q -O - http://{vip}/ 2>&1; echo exit=$?"
        ))
        .contains("Connection refused")
    });

    // Scaling up again: the new replicas (new names, new addresses) serve.
    k.c.ok(&["scale", "deployment", "web", "--replicas=2"]);
    k.wait("2 new ready replicas", || k.ready_pod_names().len() == 2);
    let replicas = k.ready_pod_names();
    k.wait("the new replicas answering through the service", || {
        k.answers(&vip, 20) == replicas
    });
}
