//! Liveness, readiness and startup probes (exec, HTTP, TCP, gRPC) with upstream's timing fields.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// What the probes of one container attempt have concluded so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The startup probe succeeded (or there is none).
    pub started: bool,
    /// The readiness probe's current answer (true without a probe, once started).
    pub ready: bool,
    /// The container was killed for failing liveness or startup.
    pub killed: Option<String>,
}

/// Where and how probes reach a container.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's address.
    pub ip: String,
    /// The container (its `ports` resolve named ports).
    pub container: Value,
    /// libcontainer's state root.
    pub root: PathBuf,
    /// The container id.
    pub id: String,
    /// The container's init process (killed when liveness fails).
    pub pid: i32,
    /// Grace period for a liveness kill.
    pub grace: Duration,
}

fn secs(p: &Value, key: &str, default: u64) -> u64 {
    p[key].as_u64().unwrap_or(default)
}

fn port(target: &Target, v: &Value) -> Option<u16> {
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = v.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    target.container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
}

/// Runs one probe once: Ok(()) on success, Err(why) on failure.
pub async fn run_once(target: &Target, probe: &Value) -> Result<(), String> {
    let timeout = Duration::from_secs(secs(probe, "timeoutSeconds", 1).max(1));
    if let Some(exec) = probe.get("exec") {
        let cmd: Vec<String> = exec["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect();
        let mut child = crate::runtime::helper::command("exec")
            .arg("--root")
            .arg(&target.root)
            .arg("--id")
            .arg(&target.id)
            .arg("--")
            .args(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut out = child.stdout.take();
        let status = tokio::time::timeout(timeout, child.wait()).await;
        let mut text = String::new();
        if let Some(o) = out.as_mut() {
            let _ = tokio::time::timeout(Duration::from_millis(100), o.read_to_string(&mut text)).await;
        }
        return match status {
            Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(format!(
                "command {cmd:?} exited with {}: {}",
                s.code().unwrap_or(-1),
                text.trim()
            )),
            Ok(Err(e)) => Err(e.to_string()),
        };
    }
    if let Some(h) = probe.get("httpGet") {
        let p = port(target, &h["port"]).ok_or("invalid port")?;
        let host = h["host"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(&target.ip)
            .to_string();
        let path = h["path"].as_str().unwrap_or("/");
        let https = h["scheme"].as_str() == Some("HTTPS");
        let url = format!("{}://{host}:{p}{path}", if https { "https" } else { "http" });
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{p}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for header in h["httpHeaders"].as_array().into_iter().flatten() {
            req.push_str(&format!(
                "{}: {}\r\n",
                header["name"].as_str().unwrap_or(""),
                header["value"].as_str().unwrap_or("")
            ));
        }
        req.push_str("\r\n");
        let attempt = async {
            let tcp = crate::network::pod_net::tcp_connect(&host, p)
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            let code = if https {
                // As upstream: TLS without verifying the certificate (a pod's is self-signed).
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("Get \"{url}\": {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(insecure_tls())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("Get \"{url}\": {e}"))?;
                status_code(tls, &req).await
            } else {
                status_code(tcp, &req).await
            }
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        return tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("Get \"{url}\": context deadline exceeded")));
    }
    if let Some(t) = probe.get("tcpSocket") {
        let p = port(target, &t["port"]).ok_or("invalid port")?;
        let host = t["host"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(&target.ip)
            .to_string();
        return tcp(&host, p, timeout).await;
    }
    if let Some(g) = probe.get("grpc") {
        let p = g["port"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or("invalid port")?;
        let service = g["service"].as_str().unwrap_or_default();
        return grpc(&target.ip, p, service, timeout).await;
    }
    Ok(())
}

/// Sends `req` and reads the status code of the answer's first line.
async fn status_code<S>(mut s: S, req: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let mut n = 0;
    // The status line may come in pieces (TLS records): read until its end or the buffer's.
    while n < buf.len() && !buf[..n].contains(&b'\n') {
        match s.read(&mut buf[n..]).await.map_err(|e| e.to_string())? {
            0 => break,
            k => n += k,
        }
    }
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "malformed HTTP response".to_string())
}

/// A TLS client that accepts any certificate (upstream's probes set `InsecureSkipVerify`), while
/// still checking the handshake's signatures.
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(skiff_common::tls::AnyServerCert::new(provider))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// A gRPC probe: `grpc.health.v1.Health/Check` for `service` over plaintext HTTP/2, from the node's
/// network namespace; healthy only when the answer is `SERVING`. Messages as upstream's kubelet.
async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    use skiff_proto::health::v1::health_check_response::ServingStatus;
    use skiff_proto::health::v1::{HealthCheckRequest, health_client::HealthClient};
    let connect = async {
        let stream = crate::network::pod_net::tcp_connect(host, port).await?;
        // tonic dials through a connector: hand it the connection made in the right namespace.
        let mut stream = Some(stream);
        tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
            .map_err(std::io::Error::other)?
            .connect_with_connector(tower::service_fn(move |_| {
                let s = stream.take().map(hyper_util::rt::TokioIo::new);
                async move { s.ok_or_else(|| std::io::Error::other("the probe's connection is used up")) }
            }))
            .await
            .map_err(std::io::Error::other)
    };
    let channel = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("failed to connect service \"{host}:{port}\": {e}")),
        Err(_) => {
            return Err(format!(
                "timeout: failed to connect service \"{host}:{port}\" within {}s",
                timeout.as_secs()
            ));
        }
    };
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    let answer = match tokio::time::timeout(timeout, client.check(request)).await {
        Ok(Ok(a)) => a.into_inner(),
        Ok(Err(status)) => {
            return Err(format!(
                "health rpc probe failed: rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            ));
        }
        Err(_) => {
            return Err(format!(
                "timeout: health rpc did not complete within {}s",
                timeout.as_secs()
            ));
        }
    };
    match ServingStatus::try_from(answer.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!(
            "service unhealthy (responded with \"{}\")",
            other.as_str_name()
        )),
        Err(_) => Err(format!(
            "service unhealthy (responded with status {})",
            answer.status
        )),
    }
}

/// Runs a lifecycle hook (exec, httpGet, tcpSocket or sleep) within `budget`.
pub async fn run_handler(target: &Target, handler: &Value, budget: Duration) -> Result<(), String> {
    if let Some(secs) = handler["sleep"]["seconds"].as_u64() {
        tokio::time::sleep(Duration::from_secs(secs).min(budget)).await;
        return Ok(());
    }
    let mut as_probe = handler.clone();
    as_probe["timeoutSeconds"] = serde_json::json!(budget.as_secs().max(1));
    run_once(target, &as_probe).await
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, crate::network::pod_net::tcp_connect(host, port)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: connect: {e}")),
        Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

/// Something to say about a probe, as an event.
pub type Report = Arc<dyn Fn(&'static str, String) + Send + Sync>;

/// Probes every period after the initial delay until `failureThreshold` failures in a row (false)
/// or, with `stop_on_success`, the first success (true). Each failure is reported.
async fn until_failed(
    target: &Target,
    p: &Value,
    kind: &str,
    stop_on_success: bool,
    report: &Report,
) -> bool {
    tokio::time::sleep(Duration::from_secs(secs(p, "initialDelaySeconds", 0))).await;
    let period = Duration::from_secs(secs(p, "periodSeconds", 10).max(1));
    let threshold = secs(p, "failureThreshold", 3).max(1);
    let mut failures = 0;
    loop {
        match run_once(target, p).await {
            Ok(()) if stop_on_success => return true,
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                report("Unhealthy", format!("{kind} probe failed: {e}"));
                if failures >= threshold {
                    return false;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Runs a container's probes until the task is aborted; updates `verdict` and wakes the worker.
pub async fn run(target: Target, verdict: Arc<Mutex<Verdict>>, wake: Arc<Notify>, report: Report) {
    let c = target.container.clone();
    let (startup, liveness, readiness) = (
        c.get("startupProbe").cloned(),
        c.get("livenessProbe").cloned(),
        c.get("readinessProbe").cloned(),
    );
    let set = |f: &dyn Fn(&mut Verdict)| {
        let mut v = verdict.lock().unwrap_or_else(|p| p.into_inner());
        let before = v.clone();
        f(&mut v);
        if *v != before {
            wake.notify_one();
        }
    };
    if startup.is_none() {
        set(&|v| {
            v.started = true;
            v.ready = readiness.is_none();
        });
    }
    let kill = |why: String| {
        let target = target.clone();
        let report = report.clone();
        let verdict = verdict.clone();
        let wake = wake.clone();
        async move {
            let name = target.container["name"].as_str().unwrap_or_default().to_string();
            report("Killing", format!("Container {name} {why}, will be restarted"));
            verdict.lock().unwrap_or_else(|p| p.into_inner()).killed = Some(why);
            wake.notify_one();
            let pid = nix::unistd::Pid::from_raw(target.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + target.grace;
            while tokio::time::Instant::now() < deadline && nix::sys::signal::kill(pid, None).is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    };
    // Startup first: the other probes wait for it.
    if let Some(p) = &startup {
        if !until_failed(&target, p, "Startup", true, &report).await {
            kill("failed startup probe".into()).await;
            return;
        }
        set(&|v| {
            v.started = true;
            v.ready = readiness.is_none();
        });
    }
    let readiness_loop = async {
        let Some(p) = readiness.clone() else { return };
        let (target, report) = (target.clone(), report.clone());
        let (verdict, wake) = (verdict.clone(), wake.clone());
        {
            tokio::time::sleep(Duration::from_secs(secs(&p, "initialDelaySeconds", 0))).await;
            let period = Duration::from_secs(secs(&p, "periodSeconds", 10).max(1));
            let (ok_needed, fail_needed) = (
                secs(&p, "successThreshold", 1).max(1),
                secs(&p, "failureThreshold", 3).max(1),
            );
            let (mut oks, mut fails) = (0, 0);
            loop {
                match run_once(&target, &p).await {
                    Ok(()) => {
                        oks += 1;
                        fails = 0;
                    }
                    Err(e) => {
                        fails += 1;
                        oks = 0;
                        report("Unhealthy", format!("Readiness probe failed: {e}"));
                    }
                }
                let ready = {
                    let v = verdict.lock().unwrap_or_else(|p| p.into_inner());
                    v.ready
                };
                let next = if oks >= ok_needed {
                    true
                } else if fails >= fail_needed {
                    false
                } else {
                    ready
                };
                if next != ready {
                    verdict.lock().unwrap_or_else(|p| p.into_inner()).ready = next;
                    wake.notify_one();
                }
                tokio::time::sleep(period).await;
            }
        }
    };
    let liveness_loop = async {
        if let Some(p) = liveness
            && !until_failed(&target, &p, "Liveness", false, &report).await
        {
            kill("failed liveness probe".into()).await;
        }
    };
    tokio::join!(readiness_loop, liveness_loop);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target() -> Target {
        Target {
            ip: "127.0.0.1".into(),
            container: json!({}),
            root: PathBuf::new(),
            id: String::new(),
            pid: 0,
            grace: Duration::from_secs(1),
        }
    }

    /// Answers each connection with 200 on `/ok` and 500 otherwise, over TLS with a self-signed
    /// certificate when `tls`; returns the port.
    async fn server(tls: bool) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tls.then(|| {
            let cert = rcgen::generate_simple_self_signed(vec!["pod.local".into()]).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
                        let mut buf = vec![0u8; 1024];
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ");
                        let line = if ok { "200 OK" } else { "500 Internal Server Error" };
                        let _ = s
                            .write_all(format!("HTTP/1.1 {line}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                            .await;
                        let _ = s.shutdown().await;
                    }
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                answer(s).await;
                            }
                        }
                        None => answer(tcp).await,
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn https_probes_speak_tls_without_verifying_and_read_the_status() {
        let https = server(true).await;
        let http = server(false).await;
        let probe = |scheme: &str, port: u16, path: &str| json!({"httpGet": {"scheme": scheme, "port": port, "path": path}, "timeoutSeconds": 5});
        let t = target();
        assert_eq!(run_once(&t, &probe("HTTPS", https, "/ok")).await, Ok(()));
        let failed = run_once(&t, &probe("HTTPS", https, "/broken")).await;
        assert_eq!(failed, Err("HTTP probe failed with statuscode: 500".into()));
        assert_eq!(run_once(&t, &probe("HTTP", http, "/ok")).await, Ok(()));
        // A plain HTTP server does not pass an HTTPS probe (it did when HTTPS was a TCP connect).
        let plain = run_once(&t, &probe("HTTPS", http, "/ok")).await;
        assert!(
            plain
                .as_ref()
                .is_err_and(|e| e.starts_with(&format!("Get \"https://127.0.0.1:{http}/ok\""))),
            "{plain:?}"
        );
    }
}
