//! `skiff-bench peers-api --control PATH --etcd PATH --kube-apiserver PATH [--rounds N]`: the
//! API benchmark against the real upstream control plane, in one run on one machine. Each round
//! starts both sides fresh — Skiff's `skiff-control` (one store member, fsync on; scheduler and
//! controllers in the same process) and upstream's `kube-apiserver` over a one-member `etcd`
//! (fsync on) with `kube-scheduler` and `kube-controller-manager` (from the same directory as
//! `kube-apiserver`) — in alternating order, and drives them with the same load generator:
//! ConfigMap creates through HTTPS with client certificates at 1 and 64 clients. For each side it
//! records the time from start to `/readyz` answering and the memory (PSS,
//! `/proc/PID/smaps_rollup`, summed over the side's processes) idle and after the load. Every
//! process started here is killed when its side ends, on failure too.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Killed, creates, etcd_member, free_port, start_control, wait_ready};

/// Creates per run: (clients, total).
const RUNS: [(usize, usize); 2] = [(1, 10_000), (64, 10_000)];

/// Proportional set size of `pid` in KiB: its private pages plus its share of shared ones, so
/// processes sharing pages are not counted twice.
pub fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no Pss in smaps_rollup")
}

fn pss_of(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|p| pss_kib(*p)).sum()
}

/// One side's round: start, wait until ready, measure idle memory, load, measure again.
async fn side(
    system: &str,
    round: usize,
    kubeconfig: &Path,
    pids: &[u32],
    started: Instant,
    patience: Duration,
) -> anyhow::Result<Value> {
    wait_ready(kubeconfig, patience)
        .await
        .with_context(|| format!("{system} did not become ready"))?;
    let ready_ms = started.elapsed().as_millis() as u64;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = pss_of(pids)?;
    let creates = creates(kubeconfig, system, &format!("peers-{round}"), &RUNS).await?;
    let after = pss_of(pids)?;
    Ok(json!({
        "system": system, "round": round, "ready_ms": ready_ms,
        "pss_idle_kib": idle, "pss_after_kib": after, "creates": creates,
    }))
}

async fn skiff(control: &Path, round: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let guard = start_control(control, dir.path())?;
    let kubeconfig = dir.path().join("admin.kubeconfig");
    side(
        "skiff-control",
        round,
        &kubeconfig,
        &[guard.0.id()],
        started,
        Duration::from_secs(30),
    )
    .await
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl (package openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A CA, a server certificate for 127.0.0.1 and an admin client certificate (group
/// `system:masters`), ECDSA P-256 as Skiff's, and the service-account key pair, in `dir`.
fn certificates(dir: &Path) -> anyhow::Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=bench-ca",
    ]);
    openssl(dir, &ca)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (name, subject, ext) in [
        ("server", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=admin", "client.ext"),
    ] {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(dir, &req)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        )?;
    }
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
}

fn kubeconfig(dir: &Path, server: &str) -> anyhow::Result<std::path::PathBuf> {
    use base64::Engine;
    let b64 = |f: &str| -> anyhow::Result<String> {
        Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(f))?))
    };
    let path = dir.join("admin.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: upstream\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\ncontexts:\n- name: upstream\n  context: {{cluster: upstream, user: admin}}\ncurrent-context: upstream\n",
        ca = b64("ca.crt")?,
        crt = b64("admin.crt")?,
        key = b64("admin.key")?,
    );
    // Written last: waiting for the file waits for everything above.
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn upstream(etcd: &Path, apiserver_path: &Path, round: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    certificates(d)?;
    let (client, peer, port) = (free_port()?, free_port()?, free_port()?);
    let (client_url, peer_url) = (
        format!("http://127.0.0.1:{client}"),
        format!("http://127.0.0.1:{peer}"),
    );
    let started = Instant::now();
    let etcd = Killed(
        etcd_member(
            etcd,
            "bench",
            &d.join("etcd"),
            &client_url,
            &peer_url,
            &format!("bench={peer_url}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd")?,
    );
    let log = std::fs::File::create(d.join("kube-apiserver.log"))?;
    let path = |f: &str| d.join(f).display().to_string();
    let apiserver = Killed(
        Command::new(apiserver_path)
            .args([
                format!("--etcd-servers={client_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--insecure-port=0".into(),
                format!("--tls-cert-file={}", path("server.crt")),
                format!("--tls-private-key-file={}", path("server.key")),
                format!("--client-ca-file={}", path("ca.crt")),
                format!("--service-account-key-file={}", path("sa.pub")),
                format!("--service-account-signing-key-file={}", path("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/12".into(),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
                "--v=0".into(),
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kube-apiserver")?,
    );
    let config = kubeconfig(d, &format!("https://127.0.0.1:{port}"))?;
    // The rest of the control plane, as a cluster runs it (no leader election: one of each).
    let bin = apiserver_path.parent().unwrap_or(Path::new("."));
    let scheduler = Killed(
        Command::new(bin.join("kube-scheduler"))
            .arg(format!("--kubeconfig={}", config.display()))
            .args(["--leader-elect=false", "--port=0", "--secure-port=0", "--v=0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kube-scheduler")?,
    );
    let controllers = Killed(
        Command::new(bin.join("kube-controller-manager"))
            .arg(format!("--kubeconfig={}", config.display()))
            .arg(format!("--service-account-private-key-file={}", path("sa.key")))
            .arg(format!("--root-ca-file={}", path("ca.crt")))
            .args(["--leader-elect=false", "--port=0", "--secure-port=0", "--v=0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kube-controller-manager")?,
    );
    let result = side(
        "upstream",
        round,
        &config,
        &[
            apiserver.0.id(),
            etcd.0.id(),
            scheduler.0.id(),
            controllers.0.id(),
        ],
        started,
        Duration::from_secs(120),
    )
    .await;
    if result.is_err() {
        let log = std::fs::read_to_string(d.join("kube-apiserver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "kube-apiserver's log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    result
}

/// `rounds` rounds of both sides, the first side alternating.
pub async fn api(control: &Path, etcd: &Path, apiserver: &Path, rounds: usize) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for round in 0..rounds {
        for skiff_first in [round % 2 == 0, round % 2 != 0] {
            let v = if skiff_first {
                skiff(control, round).await?
            } else {
                upstream(etcd, apiserver, round).await?
            };
            eprintln!("{}", serde_json::to_string(&v)?);
            out.push(v);
        }
    }
    Ok(json!(out))
}
