//! Pulling images over the OCI distribution protocol: manifests (with index/manifest-list platform
//! selection), blobs verified against their digests, bearer-token and basic auth.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

use super::import::{install, platform, platform_matches};
use super::{Image, ImageStore, Reference};

type Http = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Registry credentials (from `imagePullSecrets`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Credentials for `registry` from a `.dockerconfigjson` document, if it has any.
pub fn credentials_from_docker_config(config: &Value, registry: &str) -> Option<Credentials> {
    let auths = config.get("auths").unwrap_or(config);
    let candidates = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        if registry == "docker.io" {
            "https://index.docker.io/v1/".into()
        } else {
            String::new()
        },
    ];
    for key in candidates.iter().filter(|k| !k.is_empty()) {
        let Some(entry) = auths
            .get(key.as_str())
            .or_else(|| auths.get(format!("{key}/").as_str()))
        else {
            continue;
        };
        if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
            return Some(Credentials {
                username: u.into(),
                password: p.into(),
            });
        }
        if let Some(a) = entry["auth"].as_str()
            && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(a)
            && let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':')
        {
            return Some(Credentials {
                username: u.into(),
                password: p.into(),
            });
        }
    }
    None
}

/// A client for one registry.
#[derive(Debug)]
pub struct Puller {
    http: Http,
    insecure: Vec<String>,
}

/// Why a pull failed, as the registry put it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PullError(pub String);

impl Puller {
    /// A puller; registries named in `insecure` (and loopback ones) are spoken to over plain HTTP.
    pub fn new(insecure: Vec<String>) -> anyhow::Result<Puller> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Puller {
            http: Client::builder(hyper_util::rt::TokioExecutor::new()).build(https),
            insecure,
        })
    }

    fn scheme(&self, host: &str) -> &'static str {
        let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        let loopback = bare == "localhost" || bare.starts_with("127.") || bare == "[::1]";
        if loopback || self.insecure.iter().any(|i| i == host) {
            "http"
        } else {
            "https"
        }
    }

    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut url = url.to_string();
        for _ in 0..5 {
            let mut req = Request::get(&url).header("user-agent", "skiff-agent");
            if let Some(a) = accept {
                req = req.header("accept", a);
            }
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                self.http.request(req.body(Empty::new())?),
            )
            .await
            .map_err(|_| PullError(format!("{url}: no response within 30s")))?
            .map_err(|e| PullError(format!("{url}: {}", error_chain(&e))))?;
            if resp.status().is_redirection()
                && let Some(loc) = resp.headers().get("location").and_then(|l| l.to_str().ok())
            {
                url = if loc.starts_with('/') {
                    let base: hyper::Uri = url.parse()?;
                    format!(
                        "{}://{}{loc}",
                        base.scheme_str().unwrap_or("https"),
                        base.authority().map(|a| a.as_str()).unwrap_or("")
                    )
                } else {
                    loc.to_string()
                };
                continue;
            }
            return Ok(resp);
        }
        bail!("{url}: too many redirects")
    }

    /// Gets a token for `scope` as the registry's `WWW-Authenticate` challenge asks.
    async fn authorize(
        &self,
        challenge: &str,
        creds: Option<&Credentials>,
    ) -> anyhow::Result<Option<String>> {
        let basic = creds.map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
            )
        });
        let (kind, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if kind.eq_ignore_ascii_case("basic") {
            return Ok(basic);
        }
        let mut realm = None;
        let mut query = Vec::new();
        for part in split_params(params) {
            if let Some((k, v)) = part.split_once('=') {
                let v = v.trim_matches('"');
                if k.trim() == "realm" {
                    realm = Some(v.to_string());
                } else {
                    query.push(format!("{}={}", k.trim(), skiff_common::url::encode(v)));
                }
            }
        }
        let realm = realm.context("the registry's auth challenge has no realm")?;
        let url = if query.is_empty() {
            realm
        } else {
            format!("{realm}?{}", query.join("&"))
        };
        let resp = self.get(&url, None, basic.as_deref()).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(PullError(format!(
                "token request to {url} failed: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ))
            .into());
        }
        let v: Value = serde_json::from_slice(&body).context("token response is not JSON")?;
        let token = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .context("token response has no token")?;
        Ok(Some(format!("Bearer {token}")))
    }

    /// GET with auth negotiation: retries once with a token after a 401.
    async fn fetch(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: &mut Option<String>,
        creds: Option<&Credentials>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let resp = self.get(url, accept, auth.as_deref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return check(url, resp).await;
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        *auth = self.authorize(&challenge, creds).await?;
        let resp = self.get(url, accept, auth.as_deref()).await?;
        check(url, resp).await
    }

    /// Pulls `reference` into the store (or finds it there when the digest is known).
    pub async fn pull(
        &self,
        store: &ImageStore,
        reference: &Reference,
        creds: Option<&Credentials>,
    ) -> anyhow::Result<Image> {
        let base = format!(
            "{}://{}/v2/{}",
            self.scheme(reference.api_host()),
            reference.api_host(),
            reference.repository
        );
        let mut auth = None;
        let mut digest = reference.digest.clone();
        let url = format!("{base}/manifests/{}", reference.manifest_ref());
        let resp = self.fetch(&url, Some(ACCEPT), &mut auth, creds).await?;
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = resp.into_body().collect().await?.to_bytes().to_vec();
        let got = super::digest_of(&bytes);
        if let Some(d) = digest.as_ref().or(header_digest.as_ref())
            && *d != got
        {
            return Err(PullError(format!("manifest digest mismatch: expected {d}, got {got}")).into());
        }
        digest = Some(got);
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|_| PullError("the manifest is not JSON".into()))?;
        if let Some(list) = v["manifests"].as_array() {
            let chosen = list
                .iter()
                .find(|m| platform_matches(&m["platform"]))
                .ok_or_else(|| {
                    PullError(format!(
                        "no matching manifest for {}/{} in the manifest list entries",
                        platform().0,
                        platform().1
                    ))
                })?;
            let d = chosen["digest"]
                .as_str()
                .context("manifest list entry has no digest")?
                .to_string();
            let resp = self
                .fetch(&format!("{base}/manifests/{d}"), Some(ACCEPT), &mut auth, creds)
                .await?;
            bytes = resp.into_body().collect().await?.to_bytes().to_vec();
            if super::digest_of(&bytes) != d {
                return Err(PullError(format!("manifest digest mismatch for {d}")).into());
            }
            digest = Some(d);
        }
        let digest = digest.unwrap_or_default();
        if let Some(image) = store.image(&digest)? {
            store.add_image(&image, &[reference.to_string()])?;
            return Ok(image);
        }
        let manifest: Value =
            serde_json::from_slice(&bytes).map_err(|_| PullError("the manifest is not JSON".into()))?;
        let scratch = store.scratch()?;
        let mut wanted = vec![
            manifest["config"]["digest"]
                .as_str()
                .context("the manifest has no config")?
                .to_string(),
        ];
        let config_bytes = {
            let p = self
                .blob(&base, &wanted[0], &mut auth, creds, scratch.path())
                .await?;
            std::fs::read(p)?
        };
        let config: Value = serde_json::from_slice(&config_bytes).context("the image config is not JSON")?;
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, layer) in manifest["layers"].as_array().into_iter().flatten().enumerate() {
            let present = diff_ids
                .get(i)
                .and_then(Value::as_str)
                .is_some_and(|d| store.has_layer(d));
            if !present {
                wanted.push(
                    layer["digest"]
                        .as_str()
                        .context("a layer has no digest")?
                        .to_string(),
                );
            }
        }
        for d in &wanted[1..] {
            self.blob(&base, d, &mut auth, creds, scratch.path()).await?;
        }
        let store2 = store.clone();
        let dir = scratch.path().to_path_buf();
        let name = reference.to_string();
        tokio::task::spawn_blocking(move || {
            let _lock = store2.lock()?;
            let lookup = |d: &str| -> anyhow::Result<PathBuf> { Ok(dir.join(super::digest_hex(d)?)) };
            install(&store2, &bytes, Some(&digest), &lookup, &[name])
        })
        .await?
    }

    /// Downloads one blob into `dir/<hex>`, verifying its digest.
    async fn blob(
        &self,
        base: &str,
        digest: &str,
        auth: &mut Option<String>,
        creds: Option<&Credentials>,
        dir: &std::path::Path,
    ) -> anyhow::Result<PathBuf> {
        let path = dir.join(super::digest_hex(digest)?);
        let resp = self
            .fetch(&format!("{base}/blobs/{digest}"), None, auth, creds)
            .await?;
        let mut body = resp.into_body();
        let mut file = std::fs::File::create(&path)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                ctx.update(&data);
                file.write_all(&data)?;
            }
        }
        let got = format!("sha256:{}", super::hex(ctx.finish().as_ref()));
        if got != digest {
            return Err(PullError(format!("blob digest mismatch: expected {digest}, got {got}")).into());
        }
        Ok(path)
    }
}

async fn check(
    url: &str,
    resp: hyper::Response<hyper::body::Incoming>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Registries answer with {"errors":[{"code","message"}]}: report those.
    let detail = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v["errors"].as_array().map(|errs| {
                errs.iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["code"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    let what = match status {
        StatusCode::NOT_FOUND => "not found",
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "pull access denied",
        _ => "unexpected status",
    };
    Err(PullError(format!("{what}: {url} answered {status}: {detail}")).into())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn split_params(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials() {
        let cfg = serde_json::json!({"auths": {"127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"}}});
        let c = credentials_from_docker_config(&cfg, "127.0.0.1:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pass"));
        assert!(credentials_from_docker_config(&cfg, "other").is_none());
    }

    #[test]
    fn challenge_params_keep_quoted_commas() {
        let p = split_params(r#"realm="https://a/token",service="reg",scope="repository:x:pull,push""#);
        assert_eq!(p.len(), 3);
        assert!(p[2].ends_with("pull,push\""));
    }
}
