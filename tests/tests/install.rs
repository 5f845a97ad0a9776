//! `deploy/install.sh` puts a server (control plane and agent) on a host and `skiff-uninstall.sh`
//! takes it off again, leaving nothing behind. The target is a throwaway one this test makes: a
//! directory tree laid out as a host's (`usr/local/bin`, `etc`, `var/lib`, `run`), a network
//! namespace for the node's pods, a BPF filesystem of its own, and names with the test's prefix.
//! Links, routes, nftables tables, mounts, cgroups, processes and files are compared before the
//! install and after the uninstall.

use skiff_tests::image::Registry;
use skiff_tests::node::{agent_bin, cluster_cidr, unique_prefix};
use skiff_tests::{BoundedOutput, control_bin, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.bounded_output().expect("running a command");
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file and directory under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// What the host and the node's namespace hold that an installation could leave behind.
#[derive(Debug, PartialEq)]
struct Snapshot {
    host_links: String,
    host_routes: String,
    host_tables: String,
    netns_links: String,
    netns_routes: String,
    netns_tables: String,
    mounts: Vec<String>,
    cgroups: Vec<String>,
    files: Vec<String>,
}

fn snapshot(root: &Path, netns: &str, prefix: &str) -> Snapshot {
    let ns = |argv: &[&str]| run(Command::new("ip").args(["netns", "exec", netns]).args(argv));
    // Interface statistics and flags change by themselves: names only.
    let names = |links: String| {
        let mut v: Vec<String> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .collect();
        v.sort();
        v.join("\n")
    };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.contains(prefix) || m.starts_with(&*root.to_string_lossy()))
        .collect();
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroup root")
        .flatten()
        .map(|h| h.path().join(prefix))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    Snapshot {
        host_links: names(run(Command::new("ip").args(["-o", "link", "show"]))),
        host_routes: run(Command::new("ip").args(["route", "show", "table", "all", "proto", "115"])),
        host_tables: run(Command::new("nft").args(["list", "tables"])),
        netns_links: names(ns(&["ip", "-o", "link", "show"])),
        netns_routes: ns(&["ip", "route", "show", "table", "all"]),
        netns_tables: ns(&["nft", "list", "tables"]),
        mounts,
        cgroups,
        files: tree(root),
    }
}

/// Removes the installation, the namespace and the BPF mount also when the test fails.
struct Cleanup {
    root: PathBuf,
    netns: String,
    bpffs: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let uninstall = self.root.join("usr/local/bin/skiff-uninstall.sh");
        if uninstall.exists() {
            let _ = Command::new(uninstall).bounded_output();
        }
        let _ = Command::new("umount").arg(&self.bpffs).bounded_output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .bounded_output();
    }
}

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
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

#[test]
fn install_script_runs_a_server_and_the_uninstaller_leaves_nothing_behind() {
    let prefix = unique_prefix();
    let registry = Registry::start_with_busybox();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{prefix}-install-"))
        .tempdir()
        .expect("tempdir");
    let root = dir.path().join("root");
    for d in ["usr/local/bin", "etc", "var/lib", "run"] {
        std::fs::create_dir_all(root.join(d)).expect("host layout");
    }
    let netns = format!("{prefix}-n");
    let bpffs = dir.path().join("bpffs");
    std::fs::create_dir_all(&bpffs).expect("bpffs dir");
    let _cleanup = Cleanup {
        root: root.clone(),
        netns: netns.clone(),
        bpffs: bpffs.clone(),
    };
    run(Command::new("ip").args(["netns", "add", &netns]));
    run(Command::new("ip").args(["netns", "exec", &netns, "ip", "link", "set", "lo", "up"]));
    run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs));
    let before = snapshot(&root, &netns, &prefix);

    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let bin_dir = control_bin().parent().expect("target dir").to_owned();
    assert!(agent_bin().exists());
    let r = |p: &str| root.join(p).display().to_string();
    let control_args = [
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--raft-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--cluster-cidr".into(),
        cluster_cidr(&prefix),
    ];
    let agent_args = [
        "--port".to_string(),
        free_port().to_string(),
        "--address".into(),
        "127.0.0.1".into(),
        "--node-ip".into(),
        "127.0.0.1".into(),
        "--bridge".into(),
        format!("{prefix}br"),
        "--cgroup-root".into(),
        prefix.clone(),
        "--netns".into(),
        format!("/run/netns/{netns}"),
        "--bpf-dir".into(),
        bpffs.join("skiff").display().to_string(),
        "--proxy-mode".into(),
        "ebpf".into(),
        "--proxy-cgroup".into(),
        "pods".into(),
        "--dns-upstream".into(),
        format!("127.0.0.1:{}", free_port()),
        "--eviction-hard".into(),
        skiff_tests::node::EVICTION_HARD.into(),
    ];
    let mut install = Command::new("sh");
    install
        .arg(script("install.sh"))
        .args(["--server", "--init", "none", "--url", &url])
        .args(["--node-name", &format!("{prefix}-node")])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--prefix", &r("usr/local"), "--config-dir", &r("etc/skiff")])
        .args(["--state-dir", &r("var/lib/skiff"), "--run-dir", &r("run/skiff")]);
    for a in &control_args {
        install.args(["--control-arg", a]);
    }
    for a in &agent_args {
        install.args(["--agent-arg", a]);
    }
    let installed = run(&mut install);
    let kubeconfig = root.join("etc/skiff/admin.kubeconfig");
    assert!(
        installed.contains(&format!("export KUBECONFIG={}", kubeconfig.display())),
        "{installed}"
    );
    for f in [
        "usr/local/bin/skiff-control",
        "usr/local/bin/skiff-agent",
        "usr/local/bin/skiff-uninstall.sh",
    ] {
        assert!(root.join(f).exists(), "{f} not installed: {:?}", tree(&root));
    }

    // The installed cluster runs a workload, read through the kubeconfig the installer wrote.
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .env("KUBECACHEDIR", dir.path().join("kubectl-cache"))
            .args(args)
            .bounded_output()
            .expect("running kubectl")
    };
    let agent_log = || std::fs::read_to_string(root.join("run/skiff/skiff-agent.log")).unwrap_or_default();
    let mut apply = Command::new("kubectl");
    apply
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBECACHEDIR", dir.path().join("kubectl-cache"))
        .args(["apply", "-f", "-"]);
    let applied = skiff_tests::output_with_stdin(apply, &WORKLOAD.replace("IMAGE", &registry.busybox()));
    assert!(applied.status.success(), "{applied:?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = kubectl(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        if ready.stdout == b"True" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod never got ready: {}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let nodes = kubectl(&["get", "nodes", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&nodes.stdout).trim(),
        format!("node/{prefix}-node")
    );
    assert!(bpffs.join("skiff/services_v1").exists(), "eBPF maps are pinned");
    assert!(!skiff_tests::processes_under(&root).is_empty());

    let removed = run(&mut Command::new(root.join("usr/local/bin/skiff-uninstall.sh")));
    assert!(removed.contains("removed"), "{removed}");
    assert!(
        skiff_tests::processes_under(&root).is_empty(),
        "{:?}",
        skiff_tests::processes_under(&root)
    );
    let after = snapshot(&root, &netns, &prefix);
    assert_eq!(before, after, "the uninstaller left something behind");
}

/// The units `install.sh --init systemd` writes pass `systemd-analyze verify` with nothing to say
/// (it exits 0 even on unknown keys and bad values, so its messages are what is checked), for a
/// server and for an agent; written with `--no-start` on this host, which systemd does not run, and
/// removed again by the uninstaller.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let prefix = unique_prefix();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{prefix}-units-"))
        .tempdir()
        .expect("tempdir");
    let bin_dir = control_bin().parent().expect("target dir").to_owned();
    assert!(agent_bin().exists());
    for mode in ["--server", "--agent"] {
        let root = dir.path().join(mode.trim_start_matches('-'));
        for d in ["usr/local/bin", "etc/systemd/system", "var/lib", "run"] {
            std::fs::create_dir_all(root.join(d)).expect("host layout");
        }
        let before = tree(&root);
        let r = |p: &str| root.join(p).display().to_string();
        let mut install = Command::new("sh");
        install
            .arg(script("install.sh"))
            .args([mode, "--init", "systemd", "--no-start"])
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(["--prefix", &r("usr/local"), "--config-dir", &r("etc/skiff")])
            .args(["--state-dir", &r("var/lib/skiff"), "--run-dir", &r("run/skiff")])
            .args(["--unit-dir", &r("etc/systemd/system")]);
        if mode == "--server" {
            install.args(["--control-arg", "--listen", "--control-arg", "127.0.0.1:6443"]);
        } else {
            install.args(["--url", "https://127.0.0.1:6443", "--token", "K10::node:secret"]);
        }
        // What the uninstaller hands `skiff-agent uninstall`: names only this test uses; and a
        // value that needs quoting on its way through install.env into the unit's command line.
        for a in [
            "--bridge".to_string(),
            format!("{prefix}br"),
            "--cgroup-root".into(),
            prefix.clone(),
            "--bpf-dir".into(),
            dir.path().join("bpf").display().to_string(),
            "--node-name".into(),
            "it's a \"node\" $HOME".into(),
        ] {
            install.args(["--agent-arg", &a]);
        }
        let installed = run(&mut install);
        assert!(installed.contains("not started (--no-start)"), "{installed}");
        let units: Vec<PathBuf> = match mode {
            "--server" => vec![
                r("etc/systemd/system/skiff-control.service").into(),
                r("etc/systemd/system/skiff-agent.service").into(),
            ],
            _ => vec![r("etc/systemd/system/skiff-agent.service").into()],
        };
        for unit in &units {
            let text = std::fs::read_to_string(unit).expect("unit written");
            let name = unit
                .file_stem()
                .expect("unit name")
                .to_string_lossy()
                .into_owned();
            assert!(
                text.contains(&format!("{}/{name} ", r("usr/local/bin"))),
                "{unit:?} runs the installed binary: {text}"
            );
        }
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .args(&units)
            .bounded_output()
            .expect("running systemd-analyze verify");
        assert!(
            verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
            "systemd-analyze verify {units:?}: {verify:?}"
        );

        let removed = run(&mut Command::new(root.join("usr/local/bin/skiff-uninstall.sh")));
        assert!(removed.contains("removed"), "{removed}");
        assert_eq!(
            before,
            tree(&root),
            "the uninstaller left something of {mode} behind"
        );
    }
}
