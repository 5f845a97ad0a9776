//! `skiff-agent uninstall` leaves the node as it was: a node with a running pod and a service is
//! taken down, and nothing the agent created remains (processes, mounts, cgroups, eBPF pins,
//! nftables tables, routes, the bridge, the data directory). Both proxy planes; the cgroups the
//! containers used are v1 on hybrid hosts such as this one, v2 on unified ones.

use skiff_tests::BoundedOutput;
use std::time::{Duration, Instant};

use skiff_tests::node::{Cluster, Proxy};

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: httpd
        image: IMAGE
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
        volumeMounts: [{name: scratch, mountPath: /scratch}]
      volumes: [{name: scratch, emptyDir: {medium: Memory}}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

#[test]
fn uninstall_leaves_the_node_as_it_was_ebpf() {
    uninstall_leaves_the_node_as_it_was(Proxy::Ebpf);
}

#[test]
fn uninstall_leaves_the_node_as_it_was_nftables() {
    uninstall_leaves_the_node_as_it_was(Proxy::Nftables);
}

fn uninstall(k: &Cluster) -> std::process::Output {
    k.node
        .uninstall_cmd()
        .bounded_output()
        .expect("running skiff-agent uninstall")
}

fn uninstall_leaves_the_node_as_it_was(proxy: Proxy) {
    let mut k = Cluster::start_in_netns(proxy);
    let image = k.registry.busybox();
    k.c.ok_stdin(&["apply", "-f", "-"], &WORKLOAD.replace("IMAGE", &image));
    let deadline = Instant::now() + Duration::from_secs(90);
    while k
        .c
        .kubectl(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .stdout
        != b"True"
    {
        assert!(
            Instant::now() < deadline,
            "the replica never got ready: {}",
            k.node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let data = k.node.data_dir();
    let bridge = k.node.bridge();
    let masquerade = format!("table ip skiff-{bridge}");
    let tables = |k: &Cluster| k.node.ok_in_netns(&["nft", "list", "tables"]);
    let routes = |k: &Cluster| k.node.ok_in_netns(&["ip", "route", "show", "proto", "115"]);
    let links = |k: &Cluster| k.node.ok_in_netns(&["ip", "-o", "link", "show"]);
    assert!(tables(&k).contains(&masquerade), "{}", tables(&k));
    assert!(!routes(&k).is_empty(), "the agent's routes carry protocol 115");
    assert!(links(&k).contains(&bridge));
    assert!(!skiff_tests::processes_under(&data).is_empty());
    match proxy {
        Proxy::Ebpf => assert!(k.node.bpf_dir().join("services_v1").exists()),
        Proxy::Nftables => assert!(tables(&k).contains("table inet skiff"), "{}", tables(&k)),
    }

    // While the agent runs, uninstall refuses and touches nothing.
    let out = uninstall(&k);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("stop it first"),
        "{out:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(links(&k).contains(&bridge) && data.exists());

    k.node.kill9();
    let out = uninstall(&k);
    assert!(out.status.success(), "{out:?}");

    assert!(
        skiff_tests::processes_under(&data).is_empty(),
        "{:?}",
        skiff_tests::processes_under(&data)
    );
    let tables_left = tables(&k);
    assert!(
        !tables_left.contains(&masquerade) && !tables_left.contains("table inet skiff"),
        "{tables_left}"
    );
    assert_eq!(routes(&k), "");
    // Only the namespace's loopback is left: the bridge and every pod's veth are gone.
    let links_left = links(&k);
    assert_eq!(links_left.lines().count(), 1, "{links_left}");
    assert!(!k.node.bpf_dir().exists());
    assert!(!data.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&*data.to_string_lossy()), "{mounts}");
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroup root")
        .flatten()
    {
        let left = hierarchy.path().join(k.node.cgroup_root());
        assert!(!left.exists(), "{} is left", left.display());
    }

    // A second run finds nothing to do.
    let out = uninstall(&k);
    assert!(out.status.success(), "{out:?}");
}
