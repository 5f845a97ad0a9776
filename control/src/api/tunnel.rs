//! Node tunnels: an agent keeps one connection open to the API server (`GET /skiff/v1/tunnel`,
//! upgraded to `skiff-tunnel/1`), authenticated by its node certificate, and the API server reaches
//! the agent through it, as k3s does, so nodes need no inbound port. Over the upgraded connection
//! the API server is an HTTP/2 client; each request it forwards opens one `CONNECT` stream, and on
//! that stream speaks HTTP/1.1 to the agent as if it had dialled the agent's port (so upgrades for
//! exec, attach and port-forward pass unchanged).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::StatusCode;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioExecutor;

use super::server::Identity;
use crate::objects::status::ApiError;

/// The protocol named in the tunnel's `Upgrade` header.
pub const PROTOCOL: &str = "skiff-tunnel/1";

/// Open tunnels by node name: (generation, the HTTP/2 client over the tunnel).
type Open = HashMap<String, (u64, SendRequest<Empty<Bytes>>)>;

/// The open tunnels, by node name.
#[derive(Debug, Default)]
pub struct Tunnels {
    open: Mutex<Open>,
    next: AtomicU64,
}

impl Tunnels {
    fn insert(&self, node: &str, sender: SendRequest<Empty<Bytes>>) -> u64 {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(node.to_owned(), (generation, sender));
        generation
    }

    fn remove(&self, node: &str, generation: u64) {
        let mut open = self.lock();
        if open.get(node).is_some_and(|(g, _)| *g == generation) {
            open.remove(node);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh byte stream to `node`'s agent through its tunnel, if the node has one open.
    pub async fn open_stream(&self, node: &str) -> Option<Result<Upgraded, String>> {
        let mut sender = self.lock().get(node).map(|(_, s)| s.clone())?;
        Some(
            async {
                sender.ready().await.map_err(|e| format!("tunnel: {e}"))?;
                let req = hyper::Request::builder()
                    .method(hyper::Method::CONNECT)
                    .uri(format!("{node}:10250"))
                    .body(Empty::new())
                    .map_err(|e| e.to_string())?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("tunnel: {e}"))?;
                if resp.status() != StatusCode::OK {
                    return Err(format!("tunnel: the agent answered {}", resp.status()));
                }
                let io = hyper::upgrade::on(resp)
                    .await
                    .map_err(|e| format!("tunnel: {e}"))?;
                Ok(io)
            }
            .await,
        )
    }
}

/// Why this control plane refuses an agent with `user_agent` (agents name their version there): one
/// more than a minor version older, or newer. Clients that are not agents pass.
pub fn skew_refusal(user_agent: Option<&str>) -> Option<String> {
    let agent = user_agent.and_then(skiff_common::version::agent_version)?;
    skiff_common::version::check_skew(skiff_common::version::VERSION, agent).err()
}

/// `GET /skiff/v1/tunnel` from an agent: answers `101 Switching Protocols` and keeps the connection
/// as the node's tunnel until it closes (a newer tunnel of the same node replaces it).
pub fn accept(
    app: std::sync::Arc<super::App>,
    who: &Identity,
    parts: &mut axum::http::request::Parts,
) -> Result<Response, ApiError> {
    let node = who
        .user
        .strip_prefix("system:node:")
        .filter(|_| who.groups.iter().any(|g| g == "system:nodes"))
        .ok_or_else(|| {
            ApiError::new(
                403,
                "Forbidden",
                format!("User \"{}\" cannot open a node tunnel: only nodes can", who.user),
            )
        })?
        .to_owned();
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    if let Some(refusal) = skew_refusal(user_agent) {
        return Err(ApiError::bad_request(refusal));
    }
    let wanted = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !wanted {
        return Err(ApiError::bad_request(format!(
            "a node tunnel needs \"Upgrade: {PROTOCOL}\""
        )));
    }
    let upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("the connection cannot be upgraded"))?;
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "node tunnel upgrade failed");
                return;
            }
        };
        let (sender, conn) = match hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(std::time::Duration::from_secs(15))
            .keep_alive_timeout(std::time::Duration::from_secs(20))
            .handshake(io)
            .await
        {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "node tunnel handshake failed");
                return;
            }
        };
        let generation = app.tunnels.insert(&node, sender);
        tracing::info!(node = %node, "node tunnel open");
        if let Err(e) = conn.await {
            tracing::debug!(node = %node, error = %e, "node tunnel closed");
        }
        app.tunnels.remove(&node, generation);
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    Ok(resp)
}
