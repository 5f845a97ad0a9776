//! `skiff-bench store-etcd --control PATH --etcd PATH`: Skiff's store and etcd 3.4 driven by the
//! same client through the same etcd v3 gRPC API over loopback TLS (client certificates on both),
//! 1 and 3 members, 1 and 64 clients, 256-byte and 4 KiB values, fsync on: puts/s, p50/p99; and
//! with 3 members, how long after the leader is killed (SIGKILL) the next put is acknowledged.
//! etcd's members talk plain HTTP among themselves; Skiff's mutual TLS (its only mode).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Killed, drive, etcd, etcd_member, free_port, summary};

/// Client credentials and the CA, as PEM.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    cert: String,
    key: String,
}

/// One cluster under test: its processes (None once killed) and client endpoints.
struct Cluster {
    name: &'static str,
    procs: Vec<Option<Killed>>,
    endpoints: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    _dirs: Vec<tempfile::TempDir>,
}

fn client_tls(pki: &Pki) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pki.ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let certs = rustls_pemfile::certs(&mut pki.cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut pki.key.as_bytes())?.context("no client key")?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A gRPC channel over TLS to `addr` (`127.0.0.1:PORT`), the server checked for 127.0.0.1.
async fn channel(addr: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<tonic::transport::Channel> {
    let connector = tower::service_fn(move |uri: tonic::transport::Uri| {
        let tls = tls.clone();
        async move {
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(2379);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
            let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(connector)
        .await?)
}

impl Cluster {
    async fn kv(&self, i: usize) -> anyhow::Result<etcd::kv_client::KvClient<tonic::transport::Channel>> {
        Ok(etcd::kv_client::KvClient::new(
            channel(&self.endpoints[i], self.tls.clone()).await?,
        ))
    }

    /// Waits until member `i` takes a put.
    async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut kv) = self.kv(i).await {
                let put = etcd::PutRequest {
                    key: b"/bench-ready".to_vec(),
                    ..Default::default()
                };
                if kv.put(put).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{} member {i} did not take a put within 60 s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The member that leads, by asking each live one.
    async fn leader(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = 0;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if self.procs[i].is_none() {
                ids.push(0);
                continue;
            }
            let mut m =
                etcd::maintenance_client::MaintenanceClient::new(channel(endpoint, self.tls.clone()).await?);
            let s = m.status(etcd::StatusRequest {}).await?.into_inner();
            ids.push(s.header.map_or(0, |h| h.member_id));
            leader = s.leader;
        }
        ids.iter()
            .position(|id| *id == leader)
            .context("no member is the leader")
    }
}

fn pki() -> anyhow::Result<Pki> {
    let dir = tempfile::tempdir()?;
    let p = skiff_control::pki::Pki::load_or_create(dir.path(), "127.0.0.1:0".parse()?, &[])?;
    let client = p.issue_client("bench", &["system:masters"])?;
    std::fs::write(dir.path().join("server.crt"), &p.serving.cert_pem)?;
    std::fs::write(dir.path().join("server.key"), &p.serving.key_pem)?;
    Ok(Pki {
        ca: p.ca_pem.clone(),
        cert: client.cert_pem,
        key: client.key_pem,
        dir,
    })
}

async fn etcd_cluster(etcd_bin: &Path, members: usize, pki: &Pki) -> anyhow::Result<Cluster> {
    let ports: Vec<(u16, u16)> = (0..members)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut procs = Vec::new();
    let mut dirs = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let client_url = format!("https://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = etcd_member(
            etcd_bin,
            &format!("m{i}"),
            dir.path(),
            &client_url,
            &peer_url,
            &initial.join(","),
        )
        .arg("--cert-file")
        .arg(pki.dir.path().join("server.crt"))
        .arg("--key-file")
        .arg(pki.dir.path().join("server.key"))
        .arg("--trusted-ca-file")
        .arg(pki.dir.path().join("ca.crt"))
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd")?;
        procs.push(Some(Killed(child)));
        dirs.push(dir);
    }
    let cluster = Cluster {
        name: "etcd-3.4",
        procs,
        endpoints: ports.iter().map(|(c, _)| format!("127.0.0.1:{c}")).collect(),
        tls: client_tls(pki)?,
        _dirs: dirs,
    };
    for i in 0..members {
        cluster.wait_ready(i).await?;
    }
    Ok(cluster)
}

async fn skiff_cluster(control: &Path, members: usize, pki: &Pki) -> anyhow::Result<Cluster> {
    let mut procs = Vec::new();
    let mut dirs: Vec<tempfile::TempDir> = Vec::new();
    let mut endpoints = Vec::new();
    let mut first_url = String::new();
    for i in 0..members {
        let dir = tempfile::tempdir()?;
        let (api, raft, etcd_port) = (free_port()?, free_port()?, free_port()?);
        let data = dir.path().join("data");
        if i == 0 {
            // The bench's CA, so one client certificate works on both systems.
            std::fs::create_dir_all(data.join("pki"))?;
            for name in ["ca.crt", "ca.key"] {
                std::fs::copy(pki.dir.path().join(name), data.join("pki").join(name))?;
            }
        }
        let mut cmd = Command::new(control);
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
            .args(["--etcd-listen", &format!("127.0.0.1:{etcd_port}")])
            .args(["--name", &format!("m{i}")]);
        if i > 0 {
            cmd.args(["--join", &first_url, "--token-file"])
                .arg(dirs[0_usize].path().join("data/server-token"));
        }
        let log = std::fs::File::create(dir.path().join("control.log"))?;
        let child = cmd
            // SKIFF_BENCH_LOG: the members' log filter, to see what a failover does.
            .env(
                "RUST_LOG",
                std::env::var("SKIFF_BENCH_LOG").unwrap_or_else(|_| "warn,openraft=error".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting skiff-control")?;
        procs.push(Some(Killed(child)));
        endpoints.push(format!("127.0.0.1:{etcd_port}"));
        if i == 0 {
            first_url = format!("https://127.0.0.1:{api}");
        }
        dirs.push(dir);
        let cluster = Cluster {
            name: "skiff",
            procs: Vec::new(),
            endpoints: endpoints.clone(),
            tls: client_tls(pki)?,
            _dirs: Vec::new(),
        };
        if let Err(e) = cluster.wait_ready(i).await {
            let log = std::fs::read_to_string(dirs[i].path().join("control.log")).unwrap_or_default();
            bail!("{e:#}; its log:\n{log}");
        }
    }
    Ok(Cluster {
        name: "skiff",
        procs,
        endpoints,
        tls: client_tls(pki)?,
        _dirs: dirs,
    })
}

/// Puts of `size` bytes: `total` of them by `clients` clients, each on its own connection to a
/// member (spread over the members).
async fn puts(
    cluster: &Cluster,
    members: usize,
    clients: usize,
    total: usize,
    size: usize,
) -> anyhow::Result<Value> {
    let mut kvs = Vec::new();
    for c in 0..clients {
        kvs.push(cluster.kv(c % members).await?);
    }
    let kvs = Arc::new(kvs);
    let value = Arc::new(vec![b'x'; size]);
    let prefix = format!("/bench/{members}-{clients}-{size}/");
    let (elapsed, lat) = drive(total, clients, move |w, i| {
        let (mut kv, value, key) = (kvs[w].clone(), value.clone(), format!("{prefix}{i:08}"));
        async move {
            kv.put(etcd::PutRequest {
                key: key.into_bytes(),
                value: value.to_vec(),
                ..Default::default()
            })
            .await?;
            Ok(())
        }
    })
    .await?;
    let mut s = summary(cluster.name, clients, total, elapsed, lat);
    s["members"] = json!(members);
    s["value_bytes"] = json!(size);
    Ok(s)
}

/// Kills the leader while one client puts in a loop (moving to the next member when its own
/// fails); returns the time from the kill to the next acknowledged put.
async fn leader_kill(cluster: &mut Cluster) -> anyhow::Result<Duration> {
    let leader = cluster.leader().await?;
    let mut clients = Vec::new();
    for i in 0..cluster.endpoints.len() {
        clients.push(cluster.kv(i).await?);
    }
    let mut current = (leader + 1) % clients.len();
    // Warm: a put through the member the client starts on.
    clients[current]
        .put(etcd::PutRequest {
            key: b"/bench-kill/warm".to_vec(),
            ..Default::default()
        })
        .await?;
    current = leader;
    cluster.procs[leader] = None; // SIGKILL
    let killed = Instant::now();
    let mut n = 0u64;
    loop {
        n += 1;
        let put = etcd::PutRequest {
            key: format!("/bench-kill/{n}").into_bytes(),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(2), clients[current].put(put)).await {
            Ok(Ok(_)) => return Ok(killed.elapsed()),
            _ => {
                current = (current + 1) % clients.len();
                if current == leader {
                    current = (current + 1) % clients.len();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if killed.elapsed() > Duration::from_secs(60) {
            let logs: String = cluster
                ._dirs
                .iter()
                .map(|d| std::fs::read_to_string(d.path().join("control.log")).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n");
            bail!(
                "{}: no put acknowledged within 60 s of the leader's kill; logs:\n{logs}",
                cluster.name
            );
        }
    }
}

/// Which shapes a run measures: every one by default; fewer to profile one of them.
#[derive(Clone, Debug)]
pub struct Only {
    pub members: Vec<usize>,
    pub systems: Vec<String>,
    pub clients: Vec<usize>,
    pub sizes: Vec<usize>,
}

impl Default for Only {
    fn default() -> Self {
        Self {
            members: vec![1, 3],
            systems: vec!["skiff".into(), "etcd-3.4".into()],
            clients: vec![1, 64],
            sizes: vec![256, 4096],
        }
    }
}

/// Every put shape (value size, clients) of `only` on `cluster`, in the order of the full run.
async fn shapes(cluster: &Cluster, members: usize, only: &Only) -> anyhow::Result<Vec<Value>> {
    let mut results = Vec::new();
    for size in only.sizes.iter().copied() {
        for clients in only.clients.iter().copied() {
            let total = if clients == 1 { 1_000 } else { 10_000 };
            results.push(puts(cluster, members, clients, total, size).await?);
        }
    }
    Ok(results)
}

/// `kills` leader kills on fresh 3-member Skiff clusters, each after the put shapes of the full
/// run: the time from each kill to the next acknowledged put,
/// and the members' logs kept under `keep` when given.
pub async fn kills_only(control: &Path, kills: usize, keep: Option<&Path>) -> anyhow::Result<Value> {
    let pki = pki()?;
    std::fs::write(pki.dir.path().join("ca.crt"), &pki.ca)?;
    let mut runs = Vec::new();
    for run in 0..kills {
        let mut cluster = skiff_cluster(control, 3, &pki).await?;
        // Loaded first, as in the full run, where the kill follows the put shapes.
        shapes(&cluster, 3, &Only::default()).await?;
        let took = leader_kill(&mut cluster).await?;
        // The survivors' view of the election.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(dir) = keep {
            std::fs::create_dir_all(dir)?;
            for (i, d) in cluster._dirs.iter().enumerate() {
                let _ = std::fs::copy(
                    d.path().join("control.log"),
                    dir.join(format!("run{run}-m{i}.log")),
                );
            }
        }
        runs.push(took.as_millis() as u64);
    }
    Ok(json!({"leader_kill_ms": runs}))
}

/// Both systems, every shape of `only`.
pub async fn run(control: &Path, etcd_bin: &Path, only: &Only) -> anyhow::Result<Value> {
    let pki = pki()?;
    std::fs::write(pki.dir.path().join("ca.crt"), &pki.ca)?;
    let mut results = Vec::new();
    let mut kills = Vec::new();
    for members in only.members.iter().copied() {
        for system in only.systems.iter().map(String::as_str) {
            let mut cluster = match system {
                "skiff" => skiff_cluster(control, members, &pki).await?,
                _ => etcd_cluster(etcd_bin, members, &pki).await?,
            };
            results.extend(shapes(&cluster, members, only).await?);
            if members == 3 {
                let took = leader_kill(&mut cluster).await?;
                kills.push(json!({"system": system, "ms": took.as_millis() as u64}));
            }
        }
    }
    Ok(json!({"puts": results, "leader_kill": kills}))
}
