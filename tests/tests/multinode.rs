//! Two nodes, each in a network namespace of its own, joined by a test network (`Fabric`) and
//! sharing one control plane: pods on different nodes reach each other over the routes the agents
//! program; a ClusterIP service load-balances across nodes from a pod on each node; the control
//! plane reaches each agent (logs, exec) only through the agent's tunnel, since the nodes'
//! addresses live on the test network that the control plane is not on. Every test runs against
//! both data planes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::node::{MultiCluster, Proxy};

fn wait(k: &MultiCluster, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        if Instant::now() > deadline {
            let pods = k.c.kubectl(&["get", "pods", "-o", "wide"]);
            let logs: Vec<String> = k.nodes.iter().map(|n| n.log()).collect();
            panic!(
                "{what} never happened.\npods:\n{}\nagent logs:\n{}",
                String::from_utf8_lossy(&pods.stdout),
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn pods(k: &MultiCluster, selector: &str) -> Vec<Value> {
    let out = k.c.kubectl(&["get", "pods", "-l", selector, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn ready(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
        && p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// What a shell `script` run in `pod` prints on stdout.
fn in_pod(k: &MultiCluster, pod: &str, script: &str) -> String {
    let out = k.c.kubectl(&["exec", pod, "--", "sh", "-c", script]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Host names answering `url` from pod `client` over `n` requests.
fn answers(k: &MultiCluster, client: &str, url: &str, n: usize) -> BTreeSet<String> {
    let script = format!("for i in $(seq {n}); do timeout 5 wget -q -O - {url} 2>&1; done");
    in_pod(k, client, &script)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn services_balance_across_nodes_ebpf() {
    services_balance_across_nodes(Proxy::Ebpf);
}

#[test]
fn services_balance_across_nodes_nftables() {
    services_balance_across_nodes(Proxy::Nftables);
}

fn services_balance_across_nodes(proxy: Proxy) {
    let k = MultiCluster::start(2, proxy);
    let image = k.registry.busybox();
    let (a, b) = (&k.nodes[0], &k.nodes[1]);
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
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: web}}}}}}
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
metadata: {{name: client-a, labels: {{role: client}}}}
spec:
  nodeName: {node_a}
  terminationGracePeriodSeconds: 0
  containers:
  - {{name: sh, image: {image}, command: ["sh", "-c", "echo client on $(hostname); exec sleep 3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client-b, labels: {{role: client}}}}
spec:
  nodeName: {node_b}
  terminationGracePeriodSeconds: 0
  containers:
  - {{name: sh, image: {image}, command: ["sh", "-c", "echo client on $(hostname); exec sleep 3600"]}}
"#,
            node_a = a.name,
            node_b = b.name,
        ),
    );
    wait(&k, "3 ready replicas and 2 running clients", || {
        pods(&k, "app=web").iter().filter(|p| ready(p)).count() == 3
            && pods(&k, "role=client")
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count()
                == 2
    });
    let web = pods(&k, "app=web");
    let nodes: BTreeSet<&str> = web
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    assert_eq!(nodes.len(), 2, "the replicas spread over both nodes");
    let replicas: BTreeSet<String> = web
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();

    // The nodes report their addresses on the test network, which the control plane (on the
    // host's loopback) cannot reach: logs and exec come through the agents' tunnels.
    for n in &k.nodes {
        let ip = k.c.ok(&[
            "get",
            "node",
            &n.name,
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
        ]);
        assert_eq!(ip, n.ip);
        assert!(ip.starts_with("172.31."), "{ip}");
    }
    for client in ["client-a", "client-b"] {
        let out = k.c.kubectl(&["logs", client]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("client on {client}"),
            "{}\nagent logs:\n{}",
            String::from_utf8_lossy(&out.stderr),
            k.nodes
                .iter()
                .map(|n| n.log())
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
    }

    // Pod to pod across nodes: each client reaches every replica at the replica's own address.
    for client in ["client-a", "client-b"] {
        for p in &web {
            let ip = p["status"]["podIP"].as_str().expect("a pod IP");
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let got = answers(&k, client, &format!("http://{ip}:8080/"), 1);
            assert_eq!(
                got,
                BTreeSet::from([name.to_string()]),
                "{client} to {name} at {ip}"
            );
        }
    }

    // The service from a pod on each node lands on all three replicas, on both nodes.
    let vip =
        k.c.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    for client in ["client-a", "client-b"] {
        wait(
            &k,
            &format!("every replica answering {client} through the service"),
            || answers(&k, client, &format!("http://{vip}/"), 30) == replicas,
        );
    }

    // Each node's pods resolve the service through their own node's DNS.
    for client in ["client-a", "client-b"] {
        wait(&k, &format!("{client} resolving the service"), || {
            let out = in_pod(&k, client, "nslookup web.default.svc.cluster.local 2>&1");
            let resolved = out.contains(&format!("Address: {vip}"));
            if !resolved {
                eprintln!("{client}: {out}");
            }
            resolved
        });
    }

    // Scaled to zero: refused on both nodes.
    k.c.ok(&["scale", "deployment", "web", "--replicas=0"]);
    for client in ["client-a", "client-b"] {
        wait(&k, &format!("the service refusing {client}"), || {
            in_pod(
                &k,
                client,
                &format!("timeout 5 wget -q -O - http://{vip}/ 2>&1; echo exit=$?"),
            )
            .contains("Connection refused")
        });
    }
}
