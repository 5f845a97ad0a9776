//! Requests the API server forwards to a node's agent: `pods/NAME/log` (kubectl logs).
//!
//! The agent is reached on the port its Node reports (`status.daemonEndpoints.kubeletEndpoint`), over
//! TLS: the agent's certificate must be the cluster CA's certificate for that node name, and the API
//! server presents a client certificate of its own.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http_body_util::Empty;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;

use super::App;
use super::handlers::Call;
use super::object::from_kv;
use super::status::ApiError;

type Result<T> = std::result::Result<T, ApiError>;

fn client_config(app: &App) -> Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let cfg = CONFIG.get_or_init(|| {
        let pki = app.pki.as_ref().ok_or("no cluster CA")?;
        let client = pki
            .issue_client("system:kube-apiserver", &["system:masters"])
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let certs = rustls_pemfile::certs(&mut client.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = rustls_pemfile::private_key(&mut client.key_pem.as_bytes())
            .map_err(|e| e.to_string())?
            .ok_or("no key")?;
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?;
        Ok(Arc::new(config))
    });
    cfg.clone()
        .map_err(|e| ApiError::new(500, "InternalError", format!("node client credentials: {e}")))
}

/// Where a node's agent listens.
fn endpoint(node: &Value) -> Option<(String, u16)> {
    let addrs = node["status"]["addresses"].as_array()?;
    let ip = ["InternalIP", "ExternalIP", "Hostname"].iter().find_map(|t| {
        addrs
            .iter()
            .find(|a| a["type"] == *t)
            .and_then(|a| a["address"].as_str())
    })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(10250) as u16;
    Some((ip.to_owned(), port))
}

/// GET `path` on a node's agent and streams the answer back.
async fn get_from_node(app: &App, node_name: &str, path: &str) -> Result<Response> {
    let node = app
        .store
        .get(&format!("/registry/core/nodes/{node_name}"))
        .await
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?
        .map(|kv| from_kv(&kv))
        .ok_or_else(|| ApiError::new(404, "NotFound", format!("nodes \"{node_name}\" not found")))?;
    let (host, port) = endpoint(&node).ok_or_else(|| {
        ApiError::new(
            500,
            "InternalError",
            format!("node {node_name:?} reports no address"),
        )
    })?;
    let url = format!("https://{host}:{port}{path}");
    let failed = |e: String| ApiError::new(500, "InternalError", format!("Get \"{url}\": {e}"));
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| failed("dial tcp: i/o timeout".into()))?
    .map_err(|e| failed(format!("dial tcp {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(node_name.to_owned()).map_err(|e| failed(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(client_config(app)?)
        .connect(name, tcp)
        .await
        .map_err(|e| failed(format!("tls: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| failed(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", format!("{host}:{port}"))
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        use http_body_util::BodyExt;
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_owned();
        let reason = if status == StatusCode::NOT_FOUND {
            "NotFound"
        } else {
            "BadRequest"
        };
        return Err(ApiError::new(status.as_u16(), reason, msg));
    }
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain"),
    );
    Ok(out.into_response())
}

/// `GET pods/NAME/log`.
pub async fn logs(app: &App, call: &Call) -> Result<Response> {
    let ns = call.ns.clone().unwrap_or_default();
    let name = call.name.clone().unwrap_or_default();
    let kv = app
        .store
        .get(&call.key(&name))
        .await
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?
        .ok_or_else(|| ApiError::new(404, "NotFound", format!("pods \"{name}\" not found")))?;
    let pod = from_kv(&kv);
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (app_names, init_names) = (names("containers"), names("initContainers"));
    let container = match call.query.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.clone(),
        None if app_names.len() == 1 => app_names[0].clone(),
        None => {
            let mut all = app_names.clone();
            all.extend(init_names.iter().cloned());
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                all.join(" ")
            )));
        }
    };
    if !app_names.contains(&container) && !init_names.contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let previous = call.query.get("previous").is_some_and(|p| p == "true");
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["status"]["initContainerStatuses"]
                .as_array()
                .into_iter()
                .flatten(),
        );
    let status = statuses.clone().find(|s| s["name"] == container.as_str());
    if !previous && status.is_none_or(|s| s["containerID"].is_null()) {
        let reason = status
            .and_then(|s| s["state"]["waiting"]["reason"].as_str())
            .unwrap_or("ContainerCreating");
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    }
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let mut q = Vec::new();
    for key in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "sinceSeconds",
        "sinceTime",
        "limitBytes",
    ] {
        if let Some(v) = call.query.get(key) {
            q.push(format!("{key}={}", urlencode(v)));
        }
    }
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", q.join("&"));
    get_from_node(app, node, &path).await
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
