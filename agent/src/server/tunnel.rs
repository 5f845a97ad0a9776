//! The agent's end of the node tunnel: one connection the agent opens to the API server
//! (`GET /skiff/v1/tunnel`, upgraded to `skiff-tunnel/1`) and keeps open, over which the API server
//! reaches the agent's endpoint (logs, exec, attach, port-forward) without dialling the node, as
//! k3s does. The API server is the HTTP/2 client on it: each `CONNECT` stream it opens carries one
//! HTTP/1.1 connection to the agent's handler. The stream comes from the API server this agent
//! authenticated (its CA is pinned), so no client certificate is checked on it.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::node::client::ApiClient;
use crate::server::{self, Body};

/// The protocol named in the tunnel's `Upgrade` header (as the control plane's).
pub const PROTOCOL: &str = "skiff-tunnel/1";

/// How long a stream this side has finished with waits for the API server to finish it too.
const LINGER: Duration = Duration::from_secs(30);

/// Keeps a tunnel open until the process ends, reconnecting with back-off (1 s doubling to 30 s).
pub async fn run(api: ApiClient, data_dir: PathBuf) {
    let data_dir = Arc::new(data_dir);
    let mut backoff = Duration::from_secs(1);
    loop {
        match api.upgrade("/skiff/v1/tunnel", PROTOCOL).await {
            Ok(io) => {
                backoff = Duration::from_secs(1);
                tracing::info!("tunnel to the API server open");
                serve(io, data_dir.clone()).await;
                tracing::warn!("tunnel to the API server closed; reopening");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "opening the tunnel to the API server failed")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Serves the API server's `CONNECT` streams until the tunnel closes.
async fn serve(io: hyper::upgrade::Upgraded, data_dir: Arc<PathBuf>) {
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let data_dir = data_dir.clone();
        async move {
            if req.method() != Method::CONNECT {
                return Ok::<Response<Body>, Infallible>(server::text(
                    StatusCode::BAD_REQUEST,
                    "the tunnel carries CONNECT streams only",
                ));
            }
            let stream = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(stream) = stream.await {
                    server::serve_io(Lingering(Some(stream)), true, data_dir).await;
                }
            });
            Ok(Response::new(server::empty()))
        }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "tunnel connection ended");
    }
}

/// One `CONNECT` stream of the tunnel, which closes as a TCP connection would: when the agent is
/// done with it, the agent's half ends (`END_STREAM`) and the stream stays open until the API server
/// ends its half. Dropping an HTTP/2 stream outright resets it, and the API server's end then fails
/// its next write or flush at once; a log stream or exec that wrote its last bytes and returned
/// could lose them there, before the API server had passed them on to its client.
struct Lingering(Option<hyper::upgrade::Upgraded>);

impl Lingering {
    fn io(&mut self) -> Pin<&mut hyper::upgrade::Upgraded> {
        Pin::new(self.0.as_mut().expect("a stream is only taken when dropped"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(io), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        runtime.spawn(async move {
            let mut io = TokioIo::new(io);
            let _ = io.shutdown().await;
            let mut buf = [0u8; 4096];
            let drained = async { while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(LINGER, drained).await;
        });
    }
}

impl Read for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl Write for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}
