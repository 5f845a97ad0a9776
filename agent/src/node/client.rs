//! A small HTTPS client for the Kubernetes API, authenticated with the node's certificate.

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::ServerName;
use serde_json::Value;

type Https = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// TLS over TCP with `config`, offering HTTP/2 and, unless `h2_only`, HTTP/1.1.
fn https(config: &rustls::ClientConfig, h2_only: bool) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.clone())
        .https_only();
    if h2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().enable_http2().wrap_connector(http)
    }
}

/// The API servers the node knows: the `--server` it was given first, then every member of an
/// HA control plane it learned (the `default/kubernetes` Service's endpoints, as k3s's agent load
/// balancer does); requests go to the current one, and move to the next when it cannot be
/// reached.
#[derive(Debug)]
struct Servers {
    list: Vec<String>,
    current: usize,
}

/// The API server as the node sees it.
#[derive(Clone)]
pub struct ApiClient {
    client: Https,
    servers: Arc<std::sync::RwLock<Servers>>,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("server", &self.server())
            .finish_non_exhaustive()
    }
}

fn servers(server: &str) -> Arc<std::sync::RwLock<Servers>> {
    Arc::new(std::sync::RwLock::new(Servers {
        list: vec![server.trim_end_matches('/').to_owned()],
        current: 0,
    }))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn connector(config: &rustls::ClientConfig) -> Https {
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(https(config, false))
}

fn roots(ca_pem: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    Ok(roots)
}

/// A TLS client configuration that accepts any server certificate: for fetching the CA the join
/// token pins, and for `https` pod proxies (`skiff_common::tls::AnyServerCert`).
pub fn unverified_tls() -> anyhow::Result<rustls::ClientConfig> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(skiff_common::tls::AnyServerCert::new(provider()))
        .with_no_client_auth())
}

impl ApiClient {
    /// The API server requests go to now.
    pub fn server(&self) -> String {
        let s = self.servers.read().unwrap_or_else(|e| e.into_inner());
        s.list[s.current].clone()
    }

    /// Every API server known, the one given first.
    pub fn servers(&self) -> Vec<String> {
        self.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .clone()
    }

    /// Moves on from `failed` (if it is still the current one) to the next server known.
    pub fn fail_over(&self, failed: &str) {
        let mut s = self.servers.write().unwrap_or_else(|e| e.into_inner());
        if s.list.len() > 1 && s.list[s.current] == failed {
            s.current = (s.current + 1) % s.list.len();
            tracing::warn!(from = failed, to = %s.list[s.current], "API server unreachable; moving to another");
        }
    }

    /// The API servers learned besides the one given first (the current one is kept).
    pub fn learn_servers(&self, learned: &[String]) {
        let mut s = self.servers.write().unwrap_or_else(|e| e.into_inner());
        let current = s.list[s.current].clone();
        let mut list = vec![s.list[0].clone()];
        for url in learned {
            if !list.contains(url) {
                list.push(url.clone());
            }
        }
        if list != s.list {
            tracing::info!(servers = ?list, "API servers known");
            s.current = list.iter().position(|u| *u == current).unwrap_or(0);
            s.list = list;
        }
    }

    /// A client that does not verify the server yet (only for fetching the CA to pin).
    pub fn unverified(server: &str) -> anyhow::Result<Self> {
        let config = unverified_tls()?;
        Ok(Self {
            client: connector(&config),
            servers: servers(server),
            tls: Arc::new(config),
        })
    }

    /// A gRPC channel to the control plane over the same TLS (HTTP/2 only), connected lazily and
    /// kept alive with pings so that a silently dead connection is noticed.
    pub fn grpc_channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let server = self.server();
        let endpoint = tonic::transport::Endpoint::from_shared(server.clone())
            .with_context(|| format!("the server address {server}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .http2_keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .user_agent(skiff_common::version::AGENT_USER_AGENT)?;
        Ok(endpoint.connect_with_connector_lazy(https(&self.tls, true)))
    }

    /// A client that trusts `ca_pem` and presents no certificate.
    pub fn anonymous(server: &str, ca_pem: &str) -> anyhow::Result<Self> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth();
        Ok(Self {
            client: connector(&config),
            servers: servers(server),
            tls: Arc::new(config),
        })
    }

    /// A client that trusts `ca_pem` and authenticates with the node certificate.
    pub fn with_identity(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
            .context("no private key in the node key file")?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(ca_pem)?)
            .with_client_auth_cert(certs, key)?;
        Ok(Self {
            client: connector(&config),
            servers: servers(server),
            tls: Arc::new(config),
        })
    }

    /// Opens a connection of its own to the API server and upgrades it to `protocol` with a GET of
    /// `path` (HTTP/1.1, the node certificate presented); returns the upgraded byte stream.
    pub async fn upgrade(&self, path: &str, protocol: &str) -> anyhow::Result<hyper::upgrade::Upgraded> {
        let server = self.server();
        let upgraded = self.upgrade_at(&server, path, protocol).await;
        if upgraded.is_err() {
            self.fail_over(&server);
        }
        upgraded
    }

    async fn upgrade_at(
        &self,
        server: &str,
        path: &str,
        protocol: &str,
    ) -> anyhow::Result<hyper::upgrade::Upgraded> {
        let uri: hyper::Uri = server.parse().context("the server URL")?;
        let host = uri
            .host()
            .context("the server URL has no host")?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        tcp.set_nodelay(true)?;
        let mut config = (*self.tls).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.clone())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .context("TLS with the API server")?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn.with_upgrades());
        let req = hyper::Request::get(path)
            .header(
                hyper::header::HOST,
                uri.authority().map(|a| a.as_str()).unwrap_or(&host),
            )
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, protocol)
            .header("user-agent", skiff_common::version::AGENT_USER_AGENT)
            .body(http_body_util::Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        if status != 101 {
            let bytes = resp.into_body().collect().await?.to_bytes();
            return Err(api_error(status, &bytes).into());
        }
        Ok(hyper::upgrade::on(resp).await?)
    }

    /// Sends a request; returns the status code and the body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let bytes = Bytes::from(body.map(serde_json::to_vec).transpose()?.unwrap_or_default());
        let resp = self
            .send(|server| {
                hyper::Request::builder()
                    .method(method.clone())
                    .uri(format!("{server}{path}"))
                    .header("content-type", content_type)
                    .header("user-agent", skiff_common::version::AGENT_USER_AGENT)
                    .body(Full::new(bytes.clone()))
            })
            .await
            .with_context(|| format!("request to {}{path}", self.server()))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends the request `make` builds for a server, to the current one; one that cannot be
    /// connected to (the request never left) is tried on each other server known in turn.
    async fn send(
        &self,
        make: impl Fn(&str) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let tries = self.servers.read().unwrap_or_else(|e| e.into_inner()).list.len();
        let mut attempt = 0;
        loop {
            let server = self.server();
            match self.client.request(make(&server)?).await {
                Err(e) if e.is_connect() && attempt + 1 < tries => {
                    self.fail_over(&server);
                    attempt += 1;
                }
                Err(e) => {
                    if e.is_connect() {
                        self.fail_over(&server);
                    }
                    return Err(e.into());
                }
                Ok(resp) => return Ok(resp),
            }
        }
    }

    /// Starts a streaming GET (a watch, or followed logs); non-2xx answers become errors.
    pub async fn stream(&self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        let resp = self
            .send(|server| {
                hyper::Request::builder()
                    .method(Method::GET)
                    .uri(format!("{server}{path}"))
                    .header("user-agent", skiff_common::version::AGENT_USER_AGENT)
                    .body(Full::new(Bytes::new()))
            })
            .await
            .with_context(|| format!("request to {}{path}", self.server()))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = resp.into_body().collect().await?.to_bytes();
            return Err(api_error(status, &bytes).into());
        }
        Ok(resp.into_body())
    }

    /// Sends JSON and parses a JSON answer; non-2xx answers become errors with the server's message.
    pub async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        self.with_type(method, path, "application/json", body).await
    }

    /// Like [`json`](Self::json) with a specific Content-Type (patches).
    pub async fn with_type(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, bytes) = self.raw(method, path, content_type, body).await?;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &bytes).into());
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// The error for a non-2xx answer, with the server's `Status` message when it sent one.
fn api_error(code: u16, bytes: &[u8]) -> ApiStatus {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let message = value["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
    ApiStatus { code, message }
}

/// A non-success answer from the API server.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiStatus {
    /// HTTP status.
    pub code: u16,
    /// The Status message.
    pub message: String,
}

/// The HTTP status of an API error, if it is one.
pub fn status_code(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<ApiStatus>().map(|s| s.code)
}
