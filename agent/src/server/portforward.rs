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
/// The WebSocket channel protocol of upstream's port-forward without SPDY (the Python client's):
/// for the `i`-th requested port, channel `2i` carries data and `2i+1` errors, each opened by a
/// message with the port number (little-endian).
pub const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
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
    let query = req.uri().query().unwrap_or_default().to_owned();
    let on_upgrade = hyper::upgrade::on(req);
    let offers = |p: &str| offered_ws.split(',').any(|o| o.trim() == p);
    if upgrade.eq_ignore_ascii_case("websocket") {
        // SPDY tunneled in WebSocket messages (kubectl's) when offered, else the channel
        // protocol (the Python client's), whose ports come in the query.
        let (protocol, ports) = if offers(TUNNEL_PROTOCOL) {
            (TUNNEL_PROTOCOL, None)
        } else if offers(CHANNEL_PROTOCOL) {
            match query_ports(&query) {
                Ok(p) => (CHANNEL_PROTOCOL, Some(p)),
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            }
        } else {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "unsupported subprotocols {offered_ws:?}; this node speaks {TUNNEL_PROTOCOL:?} and {CHANNEL_PROTOCOL:?}"
                ),
            );
        };
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&crate::server::exec::accept_key(&key)) {
            h.insert("sec-websocket-accept", v);
        }
        h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            match ports {
                Some(ports) => serve_channels(ws, netns, ports).await,
                None => {
                    let (ours, theirs) = tokio::io::duplex(256 * 1024);
                    tokio::spawn(tunnel(ws, theirs));
                    serve(ours, netns).await;
                }
            }
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

/// The ports of a channel-protocol request: every `port` (the kubelet's name) or `ports` (the
/// API's) query parameter, each possibly a comma-separated list.
fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "port" && k != "ports" {
            continue;
        }
        for p in v
            .split("%2C")
            .flat_map(|p| p.split(','))
            .filter(|p| !p.is_empty())
        {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("invalid port {p:?}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// Serves the channel protocol: one connection to `localhost:PORT` in the pod per requested
/// port, for as long as it lasts; the WebSocket closes when every one has ended.
async fn serve_channels<S>(ws: tokio_tungstenite::WebSocketStream<S>, netns: PathBuf, ports: Vec<u16>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out, mut outgoing) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = outgoing.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let mut uploads = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (i, port) in ports.into_iter().enumerate() {
        let Ok(data) = u8::try_from(2 * i) else { break };
        let error = data + 1;
        let [lo, hi] = port.to_le_bytes();
        for channel in [data, error] {
            let _ = out
                .send(Message::Binary(Bytes::from(vec![channel, lo, hi])))
                .await;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        uploads.push(tx);
        forwards.spawn(forward_channel(netns.clone(), port, data, rx, out.clone()));
    }
    drop(out);
    let reading = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if b.len() > 1 && b[0] % 2 == 0 => {
                    if let Some(tx) = uploads.get(usize::from(b[0] / 2)) {
                        let _ = tx.send(b.slice(1..));
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    let client_left = tokio::select! {
        () = reading => true,
        () = async { while forwards.join_next().await.is_some() {} } => false,
    };
    if client_left {
        forwards.abort_all();
    }
    drop(forwards);
    let _ = writer.await;
}

/// One port of the channel protocol: joins channel `data` to `localhost:port` in the pod; a
/// failure is reported on the error channel (`data + 1`).
async fn forward_channel(
    netns: PathBuf,
    port: u16,
    data: u8,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    out: mpsc::Sender<Message>,
) {
    let framed = |channel: u8, bytes: &[u8]| {
        let mut m = Vec::with_capacity(bytes.len() + 1);
        m.push(channel);
        m.extend_from_slice(bytes);
        Message::Binary(Bytes::from(m))
    };
    let sock = match connect(&netns, port).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod: {e}");
            let _ = out.send(framed(data + 1, msg.as_bytes())).await;
            return;
        }
    };
    let (mut r, mut w) = sock.into_split();
    let upload = async {
        while let Some(chunk) = rx.recv().await {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let download = async {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 || out.send(framed(data, &buf[..n])).await.is_err() {
                break;
            }
        }
    };
    // The pod closing its side ends the forward; the client's uploads end with the session.
    tokio::select! {
        () = download => {}
        () = async { upload.await; std::future::pending::<()>().await } => {}
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

#[cfg(test)]
mod tests {
    use super::query_ports;

    #[test]
    fn ports_come_from_port_or_ports_parameters() {
        assert_eq!(query_ports("port=8080&port=9090"), Ok(vec![8080, 9090]));
        assert_eq!(query_ports("ports=80,443"), Ok(vec![80, 443]));
        assert_eq!(query_ports("ports=80%2C443&x=1"), Ok(vec![80, 443]));
        assert!(query_ports("").unwrap_err().contains("\"port\" is required"));
        assert!(query_ports("port=0").is_err());
        assert!(query_ports("port=http").is_err());
    }
}
