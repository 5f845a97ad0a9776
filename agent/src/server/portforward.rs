//! `kubectl port-forward` on the agent: SPDY/3.1 streams (`portforward.k8s.io`) over the upgraded
//! connection the API server forwards, either as a plain SPDY upgrade or tunneled in WebSocket
//! binary messages (`SPDY/3.1+portforward.k8s.io`, kubectl's default since 1.31). Each forwarded
//! connection is a pair of streams sharing a `requestID`: `error` (a message if the port cannot be
//! reached) and `data`, which is joined to a TCP connection to `localhost:PORT` in the pod's network
//! namespace, as upstream's runtimes do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::server::spdy::{self, Frame, Out};
use crate::server::{Body, text};

/// The SPDY sub-protocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket sub-protocol that tunnels it.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Bytes read from the pod per data frame.
const CHUNK: usize = 32 * 1024;

/// `/portForward/NS/POD` with a SPDY or WebSocket upgrade.
pub fn handle(
    data_dir: &Path,
    req: &mut Request<hyper::body::Incoming>,
    ns: &str,
    pod: &str,
) -> Response<Body> {
    let header = |n: &str| crate::server::header(req, n);
    let Some(netns) = crate::server::exec::pod_dir(data_dir, ns, pod).map(|d| d.join("ns/net")) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on this node"),
        );
    };
    let upgrade = header("upgrade");
    let offered_ws = header("sec-websocket-protocol");
    let offered_spdy = header("x-stream-protocol-version");
    let key = header("sec-websocket-key");
    let mut r = Response::new(crate::server::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    let on_upgrade = hyper::upgrade::on(req);
    if upgrade.eq_ignore_ascii_case("websocket") {
        let offered = offered_ws;
        if !offered.split(',').any(|p| p.trim() == TUNNEL_PROTOCOL) {
            return text(
                StatusCode::BAD_REQUEST,
                format!("unsupported subprotocols {offered:?}; this node speaks {TUNNEL_PROTOCOL:?}"),
            );
        }
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&crate::server::exec::accept_key(&key)) {
            h.insert("sec-websocket-accept", v);
        }
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(TUNNEL_PROTOCOL),
        );
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            let (ours, theirs) = tokio::io::duplex(256 * 1024);
            tokio::spawn(tunnel(ws, theirs));
            serve(ours, netns).await;
        });
    } else if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        let offered = offered_spdy;
        if !offered.split(',').any(|p| p.trim() == PROTOCOL) {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports [{offered}], server supports [{PROTOCOL}]"
                ),
            );
        }
        h.insert("upgrade", HeaderValue::from_static("SPDY/3.1"));
        h.insert("x-stream-protocol-version", HeaderValue::from_static(PROTOCOL));
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            serve(TokioIo::new(upgraded), netns).await;
        });
    } else {
        return text(
            StatusCode::BAD_REQUEST,
            "port-forward needs a SPDY/3.1 or WebSocket upgrade",
        );
    }
    r
}

/// Carries the SPDY byte stream in WebSocket binary messages, both ways.
async fn tunnel<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, mut side: tokio::io::DuplexStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if side.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            n = side.read(&mut buf) => match n {
                Ok(n) if n > 0 => {
                    if ws.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
                _ => {
                    let _ = ws.close(None).await;
                    break;
                }
            },
        }
    }
}

/// One forwarded connection being set up: its two streams, as they arrive.
#[derive(Debug, Default)]
struct Pending {
    error: Option<u32>,
    data: Option<(u32, mpsc::UnboundedReceiver<Option<Bytes>>)>,
    port: Option<u16>,
}

/// Serves one port-forward session until the client ends it.
async fn serve<IO>(io: IO, netns: PathBuf)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let mut reader = spdy::Reader::new(rd);
    let (out, writer) = spdy::spawn_writer(wr);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut sinks: HashMap<u32, mpsc::UnboundedSender<Option<Bytes>>> = HashMap::new();
    let mut windows = spdy::Windows::default();
    let mut forwards = tokio::task::JoinSet::new();
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "port-forward session ended");
                break;
            }
        };
        match frame {
            Frame::SynStream { id, headers, .. } => {
                let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
                let (Some(kind), Some(request)) = (get("streamtype"), get("requestid")) else {
                    let _ = out.send(Out::Reset(id)).await;
                    continue;
                };
                if out.send(Out::Reply(id)).await.is_err() {
                    break;
                }
                let p = pending.entry(request.to_string()).or_default();
                p.port = p.port.or_else(|| get("port").and_then(|v| v.parse().ok()));
                match kind {
                    "error" => p.error = Some(id),
                    "data" => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        sinks.insert(id, tx);
                        p.data = Some((id, rx));
                    }
                    _ => {
                        let _ = out.send(Out::Reset(id)).await;
                        continue;
                    }
                }
                if p.error.is_some() && p.data.is_some() {
                    let Some(p) = pending.remove(request) else {
                        continue;
                    };
                    let (Some(error), Some((data, rx))) = (p.error, p.data) else {
                        continue;
                    };
                    forwards.spawn(forward(netns.clone(), p.port, error, data, rx, out.clone()));
                }
            }
            Frame::Data { id, data, fin } => {
                windows.received(id, data.len(), fin, &out).await;
                if let Some(tx) = sinks.get(&id) {
                    if !data.is_empty() {
                        let _ = tx.send(Some(data));
                    }
                    if fin {
                        let _ = tx.send(None);
                        sinks.remove(&id);
                    }
                }
            }
            Frame::RstStream { id } => {
                // Dropping the sender ends the connection's upload side.
                sinks.remove(&id);
                windows.reset(id);
            }
            Frame::Ping { id } => {
                let _ = out.send(Out::Ping(id)).await;
            }
            Frame::GoAway => break,
            Frame::Other => {}
        }
    }
    forwards.abort_all();
    drop(out);
    let _ = writer.await;
}

/// Joins data stream `data` to `localhost:port` in the pod's network namespace; reports a failure
/// on stream `error`, which is closed at the end either way.
async fn forward(
    netns: PathBuf,
    port: Option<u16>,
    error: u32,
    data: u32,
    mut rx: mpsc::UnboundedReceiver<Option<Bytes>>,
    out: mpsc::Sender<Out>,
) {
    let conn = match port.filter(|p| *p > 0) {
        None => Err(std::io::Error::other("invalid port")),
        Some(port) => connect(&netns, port).await,
    };
    let sock = match conn {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "error forwarding port {} to pod: {e}",
                port.map(|p| p.to_string()).unwrap_or_default()
            );
            let _ = out.send(Out::Data(error, Bytes::from(msg), true)).await;
            let _ = out.send(Out::Data(data, Bytes::new(), true)).await;
            return;
        }
    };
    let (mut r, mut w) = sock.into_split();
    let upload = async {
        while let Some(Some(chunk)) = rx.recv().await {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let download = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    if out.send(Out::Data(data, chunk, false)).await.is_err() {
                        return;
                    }
                }
                _ => break,
            }
        }
        let _ = out.send(Out::Data(data, Bytes::new(), true)).await;
    };
    tokio::join!(upload, download);
    let _ = out.send(Out::Data(error, Bytes::new(), true)).await;
}

/// A TCP connection to `localhost:port` in the network namespace at `netns` (IPv4, then IPv6).
async fn connect(netns: &Path, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let localhost = [
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ];
    crate::network::pod_net::tcp_connect_in(Some(netns), localhost).await
}
