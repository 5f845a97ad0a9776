//! The agent's HTTPS endpoint (the kubelet port): container logs for `kubectl logs`, exec, attach,
//! port-forward, pod proxies, the kubelet's stats (`/stats/summary`, `/metrics/resource`,
//! `/metrics/cadvisor`) and the agent's metrics (`/metrics`), reached by the API server only. TLS with the node's certificate; clients must present a certificate of the
//! cluster CA that is not a node's.

pub mod channels;
pub mod exec;
pub mod portforward;
pub mod proxy;
pub mod spdy;
pub mod tunnel;
pub mod wslog;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::runtime::shim::EXITED;

/// Response bodies of the agent's endpoint.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A plain-text response.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into()))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

/// Prometheus' text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A response with a body of `content_type`.
fn typed(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = text(status, String::new());
    *r.body_mut() = Full::new(Bytes::from(body))
        .map_err(|e: Infallible| match e {})
        .boxed();
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// The value of request header `name` (empty when missing or not text).
pub fn header<B>(req: &Request<B>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// An empty body.
pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// Builds the TLS configuration: serve with the node's certificate, require CA-signed clients.
pub fn tls_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .context("no private key in the node key file")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The identity the API server presents when it dials an agent.
const API_SERVER: &str = "system:kube-apiserver";

/// Whether the peer's certificate is the API server's: only it may use the node's endpoints
/// (logs, exec, attach, port-forward, proxies), after it has authorized the request through
/// RBAC. Other clients of the cluster CA — users, other nodes — go through the API server.
fn is_api_server(cert: &rustls::pki_types::CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let subject = parsed.subject();
    subject
        .iter_common_name()
        .any(|cn| cn.as_str().ok() == Some(API_SERVER))
        && subject
            .iter_organization()
            .any(|o| o.as_str().ok() == Some("system:masters"))
}

/// Serves until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, data_dir: PathBuf) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let data_dir = Arc::new(data_dir);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let data_dir = data_dir.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let allowed = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(|c| is_api_server(c));
            serve_io(TokioIo::new(stream), allowed, data_dir).await;
        });
    }
}

/// Serves one connection (HTTP/1.1 with upgrades, or HTTP/2); `allowed`: whether the peer may use
/// the endpoint (else every request is forbidden).
pub async fn serve_io<I>(io: I, allowed: bool, data_dir: Arc<PathBuf>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let data_dir = data_dir.clone();
        async move {
            if !allowed {
                return Ok::<_, Infallible>(text(StatusCode::FORBIDDEN, "Forbidden"));
            }
            Ok(handle(&data_dir, req).await)
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, service)
        .await;
}

fn query(req: &Request<hyper::body::Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), skiff_common::url::percent_decode(v)))
        .collect()
}

async fn handle(data_dir: &Path, mut req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok"),
        ["stats", "summary"] => {
            let body = serde_json::to_vec(&crate::runtime::stats::summary()).unwrap_or_default();
            typed(StatusCode::OK, "application/json", body)
        }
        ["debug", "flags", "v"] if req.method() == hyper::Method::PUT => {
            use http_body_util::BodyExt;
            let body = match http_body_util::Limited::new(req.into_body(), 4096)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
            };
            match skiff_common::logging::set_filter_answer(&body) {
                Ok(answer) => text(StatusCode::OK, answer),
                Err(e) => text(StatusCode::BAD_REQUEST, e),
            }
        }
        ["metrics"] => typed(
            StatusCode::OK,
            PROMETHEUS_TEXT,
            crate::metrics::render().into_bytes(),
        ),
        ["metrics", which @ ("resource" | "cadvisor")] => typed(
            StatusCode::OK,
            PROMETHEUS_TEXT,
            crate::runtime::stats::prometheus(*which == "resource").into_bytes(),
        ),
        ["exec", ns, pod, container] => {
            let pairs = crate::server::exec::query_pairs(req.uri().query().unwrap_or(""));
            crate::server::exec::exec(data_dir, &mut req, ns, pod, container, &pairs)
        }
        ["attach", ns, pod, container] => {
            let pairs = crate::server::exec::query_pairs(req.uri().query().unwrap_or(""));
            crate::server::exec::attach(data_dir, &mut req, ns, pod, container, &pairs)
        }
        ["portForward", ns, pod] => crate::server::portforward::handle(data_dir, &mut req, ns, pod),
        ["containerLogs", ns, pod, container] => {
            let log = logs(data_dir, ns, pod, container, &query(&req)).await;
            if wslog::wants_websocket(&req) {
                wslog::upgrade(&mut req, log)
            } else {
                log
            }
        }
        ["podConnect", ns, pod, port] => match port.parse::<u16>() {
            Ok(port) if port > 0 => {
                let (ns, pod) = (ns.to_string(), pod.to_string());
                crate::server::proxy::connect(data_dir, &mut req, &ns, &pod, port).await
            }
            _ => text(StatusCode::BAD_REQUEST, format!("invalid port {port:?}")),
        },
        ["podProxy", ns, pod, port, ..] => {
            // The path after the port, exactly as asked (trailing slash and escapes kept).
            let prefix_len = format!("/podProxy/{ns}/{pod}/{port}").len();
            let rest = match &path[prefix_len.min(path.len())..] {
                "" => "/".to_owned(),
                r => r.to_owned(),
            };
            // `PORT` or `SCHEME:PORT`.
            let (scheme, number) = port.split_once(':').unwrap_or(("http", port));
            match (scheme, number.parse::<u16>()) {
                ("http" | "https", Ok(number)) if number > 0 => {
                    let (ns, pod, tls) = (ns.to_string(), pod.to_string(), scheme == "https");
                    crate::server::proxy::relay(data_dir, req, &ns, &pod, (number, tls), &rest).await
                }
                _ => text(StatusCode::BAD_REQUEST, format!("invalid port {port:?}")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// Finds the pod's log directory (`logs/<ns>_<name>_<uid>`), newest uid first.
fn pod_log_dir(data_dir: &Path, ns: &str, pod: &str) -> Option<(PathBuf, String)> {
    let prefix = format!("{ns}_{pod}_");
    let mut found: Vec<(std::time::SystemTime, PathBuf, String)> = std::fs::read_dir(data_dir.join("logs"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let uid = name.strip_prefix(&prefix)?.to_string();
            Some((e.metadata().and_then(|m| m.modified()).ok()?, e.path(), uid))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p, uid)| (p, uid))
}

/// One CRI log record.
struct Record<'a> {
    ts: &'a str,
    partial: bool,
    content: &'a [u8],
}

fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or(b"");
    Some(Record {
        ts,
        partial: tag == b"P",
        content,
    })
}

fn ts_seconds(ts: &str) -> Option<i128> {
    skiff_common::time::parse(ts).map(|t| t.unix_timestamp_nanos())
}

/// Options of a log request.
#[derive(Debug, Default, Clone)]
struct LogOpts {
    timestamps: bool,
    since_nanos: Option<i128>,
    tail: Option<usize>,
    limit: Option<usize>,
}

/// Renders complete records to the user's view (partial records joined).
fn render(records: &[u8], opts: &LogOpts, first_line: &mut bool) -> Vec<u8> {
    let mut out = Vec::new();
    for line in records.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Some(r) = parse_record(line) else { continue };
        if let Some(since) = opts.since_nanos
            && ts_seconds(r.ts).is_some_and(|t| t < since)
        {
            continue;
        }
        if opts.timestamps && *first_line {
            out.extend_from_slice(r.ts.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(r.content);
        *first_line = !r.partial;
        if !r.partial {
            out.push(b'\n');
        }
    }
    out
}

/// Keeps the last `n` lines of rendered output.
fn tail_lines(out: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let mut count = 0;
    let end = if out.ends_with(b"\n") {
        out.len() - 1
    } else {
        out.len()
    };
    for i in (0..end).rev() {
        if out[i] == b'\n' {
            count += 1;
            if count == n {
                return &out[i + 1..];
            }
        }
    }
    out
}

async fn logs(
    data_dir: &Path,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let Some((dir, uid)) = pod_log_dir(data_dir, ns, pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} has no logs on this node"),
        );
    };
    let mut attempts: Vec<u32> = std::fs::read_dir(dir.join(container))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".log")?.parse().ok())
        .collect();
    attempts.sort();
    let previous = q.get("previous").is_some_and(|v| v == "true");
    let attempt = if previous {
        if attempts.len() < 2 {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            );
        }
        attempts[attempts.len() - 2]
    } else {
        match attempts.last() {
            Some(a) => *a,
            None => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("container \"{container}\" in pod \"{pod}\" has no logs"),
                );
            }
        }
    };
    let file = dir.join(container).join(format!("{attempt}.log"));
    let mut opts = LogOpts {
        timestamps: q.get("timestamps").is_some_and(|v| v == "true"),
        tail: q.get("tailLines").and_then(|v| v.parse().ok()),
        limit: q.get("limitBytes").and_then(|v| v.parse().ok()),
        ..LogOpts::default()
    };
    if let Some(s) = q.get("sinceSeconds").and_then(|v| v.parse::<i64>().ok()) {
        opts.since_nanos =
            Some(time::OffsetDateTime::now_utc().unix_timestamp_nanos() - i128::from(s) * 1_000_000_000);
    } else if let Some(t) = q.get("sinceTime") {
        opts.since_nanos = ts_seconds(t);
    }
    let status_file = data_dir
        .join("pods")
        .join(&uid)
        .join("containers")
        .join(container)
        .join(attempt.to_string())
        .join("status")
        .join(EXITED);
    let follow = q.get("follow").is_some_and(|v| v == "true") && !previous;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    tokio::spawn(async move {
        let Ok(mut f) = tokio::fs::File::open(&file).await else {
            return;
        };
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf).await;
        let complete = buf.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
        let mut first_line = true;
        let rendered = render(&buf[..complete], &opts, &mut first_line);
        let mut out: &[u8] = &rendered;
        if let Some(n) = opts.tail {
            out = tail_lines(out, n);
        }
        let mut budget = opts.limit.unwrap_or(usize::MAX);
        let take = out.len().min(budget);
        budget -= take;
        if take > 0
            && tx
                .send(Ok(Frame::data(Bytes::copy_from_slice(&out[..take]))))
                .await
                .is_err()
        {
            return;
        }
        if !follow || budget == 0 {
            return;
        }
        let mut pos = complete as u64;
        let mut pending: Vec<u8> = buf[complete..].to_vec();
        loop {
            let exited = status_file.exists();
            let _ = f.seek(std::io::SeekFrom::Start(pos + pending.len() as u64)).await;
            let mut more = Vec::new();
            let _ = f.read_to_end(&mut more).await;
            if !more.is_empty() {
                pending.extend_from_slice(&more);
                if let Some(i) = pending.iter().rposition(|&b| b == b'\n') {
                    let chunk: Vec<u8> = pending.drain(..=i).collect();
                    pos += chunk.len() as u64;
                    let mut rendered = render(&chunk, &opts, &mut first_line);
                    rendered.truncate(budget);
                    budget -= rendered.len();
                    if !rendered.is_empty() && tx.send(Ok(Frame::data(Bytes::from(rendered)))).await.is_err()
                    {
                        return;
                    }
                    if budget == 0 {
                        return;
                    }
                }
                continue;
            }
            // Rotated (the shim renamed the file away): carry on in the new one.
            let rotated = {
                use std::os::unix::fs::MetadataExt;
                let now = std::fs::metadata(&file).map(|m| m.ino()).ok();
                let open = f.metadata().await.map(|m| m.ino()).ok();
                now.is_some() && now != open
            };
            if rotated && let Ok(next) = tokio::fs::File::open(&file).await {
                f = next;
                pos = 0;
                pending.clear();
                continue;
            }
            if exited {
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let stream = tokio_stream_from(rx);
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_api_servers_certificate_may_use_the_node() {
        let cert = |cn: &str, org: &str| {
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, org);
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().clone()
        };
        assert!(is_api_server(&cert("system:kube-apiserver", "system:masters")));
        // An administrator, a user with a signed CSR, another node: through the API server.
        assert!(!is_api_server(&cert("skiff-admin", "system:masters")));
        assert!(!is_api_server(&cert("jane", "devs")));
        assert!(!is_api_server(&cert("system:node:other", "system:nodes")));
        assert!(!is_api_server(&cert("system:kube-apiserver", "devs")));
    }

    #[test]
    fn renders_cri_records() {
        let log = b"2026-01-01T00:00:00.1Z stdout F one\n2026-01-01T00:00:01.1Z stderr P tw\n2026-01-01T00:00:01.2Z stderr F o\n2026-01-01T00:00:02Z stdout F three\n";
        let mut first = true;
        let out = render(log, &LogOpts::default(), &mut first);
        assert_eq!(out, b"one\ntwo\nthree\n");
        assert_eq!(tail_lines(&out, 2), b"two\nthree\n");
        let mut first = true;
        let opts = LogOpts {
            timestamps: true,
            since_nanos: ts_seconds("2026-01-01T00:00:01Z"),
            ..LogOpts::default()
        };
        assert_eq!(
            render(log, &opts, &mut first),
            b"2026-01-01T00:00:01.1Z two\n2026-01-01T00:00:02Z three\n"
        );
    }
}
