//! `pods/NAME:PORT/proxy/...` (and `services/.../proxy`, which the API server resolves to a pod):
//! one HTTP request relayed to a port of a pod on this node and its answer streamed back. The
//! connection is made in the pod's network namespace, to its address (or loopback), so no route
//! from the node to pod addresses is needed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{Body, text};

/// Headers that belong to one connection, not to the request or answer relayed.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A TCP connection to `port` of pod `ns/pod`, made in the pod's network namespace (its address,
/// else loopback), with the address; or the answer saying why not.
async fn dial(
    data_dir: &Path,
    ns: &str,
    pod: &str,
    port: u16,
) -> Result<(tokio::net::TcpStream, Option<IpAddr>), Response<Body>> {
    let Some(dir) = super::exec::pod_dir(data_dir, ns, pod) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not on this node"),
        ));
    };
    let ip: Option<IpAddr> = std::fs::read_to_string(dir.join("ip"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut addrs: Vec<SocketAddr> = ip.map(|ip| SocketAddr::new(ip, port)).into_iter().collect();
    addrs.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    let netns = dir.join("ns/net");
    let netns = netns.exists().then_some(netns.as_path());
    match crate::network::pod_net::tcp_connect_in(netns, addrs).await {
        Ok(s) => Ok((s, ip)),
        Err(e) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "error trying to reach service: dial tcp {}:{port}: {e}",
                ip.map_or("127.0.0.1".into(), |i| i.to_string())
            ),
        )),
    }
}

/// `GET /podConnect/NS/POD/PORT` with `Upgrade: tcp`: the connection becomes a byte stream to the
/// pod's port, over which the API server speaks a protocol of its own (TLS to an aggregated API
/// server, which must see the API server's client certificate, not the agent's).
pub async fn connect(
    data_dir: &Path,
    req: &mut Request<hyper::body::Incoming>,
    ns: &str,
    pod: &str,
    port: u16,
) -> Response<Body> {
    let upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|u| u.to_str().ok())
        .unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("tcp") {
        return text(StatusCode::BAD_REQUEST, "podConnect needs Upgrade: tcp");
    }
    let (mut pod_side, _) = match dial(data_dir, ns, pod, port).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut client = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut pod_side).await;
        }
    });
    let mut answer = Response::new(super::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    answer.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    answer.headers_mut().insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("tcp"),
    );
    answer
}

/// An HTTP/1 connection over `stream`, driven in the background.
async fn http1<S>(stream: S) -> anyhow::Result<hyper::client::conn::http1::SendRequest<hyper::body::Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// TLS over `stream` to the pod at `ip`, accepting whatever certificate it shows.
async fn tls_connect(
    stream: tokio::net::TcpStream,
    ip: Option<IpAddr>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = std::sync::Arc::new(crate::node::client::unverified_tls()?);
    let name = match ip {
        Some(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        None => rustls::pki_types::ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
    };
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await?)
}

/// Relays `req` to port `port.0` of pod `ns/pod` (over TLS when `port.1`, not verifying the
/// pod's certificate, as upstream), asking for `rest` (the path after `proxy`, with the
/// request's query).
pub async fn relay(
    data_dir: &Path,
    req: Request<hyper::body::Incoming>,
    ns: &str,
    pod: &str,
    (port, tls): (u16, bool),
    rest: &str,
) -> Response<Body> {
    let (stream, ip) = match dial(data_dir, ns, pod, port).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let handshake = if tls {
        match tls_connect(stream, ip).await {
            Ok(stream) => http1(stream).await,
            Err(e) => Err(e),
        }
    } else {
        http1(stream).await
    };
    let mut sender = match handshake {
        Ok(sender) => sender,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("error trying to reach service: {e}"),
            );
        }
    };
    let (parts, body) = req.into_parts();
    let target = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let mut out = Request::builder().method(parts.method).uri(target);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != hyper::header::HOST {
            out = out.header(name, value);
        }
    }
    let host = match ip {
        Some(ip) => format!("{ip}:{port}"),
        None => format!("localhost:{port}"),
    };
    let Ok(out) = out.header(hyper::header::HOST, host).body(body) else {
        return text(StatusCode::BAD_REQUEST, "invalid proxied request");
    };
    match sender.send_request(out).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for h in HOP_BY_HOP {
                parts.headers.remove(*h);
            }
            Response::from_parts(parts, body.map_err(std::io::Error::other).boxed())
        }
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!("error trying to reach service: {e}"),
        ),
    }
}
