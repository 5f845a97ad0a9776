//! API aggregation, as kube-aggregator does it: an APIService with a `service` hands its group
//! version to an API server running in the cluster (metrics-server, custom API servers).
//! Requests under `/apis/GROUP/VERSION` are proxied to one of the Service's ready endpoints,
//! through the node's tunnel to the pod, over TLS the API server speaks itself: the aggregated
//! server's certificate checked against `caBundle` (or not, with `insecureSkipTLSVerify`), and
//! the API server's front proxy certificate shown, with the caller in `X-Remote-User`,
//! `X-Remote-Group` and `X-Remote-Extra-*` (`kube-system/extension-apiserver-authentication`
//! tells aggregated servers to trust them). A background task reads each server's discovery
//! document, which joins the API's own discovery while the server answers, and keeps the
//! APIService's `Available` condition.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use base64::Engine;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::App;
use super::nodeproxy::unreachable;
use super::server::Identity;
use crate::objects::keys;
use crate::objects::meta::{from_kv, meta_str, now};
use crate::objects::status::ApiError;

/// How often an available aggregated server's discovery is read again.
const RECHECK: Duration = Duration::from_secs(30);
/// How often one that is not available is tried again.
const RETRY: Duration = Duration::from_secs(3);
/// How long a discovery check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One aggregated group version: where its server is and what it last said.
#[derive(Debug)]
pub struct Remote {
    /// API group.
    pub group: String,
    /// Version.
    pub version: String,
    /// The APIService's spec, as last read (a change rebuilds the entry).
    spec: Value,
    /// Namespace, name and port of the Service in front of the server.
    service: (String, String, u16),
    tls: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry: `SERVICE.NAMESPACE.svc`.
    server_name: String,
    /// The server's `APIResourceList`, while it answers.
    pub resources: Option<Value>,
    checked: Option<Instant>,
}

/// The aggregated group versions, by `GROUP/VERSION`.
#[derive(Debug, Default)]
pub struct Aggregated(RwLock<HashMap<String, Arc<Remote>>>);

impl Aggregated {
    /// The aggregated server of `group/version`, available or not.
    pub fn get(&self, group: &str, version: &str) -> Option<Arc<Remote>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&format!("{group}/{version}"))
            .cloned()
    }

    /// The group versions whose servers answer, by group and version.
    pub fn available(&self) -> Vec<Arc<Remote>> {
        let mut out: Vec<Arc<Remote>> = self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|r| r.resources.is_some())
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.group, &a.version).cmp(&(&b.group, &b.version)));
        out
    }
}

/// The TLS client for an APIService: its CA bundle (or no check), the front proxy certificate.
fn tls_config(app: &App, spec: &Value) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if spec["insecureSkipTLSVerify"] == true {
        builder
            .dangerous()
            .with_custom_certificate_verifier(skiff_common::tls::AnyServerCert::new(provider))
    } else {
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(spec["caBundle"].as_str().unwrap_or_default())
            .map_err(|e| format!("caBundle: {e}"))?;
        builder.with_root_certificates(super::webhooks::roots(&bundle)?)
    };
    let pki = app.pki.as_ref().ok_or("the API server has no certificates")?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pki.front_proxy_client.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = rustls_pemfile::private_key(&mut pki.front_proxy_client.key_pem.as_bytes())
        .map_err(|e| e.to_string())?
        .ok_or("no front proxy key")?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())
}

impl Remote {
    fn new(app: &App, spec: &Value) -> Result<Self, String> {
        let svc = &spec["service"];
        let (ns, name) = (
            svc["namespace"].as_str().unwrap_or_default(),
            svc["name"].as_str().unwrap_or_default(),
        );
        Ok(Self {
            group: spec["group"].as_str().unwrap_or_default().to_owned(),
            version: spec["version"].as_str().unwrap_or_default().to_owned(),
            spec: spec.clone(),
            service: (
                ns.to_owned(),
                name.to_owned(),
                svc["port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(443),
            ),
            tls: Arc::new(tls_config(app, spec)?),
            server_name: format!("{name}.{ns}.svc"),
            resources: None,
            checked: None,
        })
    }

    /// An HTTP/1 connection to one of the Service's ready endpoints, over TLS.
    async fn connect(&self, app: &App) -> Result<hyper::client::conn::http1::SendRequest<Body>, ApiError> {
        let (ns, name, port) = &self.service;
        let (pod, number) = super::nodeproxy::service_backend(app, ns, name, &port.to_string()).await?;
        let stream = super::nodeproxy::connect_pod(app, &pod, number).await?;
        let server_name =
            rustls::pki_types::ServerName::try_from(self.server_name.clone()).map_err(unreachable)?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(server_name, stream)
            .await
            .map_err(|e| unreachable(format!("tls: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(unreachable)?;
        tokio::spawn(conn.with_upgrades());
        Ok(sender)
    }

    /// Reads the server's discovery document for its group version.
    async fn discover(&self, app: &App) -> Result<Value, (&'static str, String)> {
        let fetch = async {
            let mut sender = self.connect(app).await.map_err(|e| {
                let reason = if e.message.contains("no endpoints") {
                    "MissingEndpoints"
                } else if e.code == 404 {
                    "ServiceNotFound"
                } else {
                    "FailedDiscoveryCheck"
                };
                (reason, e.message)
            })?;
            let path = format!("/apis/{}/{}", self.group, self.version);
            let req = hyper::Request::get(&path)
                .header(header::HOST, &self.server_name)
                .header(header::ACCEPT, "application/json")
                .header("X-Remote-User", "system:kube-aggregator")
                .header("X-Remote-Group", "system:masters")
                .body(Body::empty())
                .map_err(|e| ("FailedDiscoveryCheck", e.to_string()))?;
            let failed = |e: String| {
                (
                    "FailedDiscoveryCheck",
                    format!("failing or missing response from {path}: {e}"),
                )
            };
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(failed(format!("bad status from {path}: {status}")));
            }
            serde_json::from_slice::<Value>(&body).map_err(|e| failed(e.to_string()))
        };
        tokio::time::timeout(CHECK_TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| Err(("FailedDiscoveryCheck", "the discovery check timed out".to_owned())))
    }
}

/// Request headers that are the API server's to set, never the caller's: who the caller is,
/// impersonation, credentials and connection headers.
fn forwarded(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !(name.starts_with("x-remote-")
        || name.starts_with("impersonate-")
        || matches!(
            name.as_str(),
            "authorization"
                | "host"
                | "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
        ))
}

/// Proxies a request under `/apis/GROUP/VERSION` to the aggregated server, as `who`.
pub async fn proxy(
    app: &App,
    remote: &Remote,
    who: &Identity,
    parts: axum::http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let path = parts.uri.path().to_owned();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = segs.get(3..).unwrap_or_default();
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some(*ns), more),
        _ => (None, rest),
    };
    let watching = parts.uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    });
    let (name, subresource) = (rest.get(1).copied(), rest.get(2).copied());
    let verb = match (parts.method.as_str(), name.is_some()) {
        ("GET", _) if watching => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "get",
    };
    let target = match rest.first() {
        Some(resource) => super::rbac::Target::Resource {
            group: &remote.group,
            resource,
            subresource,
            namespace,
            name,
        },
        None => super::rbac::Target::Path(&path),
    };
    super::authz::allow(app, who, verb, &target).await?;
    if remote.resources.is_none() {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            format!(
                "the server is currently unable to handle the request ({}/{} is not available)",
                remote.group, remote.version
            ),
        ));
    }
    let mut sender = remote.connect(app).await?;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut req = hyper::Request::builder().method(parts.method.clone()).uri(target);
    for (k, v) in parts.headers.iter().filter(|(k, _)| forwarded(k.as_str())) {
        req = req.header(k, v);
    }
    req = req
        .header(header::HOST, &remote.server_name)
        .header("X-Remote-User", &who.user);
    let mut groups = who.groups.clone();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".to_owned());
    }
    for g in groups {
        req = req.header("X-Remote-Group", g);
    }
    let req = req
        .body(body)
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(unreachable)?;
    let (mut parts, body) = resp.into_parts();
    for h in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        parts.headers.remove(h);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The `Available` condition an APIService should have now.
fn available_condition(result: &Result<Value, (&'static str, String)>) -> Value {
    match result {
        Ok(_) => {
            json!({"type": "Available", "status": "True", "reason": "Passed", "message": "all checks passed"})
        }
        Err((reason, message)) => {
            json!({"type": "Available", "status": "False", "reason": reason, "message": message})
        }
    }
}

/// Writes the APIService's `Available` condition when it changed (on the leader only).
async fn report(app: &App, api_service: &Value, condition: Value) {
    let old = api_service["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Available"));
    let same = old.is_some_and(|o| o["status"] == condition["status"] && o["reason"] == condition["reason"]);
    if same || !app.store.is_leader().await {
        return;
    }
    let mut next = api_service.clone();
    let mut condition = condition;
    condition["lastTransitionTime"] = json!(now());
    next["status"]["conditions"] = json!([condition]);
    if let Err(e) = crate::controllers::write::put_object(
        &app.objects,
        next,
        "apiregistration.k8s.io",
        "apiservices",
        Some("status"),
        "kube-aggregator",
    )
    .await
    {
        tracing::debug!(error = %e, name = meta_str(api_service, "name"), "writing an APIService's status");
    }
}

/// Keeps the aggregated group versions current: every two seconds the APIServices are read; a
/// new or changed one is checked at once, an available one every 30 seconds, one that is not
/// every 3.
pub fn start(app: Arc<App>) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = sync(&app).await {
                tracing::debug!(error = %e, "reading APIServices");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

async fn sync(app: &App) -> Result<(), crate::store::StoreError> {
    let prefix = keys::prefix("apiregistration.k8s.io", "apiservices");
    let services: Vec<Value> = app
        .store
        .list(&prefix, None, 0)
        .await?
        .items
        .iter()
        .map(from_kv)
        .filter(|s| s["spec"]["service"].is_object())
        .collect();
    let current: HashMap<String, Arc<Remote>> =
        app.aggregated.0.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut next = HashMap::new();
    for api_service in &services {
        let spec = &api_service["spec"];
        let key = format!(
            "{}/{}",
            spec["group"].as_str().unwrap_or_default(),
            spec["version"].as_str().unwrap_or_default()
        );
        let fresh = current.get(&key).filter(|r| {
            let every = if r.resources.is_some() { RECHECK } else { RETRY };
            r.spec == *spec && r.checked.is_some_and(|t| t.elapsed() < every)
        });
        if let Some(r) = fresh {
            next.insert(key, r.clone());
            continue;
        }
        let mut remote = match Remote::new(app, spec) {
            Ok(r) => r,
            Err(e) => {
                report(
                    app,
                    api_service,
                    available_condition(&Err(("FailedDiscoveryCheck", e))),
                )
                .await;
                continue;
            }
        };
        let result = remote.discover(app).await;
        report(app, api_service, available_condition(&result)).await;
        remote.resources = result.ok();
        remote.checked = Some(Instant::now());
        next.insert(key, Arc::new(remote));
    }
    *app.aggregated.0.write().unwrap_or_else(|p| p.into_inner()) = next;
    Ok(())
}

/// The aggregated groups for `/apis` (`APIGroupList` entries).
pub fn group_entries(app: &App) -> Vec<Value> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for r in app.aggregated.available() {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) => versions.push(r.version.clone()),
            None => groups.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    groups
        .into_iter()
        .map(|(group, versions)| {
            let list: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "versions": list, "preferredVersion": list[0].clone()})
        })
        .collect()
}

/// The aggregated groups in aggregated discovery (`APIGroupDiscovery` items), their resources
/// from each server's `APIResourceList`.
pub fn discovery_items(app: &App) -> Vec<Value> {
    let mut items: Vec<Value> = Vec::new();
    for r in app.aggregated.available() {
        let listed = r
            .resources
            .as_ref()
            .map(|l| l["resources"].clone())
            .unwrap_or_default();
        let listed = listed.as_array().cloned().unwrap_or_default();
        let mut resources: Vec<Value> = Vec::new();
        for res in listed
            .iter()
            .filter(|x| !x["name"].as_str().unwrap_or_default().contains('/'))
        {
            let name = res["name"].as_str().unwrap_or_default();
            let subresources: Vec<Value> = listed
                .iter()
                .filter_map(|s| {
                    let sub = s["name"].as_str()?.strip_prefix(&format!("{name}/"))?;
                    Some(json!({"subresource": sub, "verbs": s["verbs"],
                        "responseKind": {"group": s["group"].as_str().unwrap_or(&r.group),
                            "version": s["version"].as_str().unwrap_or(&r.version), "kind": s["kind"]}}))
                })
                .collect();
            let mut entry = json!({
                "resource": name,
                "responseKind": {"group": r.group, "version": r.version, "kind": res["kind"]},
                "scope": if res["namespaced"] == true { "Namespaced" } else { "Cluster" },
                "singularResource": res["singularName"].as_str().unwrap_or_default(),
                "verbs": res["verbs"],
            });
            for field in ["shortNames", "categories"] {
                if res[field].is_array() {
                    entry[field] = res[field].clone();
                }
            }
            if !subresources.is_empty() {
                entry["subresources"] = json!(subresources);
            }
            resources.push(entry);
        }
        let version = json!({"version": r.version, "resources": resources, "freshness": "Current"});
        match items
            .iter_mut()
            .find(|i| i["metadata"]["name"] == r.group.as_str())
        {
            Some(item) => {
                if let Some(vs) = item["versions"].as_array_mut() {
                    vs.push(version);
                }
            }
            None => items.push(json!({"metadata": {"name": r.group}, "versions": [version]})),
        }
    }
    items
}
