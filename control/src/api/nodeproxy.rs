//! Requests the API server forwards to a node's agent: `pods/NAME/log` (kubectl logs), exec,
//! port-forward.
//!
//! The agent is reached through the tunnel it keeps open to the API server ([`super::tunnel`]), or,
//! when it has none, on the port its Node reports (`status.daemonEndpoints.kubeletEndpoint`), over
//! TLS: the agent's certificate must be the cluster CA's certificate for that node name, and the API
//! server presents a client certificate of its own.

use crate::objects::keys;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use http_body_util::Empty;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

use super::App;
use super::handlers::Call;
use crate::objects::meta::{from_kv, meta_str};
use crate::objects::status::ApiError;

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

/// An HTTP/1.1 connection to a node's agent: through the agent's tunnel when it has one open, else
/// dialled (TLS, the node's certificate checked against its name).
async fn connect_node<B>(
    app: &App,
    node_name: &str,
) -> Result<(hyper::client::conn::http1::SendRequest<B>, String)>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(stream) = app.tunnels.open_stream(node_name).await {
        let failed = |e: String| {
            ApiError::new(
                500,
                "InternalError",
                format!("error dialing backend {node_name} through its tunnel: {e}"),
            )
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(stream.map_err(failed)?)
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(conn.with_upgrades());
        return Ok((sender, format!("{node_name}:10250")));
    }
    let node = app
        .store
        .get(&keys::object(keys::NODES, None, node_name))
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
    let authority = format!("{host}:{port}");
    let failed = |e: String| {
        ApiError::new(
            500,
            "InternalError",
            format!("error dialing backend {authority}: {e}"),
        )
    };
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
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| failed(e.to_string()))?;
    tokio::spawn(conn.with_upgrades());
    Ok((sender, authority))
}

/// Turns an agent's error answer into the API's.
async fn node_error(resp: hyper::Response<hyper::body::Incoming>) -> ApiError {
    use http_body_util::BodyExt;
    let status = resp.status();
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
    ApiError::new(status.as_u16(), reason, msg)
}

/// `method` `path` (with `body`) on a node's agent: its successful answer, else the API's error
/// for it.
async fn request_node(
    app: &App,
    node_name: &str,
    method: hyper::Method,
    path: &str,
    body: bytes::Bytes,
) -> Result<hyper::Response<hyper::body::Incoming>> {
    let (mut sender, authority) = connect_node::<http_body_util::Full<bytes::Bytes>>(app, node_name).await?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .body(http_body_util::Full::new(body))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    if !resp.status().is_success() {
        return Err(node_error(resp).await);
    }
    Ok(resp)
}

/// PUT `body` to `path` on a node's agent: the answer's body, or the API's error for it.
async fn put_to_node(app: &App, node_name: &str, path: &str, body: bytes::Bytes) -> Result<bytes::Bytes> {
    use http_body_util::BodyExt;
    let resp = request_node(app, node_name, hyper::Method::PUT, path, body).await?;
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?
        .to_bytes())
}

/// GET `path` on a node's agent and streams the answer back.
async fn get_from_node(app: &App, node_name: &str, path: &str) -> Result<Response> {
    let resp = request_node(app, node_name, hyper::Method::GET, path, bytes::Bytes::new()).await?;
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain"),
    );
    Ok(out.into_response())
}

/// GET `path` on a node's agent within `limit`: the answer's Content-Type and body.
pub async fn fetch_from_node(
    app: &App,
    node_name: &str,
    path: &str,
    limit: std::time::Duration,
) -> Result<(String, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let fetch = async {
        let resp = request_node(app, node_name, hyper::Method::GET, path, bytes::Bytes::new()).await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("text/plain")
            .to_owned();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?
            .to_bytes();
        Ok((content_type, body))
    };
    tokio::time::timeout(limit, fetch).await.map_err(|_| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("node {node_name:?} did not answer within {}s", limit.as_secs()),
        )
    })?
}

/// `nodes/NAME/proxy/PATH`: what the node's agent serves for reading — its stats and metrics
/// (`/stats/summary`, `/metrics`, `/metrics/resource`, `/metrics/cadvisor`) and health — for those who may
/// `get` `nodes/proxy`, as upstream (Prometheus' usual node jobs scrape through it). Exec and the
/// other connections stay on the pods' subresources, authorized there. `PUT /debug/flags/v` sets the
/// agent's log filter (for those who may `update` `nodes/proxy`).
pub async fn node_proxy(
    app: &App,
    who: &super::server::Identity,
    method: &axum::http::Method,
    node: &str,
    rest: &str,
    body: Body,
) -> Result<Response> {
    let path = if rest.is_empty() { "/" } else { rest };
    // The agent's log filter, set as a kubelet's verbosity is (`PUT /debug/flags/v`).
    if method == axum::http::Method::PUT && path == "/debug/flags/v" {
        authorize_on_cluster(app, who, "update", "nodes", node, "proxy").await?;
        let body = axum::body::to_bytes(body, 4096)
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let answer = put_to_node(app, node, path, body).await?;
        return Ok(([(header::CONTENT_TYPE, "text/plain")], answer).into_response());
    }
    if method != axum::http::Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    authorize_on_cluster(app, who, "get", "nodes", node, "proxy").await?;
    let readable = matches!(
        path.split('?').next().unwrap_or_default(),
        "/healthz" | "/stats/summary" | "/metrics" | "/metrics/resource" | "/metrics/cadvisor"
    );
    if !readable {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!(
                "the node proxy serves /healthz, /stats/summary, /metrics, /metrics/resource and /metrics/cadvisor, not {path}"
            ),
        ));
    }
    let (content_type, body) = fetch_from_node(app, node, path, std::time::Duration::from_secs(10)).await?;
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Denied unless the user may `verb` subresource `sub` of the cluster-scoped `resource` `name`.
async fn authorize_on_cluster(
    app: &App,
    who: &super::server::Identity,
    verb: &str,
    resource: &str,
    name: &str,
    sub: &str,
) -> Result<()> {
    let target = super::rbac::Target::Resource {
        group: "",
        resource,
        subresource: Some(sub),
        namespace: None,
        name: Some(name),
    };
    super::authz::allow(app, who, verb, &target).await
}

/// `pods/NAME/exec` or `pods/NAME/attach` (`sub`) with a WebSocket upgrade (what kubectl exec, cp,
/// attach and run -i use): checked here, then the upgrade goes to the node's agent and the two
/// connections are joined byte for byte.
pub async fn exec(
    app: &App,
    who: &super::server::Identity,
    ns: &str,
    name: &str,
    sub: &str,
    parts: &mut axum::http::request::Parts,
) -> Result<Response> {
    authorize(app, who, ns, name, sub).await?;
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let container_param = raw_query
        .split('&')
        .find_map(|kv| kv.strip_prefix("container="))
        .map(skiff_common::url::percent_decode);
    let pod = read_pod(app, ns, name).await?;
    let mut containers = container_names(&pod, "containers");
    containers.extend(container_names(&pod, "initContainers"));
    containers.extend(container_names(&pod, "ephemeralContainers"));
    let container = match container_param.filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(&c) => c,
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None => containers.first().cloned().unwrap_or_default(),
    };
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
        let what = if sub == "attach" { "attach to" } else { "exec into" };
        return Err(ApiError::bad_request(format!(
            "cannot {what} a container in a completed pod; current phase is {}",
            pod["status"]["phase"].as_str().unwrap_or("")
        )));
    }
    admit_connect(app, who, ns, name, sub, &connect_options(sub, &raw_query)).await?;
    join_upgrade(
        app,
        node,
        &format!("/{sub}/{ns}/{name}/{container}?{raw_query}"),
        parts,
    )
    .await
}

/// The options object of a connection to a pod (`PodExecOptions`, `PodAttachOptions`,
/// `PodPortForwardOptions`) from its query, as admission webhooks are sent it.
fn connect_options(sub: &str, raw_query: &str) -> Value {
    let pairs: Vec<(&str, String)> = raw_query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, skiff_common::url::percent_decode(v)))
        .collect();
    let truthy = |key: &str| {
        pairs
            .iter()
            .any(|(k, v)| *k == key && super::query::parse_bool(v) == Some(true))
    };
    let all = |key: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let mut options = match sub {
        "portforward" => json!({
            "kind": "PodPortForwardOptions",
            "ports": all("ports").iter().filter_map(|p| p.parse::<u16>().ok()).collect::<Vec<_>>(),
        }),
        _ => json!({
            "kind": if sub == "exec" { "PodExecOptions" } else { "PodAttachOptions" },
            "stdin": truthy("stdin"),
            "stdout": truthy("stdout"),
            "stderr": truthy("stderr"),
            "tty": truthy("tty"),
        }),
    };
    options["apiVersion"] = json!("v1");
    if let Some(c) = all("container").into_iter().next() {
        options["container"] = json!(c);
    }
    if sub == "exec" {
        options["command"] = json!(all("command"));
    }
    options
}

/// The admission webhooks' say on a connection to pod `ns/name` (`sub`: exec, attach,
/// portforward) with `options`.
async fn admit_connect(
    app: &App,
    who: &super::server::Identity,
    ns: &str,
    name: &str,
    sub: &str,
    options: &Value,
) -> Result<()> {
    let info = app.objects.resource("", "pods");
    let user = crate::objects::admission::UserInfo {
        username: who.user.clone(),
        groups: who.groups.clone(),
    };
    let attrs = crate::objects::admission::Attributes {
        info: &info,
        operation: crate::objects::admission::Operation::Connect,
        namespace: Some(ns),
        url_name: name,
        strict: false,
        old: None,
        sub: Some(sub),
        user: Some(&user),
        dry_run: false,
    };
    app.objects.admit_by_webhooks(&attrs, Some(options)).await
}

/// Denied unless the user may `create` the pod subresource (`exec`, `attach`, `portforward`).
async fn authorize(
    app: &App,
    who: &super::server::Identity,
    ns: &str,
    name: &str,
    subresource: &str,
) -> Result<()> {
    authorize_on(app, who, "create", "pods", ns, name, subresource).await
}

/// Denied unless the user may `verb` subresource `sub` of `resource`.
async fn authorize_on(
    app: &App,
    who: &super::server::Identity,
    verb: &str,
    resource: &str,
    ns: &str,
    name: &str,
    sub: &str,
) -> Result<()> {
    let target = super::rbac::Target::Resource {
        group: "",
        resource,
        subresource: Some(sub),
        namespace: Some(ns),
        name: Some(name),
    };
    super::authz::allow(app, who, verb, &target).await
}

/// Sends the client's upgrade request on to `path` on the node's agent and, once the agent has
/// switched protocols, joins the two upgraded connections byte for byte (as upstream's
/// upgrade-aware proxy): WebSocket (exec, port-forward tunneled SPDY) or SPDY/3.1.
async fn join_upgrade(
    app: &App,
    node: &str,
    path: &str,
    parts: &mut axum::http::request::Parts,
) -> Result<Response> {
    let (mut sender, authority) = connect_node(app, node).await?;
    let mut req = hyper::Request::get(path).header("host", authority);
    for h in [
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "x-stream-protocol-version",
    ] {
        for v in parts.headers.get_all(h) {
            req = req.header(h, v.clone());
        }
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(node_error(resp).await);
    }
    let client = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let Some(client) = client else {
        return Err(ApiError::bad_request("the connection cannot be upgraded"));
    };
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in resp.headers() {
        out.headers_mut().append(k.clone(), v.clone());
    }
    let node_side = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (Ok(client), Ok(node)) = (client.await, node_side.await) else {
            return;
        };
        let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(node));
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
    });
    Ok(out)
}

/// `kubectl port-forward`: the pod's agent serves the SPDY streams (`portforward.k8s.io`), plain or
/// tunneled in WebSocket messages.
pub async fn portforward(
    app: &App,
    who: &super::server::Identity,
    ns: &str,
    name: &str,
    parts: &mut axum::http::request::Parts,
) -> Result<Response> {
    authorize(app, who, ns, name, "portforward").await?;
    let pod = read_pod(app, ns, name).await?;
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    if pod["status"]["phase"].as_str() != Some("Running") {
        return Err(ApiError::bad_request(format!(
            "unable to forward port because pod is not running. Current status={}",
            pod["status"]["phase"].as_str().unwrap_or("Unknown")
        )));
    }
    let raw_query = parts.uri.query().unwrap_or_default();
    admit_connect(
        app,
        who,
        ns,
        name,
        "portforward",
        &connect_options("portforward", raw_query),
    )
    .await?;
    // The ports a WebSocket client asks for (`ports=`) go along; SPDY clients name them per stream.
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    join_upgrade(app, node, &format!("/portForward/{ns}/{name}{query}"), parts).await
}

/// The pod `ns/name`, or upstream's NotFound.
async fn read_pod(app: &App, ns: &str, name: &str) -> Result<Value> {
    let kv = app
        .store
        .get(&keys::object(keys::PODS, Some(ns), name))
        .await
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?
        .ok_or_else(|| ApiError::new(404, "NotFound", format!("pods \"{name}\" not found")))?;
    Ok(from_kv(&kv))
}

/// Names of the pod's containers of one kind (`containers`, `initContainers`).
fn container_names(pod: &Value, key: &str) -> Vec<String> {
    pod["spec"][key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// `GET pods/NAME/log`.
pub async fn logs(app: &App, call: &Call) -> Result<Response> {
    let ns = call.ns.clone().unwrap_or_default();
    let name = call.name.clone().unwrap_or_default();
    let (node, path) = log_source(app, &ns, &name, &call.query).await?;
    get_from_node(app, &node, &path).await
}

/// `GET pods/NAME/log` with a WebSocket upgrade (what the Python client's and the conformance
/// suite's WebSocket log readers send): the node's agent sends the log as WebSocket messages
/// (`binary.k8s.io` or `base64.binary.k8s.io`), joined to the client byte for byte.
pub async fn logs_upgraded(
    app: &App,
    who: &super::server::Identity,
    ns: &str,
    name: &str,
    parts: &mut axum::http::request::Parts,
) -> Result<Response> {
    authorize_on(app, who, "get", "pods", ns, name, "log").await?;
    let query = super::parse_query(parts.uri.query());
    let (node, path) = log_source(app, ns, name, &query).await?;
    join_upgrade(app, &node, &path, parts).await
}

/// The node and the agent's path that serve the log `query` asks for of pod `ns/name`, or the
/// error upstream answers (no such container, not started yet, not scheduled).
async fn log_source(
    app: &App,
    ns: &str,
    name: &str,
    query: &std::collections::HashMap<String, String>,
) -> Result<(String, String)> {
    let pod = read_pod(app, ns, name).await?;
    let (app_names, init_names) = (
        container_names(&pod, "containers"),
        container_names(&pod, "initContainers"),
    );
    let container = match query.get("container").filter(|c| !c.is_empty()) {
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
    if !app_names.contains(&container)
        && !init_names.contains(&container)
        && !container_names(&pod, "ephemeralContainers").contains(&container)
    {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let previous = query.get("previous").is_some_and(|p| p == "true");
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["status"]["initContainerStatuses"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .chain(
            pod["status"]["ephemeralContainerStatuses"]
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
        if let Some(v) = query.get(key) {
            q.push(format!("{key}={}", skiff_common::url::encode(v)));
        }
    }
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", q.join("&"));
    Ok((node.to_owned(), path))
}

/// A `proxy` subresource request: `pods` or `services`, the name as written in the path
/// (`NAME`, `NAME:PORT` or `SCHEME:NAME:PORT`), and the path after `proxy`.
#[derive(Debug)]
pub struct ProxyTarget<'a> {
    /// Namespace.
    pub ns: &'a str,
    /// `pods` or `services`.
    pub kind: &'a str,
    /// The name with its optional scheme and port.
    pub name: &'a str,
    /// The path after `proxy` (at least `/`).
    pub rest: &'a str,
    /// The request's path up to and including `proxy`, as the client wrote it: proxied HTML's
    /// links are moved under it.
    pub prefix: &'a str,
}

/// Splits `[SCHEME:]NAME[:PORT]` into (https, name, port).
fn name_and_port(raw: &str) -> Result<(bool, &str, &str)> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => return Err(ApiError::bad_request(format!("invalid request {raw:?}"))),
    };
    if !matches!(scheme, "" | "http" | "https") {
        return Err(ApiError::bad_request(format!(
            "proxying over {scheme} is not supported"
        )));
    }
    Ok((scheme == "https", name, port))
}

/// The pod and port a `proxy` request goes to: a pod's port (a number or a container port's
/// name, 80 when none is given), or for a Service one of its ready endpoints on the Service
/// port named (or numbered) in the request; and whether to speak TLS to it.
async fn proxy_backend(app: &App, target: &ProxyTarget<'_>) -> Result<(Value, u16, bool)> {
    let (tls, name, port) = name_and_port(target.name)?;
    if target.kind == "pods" {
        let pod = read_pod(app, target.ns, name).await?;
        let number = match port {
            // No port: the first port a container declares, as upstream; else 80.
            "" => pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|c| c["ports"][0]["containerPort"].as_u64())
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(80),
            p => match p.parse::<u16>() {
                Ok(n) => n,
                Err(_) => pod["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                    .find(|cp| cp["name"] == p)
                    .and_then(|cp| cp["containerPort"].as_u64())
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| {
                        ApiError::new(
                            503,
                            "ServiceUnavailable",
                            format!("no such port {p:?} on pod {name}"),
                        )
                    })?,
            },
        };
        return Ok((pod, number, tls));
    }
    let (pod, number) = service_backend(app, target.ns, name, port).await?;
    Ok((pod, number, tls))
}

/// One ready endpoint of Service `ns/name` on its port `port` (a number or a port's name): the
/// pod and the pod's port.
pub async fn service_backend(app: &App, ns: &str, name: &str, port: &str) -> Result<(Value, u16)> {
    let target = ProxyTarget {
        ns,
        kind: "services",
        name,
        rest: "/",
        prefix: "",
    };
    let svc = app
        .store
        .get(&keys::object(keys::SERVICES, Some(target.ns), name))
        .await
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?
        .map(|kv| from_kv(&kv))
        .ok_or_else(|| ApiError::new(404, "NotFound", format!("services \"{name}\" not found")))?;
    let svc_port = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| match port.parse::<i64>() {
            Ok(n) => p["port"].as_i64() == Some(n),
            Err(_) => p["name"].as_str().unwrap_or_default() == port,
        })
        .ok_or_else(|| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("no service port {port:?} found for service {name:?}"),
            )
        })?;
    let port_name = svc_port["name"].as_str().unwrap_or_default();
    let slices = app
        .store
        .list(&keys::in_namespace(keys::ENDPOINT_SLICES, target.ns), None, 0)
        .await
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let mut backends: Vec<(String, u16)> = Vec::new();
    for slice in slices.items.iter().map(from_kv) {
        if slice["metadata"]["labels"]["kubernetes.io/service-name"] != name {
            continue;
        }
        let Some(number) = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .and_then(|p| p["port"].as_u64())
            .and_then(|n| u16::try_from(n).ok())
        else {
            continue;
        };
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            if ep["conditions"]["ready"] != json!(false)
                && ep["targetRef"]["kind"] == "Pod"
                && let Some(pod) = ep["targetRef"]["name"].as_str()
            {
                backends.push((pod.to_owned(), number));
            }
        }
    }
    if backends.is_empty() {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            format!("no endpoints available for service \"{name}\""),
        ));
    }
    let (pod, number) = backends.swap_remove(rand::random_range(0..backends.len()));
    Ok((read_pod(app, target.ns, &pod).await?, number))
}

/// Upstream's answer when a pod or service behind a proxy cannot be reached.
pub fn unreachable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        503,
        "ServiceUnavailable",
        format!("error trying to reach service: {e}"),
    )
}

/// A byte stream to `port` of `pod`, through its node's agent (`Upgrade: tcp`): for protocols
/// the API server speaks to pods itself (TLS to aggregated API servers).
pub async fn connect_pod(app: &App, pod: &Value, port: u16) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
    let (ns, name) = (meta_str(pod, "namespace"), meta_str(pod, "name"));
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            format!("pod {name} does not have a host assigned"),
        ));
    };
    let (mut sender, authority) = connect_node::<Empty<bytes::Bytes>>(app, node).await?;
    let req = hyper::Request::get(format!("/podConnect/{ns}/{name}/{port}"))
        .header("host", authority)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let mut resp = sender.send_request(req).await.map_err(unreachable)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let e = node_error(resp).await;
        return Err(ApiError::new(503, "ServiceUnavailable", e.message));
    }
    let upgraded = hyper::upgrade::on(&mut resp).await.map_err(unreachable)?;
    Ok(TokioIo::new(upgraded))
}

/// `pods/NAME[:PORT]/proxy/...` and `services/NAME[:PORT]/proxy/...`: the request, with its
/// method, headers and body, relayed through the pod's agent to the pod's port; the answer
/// streamed back.
pub async fn proxy(
    app: &App,
    who: &super::server::Identity,
    target: &ProxyTarget<'_>,
    parts: axum::http::request::Parts,
    body: Body,
) -> Result<Response> {
    // Upstream's verb for a proxied request follows its method.
    let verb = match parts.method.as_str() {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "get",
    };
    authorize_on(app, who, verb, target.kind, target.ns, target.name, "proxy").await?;
    let (pod, port, tls) = proxy_backend(app, target).await?;
    let pod_name = meta_str(&pod, "name");
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            format!("pod {pod_name} does not have a host assigned"),
        ));
    };
    let (mut sender, authority) = connect_node::<Body>(app, node).await?;
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let port_segment = if tls {
        format!("https:{port}")
    } else {
        port.to_string()
    };
    let path = format!(
        "/podProxy/{}/{pod_name}/{port_segment}{}{query}",
        target.ns, target.rest
    );
    let client_host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut req = hyper::Request::builder().method(parts.method.clone()).uri(path);
    for (k, v) in &parts.headers {
        if !matches!(
            k.as_str(),
            "host"
                | "authorization"
                | "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
        ) {
            req = req.header(k, v);
        }
    }
    let req = req
        .header("host", authority)
        .body(body)
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(unreachable)?;
    let (mut parts, body) = resp.into_parts();
    // Links keep to the proxy: redirects, and HTML the pod serves (unless it is compressed).
    let pod_host = format!("{}:{port}", pod["status"]["podIP"].as_str().unwrap_or_default());
    let hosts = [pod_host.as_str(), client_host.as_str()];
    if let Some(location) = parts.headers.get(header::LOCATION).and_then(|l| l.to_str().ok()) {
        let moved = super::html_rewrite::rewrite_url(location, target.prefix, &hosts);
        if let Ok(v) = header::HeaderValue::from_str(&moved) {
            parts.headers.insert(header::LOCATION, v);
        }
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    let html = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("text/html"));
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    if !html || encoded {
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    let page = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("error reading from the pod: {e}"),
            )
        })?
        .to_bytes();
    let page = super::html_rewrite::rewrite_html(&String::from_utf8_lossy(&page), target.prefix, &hosts);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from(page)))
}

#[cfg(test)]
mod tests {
    use super::name_and_port;

    #[test]
    fn proxy_names_carry_an_optional_scheme_and_port() {
        assert_eq!(name_and_port("web").unwrap(), (false, "web", ""));
        assert_eq!(name_and_port("web:8080").unwrap(), (false, "web", "8080"));
        assert_eq!(
            name_and_port("http:web:metrics").unwrap(),
            (false, "web", "metrics")
        );
        assert_eq!(name_and_port("https:web:443").unwrap(), (true, "web", "443"));
        assert_eq!(name_and_port("ftp:web:21").unwrap_err().code, 400);
        assert_eq!(name_and_port("a:b:c:d").unwrap_err().code, 400);
    }
}
