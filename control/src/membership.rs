//! The client side of store membership: a new member joining (`skiff-control --join URL --token
//! T`) and `skiff-control member list|remove|promote --kubeconfig FILE`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::{Method, header};
use base64::Engine;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// How a request's server is trusted, and who the client is.
struct Tls {
    config: rustls::ClientConfig,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Trusts `ca_pem`; presents `client` (certificate and key PEM) if given.
    fn new(ca_pem: &str, client: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let roots = crate::api::webhooks::roots(ca_pem.as_bytes()).map_err(anyhow::Error::msg)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => {
                let certs = rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
                let key = rustls_pemfile::private_key(&mut key.as_bytes())?.context("no private key")?;
                builder.with_client_auth_cert(certs, key)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self { config })
    }

    /// Trusts any server: only to fetch the CA, which is then checked against the token's hash.
    fn unverified() -> anyhow::Result<Self> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(skiff_common::tls::AnyServerCert::new(provider()))
            .with_no_client_auth();
        Ok(Self { config })
    }
}

/// [`request`], trying again for up to a minute while nothing listens at `base` yet (members
/// started together: the one joined may still be starting).
async fn request_patiently(
    tls: &Tls,
    base: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match request(tls, base, method.clone(), path, body).await {
            Err(e)
                if format!("{e:#}").contains("Connection refused")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// One HTTPS request; returns the status and the body.
async fn request(
    tls: &Tls,
    base: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let (host, port) = crate::api::webhooks::host_port(base).map_err(|e| anyhow::anyhow!("{base:?}: {e}"))?;
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {base}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls.config.clone()))
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS with {base}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Body::from(body))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes.to_vec()))
}

/// The JSON answer of a successful request, or the Status message as the error.
async fn call(
    tls: &Tls,
    base: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let (status, bytes) = request_patiently(tls, base, method, path, body).await?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        let message = value["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{base}{path}: HTTP {status}: {message}");
    }
    Ok(value)
}

/// What a new member needs to join: the first member's URL and server token.
#[derive(Debug, Clone)]
pub struct Join {
    /// An existing member's API URL.
    pub url: String,
    /// The content of its `server-token` file.
    pub token: String,
}

impl Join {
    fn ca_hash(&self) -> anyhow::Result<&str> {
        let rest = self.token.trim().strip_prefix("K10").context(
            "the server token must start with K10 (use the content of the first member's server-token file)",
        )?;
        let (hash, secret) = rest.split_once("::").context("the server token has no CA hash")?;
        if !secret.starts_with("server:") {
            bail!(
                "this is not a server token (a node token cannot add a store member); use the first member's server-token file"
            );
        }
        Ok(hash)
    }

    /// Fetches the cluster CA (checked against the token) and the files every member shares, and
    /// writes them under `data_dir`. Done once: a member that has them keeps its own.
    pub async fn fetch_shared_files(&self, data_dir: &Path) -> anyhow::Result<()> {
        let hash = self.ca_hash()?;
        let (status, ca) =
            request_patiently(&Tls::unverified()?, &self.url, Method::GET, "/cacerts", None).await?;
        if status != 200 {
            bail!(
                "fetching the cluster CA from {}/cacerts failed with HTTP {status}",
                self.url
            );
        }
        let got = crate::pki::hex(ring::digest::digest(&ring::digest::SHA256, &ca).as_ref());
        if got != hash {
            bail!(
                "the server's CA does not match the token (expected sha256 {hash}, got {got}); refusing to join"
            );
        }
        let ca = String::from_utf8(ca).context("the cluster CA is not text")?;
        let tls = Tls::new(&ca, None)?;
        let bundle = call(
            &tls,
            &self.url,
            Method::POST,
            "/skiff/v1/members/bootstrap",
            Some(&json!({"token": self.token.trim()})),
        )
        .await
        .context("joining the store")?;
        let files = bundle["files"]
            .as_object()
            .context("the bootstrap answer has no files")?;
        for (name, content) in files {
            if name.contains("..") || name.starts_with('/') {
                bail!("the bootstrap answer names a file outside the data directory: {name:?}");
            }
            let path = data_dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            skiff_common::fs::write_private(&path, content.as_str().unwrap_or_default())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Asks the cluster to add this member (learner, caught up, voter); returns when it is a voter.
    pub async fn add(
        &self,
        ca_pem: &str,
        id: u64,
        name: &str,
        peer: &str,
        api_url: &str,
    ) -> anyhow::Result<()> {
        let tls = Tls::new(ca_pem, None)?;
        let body = json!({"token": self.token.trim(), "id": id, "name": name, "peerAddress": peer, "apiURL": api_url});
        match call(&tls, &self.url, Method::POST, "/skiff/v1/members", Some(&body)).await {
            Ok(_) => Ok(()),
            // Added before a crash that came before its log held the membership: it is us.
            Err(e)
                if e.to_string()
                    .contains(&format!("member {id:x} is already a member")) =>
            {
                Ok(())
            }
            Err(e) => Err(e.context("adding this member to the store")),
        }
    }
}

/// The bundle a joining member is handed: the shared PKI files, the tokens and the encryption
/// configuration, by their path under the data directory.
pub fn shared_bundle(data_dir: &Path, encryption_config: &Path) -> anyhow::Result<Value> {
    let mut files = serde_json::Map::new();
    let mut add = |name: String, path: &Path| -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        files.insert(name, Value::String(text));
        Ok(())
    };
    for name in crate::pki::SHARED_FILES {
        add(format!("pki/{name}"), &data_dir.join("pki").join(name))?;
    }
    for name in ["node-token", "server-token"] {
        add(name.to_owned(), &data_dir.join(name))?;
    }
    add("encryption-config.yaml".to_owned(), encryption_config)?;
    Ok(json!({"files": files}))
}

/// A kubeconfig's server, CA and client certificate (its current context's, else the first).
fn from_kubeconfig(path: &Path) -> anyhow::Result<(String, Tls)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Value =
        serde_yaml::from_str(&text).with_context(|| format!("{}: not a kubeconfig", path.display()))?;
    let current = config["current-context"].as_str().unwrap_or_default();
    let named = |list: &str, name: &str| {
        config[list]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == name).or_else(|| l.first()))
            .cloned()
            .unwrap_or_default()
    };
    let context = named("contexts", current);
    let cluster = named(
        "clusters",
        context["context"]["cluster"].as_str().unwrap_or_default(),
    );
    let user = named("users", context["context"]["user"].as_str().unwrap_or_default());
    let b64 = |v: &Value, what: &str| -> anyhow::Result<String> {
        let data = v
            .as_str()
            .with_context(|| format!("{}: no {what} (inline data is needed)", path.display()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .with_context(|| what.to_string())?;
        Ok(String::from_utf8(bytes)?)
    };
    let server = cluster["cluster"]["server"]
        .as_str()
        .context("the kubeconfig names no server")?
        .to_owned();
    let ca = b64(
        &cluster["cluster"]["certificate-authority-data"],
        "certificate-authority-data",
    )?;
    let cert = b64(
        &user["user"]["client-certificate-data"],
        "client-certificate-data",
    )?;
    let key = b64(&user["user"]["client-key-data"], "client-key-data")?;
    Ok((server, Tls::new(&ca, Some((&cert, &key)))?))
}

/// `skiff-control member list|remove ID|promote ID`: prints the members, one per line.
pub async fn command(kubeconfig: &Path, action: &str, id: Option<&str>) -> anyhow::Result<()> {
    let (server, tls) = from_kubeconfig(kubeconfig)?;
    let list = match (action, id) {
        ("list", _) => call(&tls, &server, Method::GET, "/skiff/v1/members", None).await?,
        ("remove", Some(id)) => {
            call(
                &tls,
                &server,
                Method::DELETE,
                &format!("/skiff/v1/members/{id}"),
                None,
            )
            .await?
        }
        ("promote", Some(id)) => {
            call(
                &tls,
                &server,
                Method::POST,
                &format!("/skiff/v1/members/{id}/promote"),
                Some(&json!({})),
            )
            .await?
        }
        _ => bail!("usage: skiff-control member list|remove ID|promote ID --kubeconfig FILE"),
    };
    print!("{}", render(&list));
    Ok(())
}

/// The member list as a table.
pub fn render(list: &Value) -> String {
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "ROLE",
            "PEER ADDRESS",
            "API URL",
            "REVISION",
            "HEALTH",
        ]
        .map(str::to_owned),
    ];
    for m in list["items"].as_array().into_iter().flatten() {
        let s = |k: &str| match &m[k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_owned(),
            v => v.to_string(),
        };
        rows.push([
            s("id"),
            s("name"),
            s("role"),
            s("peerAddress"),
            s("apiURL"),
            s("revision"),
            s("health"),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}
