//! Joining a cluster: the node token pins the control plane's CA (by its SHA-256); the agent
//! generates its own key, and the control plane signs its certificate request as
//! `system:node:<name>`. The credentials are kept in the data directory for later starts.

use std::path::Path;

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::json;

use super::client::{ApiClient, status_code};

/// The node's credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The cluster CA (PEM).
    pub ca: String,
    /// The node certificate (PEM).
    pub cert: String,
    /// The node key (PEM).
    pub key: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    skiff_common::fs::write_private(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Loads the credentials from `dir`, or joins with `token` and stores them there.
pub async fn join(server: &str, token: &str, node_name: &str, dir: &Path) -> anyhow::Result<Credentials> {
    let (ca_path, cert_path, key_path) = (dir.join("ca.crt"), dir.join("node.crt"), dir.join("node.key"));
    if let (Ok(ca), Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&ca_path),
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        return Ok(Credentials { ca, cert, key });
    }
    let rest = token.trim().strip_prefix("K10").context(
        "the node token must start with K10 (use the content of the control plane's node-token file)",
    )?;
    let (ca_hash, _) = rest
        .split_once("::")
        .context("the node token has no CA hash; use the content of the control plane's node-token file")?;
    let (status, body) = ApiClient::unverified(server)?
        .raw(Method::GET, "/cacerts", "application/json", None)
        .await?;
    if status != 200 {
        bail!("fetching the cluster CA from {server}/cacerts failed with HTTP {status}");
    }
    let ca = String::from_utf8(body.to_vec()).context("the cluster CA is not text")?;
    let got = hex(ring::digest::digest(&ring::digest::SHA256, ca.as_bytes()).as_ref());
    if got != ca_hash {
        bail!(
            "the server's CA does not match the node token (expected sha256 {ca_hash}, got {got}); refusing to join"
        );
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node_name}"));
    let csr = params.serialize_request(&key)?.pem()?;
    let request = json!({"token": token.trim(), "nodeName": node_name, "csr": csr});
    let answer = match ApiClient::anonymous(server, &ca)?
        .json(Method::POST, "/skiff/v1/join", Some(&request))
        .await
    {
        Ok(a) => a,
        Err(e) if status_code(&e) == Some(401) => bail!("the control plane rejected the node token: {e}"),
        Err(e) => return Err(e.context("joining the cluster")),
    };
    let cert = answer["certificate"]
        .as_str()
        .context("the join answer has no certificate")?
        .to_owned();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&key_path, &key.serialize_pem())?;
    write_private(&cert_path, &cert)?;
    write_private(&ca_path, &ca)?;
    Ok(Credentials {
        ca,
        cert,
        key: key.serialize_pem(),
    })
}

/// Refuses to run beside a control plane this agent's version may not work with: one more than a
/// minor version newer than the agent, or older (see `skiff_common::version`). A control plane that
/// cannot be asked now (restarting, failing over) is no reason to stop: it refuses an agent out of
/// skew itself when the agent connects.
pub async fn check_version(api: &ApiClient) -> anyhow::Result<()> {
    let (status, body) = match api
        .raw(Method::GET, "/skiff/v1/version", "application/json", None)
        .await
    {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot ask the control plane for its version now");
            return Ok(());
        }
    };
    let control = match status {
        200 => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .context("the control plane's /skiff/v1/version answer names no version")?,
        404 => bail!(
            "the control plane at {} does not say its version, so it predates this agent ({}): upgrade the control plane first",
            api.server(),
            skiff_common::version::VERSION
        ),
        other => {
            tracing::warn!(status = other, "cannot ask the control plane for its version now");
            return Ok(());
        }
    };
    skiff_common::version::check_skew(&control, skiff_common::version::VERSION).map_err(anyhow::Error::msg)
}
