//! Two nodes, each in a network namespace of its own, joined by a test network (`Fabric`) and
//! sharing one control plane: pods on different nodes reach each other over the routes the agents
//! program; a ClusterIP service load-balances across nodes from a pod on each node; the control
//! plane reaches each agent (logs, exec) only through the agent's tunnel, since the nodes'
//! addresses live on the test network that the control plane is not on. NodePorts and an external
//! IP are reached from outside every node, with both external traffic policies. Every test runs
//! against both data planes.

use skiff_tests::BoundedOutput;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::node::{MultiCluster, Proxy, bpftool_dump};

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

/// What `n` requests to `url` from outside every node (the fabric's namespace) were answered with
/// (addresses as IPv4: busybox httpd's CGI shows IPv4 clients v4-mapped).
fn outside(k: &MultiCluster, url: &str, n: usize) -> BTreeSet<String> {
    let script = format!("for i in $(seq {n}); do timeout 5 busybox wget -q -O - {url} 2>&1; done");
    let out = k
        .fabric
        .command("sh")
        .args(["-c", &script])
        .bounded_output()
        .expect("running wget in the fabric's namespace");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let l = l.trim();
            l.strip_prefix("[::ffff:")
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(l)
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect()
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
    let external_ip = k.fabric.spare_ip(200);
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
        command: ["sh", "-c", "mkdir -p /www/cgi-bin && hostname > /www/index.html && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/peer && chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www"]
        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}, {{name: dgram, port: 53, protocol: UDP, targetPort: 5353}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-np}}
spec:
  type: NodePort
  selector: {{app: web}}
  externalIPs: [{external_ip}]
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-local}}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
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
    let replicas_on = |node: &str| -> BTreeSet<String> {
        web.iter()
            .filter(|p| p["spec"]["nodeName"] == node)
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };

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

    // From outside every node (the fabric's own address): a NodePort on each node's address lands
    // on every replica under externalTrafficPolicy Cluster, masqueraded (the replica sees a node,
    // not the client); under Local only on that node's replicas, which see the client's address.
    let node_port = |svc: &str| {
        k.c.ok(&["get", "service", svc, "-o", "jsonpath={.spec.ports[0].nodePort}"])
    };
    let (np, local_np) = (node_port("web-np"), node_port("web-local"));
    let client = k.fabric.client_ip();
    for n in &k.nodes {
        wait(
            &k,
            &format!("every replica answering NodePort {np} of {}", n.name),
            || outside(&k, &format!("http://{}:{np}/", n.ip), 30) == replicas,
        );
        let peers = outside(&k, &format!("http://{}:{np}/cgi-bin/peer", n.ip), 6);
        assert!(
            !peers.is_empty() && !peers.contains(&client),
            "masqueraded under Cluster: {peers:?}"
        );
        let local = replicas_on(&n.name);
        wait(
            &k,
            &format!("{}'s replicas answering its Local NodePort", n.name),
            || outside(&k, &format!("http://{}:{local_np}/", n.ip), 20) == local,
        );
        assert_eq!(
            outside(&k, &format!("http://{}:{local_np}/cgi-bin/peer", n.ip), 3),
            BTreeSet::from([client.clone()]),
            "the client's address kept under Local"
        );
    }

    if proxy == Proxy::Ebpf {
        // The translated connections, with named fields: from the client to node A's NodePort.
        let flows = bpftool_dump(&a.bpf_dir().join("nat_flows_v1"));
        let octets = |ip: &str| -> Vec<u64> { ip.split('.').filter_map(|o| o.parse().ok()).collect() };
        assert!(
            flows.iter().any(|f| {
                let f = &f["formatted"];
                f["key"]["client"] == serde_json::json!(octets(&client))
                    && f["key"]["peer"] == serde_json::json!(octets(&a.ip))
                    && f["key"]["peer_port"].as_u64().map(|p| p.to_string()) == Some(np.clone())
                    && f["value"]["backend"]["port"] == 8080
            }),
            "{flows:#?}"
        );
    }

    // An external IP, routed to node A by the network, lands on every replica.
    k.fabric.route(&external_ip, &a.ip);
    wait(&k, "every replica answering the external IP", || {
        outside(&k, &format!("http://{external_ip}/"), 30) == replicas
    });

    // internalTrafficPolicy Local: each client reaches only its own node's replicas.
    let local_vip =
        k.c.ok(&["get", "service", "web-local", "-o", "jsonpath={.spec.clusterIP}"]);
    for (client, node) in [("client-a", a), ("client-b", b)] {
        let local = replicas_on(&node.name);
        assert_eq!(
            answers(&k, client, &format!("http://{local_vip}/"), 20),
            local,
            "{client} through an internalTrafficPolicy Local service"
        );
    }

    // Scaled to zero: refused on both nodes, from pods and from outside.
    k.c.ok(&["scale", "deployment", "web", "--replicas=0"]);
    wait(&k, "the NodePort refusing outside clients", || {
        let url = format!("http://{}:{np}/", a.ip);
        let out = k
            .fabric
            .command("sh")
            .args([
                "-c",
                &format!("timeout 5 busybox wget -q -O - {url} 2>&1; echo exit=$?"),
            ])
            .bounded_output()
            .expect("running wget in the fabric's namespace");
        String::from_utf8_lossy(&out.stdout).contains("Connection refused")
    });
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
    // Its cluster IP routed to node A from outside every node: the packets bypass the socket hooks,
    // and the packet path refuses them too (a TCP reset, an ICMP port unreachable for UDP).
    k.fabric.route(&vip, &a.ip);
    let mut last = String::new();
    wait(&k, "the cluster IP refusing outside clients", || {
        let out = k
            .fabric
            .command("python3")
            .args(["-c", REFUSED_PROBE, &vip])
            .bounded_output()
            .expect("running python3 in the fabric's namespace");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        last == "tcp refused\nudp refused\n"
    });
}

/// TCP to ADDR:80 and UDP to ADDR:53 (a connected socket, which reports ICMP errors): how each ends.
const REFUSED_PROBE: &str = r#"
import socket, sys
addr = sys.argv[1]
try:
    socket.create_connection((addr, 80), timeout=3)
    print("tcp connected")
except ConnectionRefusedError:
    print("tcp refused")
except OSError as e:
    print("tcp", e)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.connect((addr, 53))
try:
    u.send(b"x")
    u.recv(10)
    print("udp answered")
except ConnectionRefusedError:
    print("udp refused")
except OSError as e:
    print("udp", e)
"#;
