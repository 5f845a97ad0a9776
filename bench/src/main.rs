//! `skiff-bench`: the measurements behind `cargo xtask bench`. Prints one JSON document of results.
//!
//! - `skiff-bench store --etcd PATH`: puts/s and latency percentiles for 256-byte values at 1 and
//!   64 concurrent writers, fsync on, for Skiff's store and for etcd (single member on loopback,
//!   driven through its gRPC KV API by the same harness).
//! - `skiff-bench api --control PATH`: ConfigMap creates/s and latency percentiles through HTTPS
//!   with 1 and 64 clients, and skiff-control's RSS idle and after the load.
//! - `skiff-bench peers-api --control PATH --etcd PATH --upstream-bin DIR [--rounds N]`: the
//!   same creates against skiff-control and against kube-apiserver over etcd, side by side
//!   (`peers.rs`).
//! - `skiff-bench peers-scheduler --control PATH --etcd PATH --upstream-bin DIR [--rounds N]
//!   [--nodes N,..] [--pods N]`: pods/s and create-to-bound latency through the API, Skiff's
//!   scheduler beside kube-scheduler (`peers.rs`).
//! - `skiff-bench peers-node --control PATH --agent PATH --etcd PATH --upstream-bin DIR
//!   [--rounds N] [--singles N]`: a node, Skiff's agent beside kubelet on containerd, from start
//!   to a first pod, pod apply to Ready and the node's memory with 50 pods (`peers_node.rs`).

mod peers;
mod peers_node;
mod pods;
mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[allow(missing_docs, missing_debug_implementations, dead_code, clippy::all)]
mod etcdpb {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
}
use etcdpb::etcdserverpb as etcd;
mod etcd_api;
mod mixed;

const VALUE_SIZE: usize = 256;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Latency summary of one run.
fn summary(name: &str, concurrency: usize, total: usize, elapsed: Duration, mut lat: Vec<Duration>) -> Value {
    lat.sort();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    json!({
        "system": name,
        "concurrency": concurrency,
        "ops": total,
        "ops_per_sec": (total as f64 / elapsed.as_secs_f64()).round() as u64,
        "p50_ms": (pct(0.50) * 1000.0).round() / 1000.0,
        "p99_ms": (pct(0.99) * 1000.0).round() / 1000.0,
    })
}

/// Runs `op(i)` for i in 0..total with `concurrency` workers; returns (elapsed, latencies).
async fn drive<F, Fut>(total: usize, concurrency: usize, op: F) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (next, op) = (next.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                op(w, i).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(total);
    for w in workers {
        all.extend(w.await??);
    }
    Ok((start.elapsed(), all))
}

/// An etcd member `name` in `dir`, serving clients at `client_url` and peers at `peer_url`, of the
/// new cluster `initial_cluster` (etcd's `name=peer-url,...`).
fn etcd_member(
    etcd: &Path,
    name: &str,
    dir: &Path,
    client_url: &str,
    peer_url: &str,
    initial_cluster: &str,
) -> Command {
    let mut cmd = Command::new(etcd);
    cmd.args(["--name", name, "--data-dir"])
        .arg(dir)
        .args([
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
        ])
        .args([
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
        ])
        .args([
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            "new",
        ])
        .args(["--log-level", "error"]);
    cmd
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench_skiff_store(runs: &[(usize, usize)]) -> anyhow::Result<Vec<Value>> {
    use skiff_control::store::{Store, StoreConfig};
    let mut out = Vec::new();
    for &(concurrency, total) in runs {
        let dir = tempfile::tempdir()?;
        let store = Store::open(StoreConfig::single(dir.path().to_owned(), "127.0.0.1:0".parse()?)).await?;
        let s = store.clone();
        let value = Arc::new(vec![b'x'; VALUE_SIZE]);
        let (elapsed, lat) = drive(total, concurrency, move |_, i| {
            let (s, value) = (s.clone(), value.clone());
            async move {
                s.create(&format!("/bench/{i:08}"), value.to_vec()).await?;
                Ok(())
            }
        })
        .await?;
        out.push(summary("skiff-store", concurrency, total, elapsed, lat));
        store.shutdown().await;
    }
    Ok(out)
}

async fn bench_etcd(etcd: &Path, runs: &[(usize, usize)]) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for &(concurrency, total) in runs {
        let dir = tempfile::tempdir()?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let _etcd = Killed(
            etcd_member(
                etcd,
                "bench",
                dir.path(),
                &client_url,
                &peer_url,
                &format!("bench={peer_url}"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?,
        );
        let channel = {
            let mut tries = 0;
            loop {
                match tonic::transport::Channel::from_shared(client_url.clone())?
                    .connect()
                    .await
                {
                    Ok(c) => break c,
                    Err(_) if tries < 100 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => bail!("etcd did not come up: {e}"),
                }
            }
        };
        let probe = etcd::kv_client::KvClient::new(channel.clone());
        // Wait until etcd has a leader and takes writes.
        for _ in 0..100 {
            let put = etcd::PutRequest {
                key: b"/ready".to_vec(),
                value: vec![],
                ..Default::default()
            };
            if probe.clone().put(put).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let clients: Arc<Vec<_>> = Arc::new(
            (0..concurrency)
                .map(|_| etcd::kv_client::KvClient::new(channel.clone()))
                .collect(),
        );
        let value = Arc::new(vec![b'x'; VALUE_SIZE]);
        let (elapsed, lat) = drive(total, concurrency, move |w, i| {
            let (mut c, value) = (clients[w].clone(), value.clone());
            async move {
                let put = etcd::PutRequest {
                    key: format!("/bench/{i:08}").into_bytes(),
                    value: value.to_vec(),
                    ..Default::default()
                };
                c.put(put).await?;
                Ok(())
            }
        })
        .await?;
        out.push(summary("etcd-3.4", concurrency, total, elapsed, lat));
    }
    Ok(out)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

fn https_client(kubeconfig: &Path) -> anyhow::Result<(HttpsClient, String)> {
    use base64::Engine;
    let kc: Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    let b64 = |v: &Value| -> anyhow::Result<Vec<u8>> {
        Ok(base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("missing kubeconfig field")?)?)
    };
    let server = kc["clusters"][0]["cluster"]["server"]
        .as_str()
        .context("server")?
        .to_owned();
    let ca = b64(&kc["clusters"][0]["cluster"]["certificate-authority-data"])?;
    let cert = b64(&kc["users"][0]["user"]["client-certificate-data"])?;
    let key = b64(&kc["users"][0]["user"]["client-key-data"])?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(c?)?;
    }
    let certs = rustls_pemfile::certs(&mut cert.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key.as_slice())?.context("no client key")?;
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
    // Like Go's net/http (and so kubectl), send small writes at once.
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    Ok((client, server))
}

/// POSTs `body` to `url`; fails unless the answer is 201 Created.
async fn create(client: &HttpsClient, url: &str, body: &Value) -> anyhow::Result<()> {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    // Read the answer to its end: a dropped body resets its stream, and a server that still sends
    // it (Go's) makes h2 end the connection after 1024 such resets.
    http_body_util::BodyExt::collect(resp.into_body()).await?;
    if status != 201 {
        bail!("POST {url} returned {status}");
    }
    Ok(())
}

/// Waits until the API server of `kubeconfig` (once the file exists) answers `/readyz`.
async fn wait_ready(kubeconfig: &Path, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    while !kubeconfig.exists() {
        if Instant::now() > deadline {
            bail!("no {} after {patience:?}", kubeconfig.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (probe, server) = https_client(kubeconfig)?;
    loop {
        let req = hyper::Request::get(format!("{server}/readyz")).body(Default::default())?;
        if probe.request(req).await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{server}/readyz did not answer 200 within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// ConfigMap creates through HTTPS to the API server of `kubeconfig`: for each (clients, total)
/// of `runs`, `total` creates spread over `clients` connections. Names start with `tag`.
async fn creates(
    kubeconfig: &Path,
    system: &str,
    tag: &str,
    runs: &[(usize, usize)],
) -> anyhow::Result<Vec<Value>> {
    let server = https_client(kubeconfig)?.1;
    let mut results = Vec::new();
    for (round, &(concurrency, total)) in runs.iter().enumerate() {
        let clients: Arc<Vec<HttpsClient>> = Arc::new(
            (0..concurrency)
                .map(|_| https_client(kubeconfig).map(|c| c.0))
                .collect::<Result<_, _>>()?,
        );
        let url = Arc::new(format!("{server}/api/v1/namespaces/default/configmaps"));
        let tag = tag.to_owned();
        let (elapsed, lat) = drive(total, concurrency, move |w, i| {
            let (client, url) = (clients[w].clone(), url.clone());
            let name = format!("{tag}-{round}-{i:06}");
            async move {
                let body = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "labels": {"bench": "api"}},
                    "data": {"payload": "x".repeat(VALUE_SIZE)},
                });
                create(&client, &url, &body).await
            }
        })
        .await?;
        results.push(summary(system, concurrency, total, elapsed, lat));
    }
    Ok(results)
}

/// A skiff-control with a fresh data directory, on free loopback ports.
fn start_control(control: &Path, dir: &Path) -> anyhow::Result<Killed> {
    let (port, raft) = (free_port()?, free_port()?);
    let child = Command::new(control)
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--raft-listen",
            &format!("127.0.0.1:{raft}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting skiff-control")?;
    Ok(Killed(child))
}

async fn bench_api(control: &Path, runs: &[(usize, usize)]) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let guard = start_control(control, dir.path())?;
    let pid = guard.0.id();
    let kubeconfig = dir.path().join("admin.kubeconfig");
    wait_ready(&kubeconfig, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid)?;
    let results = creates(&kubeconfig, "skiff-control", "bench", runs).await?;
    let after = rss_kib(pid)?;
    Ok(json!({"creates": results, "rss_idle_kib": idle, "rss_after_kib": after}))
}

/// Schedules `pods` pods onto `nodes` Node objects with skiff-control's scheduler (in process, on
/// a real store; no agents) and reports pods/s and the creation-to-binding latency. With
/// `backlog`, every pod is created before the controllers start, so the rate is the scheduler's
/// own (binding writes included) rather than bounded by how fast pods are created.
async fn bench_scheduler(nodes: usize, pods: usize, backlog: bool) -> anyhow::Result<Value> {
    use skiff_control::objects::Objects;
    use skiff_control::objects::meta::to_stored;
    use skiff_control::objects::service::Cidr;
    use skiff_control::store::{EventKind, Store, StoreConfig};
    let dir = tempfile::tempdir()?;
    let mut config = StoreConfig::single(dir.path().to_owned(), "127.0.0.1:0".parse()?);
    config.watch_history = 200_000;
    let store = Store::open(config).await?;
    let app = Arc::new(Objects::new(
        store.clone(),
        Cidr::parse("10.96.0.0/12").map_err(anyhow::Error::msg)?,
    ));
    skiff_control::bootstrap::ensure_defaults(&app).await?;
    for i in 0..nodes {
        let name = format!("node-{i:05}");
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": format!("uid-{i}"), "labels": {"kubernetes.io/hostname": name, "zone": format!("zone-{}", i % 10)}},
            "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]},
        });
        store
            .create(
                &skiff_control::objects::keys::object(skiff_control::objects::keys::NODES, None, &name),
                to_stored(&node),
            )
            .await?;
    }
    if !backlog {
        let caches = skiff_control::controllers::start(app.clone(), &Default::default());
        skiff_control::scheduler::start(app.clone(), &caches);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut watch = store.watch(skiff_control::objects::keys::PODS, store.revision())?;
    let created: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let mut start = Instant::now();
    let mut creator = Some({
        let (app, created) = (app.clone(), created.clone());
        tokio::spawn(async move {
            drive(pods, 32, move |_, i| {
                let (app, created) = (app.clone(), created.clone());
                async move {
                    let name = format!("pod-{i:06}");
                    let mut spec = json!({"containers": [{"name": "c", "image": "registry.local/app:1",
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
                    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": spec});
                    let call = skiff_control::controllers::write::call(&app, "", "pods", "default", None, None, "bench");
                    let t = Instant::now();
                    app.create(&call, pod).await.map_err(|e| anyhow::anyhow!(e.message))?;
                    created.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(skiff_control::objects::keys::object(skiff_control::objects::keys::PODS, Some("default"), &name), t);
                    Ok(())
                }
            })
            .await
        })
    });
    if backlog && let Some(c) = creator.take() {
        c.await??;
        start = Instant::now();
        let caches = skiff_control::controllers::start(app.clone(), &Default::default());
        skiff_control::scheduler::start(app.clone(), &caches);
    }
    let mut latencies = Vec::with_capacity(pods);
    let mut bound = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while bound.len() < pods && Instant::now() < deadline {
        let Ok(Ok(Some(event))) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await else {
            continue;
        };
        if event.kind != EventKind::Put {
            continue;
        }
        let obj: Value = serde_json::from_slice(&event.kv.value)?;
        if obj["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())
            && bound.insert(event.kv.key.clone())
        {
            let at = Instant::now();
            let t0 = if backlog {
                start
            } else {
                created
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .get(&event.kv.key)
                    .copied()
                    .unwrap_or(at)
            };
            latencies.push(at.saturating_duration_since(t0));
        }
    }
    if let Some(c) = creator {
        c.await??;
    }
    let elapsed = start.elapsed();
    let mut summary = summary("skiff-scheduler", 0, bound.len(), elapsed, latencies);
    summary["nodes"] = json!(nodes);
    summary["pods"] = json!(pods);
    store.shutdown().await;
    Ok(summary)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut interrupt, mut terminate) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    // On a signal the benchmark's future is dropped, and with it every process it started and
    // what each side made on the host (their `Drop`s), as on an error.
    let result = tokio::select! {
        result = run(std::env::args().collect()) => result?,
        _ = interrupt.recv() => bail!("interrupted (SIGINT); what the benchmark started is stopped"),
        _ = terminate.recv() => bail!("terminated (SIGTERM); what the benchmark started is stopped"),
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

/// The benchmark `args` name; its results.
async fn run(args: Vec<String>) -> anyhow::Result<Value> {
    let flag = |name: &str| -> Option<PathBuf> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    // `--name A,B,...`, split.
    let list = |name: &str| {
        flag(name).map(|v| {
            v.to_string_lossy()
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
    };
    // `--name A,B,...` as numbers, or `default` without the flag.
    let numbers = |name: &str, default: Vec<usize>| -> anyhow::Result<Vec<usize>> {
        match list(name) {
            Some(v) => v
                .iter()
                .map(|n| n.parse().with_context(|| format!("{name} takes numbers")))
                .collect(),
            None => Ok(default),
        }
    };
    // `--name N`, or `default` without the flag.
    let number = |name: &str, default: usize| {
        flag(name)
            .and_then(|r| r.to_str().and_then(|r| r.parse().ok()))
            .unwrap_or(default)
    };
    let result = match args.get(1).map(String::as_str) {
        Some("store") => {
            let etcd = flag("--etcd").context("--etcd PATH is required")?;
            let runs = [(1, 2_000), (64, 20_000)];
            let mut all = bench_skiff_store(&runs).await?;
            all.extend(bench_etcd(&etcd, &runs).await?);
            json!({"store": all})
        }
        Some("store-etcd") => {
            let control = flag("--control").context("--control PATH is required")?;
            let etcd = flag("--etcd").context("--etcd PATH is required")?;
            let kills = flag("--leader-kills").and_then(|n| n.to_str().and_then(|n| n.parse().ok()));
            match kills {
                Some(n) => {
                    let keep = flag("--keep-logs");
                    json!({"store_etcd": etcd_api::kills_only(&control, n, keep.as_deref()).await?})
                }
                None => {
                    // --members/--systems/--clients/--sizes A,B: fewer shapes, to profile one.
                    let all = etcd_api::Only::default();
                    let only = etcd_api::Only {
                        members: numbers("--members", all.members)?,
                        clients: numbers("--clients", all.clients)?,
                        sizes: numbers("--sizes", all.sizes)?,
                        systems: list("--systems").unwrap_or(all.systems),
                    };
                    json!({"store_etcd": etcd_api::run(&control, &etcd, &only).await?})
                }
            }
        }
        Some("api") => {
            let control = flag("--control").context("--control PATH is required")?;
            json!({"api": bench_api(&control, &[(1, 10_000), (64, 10_000)]).await?})
        }
        Some("peers-api") => {
            let control = flag("--control").context("--control PATH is required")?;
            let etcd = flag("--etcd").context("--etcd PATH is required")?;
            let bin = flag("--upstream-bin").context("--upstream-bin DIR is required")?;
            let rounds = number("--rounds", 3);
            let systems = list("--systems").unwrap_or_else(|| vec!["skiff".into(), "upstream".into()]);
            json!({"peers_api": peers::api(&control, &etcd, &bin, rounds, &systems).await?})
        }
        Some("peers-scheduler") => {
            let control = flag("--control").context("--control PATH is required")?;
            let etcd = flag("--etcd").context("--etcd PATH is required")?;
            let bin = flag("--upstream-bin").context("--upstream-bin DIR is required")?;
            let (rounds, pods) = (number("--rounds", 3), number("--pods", 10_000));
            let nodes = numbers("--nodes", vec![1_000, 5_000])?;
            json!({"peers_scheduler": peers::scheduler(&control, &etcd, &bin, &nodes, pods, rounds).await?})
        }
        Some("peers-node") => {
            let control = flag("--control").context("--control PATH is required")?;
            let agent = flag("--agent").context("--agent PATH is required")?;
            let etcd = flag("--etcd").context("--etcd PATH is required")?;
            let bin = flag("--upstream-bin").context("--upstream-bin DIR is required")?;
            let (rounds, singles) = (number("--rounds", 3), number("--singles", 5));
            let systems = list("--systems").unwrap_or_else(|| vec!["skiff".into(), "upstream".into()]);
            json!({"peers_node": peers_node::node(&control, &agent, &etcd, &bin, rounds, singles, &systems).await?})
        }
        Some("pods") => {
            let control = flag("--control").context("--control PATH is required")?;
            let agent = flag("--agent").context("--agent PATH is required")?;
            json!({"pods": pods::run(&control, &agent, 20, 3)?})
        }
        Some("proxy") => {
            // `proxy [--sizes 100,1000] [--planes ebpf,nftables]`
            let sizes = numbers("--sizes", vec![100, 1_000, 10_000])?;
            let planes = list("--planes").unwrap_or_else(proxy::planes);
            // `--upstream-bin DIR --etcd PATH`: for the kube-proxy plane.
            let upstream = match (flag("--upstream-bin"), flag("--etcd")) {
                (Some(bin), Some(etcd)) => Some(proxy::Upstream { etcd, bin }),
                _ => None,
            };
            json!({"proxy": proxy::bench(&sizes, &planes, upstream.as_ref()).await?})
        }
        Some("proxy-client") => proxy::client(
            std::path::Path::new(args.get(2).context("targets file")?),
            args.get(3).and_then(|n| n.parse().ok()),
        )?,
        Some("crun-loop") => {
            let (b, root) = (args.get(2).context("bundle")?, args.get(3).context("root")?);
            let n: usize = args.get(4).and_then(|n| n.parse().ok()).unwrap_or(50);
            pods::crun_loop(std::path::Path::new(b), std::path::Path::new(root), n)?
        }
        Some("scheduler") => {
            let nodes: usize = args
                .get(2)
                .and_then(|n| n.parse().ok())
                .context("usage: skiff-bench scheduler NODES PODS")?;
            let pods: usize = args
                .get(3)
                .and_then(|n| n.parse().ok())
                .context("usage: skiff-bench scheduler NODES PODS")?;
            let backlog = args.get(4).is_some_and(|a| a == "--backlog");
            json!({"scheduler": bench_scheduler(nodes, pods, backlog).await?})
        }
        _ => bail!(
            "usage: skiff-bench store --etcd PATH | store-etcd --control PATH --etcd PATH [--members N,..] [--systems skiff,etcd-3.4] [--clients N,..] [--sizes N,..] [--leader-kills N [--keep-logs DIR]] | api --control PATH | peers-api --control PATH --etcd PATH --upstream-bin DIR [--rounds N] [--systems skiff,upstream] | peers-scheduler --control PATH --etcd PATH --upstream-bin DIR [--rounds N] [--nodes N,..] [--pods N] | peers-node --control PATH --agent PATH --etcd PATH --upstream-bin DIR [--rounds N] [--singles N] [--systems skiff,upstream] | scheduler NODES PODS [--backlog] | pods --control PATH --agent PATH | proxy [--sizes N,..] [--planes P,..] [--upstream-bin DIR --etcd PATH]"
        ),
    };
    Ok(result)
}
