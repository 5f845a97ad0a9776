//! HTTPS serving: TLS with optional client certificates, HTTP/1.1 and HTTP/2, and the caller's
//! identity attached to each request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::pki::Pki;

/// Who made a request, from the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name (certificate CN).
    pub user: String,
    /// Groups (certificate O).
    pub groups: Vec<String>,
}

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Errors while setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM block could not be parsed.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem(e.to_string()))
}

/// Builds the server TLS configuration: our serving certificate, client certificates optional
/// (verified against the cluster CA when presented), ALPN h2 and http/1.1.
pub fn tls_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&pki.ca_pem)? {
        roots.add(cert)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsSetupError::Pem(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut pki.serving.key_pem.as_bytes())
        .map_err(|e| TlsSetupError::Pem(e.to_string()))?
        .ok_or_else(|| TlsSetupError::Pem("no private key".into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&pki.serving.cert_pem)?, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn identity(cert: &CertificateDer<'_>) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(Identity { user, groups })
}

/// Bounds on connections, as kube-apiserver's (timeouts) plus a connection cap with a reserve.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Connections served normally.
    pub max: usize,
    /// Connections beyond `max` that still serve health checks (`/readyz`, `/livez`, `/healthz`)
    /// and `system:masters` clients, so an operator can get in while the server is full; other
    /// requests on them get `429`. Past `max + reserve` connections are closed when accepted.
    pub reserve: usize,
    /// Time for a client to complete the TLS handshake (kube-apiserver: its 32 s header deadline,
    /// which Go applies from the first byte, handshake included).
    pub handshake: Duration,
    /// Time for an HTTP/1 client to send a request's headers, also while idle between requests.
    pub header: Duration,
    /// HTTP/2 ping interval; a peer that does not answer within it is disconnected.
    pub keepalive: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max: 4096,
            reserve: 64,
            handshake: Duration::from_secs(32),
            header: Duration::from_secs(32),
            keepalive: Duration::from_secs(30),
        }
    }
}

impl ConnLimits {
    /// Limits that fit the process's descriptor limit: the cap leaves room for the store's
    /// files, the Raft transport and outgoing connections.
    pub fn for_descriptors(nofile: u64) -> Self {
        let default = Self::default();
        let usable = usize::try_from(nofile.saturating_sub(256)).unwrap_or(usize::MAX);
        let max = default.max.min(usable.saturating_sub(default.reserve)).max(16);
        Self { max, ..default }
    }
}

/// Raises the soft descriptor limit to the hard one and returns the limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(1 << 20).min(1 << 20);
    if limit.current.is_some_and(|c| c < hard)
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: limit.maximum,
            },
        )
        .is_ok()
    {
        return hard;
    }
    limit.current.unwrap_or(hard)
}

/// Logs a recurring condition at most once per interval, with how often it happened meanwhile.
#[derive(Debug)]
struct Throttled {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log now; if so, how many were suppressed since the last time.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// One open connection, counted until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a connection over the cap may serve this request: health checks, and clients of
/// `system:masters`.
fn reserved_may_serve(path: &str, who: Option<&Identity>) -> bool {
    matches!(path, "/readyz" | "/livez" | "/healthz")
        || who.is_some_and(|w| w.groups.iter().any(|g| g == "system:masters"))
}

fn too_many_connections() -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut r = crate::objects::status::ApiError::new(
        429,
        "TooManyRequests",
        "too many open connections, please try again later",
    )
    .into_response();
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

/// Accepts connections until the process ends, serving `app` on each within `limits`.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: Router, limits: ConnLimits) {
    let acceptor = TlsAcceptor::from(tls);
    let open = Arc::new(AtomicUsize::new(0));
    let mut accept_errors = Throttled::new(Duration::from_secs(5));
    let mut shed = Throttled::new(Duration::from_secs(5));
    let mut backoff = Duration::ZERO;
    let limits = Arc::new(limits);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => {
                backoff = Duration::ZERO;
                c
            }
            Err(e) => {
                // Out of descriptors (or another transient failure): the pending connection stays
                // in the backlog, so wait instead of spinning, and say so once in a while.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                if let Some(suppressed) = accept_errors.due() {
                    tracing::warn!(error = %e, suppressed, open = open.load(Ordering::Relaxed), "accepting connections failed; backing off");
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let count = open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(open.clone());
        if count >= limits.max + limits.reserve {
            if let Some(suppressed) = shed.due() {
                tracing::warn!(%peer, open = count, suppressed, "connection limit reached; closing new connections");
            }
            drop((tcp, slot));
            continue;
        }
        let reserved = count >= limits.max;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "tls handshake timed out");
                    return;
                }
            };
            let who = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(identity);
            let service =
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    let who = who.clone();
                    async move {
                        if reserved && !reserved_may_serve(req.uri().path(), who.as_ref()) {
                            return Ok(too_many_connections());
                        }
                        if let Some(who) = who {
                            req.extensions_mut().insert(who);
                        }
                        req.extensions_mut().insert(Peer(peer));
                        app.oneshot(req.map(axum::body::Body::new)).await
                    }
                });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(limits.keepalive)
                .keep_alive_timeout(limits.keepalive);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection closed with error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        assert_eq!(ConnLimits::for_descriptors(1024).max, 1024 - 256 - 64);
        assert_eq!(ConnLimits::for_descriptors(1 << 20).max, 4096);
        assert_eq!(ConnLimits::for_descriptors(100).max, 16);
    }

    #[test]
    fn reserved_connections_serve_health_and_admins_only() {
        let admin = Identity {
            user: "admin".into(),
            groups: vec!["system:masters".into()],
        };
        let node = Identity {
            user: "system:node:a".into(),
            groups: vec!["system:nodes".into()],
        };
        assert!(reserved_may_serve("/readyz", None));
        assert!(reserved_may_serve("/api/v1/pods", Some(&admin)));
        assert!(!reserved_may_serve("/api/v1/pods", Some(&node)));
        assert!(!reserved_may_serve("/version", None));
    }

    #[test]
    fn throttled_logs_count_what_they_skipped() {
        let mut t = Throttled::new(Duration::from_secs(3600));
        assert_eq!(t.due(), Some(0));
        assert_eq!(t.due(), None);
        assert_eq!(t.due(), None);
        t.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(t.due(), Some(2));
    }
}
