//! The audit log: one upstream `audit.k8s.io/v1` Event per request, as JSON lines in a file that
//! rotates by size, at the level upstream's `Policy` file gives the request (`None`, `Metadata`,
//! `Request`, `RequestResponse`; the first rule that matches decides). Secrets, token reviews and
//! service-account tokens are never logged beyond `Metadata`, whatever the policy says.
//!
//! What a request is (verb, resource, namespace, name) is read from its URL as upstream's request
//! info does; who made it comes from [`note_user`] and [`note_impersonated`], which the
//! dispatcher calls while it authenticates, inside [`Audit::record`]'s scope.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::Value;

use super::server::Identity;

/// How much of a request is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing.
    None,
    /// Who, what and the answer's code.
    Metadata,
    /// And the request's body.
    Request,
    /// And the response's body.
    RequestResponse,
}

impl Level {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "None" => Self::None,
            "Metadata" => Self::Metadata,
            "Request" => Self::Request,
            "RequestResponse" => Self::RequestResponse,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Metadata => "Metadata",
            Self::Request => "Request",
            Self::RequestResponse => "RequestResponse",
        }
    }
}

/// What a request is, read from its URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Whether it names a resource (else a non-resource URL such as `/healthz` or `/apis`).
    pub resource_request: bool,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`; for a
    /// non-resource URL the lowercase method.
    pub verb: String,
    /// API group ("" for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Reads a request's URL as upstream's `RequestInfoFactory` does.
pub fn request_info(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
    let param = |key: &str| {
        query.unwrap_or_default().split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| skiff_common::url::percent_decode(v))
        })
    };
    let non_resource = || RequestInfo {
        verb: method.as_str().to_ascii_lowercase(),
        ..RequestInfo::default()
    };
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, mut rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return non_resource(),
    };
    if rest.is_empty() {
        return non_resource();
    }
    let mut info = RequestInfo {
        resource_request: true,
        group: group.to_owned(),
        version: version.to_owned(),
        ..RequestInfo::default()
    };
    let mut watching = false;
    if rest[0] == "watch" {
        watching = true;
        rest = &rest[1..];
    }
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        info.namespace = rest[1].to_owned();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    info.resource = rest.first().copied().unwrap_or_default().to_owned();
    info.name = rest.get(1).copied().unwrap_or_default().to_owned();
    info.subresource = rest.get(2).copied().unwrap_or_default().to_owned();
    if param("watch").as_deref().and_then(super::query::parse_bool) == Some(true) {
        watching = true;
    }
    if info.name.is_empty()
        && matches!(*method, Method::GET)
        && let Some(name) = param("fieldSelector").and_then(|f| {
            // Pinned to one object, as the authorizer reads it.
            crate::objects::selector::FieldSelector::parse(&f)
                .ok()
                .and_then(|f| f.pinned("metadata.name").map(str::to_owned))
        })
    {
        info.name = name;
    }
    let named = !rest.get(1).is_none_or(|n| n.is_empty());
    info.verb = match super::authz::verb_for(method, named, watching) {
        "unknown" => method.as_str().to_ascii_lowercase(),
        verb => verb.to_owned(),
    };
    info
}

/// One rule of a policy.
#[derive(Debug, Default)]
struct Rule {
    level: Option<Level>,
    users: Vec<String>,
    user_groups: Vec<String>,
    verbs: Vec<String>,
    resources: Vec<GroupResources>,
    namespaces: Vec<String>,
    non_resource_urls: Vec<String>,
    omit_stages: Option<Vec<String>>,
}

#[derive(Debug, Default)]
struct GroupResources {
    group: String,
    resources: Vec<String>,
    resource_names: Vec<String>,
}

/// Upstream's audit `Policy`.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_stages: Vec<String>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

fn strings(v: &Value, at: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| PolicyError(format!("{at}: must be a list of strings")))
            })
            .collect(),
        _ => Err(PolicyError(format!("{at}: must be a list of strings"))),
    }
}

const STAGES: &[&str] = &["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"];

fn stages(v: &Value, at: &str) -> Result<Vec<String>, PolicyError> {
    let list = strings(v, at)?;
    if let Some(bad) = list.iter().find(|s| !STAGES.contains(&s.as_str())) {
        return Err(PolicyError(format!("{at}: unknown stage {bad:?}")));
    }
    Ok(list)
}

impl Policy {
    /// The policy used without a policy file: every request at `Metadata`, except health checks
    /// and nodes' heartbeats.
    pub fn default_policy() -> Self {
        Self::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: None\n  nonResourceURLs: ['/healthz*', '/livez*', '/readyz*', '/version']\n\
             - level: None\n  userGroups: ['system:nodes']\n  verbs: [get, update, patch]\n  \
               resources: [{group: coordination.k8s.io, resources: [leases]}]\n\
             - level: Metadata\n",
        )
        .expect("the built-in audit policy parses")
    }

    /// Parses an `audit.k8s.io/v1` Policy (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| PolicyError(format!("not YAML: {e}")))?;
        if !matches!(
            doc["apiVersion"].as_str(),
            Some("audit.k8s.io/v1" | "audit.k8s.io/v1beta1")
        ) {
            return Err(PolicyError("apiVersion must be audit.k8s.io/v1".into()));
        }
        if doc["kind"] != "Policy" {
            return Err(PolicyError("kind must be Policy".into()));
        }
        let mut rules = Vec::new();
        for (i, r) in doc["rules"].as_array().into_iter().flatten().enumerate() {
            let at = format!("rules[{i}]");
            let level = r["level"].as_str().unwrap_or_default();
            let level = Level::parse(level).ok_or_else(|| {
                PolicyError(format!(
                    "{at}.level: {level:?} is not None, Metadata, Request or RequestResponse"
                ))
            })?;
            let mut resources = Vec::new();
            for (j, g) in r["resources"].as_array().into_iter().flatten().enumerate() {
                let at = format!("{at}.resources[{j}]");
                resources.push(GroupResources {
                    group: g["group"].as_str().unwrap_or_default().to_owned(),
                    resources: strings(&g["resources"], &format!("{at}.resources"))?,
                    resource_names: strings(&g["resourceNames"], &format!("{at}.resourceNames"))?,
                });
            }
            let rule = Rule {
                level: Some(level),
                users: strings(&r["users"], &format!("{at}.users"))?,
                user_groups: strings(&r["userGroups"], &format!("{at}.userGroups"))?,
                verbs: strings(&r["verbs"], &format!("{at}.verbs"))?,
                resources,
                namespaces: strings(&r["namespaces"], &format!("{at}.namespaces"))?,
                non_resource_urls: strings(&r["nonResourceURLs"], &format!("{at}.nonResourceURLs"))?,
                omit_stages: match &r["omitStages"] {
                    Value::Null => None,
                    v => Some(stages(v, &format!("{at}.omitStages"))?),
                },
            };
            if !rule.non_resource_urls.is_empty()
                && (!rule.resources.is_empty() || !rule.namespaces.is_empty())
            {
                return Err(PolicyError(format!(
                    "{at}: rules cannot apply to both regular resources and non-resource URLs"
                )));
            }
            rules.push(rule);
        }
        Ok(Self {
            rules,
            omit_stages: stages(&doc["omitStages"], "omitStages")?,
        })
    }

    /// The level of a request and the stages not logged, as upstream's policy checker.
    fn level_of(&self, user: Option<&Identity>, path: &str, info: &RequestInfo) -> (Level, Vec<String>) {
        for rule in &self.rules {
            if rule.matches(user, path, info) {
                let mut omit = self.omit_stages.clone();
                omit.extend(rule.omit_stages.iter().flatten().cloned());
                return (rule.level.unwrap_or(Level::None), omit);
            }
        }
        (Level::None, Vec::new())
    }
}

impl Rule {
    fn matches(&self, user: Option<&Identity>, path: &str, info: &RequestInfo) -> bool {
        if !self.users.is_empty() && !user.is_some_and(|u| self.users.contains(&u.user)) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !user.is_some_and(|u| u.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&info.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(info);
        }
        if !self.non_resource_urls.is_empty() {
            return !info.resource_request
                && self.non_resource_urls.iter().any(|spec| {
                    spec == "*" || spec == path || spec.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                });
        }
        true
    }

    fn matches_resource(&self, info: &RequestInfo) -> bool {
        if !info.resource_request {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&info.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if info.subresource.is_empty() {
            info.resource.clone()
        } else {
            format!("{}/{}", info.resource, info.subresource)
        };
        self.resources.iter().any(|gr| {
            gr.group == info.group
                && (gr.resources.is_empty()
                    || gr.resources.iter().any(|res| {
                        (gr.resource_names.is_empty() || gr.resource_names.contains(&info.name))
                            && (*res == combined
                                || res == "*"
                                || (!info.subresource.is_empty()
                                    && res.strip_prefix("*/") == Some(info.subresource.as_str()))
                                || res.strip_suffix("/*") == Some(info.resource.as_str()))
                    }))
        })
    }
}

/// Whether a request's bodies may hold credentials: logged at `Metadata` at most.
fn holds_credentials(info: &RequestInfo) -> bool {
    matches!(
        (
            info.group.as_str(),
            info.resource.as_str(),
            info.subresource.as_str()
        ),
        ("", "secrets", _) | ("authentication.k8s.io", "tokenreviews", _) | ("", "serviceaccounts", "token")
    )
}

/// Where the log goes, with size-based rotation.
#[derive(Debug, Clone)]
pub struct Sink {
    /// The log file (`-`: standard output).
    pub path: PathBuf,
    /// Size at which the file is rotated (0: never).
    pub max_bytes: u64,
    /// Rotated files kept (0: all).
    pub max_backups: usize,
    /// Days a rotated file is kept (0: no limit).
    pub max_age_days: u64,
}

struct Writer {
    sink: Sink,
    file: Option<std::io::BufWriter<std::fs::File>>,
    size: u64,
}

impl Writer {
    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.sink.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.sink.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(std::io::BufWriter::new(file));
        Ok(())
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        if self.sink.path == Path::new("-") {
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes())?;
            return out.write_all(b"\n");
        }
        if self.file.is_none() {
            self.open()?;
        }
        if self.sink.max_bytes > 0 && self.size > 0 && self.size + line.len() as u64 + 1 > self.sink.max_bytes
        {
            self.rotate()?;
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(line.as_bytes())?;
            f.write_all(b"\n")?;
            self.size += line.len() as u64 + 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }

    /// Moves the file aside as `NAME-<timestamp>.EXT` (lumberjack's naming, as upstream) and
    /// drops the backups beyond the limits.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.file = None;
        let path = &self.sink.path;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("audit");
        let ext = path
            .extension()
            .and_then(|s| s.to_str())
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let stamp = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H-%M-%S%.3f")
            .to_string();
        let backup = path.with_file_name(format!("{stem}-{stamp}{ext}"));
        std::fs::rename(path, &backup)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut backups: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&format!("{stem}-"))
                    && name.ends_with(&ext)
                    && name.len() == stem.len() + 1 + 23 + ext.len()
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        backups.sort();
        backups.reverse();
        let max_age = std::time::Duration::from_secs(self.sink.max_age_days * 86_400);
        for (i, (modified, file)) in backups.iter().enumerate() {
            let too_many = self.sink.max_backups > 0 && i >= self.sink.max_backups;
            let too_old = self.sink.max_age_days > 0 && modified.elapsed().unwrap_or_default() > max_age;
            if too_many || too_old {
                let _ = std::fs::remove_file(file);
            }
        }
        self.open()
    }
}

/// The audit log of an API server.
pub struct Audit {
    policy: Policy,
    lines: std::sync::mpsc::Sender<String>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

/// What the dispatcher learns about a request while serving it.
#[derive(Default)]
struct Notes {
    user: Option<Identity>,
    impersonated: Option<Identity>,
    request_body: Option<Bytes>,
    decision: Option<(&'static str, String)>,
}

tokio::task_local! {
    static NOTES: Arc<Mutex<Notes>>;
}

fn with_notes(f: impl FnOnce(&mut Notes)) {
    let _ = NOTES.try_with(|n| f(&mut n.lock().unwrap_or_else(|p| p.into_inner())));
}

/// The request being served was made by `who` (authenticated).
pub fn note_user(who: &Identity) {
    with_notes(|n| n.user = Some(who.clone()));
}

/// The request being served acts as `who` (impersonation).
pub fn note_impersonated(who: &Identity) {
    with_notes(|n| n.impersonated = Some(who.clone()));
}

/// The body of the request being served.
pub fn note_request_body(body: &Bytes) {
    with_notes(|n| n.request_body = Some(body.clone()));
}

/// The authorizer's decision on the request being served (`allow` or `forbid`).
pub fn note_decision(decision: &'static str, reason: String) {
    with_notes(|n| n.decision = Some((decision, reason)));
}

/// RFC 3339 in UTC with microseconds, as upstream writes audit timestamps.
fn timestamp(t: jiff::Timestamp) -> String {
    format!("{t:.6}")
}

/// What the audit log needs of a request before it is served.
#[derive(Debug)]
pub struct Received {
    /// The method.
    pub method: Method,
    /// The URI.
    pub uri: axum::http::Uri,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The client's address.
    pub peer: Option<std::net::IpAddr>,
    /// The body's `Content-Type`.
    pub content_type: String,
}

impl Received {
    /// What the audit log needs of `req`.
    pub fn of(req: &axum::extract::Request) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|a| a.to_str().ok())
                .map(str::to_owned),
            peer: req.extensions().get::<super::server::Peer>().map(|p| p.0.ip()),
            content_type: req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|a| a.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// Sends the `ResponseComplete` event of a long-running response when its body ends.
struct Complete(Option<(std::sync::mpsc::Sender<String>, Event)>);

impl Drop for Complete {
    fn drop(&mut self) {
        if let Some((lines, mut event)) = self.0.take() {
            event.stage_timestamp = timestamp(jiff::Timestamp::now());
            if let Ok(line) = serde_json::to_string(&event) {
                let _ = lines.send(line);
            }
        }
    }
}

/// How long the audit thread lets lines queue up after each write.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

impl Audit {
    /// An audit log written to `sink` by a thread of its own, at the levels `policy` gives.
    pub fn start(policy: Policy, sink: Sink) -> std::io::Result<Arc<Self>> {
        let mut writer = Writer {
            sink,
            file: None,
            size: 0,
        };
        if writer.sink.path != Path::new("-") {
            writer.open()?;
        }
        let (lines, rx) = std::sync::mpsc::channel::<String>();
        std::thread::Builder::new().name("audit".into()).spawn(move || {
            let mut failing = false;
            while let Ok(line) = rx.recv() {
                let mut result = writer.write(&line);
                // Write what has queued up, then flush once.
                while result.is_ok()
                    && let Ok(line) = rx.try_recv()
                {
                    result = writer.write(&line);
                }
                let result = result.and_then(|()| writer.flush());
                match result {
                    Err(e) if !failing => {
                        tracing::error!(error = %e, path = %writer.sink.path.display(), "writing the audit log");
                        failing = true;
                    }
                    Ok(()) => failing = false,
                    Err(_) => {}
                }
                // Let the lines of a busy server gather before the next write: a sender wakes
                // this thread only when it is waiting, so under load requests stop paying a
                // futex wake each, and the log is written in a few large writes a second.
                std::thread::sleep(GATHER);
            }
        })?;
        Ok(Arc::new(Self { policy, lines }))
    }

    /// Serves a request through `serve` and logs it at its level.
    pub async fn record<F>(&self, request: &Received, serve: F) -> Response
    where
        F: std::future::Future<Output = Response>,
    {
        let Received {
            method,
            uri,
            user_agent,
            peer,
            content_type,
        } = request;
        let received = jiff::Timestamp::now();
        let notes = Arc::new(Mutex::new(Notes::default()));
        let response = NOTES.scope(notes.clone(), serve).await;
        let notes = std::mem::take(&mut *notes.lock().unwrap_or_else(|p| p.into_inner()));
        let path = uri.path();
        let mut info = request_info(method, path, uri.query());
        let acting = notes.impersonated.as_ref().or(notes.user.as_ref());
        let (mut level, omit) = self.policy.level_of(acting, path, &info);
        if level == Level::None {
            return response;
        }
        if holds_credentials(&info) {
            level = level.min(Level::Metadata);
        }
        let code = response.status().as_u16();
        let mut annotations = BTreeMap::new();
        if let Some((decision, reason)) = notes.decision {
            annotations.insert("authorization.k8s.io/decision".to_owned(), decision.to_owned());
            annotations.insert("authorization.k8s.io/reason".to_owned(), reason);
        }
        annotations.extend(crate::objects::admission::audit_annotations());
        let request_object = if level >= Level::Request
            && let Some(body) = notes.request_body.as_ref().filter(|b| !b.is_empty())
        {
            // JSON, YAML or protobuf: logged as the object it decodes to, as upstream.
            super::handlers::parse_body(body, content_type).ok()
        } else {
            None
        };
        let mut event = Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: level.name(),
            audit_id: uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .hyphenated()
                .to_string(),
            stage: "ResponseComplete",
            request_uri: uri.path_and_query().map_or(path, |p| p.as_str()).to_owned(),
            user: notes.user.as_ref().map_or_else(
                || User {
                    username: "system:anonymous".to_owned(),
                    groups: vec!["system:unauthenticated".to_owned()],
                },
                User::of,
            ),
            impersonated_user: notes.impersonated.as_ref().map(User::of),
            source_ips: peer.map(|ip| vec![ip.to_string()]).unwrap_or_default(),
            user_agent: user_agent.clone(),
            object_ref: info.resource_request.then(|| ObjectRef {
                resource: std::mem::take(&mut info.resource),
                namespace: std::mem::take(&mut info.namespace),
                name: std::mem::take(&mut info.name),
                api_group: std::mem::take(&mut info.group),
                api_version: std::mem::take(&mut info.version),
                subresource: std::mem::take(&mut info.subresource),
            }),
            verb: info.verb,
            response_status: ResponseStatus {
                metadata: Empty {},
                code,
                status: None,
                message: None,
                reason: None,
                details: None,
            },
            request_object,
            response_object: None,
            request_received_timestamp: timestamp(received),
            stage_timestamp: String::new(),
            annotations,
        };
        let long_running = event.verb == "watch" || code == 101;
        let (mut parts, body) = response.into_parts();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(b"application/json"));
        let body = if !long_running && is_json && (code >= 400 || level == Level::RequestResponse) {
            // A failure's Status says why; RequestResponse logs the whole answer.
            match axum::body::to_bytes(body, usize::MAX).await {
                Ok(bytes) => {
                    if let Ok(object) = serde_json::from_slice::<Value>(&bytes) {
                        if code >= 400 && object["kind"] == "Status" {
                            let field = |name: &str| Some(object[name].clone()).filter(|v| !v.is_null());
                            let status = &mut event.response_status;
                            status.status = field("status");
                            status.message = field("message");
                            status.reason = field("reason");
                            status.details = field("details");
                        }
                        if level == Level::RequestResponse {
                            event.response_object = Some(object);
                        }
                    }
                    Body::from(bytes)
                }
                Err(_) => Body::empty(),
            }
        } else {
            body
        };
        event.stage_timestamp = timestamp(jiff::Timestamp::now());
        let omitted = |stage: &str| omit.iter().any(|s| s == stage);
        if long_running {
            if !omitted("ResponseStarted") {
                event.stage = "ResponseStarted";
                self.send(&event);
            }
            if omitted("ResponseComplete") {
                return Response::from_parts(parts, body);
            }
            // Logged when the stream ends (or the client goes).
            parts.headers.remove(header::CONTENT_LENGTH);
            event.stage = "ResponseComplete";
            let mut guard = Complete(Some((self.lines.clone(), event)));
            let stream = body.into_data_stream().map(move |chunk| {
                let _ = &mut guard;
                chunk
            });
            return Response::from_parts(parts, Body::from_stream(stream));
        }
        if !omitted("ResponseComplete") {
            self.send(&event);
        }
        Response::from_parts(parts, body)
    }

    fn send(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let _ = self.lines.send(line);
        }
    }
}

/// An `audit.k8s.io/v1` Event, its fields in upstream's order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    kind: &'static str,
    api_version: &'static str,
    level: &'static str,
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: &'static str,
    #[serde(rename = "requestURI")]
    request_uri: String,
    verb: String,
    user: User,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_user: Option<User>,
    #[serde(rename = "sourceIPs")]
    source_ips: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ref: Option<ObjectRef>,
    response_status: ResponseStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_object: Option<Value>,
    request_received_timestamp: String,
    stage_timestamp: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
struct User {
    username: String,
    groups: Vec<String>,
}

impl User {
    /// A user as upstream's audit events show it: every authenticated user is in
    /// `system:authenticated`.
    fn of(who: &Identity) -> Self {
        let mut groups = who.groups.clone();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".to_owned());
        }
        Self {
            username: who.user.clone(),
            groups,
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    api_group: String,
    api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    subresource: String,
}

#[derive(serde::Serialize)]
struct Empty {}

#[derive(serde::Serialize)]
struct ResponseStatus {
    metadata: Empty,
    code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, path: &str, query: Option<&str>) -> RequestInfo {
        request_info(&method, path, query)
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let t: jiff::Timestamp = "2026-12-03T11:17:27.4142661Z".parse().unwrap();
        assert_eq!(timestamp(t), "2026-12-03T11:17:27.414266Z");
        let t: jiff::Timestamp = "2026-12-03T11:17:27Z".parse().unwrap();
        assert_eq!(timestamp(t), "2026-12-03T11:17:27.000000Z");
    }

    #[test]
    fn request_info_reads_urls_as_upstream() {
        let i = info(Method::GET, "/api/v1/namespaces/default/pods/web/log", None);
        assert_eq!(
            (
                i.verb.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.subresource.as_str(),
                i.namespace.as_str()
            ),
            ("get", "pods", "web", "log", "default")
        );
        let i = info(Method::GET, "/apis/apps/v1/deployments", Some("watch=True"));
        assert_eq!(
            (i.verb.as_str(), i.group.as_str(), i.version.as_str()),
            ("watch", "apps", "v1")
        );
        let i = info(Method::GET, "/api/v1/namespaces/kube-system", None);
        assert_eq!(
            (
                i.verb.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.namespace.as_str()
            ),
            ("get", "namespaces", "kube-system", "kube-system")
        );
        let i = info(Method::PUT, "/api/v1/namespaces/x/finalize", None);
        assert_eq!(
            (i.resource.as_str(), i.name.as_str(), i.subresource.as_str()),
            ("namespaces", "x", "finalize")
        );
        let i = info(Method::DELETE, "/api/v1/namespaces/x/configmaps", None);
        assert_eq!(i.verb, "deletecollection");
        let i = info(
            Method::GET,
            "/api/v1/namespaces/x/configmaps",
            Some("fieldSelector=metadata.name%3Dcm"),
        );
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("list", "cm"));
        let i = info(Method::GET, "/apis", None);
        assert!(!i.resource_request);
        assert_eq!(i.verb, "get");
        assert!(!info(Method::GET, "/healthz", None).resource_request);
    }

    #[test]
    fn the_first_matching_rule_decides_as_upstream() {
        let policy = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: None\n  users: [system:kube-proxy]\n\
             - level: RequestResponse\n  resources: [{group: '', resources: [configmaps, 'pods/*']}]\n  namespaces: [prod]\n\
             - level: Request\n  resources: [{group: apps, resources: ['*/scale']}]\n\
             - level: None\n  nonResourceURLs: ['/healthz*']\n\
             - level: Metadata\n  omitStages: [ResponseStarted]\n",
        )
        .unwrap();
        let admin = Identity {
            user: "admin".into(),
            groups: vec!["system:masters".into()],
        };
        let proxy = Identity {
            user: "system:kube-proxy".into(),
            groups: vec![],
        };
        let level = |who: &Identity, method: Method, path: &str| {
            policy
                .level_of(Some(who), path, &request_info(&method, path, None))
                .0
        };
        assert_eq!(level(&proxy, Method::GET, "/api/v1/pods"), Level::None);
        assert_eq!(
            level(&admin, Method::GET, "/api/v1/namespaces/prod/configmaps/a"),
            Level::RequestResponse
        );
        assert_eq!(
            level(&admin, Method::GET, "/api/v1/namespaces/prod/pods/a/log"),
            Level::RequestResponse
        );
        assert_eq!(
            level(&admin, Method::GET, "/api/v1/namespaces/dev/configmaps/a"),
            Level::Metadata
        );
        assert_eq!(
            level(
                &admin,
                Method::PUT,
                "/apis/apps/v1/namespaces/d/deployments/w/scale"
            ),
            Level::Request
        );
        assert_eq!(level(&admin, Method::GET, "/healthz/etcd"), Level::None);
        let (_, omit) = policy.level_of(Some(&admin), "/apis", &request_info(&Method::GET, "/apis", None));
        assert_eq!(omit, vec!["RequestReceived", "ResponseStarted"]);
        assert!(Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n").is_err());
        assert!(holds_credentials(&request_info(
            &Method::POST,
            "/api/v1/namespaces/a/secrets",
            None
        )));
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_the_newest_backups() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer {
            sink: Sink {
                path: dir.path().join("audit.log"),
                max_bytes: 1000,
                max_backups: 2,
                max_age_days: 0,
            },
            file: None,
            size: 0,
        };
        for i in 0..40 {
            w.write(&format!("{{\"line\":{i:03},\"pad\":\"{}\"}}", "x".repeat(80)))
                .unwrap();
            // Distinct backup names (millisecond stamps).
            if i % 10 == 9 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        w.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("audit") && n.ends_with(".log"))
        );
        let current = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        assert!(current.len() <= 1000 && current.contains("\"line\":039"));
    }
}
