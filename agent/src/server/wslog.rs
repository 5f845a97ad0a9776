//! Container logs over WebSocket, as upstream's API server streams any streaming response to a
//! client that asks for a WebSocket upgrade (`wsstream.Reader`): each chunk of the log is one
//! message, binary for the `binary.k8s.io` protocol (and for a client that names none), base64
//! text for `base64.binary.k8s.io`; the server closes the connection at the end of the log (or,
//! when following, when the container exits or the client goes).

use base64::Engine;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::server::{Body, header, text};

/// The protocols a log stream speaks, as upstream's default reader protocols.
const PROTOCOLS: [&str; 2] = ["binary.k8s.io", "base64.binary.k8s.io"];

/// Whether `req` asks to upgrade to a WebSocket.
pub fn wants_websocket<B>(req: &Request<B>) -> bool {
    header(req, "upgrade").eq_ignore_ascii_case("websocket")
}

/// The protocol to answer with: the first the client offers that this side speaks; none when the
/// client offers none (binary then); an error when it offers only others.
fn negotiate(offered: &str) -> Result<Option<&'static str>, String> {
    let offered: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    offered
        .iter()
        .find_map(|o| PROTOCOLS.iter().find(|p| *p == o).copied())
        .map(Some)
        .ok_or_else(|| format!("unsupported subprotocols {offered:?}; logs are served as {PROTOCOLS:?}"))
}

/// Streams `log` (a successful log response) to the client of `req` over WebSocket. A response
/// that is not a success is answered as it is, without upgrading.
pub fn upgrade(req: &mut Request<hyper::body::Incoming>, log: Response<Body>) -> Response<Body> {
    if log.status() != StatusCode::OK {
        return log;
    }
    let protocol = match negotiate(&header(req, "sec-websocket-protocol")) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let key = header(req, "sec-websocket-key");
    let on_upgrade = hyper::upgrade::on(req);
    let mut body = log.into_body();
    let base64 = protocol == Some(PROTOCOLS[1]);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                .await;
        let (mut tx, mut rx) = ws.split();
        loop {
            tokio::select! {
                frame = body.frame() => {
                    let Some(Ok(frame)) = frame else { break };
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    let msg = if base64 {
                        Message::text(base64::engine::general_purpose::STANDARD.encode(&data))
                    } else {
                        Message::binary(data)
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                // The client says nothing on a log stream; a close or a dropped connection ends it.
                msg = rx.next() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = tx.close().await;
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.insert("connection", hyper::header::HeaderValue::from_static("Upgrade"));
    h.insert("upgrade", hyper::header::HeaderValue::from_static("websocket"));
    if let Ok(v) = hyper::header::HeaderValue::from_str(&crate::server::exec::accept_key(&key)) {
        h.insert("sec-websocket-accept", v);
    }
    if let Some(p) = protocol {
        h.insert(
            "sec-websocket-protocol",
            hyper::header::HeaderValue::from_static(p),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_offered_protocol_spoken_is_chosen() {
        assert_eq!(negotiate(""), Ok(None));
        assert_eq!(negotiate("binary.k8s.io"), Ok(Some("binary.k8s.io")));
        assert_eq!(
            negotiate("x, base64.binary.k8s.io, binary.k8s.io"),
            Ok(Some("base64.binary.k8s.io"))
        );
        assert!(negotiate("v4.channel.k8s.io").is_err());
    }
}
