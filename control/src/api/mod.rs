//! The Kubernetes API server: HTTPS, discovery, OpenAPI and REST semantics over the store.

pub mod aggregator;
pub mod audit;
mod authz;
mod componentstatus;
mod discovery;
mod eviction;
pub mod fuzz;
pub mod handlers;
mod html_rewrite;
mod join;
pub mod members;
mod nodeproxy;
mod noderestriction;
pub mod nodestream;
mod openapi_v2;
pub mod protobuf;
mod query;
pub mod rbac;
pub mod resource_metrics;
mod reviews;
pub mod server;
mod table;
pub mod token;
pub mod tunnel;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use self::handlers::{Call, json_response};
use self::server::Identity;
use crate::objects::Objects;
use crate::objects::admission::UserInfo;
use crate::objects::status::ApiError;
use skiff_common::url::percent_decode;

/// The largest request body accepted, as upstream (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How long a request body may take to arrive.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Shared state of the API server: the objects, and what only the API server needs (node
/// joining and streams, agents' tunnels, token signing).
#[derive(Debug)]
pub struct App {
    /// The objects, shared with the controllers and the scheduler.
    pub objects: Arc<Objects>,
    /// How long a node's stream lasts at least (it ends between this and twice this).
    pub node_stream_timeout: std::time::Duration,
    /// The cluster CA, for signing nodes' certificates when they join.
    pub pki: Option<Arc<crate::pki::Pki>>,
    /// The secret part of the node token agents join with.
    pub node_secret: String,
    /// Agents' open tunnels, through which their endpoints are reached.
    pub tunnels: tunnel::Tunnels,
    /// Service-account token signer (its key lives in the store; loaded on first use).
    signer: tokio::sync::OnceCell<token::Signer>,
    /// Aggregated API servers (APIServices with a `service`).
    pub aggregated: aggregator::Aggregated,
    /// Roles and bindings.
    pub rbac: rbac::Rbac,
    /// The users of `--token-auth-file`.
    pub static_tokens: token::StaticTokens,
    /// The audit log (none: requests are not audited).
    pub audit: Option<Arc<audit::Audit>>,
    /// What members joining the store present and get (none: members cannot join here).
    pub joining: Option<members::Joining>,
    /// Watch events encoded once for every watcher that sees them alike.
    pub watch_lines: handlers::WatchLines,
}

impl App {
    /// API server state over `objects`.
    pub fn new(objects: Arc<Objects>) -> Self {
        Self {
            objects,
            node_stream_timeout: std::time::Duration::from_secs(1800),
            pki: None,
            node_secret: String::new(),
            signer: tokio::sync::OnceCell::new(),
            tunnels: tunnel::Tunnels::default(),
            aggregated: aggregator::Aggregated::default(),
            rbac: rbac::Rbac::default(),
            static_tokens: token::StaticTokens::default(),
            audit: None,
            joining: None,
            watch_lines: handlers::WatchLines::default(),
        }
    }
}

impl std::ops::Deref for App {
    type Target = Objects;

    fn deref(&self) -> &Objects {
        &self.objects
    }
}

/// The axum router: agents' `NodeService` gRPC stream, and everything else through one dispatcher
/// that parses Kubernetes paths.
pub fn router(app: Arc<App>) -> Router {
    use skiff_proto::node::v1::node_service_server::NodeServiceServer;
    let nodes = NodeServiceServer::new(nodestream::NodeStreams::new(app.clone()))
        .max_encoding_message_size(nodestream::MAX_MESSAGE)
        .max_decoding_message_size(nodestream::MAX_MESSAGE);
    Router::new()
        .route_service("/skiff.node.v1.NodeService/{*rest}", nodes)
        .fallback(dispatch)
        .with_state(app)
}

pub(crate) fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

/// `/livez`, `/readyz` and `/healthz` as upstream words them: `ok`, or 500 with each check's
/// verdict. Live: the store's Raft core runs. Ready (and healthy): also a leader, and room on disk
/// for writes.
fn health(app: &App, check: &str) -> Response {
    let failure = if check == "livez" {
        app.store.not_live()
    } else {
        app.store.not_ready()
    };
    match failure {
        None => (StatusCode::OK, "ok").into_response(),
        Some(why) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("[+]ping ok\n[-]store failed: {why}\n{check} check failed\n"),
        )
            .into_response(),
    }
}

fn unauthorized() -> Response {
    ApiError::new(401, "Unauthorized", "Unauthorized").into_response()
}

/// The `meta.k8s.io` version when `Accept` asks for `PartialObjectMetadata` (or its list): the
/// first such media type, e.g. `application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`.
fn partial_metadata(accept: &str) -> Option<&'static str> {
    accept.split(',').find_map(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        let is = |p: &str| params.contains(&p);
        if !(is("as=PartialObjectMetadata") || is("as=PartialObjectMetadataList")) || !is("g=meta.k8s.io") {
            return None;
        }
        if is("v=v1") {
            Some("v1")
        } else if is("v=v1beta1") {
            Some("v1beta1")
        } else {
            None
        }
    })
}

/// The identity `who` asks to act as (`Impersonate-User`, `Impersonate-Group`), after checking
/// that it may `impersonate` that user (or service account) and each group, as upstream.
async fn impersonate(app: &App, who: &Identity, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let user = headers
        .get("impersonate-user")
        .and_then(|u| u.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let account = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    let target = match account {
        Some((ns, name)) => rbac::Target::Resource {
            group: "",
            resource: "serviceaccounts",
            subresource: None,
            namespace: Some(ns),
            name: Some(name),
        },
        None => rbac::Target::Resource {
            group: "",
            resource: "users",
            subresource: None,
            namespace: None,
            name: Some(&user),
        },
    };
    authz::allow(app, who, "impersonate", &target).await?;
    let mut groups: Vec<String> = Vec::new();
    for g in headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|g| g.to_str().ok())
    {
        let target = rbac::Target::Resource {
            group: "",
            resource: "groups",
            subresource: None,
            namespace: None,
            name: Some(g),
        };
        authz::allow(app, who, "impersonate", &target).await?;
        groups.push(g.to_owned());
    }
    if let Some((ns, _)) = account
        && groups.is_empty()
    {
        groups = vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{ns}"),
        ];
    }
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".to_owned());
    }
    Ok(Identity { user, groups })
}

/// The token of an `Authorization: Bearer TOKEN` header, the scheme in any case (the Python
/// client sends `bearer`), as upstream's bearer token authenticator reads it.
fn bearer_token(header: &str) -> Option<&str> {
    let mut parts = header.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next().filter(|t| !t.is_empty())?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Serves a request and counts it as upstream's metrics do (`crate::metrics`): by its verb,
/// resource, scope and code, its duration (not for watches and connections, which are counted as
/// long-running while they last), and as in flight while it is served.
async fn dispatch(state: State<Arc<App>>, req: Request) -> Response {
    use crate::metrics;
    use futures::StreamExt;
    let started = std::time::Instant::now();
    let info = audit::request_info(req.method(), req.uri().path(), req.uri().query());
    let apply = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/apply-patch"));
    let (verb, scope) = metrics::request_verb_and_scope(&info, req.method().as_str(), apply);
    let dry_run = if req.uri().query().is_some_and(|q| q.contains("dryRun=All")) {
        "All"
    } else {
        ""
    };
    let long_running = matches!(verb, "WATCH" | "CONNECT");
    let kind = if matches!(verb, "GET" | "LIST" | "HEAD" | "OPTIONS") {
        "readOnly"
    } else {
        "mutating"
    };
    let in_flight = (!long_running).then(|| metrics::Held::new(&metrics::API_INFLIGHT, &[kind]));
    let response = served(state, req).await;
    drop(in_flight);
    let code = response.status().as_u16().to_string();
    let labels = [
        verb,
        dry_run,
        &info.group,
        &info.version,
        &info.resource,
        &info.subresource,
        scope,
        "apiserver",
    ];
    metrics::API_REQUESTS.inc(&[&labels[..], &[code.as_str()]].concat());
    if !long_running {
        metrics::API_DURATION.observe(&labels, started.elapsed().as_secs_f64());
        return response;
    }
    if !response.status().is_success() {
        return response;
    }
    // Open until its body ends or the client goes.
    // The request's labels but `dry_run`.
    let held = metrics::Held::new(&metrics::API_LONGRUNNING, &[&labels[..1], &labels[2..]].concat());
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _ = &held;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

async fn served(state: State<Arc<App>>, req: Request) -> Response {
    let protobuf = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(protobuf::encode::preferred);
    let audited = async {
        let response = match state.0.audit.clone() {
            Some(audit) => {
                let received = audit::Received::of(&req);
                audit.record(&received, serve(state, req)).await
            }
            None => serve(state, req).await,
        };
        // Encoded last, so that the audit log has the object as JSON.
        if protobuf && response.extensions().get::<Encodable>().is_some() {
            as_protobuf(response).await
        } else {
            response
        }
    };
    let (mut response, warnings) = crate::objects::admission::with_warnings(audited).await;
    for w in warnings {
        // RFC 7234 warn-code 299 with a quoted text, as upstream writes them.
        let text = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            response.headers_mut().append("warning", v);
        }
    }
    response
}

async fn serve(State(app): State<Arc<App>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Some(who) = parts.extensions.get::<Identity>() {
        audit::note_user(who);
    }
    // Without a client certificate, a bearer token may say who it is.
    if parts.extensions.get::<Identity>().is_none()
        && let Some(bearer) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|a| a.to_str().ok())
            .and_then(bearer_token)
    {
        // A static token, a bootstrap token, else a service account's.
        let who = match app.static_tokens.get(bearer) {
            Some(id) => Ok(id.clone()),
            None => match token::bootstrap_identity(&app, bearer).await {
                Some(result) => result,
                None => token::authenticate(&app, bearer).await,
            },
        };
        match who {
            Ok(id) => {
                audit::note_user(&id);
                parts.extensions.insert(id);
            }
            Err(e) => return e.into_response(),
        }
    }
    // `kubectl --as USER --as-group GROUP`: act as someone else, when allowed to impersonate them.
    if parts.headers.contains_key("impersonate-user")
        && let Some(who) = parts.extensions.get::<Identity>().cloned()
    {
        match impersonate(&app, &who, &parts.headers).await {
            Ok(as_who) => {
                audit::note_impersonated(&as_who);
                parts.extensions.insert(as_who);
            }
            Err(e) => return e.into_response(),
        }
    }
    let path = parts.uri.path().to_owned();
    let query = parse_query(parts.uri.query());
    // The join paths check their token themselves (a node's, a store member's).
    let public = matches!(
        path.as_str(),
        "/healthz"
            | "/livez"
            | "/readyz"
            | "/version"
            | "/version/"
            | "/cacerts"
            | "/skiff/v1/version"
            | "/skiff/v1/join"
            | "/skiff/v1/members/bootstrap"
    ) || (path == "/skiff/v1/members" && parts.method == Method::POST);
    if !public && parts.extensions.get::<Identity>().is_none() {
        return unauthorized();
    }
    // An agent opening its tunnel.
    if path == "/skiff/v1/tunnel"
        && let Some(who) = parts.extensions.get::<Identity>().cloned()
    {
        let mut parts = parts;
        return match tunnel::accept(app.clone(), &who, &mut parts) {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    // pods/NAME[:PORT]/proxy/... and services/NAME[:PORT]/proxy/...: one request relayed to a pod.
    if let [
        "api",
        "v1",
        "namespaces",
        ns,
        kind @ ("pods" | "services"),
        name,
        "proxy",
        ..,
    ] = path.trim_matches('/').split('/').collect::<Vec<_>>().as_slice()
        && let Some(who) = parts.extensions.get::<Identity>().cloned()
    {
        let prefix = format!("/api/v1/namespaces/{ns}/{kind}/{name}/proxy");
        let rest = path.get(prefix.len()..).unwrap_or_default();
        let rest = if rest.is_empty() { "/" } else { rest };
        let target = nodeproxy::ProxyTarget {
            ns,
            kind,
            name: &skiff_common::url::percent_decode(name),
            rest,
            prefix: &prefix,
        };
        return match nodeproxy::proxy(&app, &who, &target, parts, body).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    // nodes/NAME/proxy/...: the agent's stats and metrics.
    if let ["api", "v1", "nodes", node, "proxy", ..] =
        path.trim_matches('/').split('/').collect::<Vec<_>>().as_slice()
        && let Some(who) = parts.extensions.get::<Identity>().cloned()
    {
        let prefix = format!("/api/v1/nodes/{node}/proxy");
        let mut rest = path.get(prefix.len()..).unwrap_or_default().to_owned();
        if let Some(q) = parts.uri.query() {
            rest = format!("{rest}?{q}");
        }
        let node = skiff_common::url::percent_decode(node);
        return match nodeproxy::node_proxy(&app, &who, &parts.method, &node, &rest, body).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    // metrics.k8s.io, served here unless an APIService for it answers.
    if let ["apis", resource_metrics::GROUP, rest @ ..] =
        path.trim_matches('/').split('/').collect::<Vec<_>>().as_slice()
        && resource_metrics::served(&app)
        && let Some(who) = parts.extensions.get::<Identity>().cloned()
    {
        if parts.method != Method::GET {
            return ApiError::method_not_allowed().into_response();
        }
        let rest: Vec<&str> = rest.iter().copied().filter(|s| !s.is_empty()).collect();
        return match resource_metrics::serve(&app, &who, &rest, &query).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    // A group version an aggregated API server serves (and this one does not).
    if let ["apis", group, version, ..] = path.trim_matches('/').split('/').collect::<Vec<_>>().as_slice()
        && app.registry.in_group_version(group, version).is_empty()
        && let Some(remote) = app.aggregated.get(group, version)
        && let Some(who) = parts.extensions.get::<Identity>().cloned()
    {
        return match aggregator::proxy(&app, &remote, &who, parts, body).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    // kubectl exec / cp / port-forward, logs over WebSocket: an upgraded connection joined to the
    // node's agent.
    if let [
        "api",
        "v1",
        "namespaces",
        ns,
        "pods",
        name,
        sub @ ("exec" | "attach" | "portforward" | "log"),
    ] = path.trim_matches('/').split('/').collect::<Vec<_>>().as_slice()
        && parts.headers.contains_key(header::UPGRADE)
        && let Some(who) = parts.extensions.get::<Identity>().cloned()
    {
        let (ns, name, sub) = (ns.to_string(), name.to_string(), sub.to_string());
        let mut parts = parts;
        let joined = if sub == "exec" || sub == "attach" {
            nodeproxy::exec(&app, &who, &ns, &name, &sub, &mut parts).await
        } else if sub == "log" {
            nodeproxy::logs_upgraded(&app, &who, &ns, &name, &mut parts).await
        } else {
            nodeproxy::portforward(&app, &who, &ns, &name, &mut parts).await
        };
        return match joined {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            return ApiError::new(
                408,
                "Timeout",
                format!(
                    "the request body did not arrive within {}s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
            .into_response();
        }
        Ok(Err(_)) => {
            return ApiError::new(
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            )
            .into_response();
        }
    };
    audit::note_request_body(&body);
    let who = parts.extensions.get::<Identity>().cloned();
    let response = match route(
        app,
        &parts.method,
        &path,
        query,
        &parts.headers,
        &body,
        who.as_ref(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let mut response = response;
    response.extensions_mut().insert(Encodable);
    response
}

/// Marks a response of the API's own handlers, which a client that prefers protobuf gets as
/// protobuf (proxied and upgraded ones stay as they are).
#[derive(Debug, Clone, Copy)]
struct Encodable;

/// A whole JSON response as protobuf, for a client that prefers it, when its kind has a message
/// (custom resources, tables and streams stay as they are: the client takes JSON too, and
/// decodes by the Content-Type).
async fn as_protobuf(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes() == b"application/json");
    if !is_json || response.headers().contains_key(header::TRANSFER_ENCODING) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::internal("reading a response to encode it").into_response();
    };
    let encoded = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| protobuf::encode::encode(&v));
    let Some(encoded) = encoded else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(protobuf::encode::CONTENT_TYPE),
    );
    Response::from_parts(parts, axum::body::Body::from(encoded))
}

async fn route(
    app: Arc<App>,
    method: &Method,
    path: &str,
    query: HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    who: Option<&Identity>,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let ok = |v: serde_json::Value| Ok(json_response(StatusCode::OK, &v));
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("");
    // kubectl asks for aggregated discovery first: one response instead of one per group-version.
    if matches!(segs.as_slice(), ["api"] | ["apis"])
        && accept.contains("as=APIGroupDiscoveryList")
        && accept.contains("v=v2;")
    {
        let mut body = discovery::aggregated(&app.registry, segs == ["api"]);
        if segs == ["apis"]
            && let Some(items) = body["items"].as_array_mut()
        {
            items.extend(aggregator::discovery_items(&app));
            if resource_metrics::served(&app) {
                items.push(resource_metrics::discovery_item());
            }
        }
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE)],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response());
    }
    match segs.as_slice() {
        [check @ ("healthz" | "livez" | "readyz"), ..] => return Ok(health(&app, check)),
        ["version"] => return ok(discovery::version()),
        ["skiff", "v1", "version"] => return ok(discovery::skiff_version()),
        ["debug", "flags", "v"] if method == Method::PUT => {
            let who = who.ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))?;
            authz::allow(&app, who, "put", &rbac::Target::Path("/debug/flags/v")).await?;
            return skiff_common::logging::set_filter_answer(body)
                .map(|answer| answer.into_response())
                .map_err(ApiError::bad_request);
        }
        ["metrics"] if method == Method::GET => {
            let who = who.ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))?;
            authz::allow(&app, who, "get", &rbac::Target::Path("/metrics")).await?;
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                crate::metrics::render(),
            )
                .into_response());
        }
        ["cacerts"] => {
            let ca = app.pki.as_ref().map(|p| p.ca_pem.clone()).unwrap_or_default();
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-pem-file")],
                ca,
            )
                .into_response());
        }
        ["skiff", "v1", "join"] if method == Method::POST => return join::join(&app, body).await,
        ["skiff", "v1", "members", rest @ ..] => return members::serve(&app, method, rest, body, who).await,
        ["api"] => return ok(discovery::core_versions()),
        ["apis"] => {
            let mut groups = discovery::groups(&app.registry);
            if let Some(list) = groups["groups"].as_array_mut() {
                list.extend(aggregator::group_entries(&app));
                if resource_metrics::served(&app) {
                    list.push(resource_metrics::group_entry());
                }
            }
            return ok(groups);
        }
        ["openapi", "v3"] => return ok(discovery::openapi_v3_root(&app.registry)),
        ["openapi", "v3", "api", v] => {
            return discovery::openapi_v3_doc(&app.registry, "", v).map_or(Err(ApiError::no_route()), ok);
        }
        ["openapi", "v3", "apis", g, v] => {
            return discovery::openapi_v3_doc(&app.registry, g, v).map_or(Err(ApiError::no_route()), ok);
        }
        ["openapi", "v2"] => {
            if accept.contains("protobuf") && !accept.contains("json") {
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, openapi_v2::PROTOBUF)],
                    openapi_v2::protobuf(&openapi_v2::document(&app.registry)),
                )
                    .into_response());
            }
            return ok(openapi_v2::document(&app.registry));
        }
        ["api", v] => {
            return discovery::resources(&app.registry, "", v).map_or(Err(ApiError::no_route()), ok);
        }
        ["apis", g] => {
            let remote = || {
                aggregator::group_entries(&app)
                    .into_iter()
                    .find(|e| e["name"] == *g)
                    .map(|mut e| {
                        e["kind"] = serde_json::json!("APIGroup");
                        e["apiVersion"] = serde_json::json!("v1");
                        e
                    })
            };
            return discovery::group(&app.registry, g)
                .or_else(remote)
                .map_or(Err(ApiError::no_route()), ok);
        }
        ["apis", g, v] => {
            return discovery::resources(&app.registry, g, v).map_or(Err(ApiError::no_route()), ok);
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let (ns, rest): (Option<&str>, &[&str]) = match rest {
        ["namespaces", ns, resource, more @ ..]
            if !matches!(*resource, "status" | "finalize") || !more.is_empty() =>
        {
            (Some(*ns), &rest[2..])
        }
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s] => (*r, Some(*n), Some(*s)),
        _ => return Err(ApiError::no_route()),
    };
    let info = app
        .registry
        .lookup(group, version, resource)
        .ok_or_else(ApiError::no_route)?;
    if let Some(s) = sub
        && !info.has_subresource(s)
    {
        return Err(ApiError::no_route());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default();
    let mut query = query;
    query::check(method, &mut query)?;
    // As upstream: without an explicit field manager, writes are attributed to the user agent.
    if !query.contains_key("fieldManager") {
        let agent = headers
            .get(header::USER_AGENT)
            .and_then(|u| u.to_str().ok())
            .unwrap_or("unknown");
        let manager = agent
            .split('/')
            .next()
            .filter(|m| !m.is_empty())
            .unwrap_or("unknown");
        query.insert("fieldManager".into(), manager.to_owned());
    }
    let protobuf = protobuf::encode::preferred(accept)
        && protobuf::encode::message_of_kind(&info.api_version(), &info.kind).is_some();
    let call = Call {
        info,
        ns: ns.map(str::to_owned),
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
        table: accept.contains("as=Table"),
        partial: partial_metadata(accept),
        content_type: content_type.to_owned(),
        protobuf,
        query,
        user: who.map(|w| {
            let mut groups = w.groups.clone();
            if !groups.iter().any(|g| g == "system:authenticated") {
                groups.push("system:authenticated".to_owned());
            }
            Arc::new(UserInfo {
                username: w.user.clone(),
                groups,
            })
        }),
    };
    let watching = legacy_watch || call.query.get("watch").is_some_and(|w| w == "true");
    let Some(who) = who else {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    };
    let verb = authz::verb(method, &call, watching);
    authz::authorize(&app, who, verb, &call).await?;
    if let Some(node) = authz::node_of(who)
        && !who.groups.iter().any(|g| g == "system:masters")
    {
        noderestriction::check(&app, node, verb, &call).await?;
    }
    // A role or binding written by anyone but an admin may not grant more than its writer holds:
    // the write is tried first (dry run) to see what would be stored.
    if call.info.group == rbac::GROUP
        && call.info.crd.is_none()
        && matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        && !who.groups.iter().any(|g| g == "system:masters")
    {
        let mut dry = call.clone_meta();
        dry.query.insert("dryRun".into(), "All".into());
        let tried = match *method {
            Method::POST => handlers::create(&app, &dry, body).await?,
            Method::PUT => handlers::update(&app, &dry, body).await?,
            _ => handlers::patch(&app, &dry, body).await?,
        };
        let bytes = axum::body::to_bytes(tried.into_body(), usize::MAX)
            .await
            .map_err(ApiError::internal)?;
        let object: serde_json::Value = serde_json::from_slice(&bytes).map_err(ApiError::internal)?;
        rbac::check_escalation(&app, who, &call.info.kind, call.ns.as_deref(), &object).await?;
    }
    if call.info.is_review() {
        return match method {
            &Method::POST if call.name.is_none() => reviews::create(&app, &call, body, who).await,
            _ => Err(ApiError::method_not_allowed()),
        };
    }
    if call.info.group.is_empty() && call.info.kind == "ComponentStatus" {
        return componentstatus::serve(&app, &call, method);
    }
    match (method, call.name.is_some(), call.sub.as_deref()) {
        (&Method::GET, _, _) if watching => handlers::watch(app, call).await,
        (&Method::GET, true, Some("log")) => nodeproxy::logs(&app, &call).await,
        (&Method::GET, true, _) => handlers::get(&app, &call).await,
        (&Method::GET, false, _) => handlers::list(&app, &call).await,
        (&Method::POST, false, None) if call.info.kind == "CertificateSigningRequest" => {
            handlers::create_csr(&app, &call, body, who).await
        }
        (&Method::POST, false, None) => handlers::create(&app, &call, body).await,
        (&Method::POST, true, Some("binding")) => handlers::bind(&app, &call, body).await,
        (&Method::POST, true, Some("eviction")) => eviction::evict(&app, &call, body).await,
        (&Method::POST, true, Some("token")) => token::create(&app, &call, body, authz::node_of(who)).await,
        (&Method::PUT, true, _) => handlers::update(&app, &call, body).await,
        (&Method::PATCH, true, _) => handlers::patch(&app, &call, body).await,
        (&Method::DELETE, true, None) => handlers::delete(&app, &call, body).await,
        (&Method::DELETE, false, None) => handlers::delete_collection(&app, &call, body).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn partial_metadata_is_asked_for_with_its_group_and_version() {
        use super::partial_metadata;
        assert_eq!(
            partial_metadata(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
            ),
            Some("v1")
        );
        assert_eq!(
            partial_metadata(
                "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1"
            ),
            Some("v1beta1")
        );
        assert_eq!(
            partial_metadata("application/json;as=Table;g=meta.k8s.io;v=v1"),
            None
        );
        assert_eq!(partial_metadata("application/json"), None);
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("  BEARER abc  "), Some("abc"));
        assert_eq!(bearer_token("Bearer abc extra"), Some("abc"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Basic abc"), None);
    }
}
