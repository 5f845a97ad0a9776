//! `skiff-bench peers-api --control PATH --etcd PATH --upstream-bin DIR [--rounds N]`: the
//! API benchmark against the real upstream control plane, in one run on one machine. Each round
//! starts both sides fresh — Skiff's `skiff-control` (one store member, fsync on; scheduler and
//! controllers in the same process) and upstream's `kube-apiserver` over a one-member `etcd`
//! (fsync on) with `kube-scheduler` and `kube-controller-manager` (from the same directory as
//! `kube-apiserver`, all from DIR) — in alternating order, and drives them with the same load generator:
//! ConfigMap creates through HTTPS with client certificates at 1 and 64 clients. For each side it
//! records the time from start to `/readyz` answering and the memory (PSS,
//! `/proc/PID/smaps_rollup`, summed over the side's processes) idle and after the load. Every
//! process started here is killed when its side ends, on failure too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Killed, creates, etcd_member, free_port, wait_ready};

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

/// One side of a round, running: its processes (killed when dropped) and its admin kubeconfig.
pub(crate) struct Running {
    system: &'static str,
    pub(crate) kubeconfig: PathBuf,
    pids: Vec<u32>,
    started: Instant,
    /// Where the API server logs, shown when it does not become ready.
    log: Option<PathBuf>,
    _processes: Vec<Killed>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn ready(&self, patience: Duration) -> anyhow::Result<u64> {
        let result = wait_ready(&self.kubeconfig, patience).await;
        if let (Err(_), Some(log)) = (&result, &self.log) {
            eprintln!("{}'s API server log ends:\n{}", self.system, log_tail(log, 20));
        }
        result.with_context(|| format!("{} did not become ready", self.system))?;
        Ok(self.started.elapsed().as_millis() as u64)
    }

    fn pss(&self) -> anyhow::Result<u64> {
        pss_of(&self.pids)
    }

    /// The side's own directory (removed with it): where a helper beside it may log.
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// The last `n` lines of the log at `path`, for an error.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(n).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Skiff's control plane: one `skiff-control` with a fresh data directory.
fn skiff(control: &Path, extra: &[&str]) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    let (port, raft) = (free_port()?, free_port()?);
    let started = Instant::now();
    let child = Command::new(control)
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--raft-listen",
            &format!("127.0.0.1:{raft}"),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting skiff-control")?;
    Ok(Running {
        system: "skiff-control",
        kubeconfig: dir.path().join("admin.kubeconfig"),
        pids: vec![child.id()],
        started,
        log: None,
        _processes: vec![Killed(child)],
        _dir: dir,
    })
}

/// Upstream's control plane: `kube-apiserver` over a one-member `etcd`, with `kube-scheduler`
/// (given `scheduler_args`) and `kube-controller-manager` (given `controller_args`); the
/// Kubernetes commands from directory `bin`. No leader election: one of each.
pub(crate) fn upstream(
    etcd: &Path,
    bin: &Path,
    controller_args: &[&str],
    scheduler_args: &[&str],
) -> anyhow::Result<Running> {
    upstream_in(etcd, bin, controller_args, scheduler_args, None)
}

/// `cmd` run in network namespace `netns` (`ip netns exec` keeps the pid), or as it is.
fn in_netns(cmd: Command, netns: Option<&str>) -> Command {
    let Some(ns) = netns else { return cmd };
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped
}

/// [`upstream`] in network namespace `netns` (its loopback), or the host's.
pub(crate) fn upstream_in(
    etcd: &Path,
    bin: &Path,
    controller_args: &[&str],
    scheduler_args: &[&str],
    netns: Option<&str>,
) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_owned();
    certificates(&d)?;
    let (client, peer, port) = (free_port()?, free_port()?, free_port()?);
    let (client_url, peer_url) = (
        format!("http://127.0.0.1:{client}"),
        format!("http://127.0.0.1:{peer}"),
    );
    let started = Instant::now();
    let mut processes = vec![Killed(
        in_netns(
            etcd_member(
                etcd,
                "bench",
                &d.join("etcd"),
                &client_url,
                &peer_url,
                &format!("bench={peer_url}"),
            ),
            netns,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd")?,
    )];
    let log_path = d.join("kube-apiserver.log");
    let log = std::fs::File::create(&log_path)?;
    let path = |f: &str| d.join(f).display().to_string();
    processes.push(Killed(
        in_netns(Command::new(bin.join("kube-apiserver")), netns)
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
    ));
    let config = kubeconfig(&d, &format!("https://127.0.0.1:{port}"))?;
    processes.push(Killed(
        in_netns(Command::new(bin.join("kube-scheduler")), netns)
            .arg(format!("--kubeconfig={}", config.display()))
            .args(["--leader-elect=false", "--port=0", "--secure-port=0", "--v=0"])
            .args(scheduler_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kube-scheduler")?,
    ));
    processes.push(Killed(
        in_netns(Command::new(bin.join("kube-controller-manager")), netns)
            .arg(format!("--kubeconfig={}", config.display()))
            .arg(format!("--service-account-private-key-file={}", path("sa.key")))
            .arg(format!("--root-ca-file={}", path("ca.crt")))
            .args(["--leader-elect=false", "--port=0", "--secure-port=0", "--v=0"])
            .args(controller_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kube-controller-manager")?,
    ));
    Ok(Running {
        system: "upstream",
        kubeconfig: config,
        pids: processes.iter().map(|p| p.0.id()).collect(),
        started,
        log: Some(log_path),
        _processes: processes,
        _dir: dir,
    })
}

/// One side's API round: ready, idle memory, the creates, memory again.
async fn api_side(side: Running, round: usize) -> anyhow::Result<Value> {
    let ready_ms = side.ready(Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = side.pss()?;
    let creates = creates(&side.kubeconfig, side.system, &format!("peers-{round}"), &RUNS).await?;
    let after = side.pss()?;
    let mixed = super::mixed::mixed(&side.kubeconfig, &format!("mixed-{round}")).await?;
    Ok(json!({
        "system": side.system, "round": round, "ready_ms": ready_ms,
        "pss_idle_kib": idle, "pss_after_kib": after, "creates": creates, "mixed": mixed,
    }))
}

/// `rounds` rounds of both sides (of `systems`: `skiff`, `upstream`), the first side alternating.
pub async fn api(
    control: &Path,
    etcd: &Path,
    bin: &Path,
    rounds: usize,
    systems: &[String],
) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for round in 0..rounds {
        for skiff_first in [round % 2 == 0, round % 2 != 0] {
            let system = if skiff_first { "skiff" } else { "upstream" };
            if !systems.iter().any(|s| s == system) {
                continue;
            }
            let side = if skiff_first {
                skiff(control, &[])?
            } else {
                upstream(etcd, bin, &[], &[])?
            };
            let v = api_side(side, round).await?;
            eprintln!("{}", serde_json::to_string(&v)?);
            out.push(v);
        }
    }
    Ok(json!(out))
}

/// The Node objects of the scheduler benchmark, as `skiff-bench scheduler` makes them: equal
/// nodes in 10 zones, Ready, with room for 110 pods.
fn bench_node(i: usize) -> Value {
    let name = format!("node-{i:05}");
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": format!("zone-{}", i % 10)}},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": skiff_control::objects::meta::now(), "lastTransitionTime": skiff_control::objects::meta::now()}],
        },
    })
}

/// The pods of the scheduler benchmark, the same mix as `skiff-bench scheduler`: varied requests,
/// 30% with a zone nodeSelector, 10% with required pod anti-affinity per hostname; no token volume.
fn bench_pod(i: usize) -> Value {
    // No token volume: upstream's admission would wait for a token Secret that only the
    // controller manager (not run here) makes.
    let mut spec = json!({"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "registry.local/app:1",
        "resources": {"requests": {"cpu": format!("{}m", 100 + (i * 37) % 400), "memory": format!("{}Mi", 64 + (i * 53) % 192)}}}]});
    let mut labels = json!({"app": format!("app-{}", i % 100)});
    if i % 10 < 3 {
        spec["nodeSelector"] = json!({"zone": format!("zone-{}", i % 10)});
    }
    if i % 10 == 9 {
        labels["anti"] = json!(format!("group-{}", i % 200));
        spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"anti": format!("group-{}", i % 200)}}, "topologyKey": "kubernetes.io/hostname"}]}});
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:06}"), "namespace": "default", "labels": labels}, "spec": spec})
}

/// A watch of the default namespace's pods: for each event whose object `pick` takes, what it
/// makes of it and when the event arrived.
pub(crate) async fn watch_default_pods<T: Send + 'static>(
    kubeconfig: &Path,
    pick: impl Fn(&Value) -> Option<T> + Send + 'static,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<(T, Instant)>> {
    use http_body_util::BodyExt;
    let (client, server) = super::https_client(kubeconfig)?;
    let req = hyper::Request::get(format!("{server}/api/v1/namespaces/default/pods?watch=1"))
        .body(Default::default())?;
    let resp = client.request(req).await?;
    if !resp.status().is_success() {
        bail!("the pod watch returned {}", resp.status());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            let at = Instant::now();
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if let Some(v) = pick(&event["object"])
                    && tx.send((v, at)).is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// Pod names and when each was first seen bound, from a watch of the default namespace's pods.
async fn watch_bindings(
    kubeconfig: &Path,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>> {
    watch_default_pods(kubeconfig, |pod| {
        pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
            .then(|| pod["metadata"]["name"].as_str().map(str::to_owned))
            .flatten()
    })
    .await
}

/// One side's scheduler round: `nodes` Nodes, then `pods` pods created by 32 clients while the
/// scheduler binds them; pods/s from the first create to the last binding, and each pod's
/// create-to-bound latency as a watch sees it.
async fn scheduler_side(side: Running, nodes: usize, pods: usize, round: usize) -> anyhow::Result<Value> {
    side.ready(Duration::from_secs(120)).await?;
    let server = super::https_client(&side.kubeconfig)?.1;
    let clients: Arc<Vec<super::HttpsClient>> = Arc::new(
        (0..32)
            .map(|_| super::https_client(&side.kubeconfig).map(|c| c.0))
            .collect::<Result<_, _>>()?,
    );
    let url = Arc::new(format!("{server}/api/v1/nodes"));
    let (c, u) = (clients.clone(), url.clone());
    super::drive(nodes, 32, move |w, i| {
        let (c, u) = (c.clone(), u.clone());
        async move { super::create(&c[w], &u, &bench_node(i)).await }
    })
    .await?;
    // Upstream's admission taints new nodes not-ready until its node lifecycle controller sees
    // them Ready: pods are created once every node is free of taints.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let req = hyper::Request::get(format!("{server}/api/v1/nodes")).body(Default::default())?;
        let body = http_body_util::BodyExt::collect(clients[0].request(req).await?.into_body()).await?;
        let list: Value = serde_json::from_slice(&body.to_bytes())?;
        let free = list["items"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|n| n["spec"]["taints"].as_array().is_none_or(Vec::is_empty))
                .count()
        });
        if free >= nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("{}: only {free} of {nodes} nodes lost their taints", side.system);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Pods need their namespace's default ServiceAccount (upstream's controller manager, not
    // run here, would make it; Skiff has it already).
    let sa = hyper::Request::post(format!("{server}/api/v1/namespaces/default/serviceaccounts"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})
                .to_string(),
        )))?;
    let status = clients[0].request(sa).await?.status();
    if status != 201 && status != 409 {
        bail!("creating the default ServiceAccount returned {status}");
    }
    let mut bindings = watch_bindings(&side.kubeconfig).await?;
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let url = Arc::new(format!("{server}/api/v1/namespaces/default/pods"));
    let start = Instant::now();
    let mut creator = Some({
        let (c, u, created) = (clients.clone(), url.clone(), created.clone());
        tokio::spawn(super::drive(pods, 32, move |w, i| {
            let (c, u, created) = (c.clone(), u.clone(), created.clone());
            async move {
                let pod = bench_pod(i);
                let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                created
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .insert(name, Instant::now());
                super::create(&c[w], &u, &pod).await
            }
        }))
    });
    let mut bound: HashMap<String, Instant> = HashMap::with_capacity(pods);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = start;
    while bound.len() < pods && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), bindings.recv()).await {
            Ok(Some((name, at))) => {
                bound.entry(name).or_insert_with(|| {
                    last = at;
                    at
                });
            }
            Ok(None) => bail!("{}'s pod watch ended", side.system),
            Err(_) => {}
        }
        // A failed create ends the round at once.
        if creator.as_ref().is_some_and(|c| c.is_finished())
            && let Some(c) = creator.take()
        {
            c.await??;
        }
    }
    if let Some(c) = creator {
        c.await??;
    }
    let created = created.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let latencies: Vec<Duration> = bound
        .iter()
        .filter_map(|(name, at)| Some(at.saturating_duration_since(*created.get(name)?)))
        .collect();
    let mut v = super::summary(
        side.system,
        32,
        bound.len(),
        last.duration_since(start),
        latencies,
    );
    v["nodes"] = json!(nodes);
    v["pods"] = json!(pods);
    v["round"] = json!(round);
    Ok(v)
}

/// `rounds` rounds of both schedulers for each node count, the first side alternating. Both
/// control planes run whole, their node lifecycle controllers told not to expect heartbeats from
/// these nodes for an hour; kube-scheduler with the client rate limits scheduler_perf uses (5,000
/// QPS) instead of the default 50, which would make the rate limiter the measurement.
pub async fn scheduler(
    control: &Path,
    etcd: &Path,
    bin: &Path,
    node_counts: &[usize],
    pods: usize,
    rounds: usize,
) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for round in 0..rounds {
        for &nodes in node_counts {
            for skiff_first in [round % 2 == 0, round % 2 != 0] {
                let side = if skiff_first {
                    skiff(control, &["--node-monitor-grace-period", "1h"])?
                } else {
                    upstream(
                        etcd,
                        bin,
                        // Its node lifecycle controller untaints every node; at the default
                        // 20 QPS, 5,000 nodes take minutes.
                        &[
                            "--node-monitor-grace-period=1h",
                            "--kube-api-qps=5000",
                            "--kube-api-burst=5000",
                        ],
                        &["--kube-api-qps=5000", "--kube-api-burst=5000"],
                    )?
                };
                let v = scheduler_side(side, nodes, pods, round).await?;
                eprintln!("{}", serde_json::to_string(&v)?);
                out.push(v);
            }
        }
    }
    Ok(json!(out))
}
