//! Services, through each data plane (eBPF socket hooks, nftables): a ClusterIP reached from a pod
//! lands on every ready replica; with no endpoints, `connect()` is refused; scaling up brings the
//! new backends in; `bpftool` dumps the pinned maps with field names, `nft` lists the table. Real
//! kubectl, real pods from a real registry; each node in a network namespace of its own.
//!
//! Cgroups: this machine is hybrid; the agent places each pod in a cgroup2 directory of its own
//! subtree (`/sys/fs/cgroup/unified/<prefix>/...`), where the eBPF hooks are attached.

use skiff_tests::BoundedOutput;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::node::{Cluster, Proxy, bpftool_dump};

/// Helpers on the shared fixture for this suite.
trait ServiceCluster {
    fn wait(&self, what: &str, check: impl FnMut() -> bool);
    /// Runs a shell command in the client pod; returns stdout and stderr together.
    fn in_client(&self, script: &str) -> String;
    fn ready_pod_names(&self) -> BTreeSet<String>;
    /// Host names that answer through the service over `n` requests.
    fn answers(&self, vip: &str, n: usize) -> BTreeSet<String>;
}

impl ServiceCluster for Cluster {
    fn wait(&self, what: &str, mut check: impl FnMut() -> bool) {
        // Generous: the suite also runs in the cgroup v2 machine, on an emulated CPU.
        let deadline = Instant::now() + Duration::from_secs(180);
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

    fn answers(&self, vip: &str, n: usize) -> BTreeSet<String> {
        let script = format!("for i in $(seq {n}); do timeout 5 wget -q -O - http://{vip}/ 2>&1; done");
        self.in_client(&script)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// Connects to ADDR PORT; prints the peer address the socket reports, then the HTTP body.
const PEER_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(*s.getpeername())
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    data += d
print(data.split(b"\r\n\r\n", 1)[1].decode().strip())
"#;

/// Sends a datagram to ADDR PORT (from source port SPORT if given); prints the address the answer
/// comes from, then the answer.
const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
if len(sys.argv) > 3:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", int(sys.argv[3])))
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
data, peer = s.recvfrom(100)
print(*peer, data.decode())
"#;

/// The programs attached to a cgroup, as (program id, attach type, name).
fn hooks(cgroup: &Path) -> BTreeSet<(u64, String, String)> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .bounded_output()
        .expect("running bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let text = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (h["id"].as_u64().unwrap_or(0), text("attach_type"), text("name"))
        })
        .collect()
}

fn octets(ip: &str) -> Value {
    let ip: std::net::Ipv4Addr = ip.parse().expect("an IPv4 address");
    serde_json::json!(ip.octets())
}

/// The pinned maps dump with field names: the service port and its backends.
fn ebpf_programs_service(k: &Cluster, vip: &str, pod_ips: &BTreeSet<String>) {
    let services = bpftool_dump(&k.node.bpf_dir().join("services_v1"));
    let entry = services
        .iter()
        .find(|e| e["formatted"]["key"]["addr"] == octets(vip) && e["formatted"]["key"]["port"] == 80)
        .unwrap_or_else(|| panic!("no services_v1 entry for {vip}:80 in {services:#?}"));
    assert_eq!(entry["formatted"]["key"]["protocol"], 6, "{entry:#}");
    assert_eq!(entry["formatted"]["value"]["count"], pod_ips.len(), "{entry:#}");
    let id = entry["formatted"]["value"]["id"].clone();
    let backends: BTreeSet<String> = bpftool_dump(&k.node.bpf_dir().join("backends_v1"))
        .iter()
        .filter(|e| e["formatted"]["key"]["id"] == id)
        .map(|e| {
            let b = &e["formatted"]["value"];
            format!("{}:{}", b["addr"], b["port"])
        })
        .collect();
    let expected: BTreeSet<String> = pod_ips.iter().map(|ip| format!("{}:8080", octets(ip))).collect();
    assert_eq!(backends, expected);
}

/// The node's `inet skiff` table sends the service port to the shared chain for its endpoint count,
/// which DNATs through the `endpoints` map.
fn nftables_programs_service(k: &Cluster, vip: &str, pod_ips: &BTreeSet<String>) {
    let table = k.node.ok_in_netns(&["nft", "list", "table", "inet", "skiff"]);
    let chain = format!("pick-{}", pod_ips.len());
    assert!(
        table.contains(&format!("{vip} . tcp . 80 : goto {chain}")),
        "{table}"
    );
    let listed = k
        .node
        .ok_in_netns(&["nft", "list", "chain", "inet", "skiff", &chain]);
    assert!(
        listed.contains(&format!("numgen random mod {} map @endpoints", pod_ips.len())),
        "{listed}"
    );
    let endpoints = k
        .node
        .ok_in_netns(&["nft", "list", "map", "inet", "skiff", "endpoints"]);
    for ip in pod_ips {
        assert!(
            endpoints.contains(&format!(": {ip} . 8080")),
            "{ip} in {endpoints}"
        );
    }
}

#[test]
fn cluster_ip_balances_refuses_without_endpoints_and_follows_scaling_ebpf() {
    cluster_ip_balances_refuses_without_endpoints_and_follows_scaling(Proxy::Ebpf);
}

#[test]
fn cluster_ip_balances_refuses_without_endpoints_and_follows_scaling_nftables() {
    cluster_ip_balances_refuses_without_endpoints_and_follows_scaling(Proxy::Nftables);
}

fn cluster_ip_balances_refuses_without_endpoints_and_follows_scaling(proxy: Proxy) {
    let mut k = Cluster::start_in_netns(proxy);
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

    let pod_ips: BTreeSet<String> =
        k.c.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    match proxy {
        Proxy::Ebpf => ebpf_programs_service(&k, &vip, &pod_ips),
        Proxy::Nftables => nftables_programs_service(&k, &vip, &pod_ips),
    }

    // A connected socket reports the service, not the backend, as its peer (getpeername4): a
    // client in the node's pods cgroup.
    let out = k
        .node
        .in_pods_cgroup("python3")
        .args(["-c", PEER_CLIENT, &vip, "80"])
        .bounded_output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(format!("{vip} 80").as_str()), "{out:?}");
    assert!(replicas.contains(lines.next().unwrap_or_default()), "{out:?}");

    // sessionAffinity: ClientIP keeps a client on one replica.
    k.c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  ports: [{name: http, port: 80, targetPort: http}]\n",
    );
    let sticky =
        k.c.ok(&["get", "service", "sticky", "-o", "jsonpath={.spec.clusterIP}"]);
    k.wait("the sticky service answering", || {
        k.answers(&sticky, 1).len() == 1
    });
    assert_eq!(k.answers(&sticky, 20).len(), 1, "session affinity broke");

    // An agent restart replaces the hooks (new programs attached, the old links unpinned, never
    // both left behind) or rebuilds the table, and the service keeps working.
    if proxy == Proxy::Ebpf {
        let before = hooks(&k.node.pods_cgroup2());
        assert_eq!(before.len(), 4, "{before:?}");
        k.node.restart();
        let mut seen = BTreeSet::new();
        k.wait("the restarted agent's hooks replacing the old ones", || {
            let now = hooks(&k.node.pods_cgroup2());
            if now != seen {
                eprintln!("hooks attached now: {now:?}");
                seen = now.clone();
            }
            now.len() == 4 && now.is_disjoint(&before)
        });
    } else {
        k.node.restart();
    }
    k.wait("the replicas answering after the restart", || {
        let answers = k.answers(&vip, 30);
        if answers != replicas {
            eprintln!("after the restart, answers {answers:?}, replicas {replicas:?}");
        }
        answers == replicas
    });

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

    // Hairpin: a replica reaching its own service lands on itself too (nftables masquerades that
    // connection, or the answer would bypass the translation back).
    for replica in &replicas {
        let script = format!("for i in $(seq 20); do timeout 5 wget -q -O - http://{vip}/; done");
        let answers: BTreeSet<String> =
            k.c.ok(&["exec", replica, "--", "sh", "-c", &script])
                .lines()
                .map(str::to_string)
                .collect();
        assert_eq!(&answers, &replicas, "from {replica}");
    }

    // The agent's metrics, through the node proxy as Prometheus scrapes them, under kube-proxy's
    // and the kubelet's names: syncs, their latency from the endpoints controller's trigger
    // times (`endpoints.kubernetes.io/last-change-trigger-time` on the slices it updates), what
    // the data plane holds, pod starts.
    let text = k.c.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/metrics", k.node.name),
    ]);
    let f = skiff_tests::prometheus_families(&k.c.kubeconfig(), &text);
    let sample = |family: &str, name: &str, want: &[(&str, &str)]| {
        skiff_tests::prometheus_sample(&f, family, name, want)
            .unwrap_or_else(|| panic!("no {name} {want:?} in {text}"))
    };
    let mode = match proxy {
        Proxy::Nftables => "nftables",
        _ => "ebpf",
    };
    assert!(
        sample(
            "skiff_proxy_map_entries",
            "skiff_proxy_map_entries",
            &[("mode", mode), ("map", "services")]
        ) >= 1.0
    );
    assert!(
        sample(
            "skiff_proxy_map_entries",
            "skiff_proxy_map_entries",
            &[("mode", mode), ("map", "backends")]
        ) >= 2.0
    );
    for histogram in [
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "kubeproxy_network_programming_duration_seconds",
        "kubelet_pod_start_duration_seconds",
    ] {
        assert_eq!(f[histogram]["type"], "histogram", "{text}");
        assert!(
            sample(histogram, &format!("{histogram}_count"), &[]) >= 1.0,
            "{histogram}: {text}"
        );
    }
    assert!(
        sample(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    assert!(
        sample(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            &[]
        ) >= 1.0
    );
    assert!(
        sample("kubelet_running_pods", "kubelet_running_pods", &[]) >= 3.0,
        "{text}"
    );

    // `skiff-agent inspect` lists what kubectl shows, from the node's side.
    let inspect = |what: &str| {
        let out = skiff_tests::output_within(
            Command::new(skiff_tests::node::agent_bin()).args([
                "inspect",
                what,
                "--data-dir",
                &k.node.data_dir().display().to_string(),
                "--cgroup-root",
                k.node.cgroup_root(),
            ]),
            None,
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "inspect {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let services = inspect("services");
    let row = services
        .lines()
        .find(|l| l.starts_with("default/web "))
        .unwrap_or_else(|| panic!("{services}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[1..4],
        [format!("{vip}:80/TCP").as_str(), "2", mode][..],
        "{services}"
    );
    let backends = inspect("backends");
    assert_eq!(
        backends.lines().filter(|l| l.starts_with("default/web ")).count(),
        2,
        "{backends}"
    );
    let pods = inspect("pods");
    for replica in &replicas {
        assert!(
            pods.lines().any(|l| l.starts_with("default ")
                && l.contains(&format!(" {replica} "))
                && l.contains(" 1/1 ")),
            "{replica}: {pods}"
        );
    }
    let containers = inspect("containers");
    for replica in &replicas {
        let row = containers
            .lines()
            .find(|l| l.starts_with(&format!("default/{replica} ")))
            .unwrap_or_else(|| panic!("{replica}: {containers}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1..3], ["httpd", "Running"], "{containers}");
        assert!(cells[4].parse::<u32>().is_ok(), "a PID: {row}");
        assert!(Path::new(cells[6]).exists(), "the log file: {row}");
    }
    let images = inspect("images");
    assert!(
        images
            .lines()
            .skip(1)
            .any(|l| image.starts_with(l.split_whitespace().next().unwrap_or("-"))),
        "{image}: {images}"
    );
}

/// A UDP echo server on ADDR PORT, answering with TAG appended: answers at most 500 datagrams,
/// stops after 30 s of silence.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(30)
for _ in range(500):
    try:
        data, peer = s.recvfrom(100)
    except socket.timeout:
        break
    s.sendto(data + sys.argv[3].encode(), peer)
"#;

#[test]
fn udp_services_answer_from_the_service_address_and_leave_removed_backends_ebpf() {
    udp_services_answer_from_the_service_address_and_leave_removed_backends(Proxy::Ebpf);
}

#[test]
fn udp_services_answer_from_the_service_address_and_leave_removed_backends_nftables() {
    udp_services_answer_from_the_service_address_and_leave_removed_backends(Proxy::Nftables);
}

/// A UDP answer comes from the service address; when the service's backend is replaced, a client
/// that keeps sending from the same port moves to the new backend (nftables: the stale conntrack
/// entry of its flow is deleted; eBPF: every datagram is balanced on its own).
fn udp_services_answer_from_the_service_address_and_leave_removed_backends(proxy: Proxy) {
    let k = Cluster::start_in_netns(proxy);
    // Two UDP echo backends on the node's bridge address (in the node's own namespace), behind a
    // selector-less Service with a hand-written EndpointSlice.
    let cidr =
        k.c.ok(&["get", "node", &k.node.name, "-o", "jsonpath={.spec.podCIDR}"]);
    let net: std::net::Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
    let gateway = std::net::Ipv4Addr::from(u32::from(net) + 1);
    let echoes: Vec<_> = [(5353, "-a"), (5354, "-b")]
        .into_iter()
        .map(|(port, tag)| {
            k.node
                .in_netns("python3")
                .args(["-c", UDP_ECHO, &gateway.to_string(), &port.to_string(), tag])
                .spawn()
                .expect("starting an echo backend")
        })
        .collect();
    let slice = |port: u16| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  ports: [{{name: dns, port: 53, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{{name: dns, port: {port}, protocol: UDP}}]
endpoints: [{{addresses: ["{gateway}"]}}]
"#
        )
    };
    k.c.ok_stdin(&["apply", "-f", "-"], &slice(5353));
    let vip =
        k.c.ok(&["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    // Every datagram from the same source port: one flow for conntrack.
    let ask = || {
        let out = k
            .node
            .in_pods_cgroup("python3")
            .args(["-c", UDP_CLIENT, &vip, "53", "40053"])
            .bounded_output()
            .expect("python3");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    k.wait("a UDP answer from the service address", || {
        ask() == format!("{vip} 53 ping-a")
    });
    k.c.ok_stdin(&["apply", "-f", "-"], &slice(5354));
    k.wait("the same client flow answered by the new backend", || {
        ask() == format!("{vip} 53 ping-b")
    });
    for mut echo in echoes {
        let _ = echo.kill();
        let _ = echo.wait();
    }
}

/// A resolver on loopback for names outside the cluster: `outside.test` is 192.0.2.44, every
/// other name NXDOMAIN (bounded: at most 50 queries, stops after 60 s of silence).
const FAKE_UPSTREAM: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.settimeout(60)
for _ in range(50):
    try:
        q, peer = s.recvfrom(512)
    except socket.timeout:
        break
    end = q.index(b"\0", 12) + 5
    qtype = struct.unpack("!H", q[end - 4:end - 2])[0]
    known = q[12:end - 4].lower() == b"\x07outside\x04test\x00"
    answers = 1 if known and qtype == 1 else 0
    flags = b"\x81\x80" if known else b"\x81\x83"
    head = q[:2] + flags + q[4:6] + struct.pack("!HHH", answers, 0, 0)
    body = q[12:end]
    if answers:
        body += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + bytes([192, 0, 2, 44])
    s.sendto(head + body, peer)
"#;

#[test]
fn dns_names_resolve_from_pods_ebpf() {
    dns_names_resolve_from_pods(Proxy::Ebpf);
}

#[test]
fn dns_names_resolve_from_pods_nftables() {
    dns_names_resolve_from_pods(Proxy::Nftables);
}

fn dns_names_resolve_from_pods(proxy: Proxy) {
    let k = Cluster::start_in_netns(proxy);
    let image = k.registry.busybox();
    k.c.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  ports: [{{name: http, port: 80, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  ports: [{{name: pg, port: 5432, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  labels: {{kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{{name: pg, port: 5432, protocol: TCP}}]
endpoints: [{{addresses: ["10.1.2.3"], hostname: db-0}}]
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
    let dns_ip = k.c.ok(&[
        "get",
        "service",
        "kube-dns",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    k.wait("the client running", || {
        k.c.ok(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]) == "Running"
    });
    // A service address is routed through the node as any other (where what no service matches is
    // refused): a UDP `connect()` to it on a port no service has finds the pod's own address, as
    // clients such as the guestbook's replicas do to learn it.
    let ip =
        k.c.ok(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]);
    let route = k.in_client(&format!("ip route get {vip} 2>&1"));
    assert!(route.contains(&format!("src {ip}")), "{route}");
    // The stock resolv.conf: cluster DNS, the namespace's search path, ndots:5.
    let resolv = k.in_client("cat /etc/resolv.conf");
    assert!(resolv.contains(&format!("nameserver {dns_ip}")), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    let lookup = |name: &str| k.in_client(&format!("nslookup {name} 2>&1"));
    let mut last = String::new();
    k.wait("the service name resolving", || {
        last = lookup("web.default.svc.cluster.local");
        last.contains(&format!("Address: {vip}"))
    });
    // Short names through the search path.
    let out = lookup("web");
    assert!(out.contains(&format!("Address: {vip}")), "{out}");
    // Headless: the endpoints, and each by its hostname; SRV per named port.
    let out = lookup("db.default.svc.cluster.local");
    assert!(out.contains("Address: 10.1.2.3"), "{out}");
    let out = lookup("db-0.db.default.svc.cluster.local");
    assert!(out.contains("Address: 10.1.2.3"), "{out}");
    let out = k.in_client("nslookup -type=SRV _pg._tcp.db.default.svc.cluster.local 2>&1");
    assert!(out.contains("5432 db-0.db.default.svc.cluster.local"), "{out}");
    // Reverse lookups (PTR) of a cluster IP and of a headless endpoint, as CoreDNS answers them.
    let out = lookup(&vip);
    assert!(out.contains("name = web.default.svc.cluster.local"), "{out}");
    let out = lookup("10.1.2.3");
    assert!(out.contains("name = db-0.db.default.svc.cluster.local"), "{out}");
    // A missing name in the cluster domain is NXDOMAIN.
    let out = lookup("nope.default.svc.cluster.local");
    assert!(out.contains("NXDOMAIN"), "{out}");
    // Other names go to the node's upstream resolver. It starts only now: it stops after 60 s
    // without a query, and the client may take longer than that to start on a slow machine.
    let _upstream = Upstream(
        Command::new("python3")
            .args(["-c", FAKE_UPSTREAM, &k.node.dns_upstream_port.to_string()])
            .spawn()
            .expect("starting the fake upstream resolver"),
    );
    // Until it has bound its port, the agent answers SERVFAIL.
    k.wait("the upstream name resolving", || {
        last = lookup("outside.test.");
        last.contains("Address: 192.0.2.44")
    });
}

/// The fake upstream resolver, stopped when the test ends or fails.
struct Upstream(std::process::Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
