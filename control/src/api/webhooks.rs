//! The API server's side of admission webhooks (`objects::admission::webhooks` decides what is
//! sent and what an answer means): the webhook configurations in force, from a cache of the
//! `admissionregistration.k8s.io` objects, and the calls. A webhook behind a Service is reached
//! as the aggregator reaches its servers: one of the Service's ready endpoints, through its
//! node's tunnel, over TLS checked against the webhook's `caBundle` for the name
//! `SERVICE.NAMESPACE.svc`; a webhook at a `url` directly, checked against its `caBundle` or
//! the host's trusted roots.

use std::sync::{Arc, OnceLock, Weak};

use axum::body::Body;
use axum::http::header;
use base64::Engine;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::App;
use crate::controllers::runtime::Cache;
use crate::objects::Objects;
use crate::objects::admission::webhooks::{Backend, GROUP, Phase};
use crate::objects::keys;

/// Where hosts keep their trusted roots (Debian's `ca-certificates`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The webhook configurations and the means to call them.
#[derive(Debug)]
pub struct Calls {
    app: OnceLock<Weak<App>>,
    /// Weak: the objects hold these calls.
    objects: Weak<Objects>,
    cache: OnceLock<Arc<Cache>>,
}

impl Calls {
    /// Calls for the webhooks configured among `objects`.
    pub fn new(objects: &Arc<Objects>) -> Arc<Self> {
        Arc::new(Self {
            app: OnceLock::new(),
            objects: Arc::downgrade(objects),
            cache: OnceLock::new(),
        })
    }

    /// The API server whose tunnels reach webhooks in the cluster.
    pub fn serve(&self, app: &Arc<App>) {
        let _ = self.app.set(Arc::downgrade(app));
    }

    /// The webhook configurations' cache, started on first use (None once the objects are gone).
    fn cache(&self) -> Option<&Arc<Cache>> {
        if let Some(cache) = self.cache.get() {
            return Some(cache);
        }
        let objects = self.objects.upgrade()?;
        Some(
            self.cache
                .get_or_init(|| Cache::start(objects, &keys::group_prefix(GROUP))),
        )
    }
}

/// Trusted roots from a PEM bundle.
pub fn roots(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &*pem) {
        roots
            .add(cert.map_err(|e| format!("caBundle: {e}"))?)
            .map_err(|e| format!("caBundle: {e}"))?;
    }
    Ok(roots)
}

/// The TLS client for a webhook: its `caBundle`, or the host's roots without one.
fn tls_config(client_config: &Value) -> Result<rustls::ClientConfig, String> {
    let pem = match client_config["caBundle"].as_str().filter(|b| !b.is_empty()) {
        Some(bundle) => base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .map_err(|e| format!("caBundle: {e}"))?,
        None => std::fs::read(SYSTEM_ROOTS).unwrap_or_default(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(&pem)?)
        .with_no_client_auth())
}

/// Upstream's words for a certificate the bundle does not vouch for.
fn tls_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("UnknownIssuer") {
        "tls: failed to verify certificate: x509: certificate signed by unknown authority".to_owned()
    } else if text.contains("NotValidForName") {
        format!("tls: failed to verify certificate: x509: certificate is not valid for the name ({text})")
    } else {
        format!("tls: {text}")
    }
}

/// POSTs `body` to `path` over TLS on `stream`, to `server_name`.
async fn post<S>(
    stream: S,
    server_name: &str,
    tls: rustls::ClientConfig,
    path: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, stream)
        .await
        .map_err(|e| tls_error(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header(header::HOST, server_name)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Body::from(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "the server responded with the status code {} but did not return more information",
            status.as_u16()
        ));
    }
    Ok(bytes.to_vec())
}

/// The host and port of an `https://` URL.
pub(crate) fn host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("only https URLs are supported")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, port) = v6.split_once(']').ok_or("bad IPv6 address")?;
        let port = port
            .strip_prefix(':')
            .map_or(Ok(443), str::parse)
            .map_err(|_| "bad port")?;
        return Ok((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_owned(), port.parse().map_err(|_| "bad port")?)),
        None => Ok((authority.to_owned(), 443)),
    }
}

#[tonic::async_trait]
impl Backend for Calls {
    fn configurations(&self, phase: Phase) -> Vec<Arc<Value>> {
        self.cache()
            .map(|c| c.under(&keys::prefix(GROUP, phase.plural())))
            .unwrap_or_default()
    }

    async fn call(&self, client_config: &Value, path: &str, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let tls = tls_config(client_config)?;
        if let Some(url) = client_config["url"].as_str() {
            let (host, port) = host_port(url)?;
            let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
            return post(stream, &host, tls, path, body).await;
        }
        let app = self
            .app
            .get()
            .and_then(Weak::upgrade)
            .ok_or("the API server is not serving")?;
        let svc = &client_config["service"];
        let (ns, name) = (
            svc["namespace"].as_str().unwrap_or_default(),
            svc["name"].as_str().unwrap_or_default(),
        );
        let port = svc["port"].as_u64().unwrap_or(443).to_string();
        let (pod, number) = super::nodeproxy::service_backend(&app, ns, name, &port)
            .await
            .map_err(|e| e.message)?;
        let stream = super::nodeproxy::connect_pod(&app, &pod, number)
            .await
            .map_err(|e| e.message)?;
        post(stream, &format!("{name}.{ns}.svc"), tls, path, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_host_and_port() {
        assert_eq!(
            host_port("https://hook.example.com/x").unwrap(),
            ("hook.example.com".into(), 443)
        );
        assert_eq!(
            host_port("https://127.0.0.1:9443/x?y").unwrap(),
            ("127.0.0.1".into(), 9443)
        );
        assert_eq!(host_port("https://[::1]:9443/x").unwrap(), ("::1".into(), 9443));
        assert!(host_port("http://x").is_err());
    }
}
