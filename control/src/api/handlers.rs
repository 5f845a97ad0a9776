//! The REST verbs on objects: get, list, watch, create, update, patch, delete, deletecollection,
//! and the `status`, `scale` and `binding` subresources.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::App;
use super::protobuf;
use super::table;
use crate::objects::admission::UserInfo;
use crate::objects::limits;
use crate::objects::meta::{meta_str, set_resource_version};
use crate::objects::patch::PatchType;
use crate::objects::registry::ResourceInfo;
use crate::objects::selector::{FieldSelector, LabelSelector};
use crate::objects::status::{ApiError, Target, success};
use crate::objects::write::{
    DeleteOptions, Preconditions, Propagation, Request, WriteOptions, check_patch_type, check_type,
    check_unknown_fields, from_scale, retry_unconditional, stored_bytes, to_scale,
};
use crate::store::{EventKind, KeyValue, StoreError};

/// One parsed request on a resource.
#[derive(Debug)]
pub struct Call {
    /// The resource addressed.
    pub info: Arc<ResourceInfo>,
    /// Namespace from the path.
    pub ns: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
    /// Subresource from the path.
    pub sub: Option<String>,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// Whether the client asked for a `Table`.
    pub table: bool,
    /// The `meta.k8s.io` version of `PartialObjectMetadata` when the client asked for objects as
    /// their metadata only (controller-runtime's metadata watches).
    pub partial: Option<&'static str>,
    /// The request's Content-Type.
    pub content_type: String,
    /// The client takes protobuf first and the kind has a message: watches stream protobuf
    /// frames (other responses are converted on their way out).
    pub protobuf: bool,
    /// Who asks, as admission webhooks are told.
    pub user: Option<Arc<UserInfo>>,
}

type Result<T> = std::result::Result<T, ApiError>;

impl Call {
    /// The object name from the path, or "".
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn key(&self, name: &str) -> String {
        self.info.key(self.ns.as_deref(), name)
    }

    /// The write this request makes, with its options from the query.
    pub fn write(&self) -> Request {
        Request {
            info: self.info.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
            sub: self.sub.clone(),
            options: WriteOptions {
                manager: self.query.get("fieldManager").cloned(),
                dry_run: self.dry_run(),
                strict: self.strict(),
                force: self.query.get("force").is_some_and(|f| f == "true"),
                user: self.user.clone(),
            },
        }
    }

    /// Object `name` of the request's resource, for errors.
    pub fn target<'a>(&'a self, name: &'a str) -> Target<'a> {
        self.info.target(name)
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }

    fn strict(&self) -> bool {
        self.query.get("fieldValidation").is_some_and(|v| v == "Strict")
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector)> {
        let labels = LabelSelector::parse(
            self.query
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(
            self.query
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )
        .map_err(ApiError::bad_request)?;
        if let Some(f) = fields
            .fields()
            .find(|f| !super::query::selectable_field(&self.info.group, &self.info.plural, f))
        {
            return Err(ApiError::bad_request(format!("field label not supported: {f}")));
        }
        Ok((labels, fields))
    }
}

/// A JSON response with a status code.
pub fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

/// Parses a request body as JSON, YAML or Kubernetes protobuf into an object, nested at most
/// [`limits::MAX_DEPTH`] levels.
pub fn parse_body(body: &[u8], content_type: &str) -> Result<Value> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/vnd.kubernetes.protobuf" if super::protobuf::is_protobuf(body) => {
            let value = super::protobuf::decode(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            return check_depth(value);
        }
        "application/vnd.kubernetes.protobuf" => {
            return Err(ApiError::bad_request(
                "the body of the request is not a Kubernetes protobuf envelope",
            ));
        }
        // No Content-Type is JSON, as upstream (kubectl's `create --raw` sends none).
        "" | "application/json" | "application/yaml" | "*/*" => {}
        _ => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf ({content_type} is not supported)"
                ),
            ));
        }
    }
    if media == "application/yaml" {
        return limits::decode_yaml(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    let value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml: {e}"))
    })?;
    check_depth(value)
}

/// [`parse_body`], in the CPU pool when the body is large.
pub async fn parse_body_pooled(body: &[u8], content_type: &str) -> Result<Value> {
    if body.len() < crate::objects::cpu::OFFLOAD_BYTES {
        return parse_body(body, content_type);
    }
    let (body, content_type) = (body.to_vec(), content_type.to_owned());
    crate::objects::cpu::run(move || {
        let value = parse_body(&body, &content_type)?;
        // What the store could never hold is refused before admission spends time on it.
        stored_bytes(&value)?;
        Ok(value)
    })
    .await
}

/// Refuses an object nested deeper than [`limits::MAX_DEPTH`] (a decoded body or a patch's result).
fn check_depth(value: Value) -> Result<Value> {
    if limits::too_deep(&value, limits::MAX_DEPTH) {
        return Err(ApiError::bad_request(limits::too_deep_message()));
    }
    Ok(value)
}

fn require_object(value: Value) -> Result<Value> {
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request("the request body must be a JSON object"))
    }
}

/// Reads an object or fails with 404.
async fn read(app: &App, call: &Call, name: &str) -> Result<KeyValue> {
    app.objects.read(&call.write(), name).await
}

/// GET of one object (or its status).
pub async fn get(app: &App, call: &Call) -> Result<Response> {
    let kv = read(app, call, call.name()).await?;
    let mut obj = call.info.decode(&kv);
    app.objects
        .served_form(&call.info, std::slice::from_mut(&mut obj))
        .await?;
    match call.sub.as_deref() {
        Some("scale") => Ok(json_response(StatusCode::OK, &to_scale(&obj))),
        _ if call.table => Ok(json_response(
            StatusCode::OK,
            &table::table(&call.info, &[obj], &kv.mod_revision.to_string(), None, call),
        )),
        _ if call.partial.is_some() => Ok(json_response(StatusCode::OK, &call.view(obj))),
        _ => Ok(json_response(StatusCode::OK, &obj)),
    }
}

/// The continue token: the last key returned and the list's revision.
fn encode_continue(key: &str, rev: u64) -> String {
    use base64::Engine;
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": key});
    base64::engine::general_purpose::STANDARD.encode(raw.to_string())
}

fn decode_continue(token: &str) -> Result<(String, u64)> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid: illegal base64 data");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["start"].as_str().ok_or_else(bad)?.to_owned(),
        v["rv"].as_u64().unwrap_or(0),
    ))
}

/// Lists matching objects; returns the items, the revision and the continue token.
async fn list_objects(app: &App, call: &Call) -> Result<(Vec<Value>, u64, Option<String>)> {
    let (mut items, revision, token) = list_stored(app, call).await?;
    app.objects.served_form(&call.info, &mut items).await?;
    Ok((items, revision, token))
}

/// Lists matching objects as stored (see [`list_objects`]).
async fn list_stored(app: &App, call: &Call) -> Result<(Vec<Value>, u64, Option<String>)> {
    let (labels, fields) = call.selectors()?;
    let limit: usize = call.query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let prefix = call.info.prefix_in(call.ns.as_deref());
    let token = call
        .query
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(|t| decode_continue(t))
        .transpose()?;
    let continuing = token.is_some();
    // The revision the list is read at: a continued list's first page's (a token of revision 0
    // or -1 reads the latest, as upstream's inconsistent continuation), or the exact one asked for.
    let mut at = match &token {
        Some((_, rv)) => Some(*rv).filter(|rv| *rv > 0),
        None => exact_version(call)?,
    };
    let mut start = token.map(|t| t.0);
    // A pinned name needs only one key.
    if let Some(name) = fields.pinned("metadata.name")
        && (call.ns.is_some() || !call.info.namespaced)
    {
        let key = call.key(name);
        let kv = app
            .store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(e, call.target(name)))?;
        let rev = app.store.revision();
        let items = kv
            .map(|kv| call.info.decode(&kv))
            .filter(|o| labels.matches(o["metadata"].get("labels")) && fields.matches(o))
            .into_iter()
            .collect();
        return Ok((items, rev, None));
    }
    // A built-in resource's labels are the same in every version: a label selector can look at
    // the stored labels alone, and only what it selects is decoded whole.
    let quick = !labels.is_empty() && call.info.crd.is_none();
    let mut items = Vec::new();
    let revision;
    loop {
        let batch = if limit == 0 {
            0
        } else {
            (limit - items.len()).max(1) * 2
        };
        let page = match at {
            Some(rev) => app.store.list_at(&prefix, start.as_deref(), batch, rev).await,
            None => app.store.list(&prefix, start.as_deref(), batch).await,
        }
        .map_err(|e| match e {
            StoreError::Compacted { .. } if continuing => {
                ApiError::new(410, "Expired", INCONSISTENT_CONTINUE)
            }
            e => ApiError::from_store(e, call.target("")),
        })?;
        // The rest of the list is read at the revision of its first page.
        at = Some(page.revision);
        let last = page.items.last().map(|kv| kv.key.clone());
        let mut filled_at = None;
        for kv in &page.items {
            if quick && !labels.matches(stored_labels(kv).as_ref()) {
                continue;
            }
            let obj = call.info.decode(kv);
            // The quick path has matched the labels already (the same labels, decoded alone).
            if (quick || labels.matches(obj["metadata"].get("labels"))) && fields.matches(&obj) {
                items.push(obj);
                if limit > 0 && items.len() == limit {
                    filled_at = Some(kv.key.clone());
                    break;
                }
            }
        }
        if let Some(at) = filled_at {
            let more = page.more || page.items.last().map(|kv| kv.key.clone()) != Some(at.clone());
            revision = page.revision;
            let token = more.then(|| encode_continue(&at, revision));
            return Ok((items, revision, token));
        }
        if !page.more {
            revision = page.revision;
            break;
        }
        start = last;
    }
    Ok((items, revision, None))
}

/// A stored object's `metadata.labels`, read without decoding the rest of it (a label selector
/// over a large list rejects most objects).
fn stored_labels(kv: &crate::store::KeyValue) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        metadata: Meta,
    }
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        labels: Option<serde_json::Map<String, Value>>,
    }
    let head: Head = serde_json::from_slice(&kv.value).ok()?;
    head.metadata.labels.map(Value::Object)
}

/// Upstream's answer to a continue token whose revision has been compacted.
const INCONSISTENT_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// The revision of `resourceVersion=X&resourceVersionMatch=Exact`, if asked for.
fn exact_version(call: &Call) -> Result<Option<u64>> {
    if call
        .query
        .get("resourceVersionMatch")
        .is_none_or(|m| m != "Exact")
    {
        return Ok(None);
    }
    let rv = call
        .query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    rv.parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))
}

/// Applies a list's `resourceVersion`/`resourceVersionMatch`: "not older than" is served from
/// the latest state once the store has caught up, "exact" from the store's history (see
/// [`list_stored`]); a version from the future waits briefly, then times out as upstream.
async fn check_list_version(app: &App, call: &Call) -> Result<()> {
    let rv = call
        .query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    if rv.is_empty() || rv == "0" {
        return Ok(());
    }
    let wanted: u64 = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
    for _ in 0..30 {
        if wanted <= app.store.revision() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ApiError::too_large(wanted, app.store.revision()))
}

/// GET of a collection.
pub async fn list(app: &App, call: &Call) -> Result<Response> {
    check_list_version(app, call).await?;
    let (items, revision, token) = list_objects(app, call).await?;
    let rv = revision.to_string();
    if call.table {
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&call.info, &items, &rv, token.as_deref(), call),
        ));
    }
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(t) = token {
        metadata["continue"] = json!(t);
    }
    let (kind, api_version) = match call.partial {
        Some(v) => ("PartialObjectMetadataList".to_owned(), format!("meta.k8s.io/{v}")),
        None => (format!("{}List", call.info.kind), call.info.api_version()),
    };
    let head = json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": metadata,
        "items": [],
    });
    let items = match call.partial {
        Some(_) => items.into_iter().map(|o| call.view(o)).collect(),
        None => items,
    };
    Ok(streamed_list(&head, items))
}

/// A list response encoded one item at a time as the client reads it, so a large list is never
/// held twice (as objects and as one encoded body). `head` is the list with empty `items`, last.
fn streamed_list(head: &Value, items: Vec<Value>) -> Response {
    let mut open = serde_json::to_vec(head).unwrap_or_default();
    // `..."items":[]}` → `..."items":[`
    open.truncate(open.len().saturating_sub(2));
    let count = items.len();
    let parts = items.into_iter().enumerate().map(move |(i, item)| {
        let mut chunk = serde_json::to_vec(&item).unwrap_or_default();
        if i + 1 < count {
            chunk.push(b',');
        }
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(chunk))
    });
    let stream = futures::stream::iter(
        std::iter::once(Ok(bytes::Bytes::from(open)))
            .chain(parts)
            .chain(std::iter::once(Ok(bytes::Bytes::from_static(b"]}")))),
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn watch_line(call: &Call, kind: &str, obj: Value) -> bytes::Bytes {
    let object = if call.table && kind != "BOOKMARK" && kind != "ERROR" {
        let rv = meta_str(&obj, "resourceVersion").to_owned();
        table::table(&call.info, &[obj], &rv, None, call)
    } else if kind != "ERROR" {
        call.view(obj)
    } else {
        obj
    };
    if call.protobuf {
        let body = protobuf::encode::encode(&object).unwrap_or_default();
        return bytes::Bytes::from(protobuf::encode::watch_frame(kind, &body));
    }
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    bytes::Bytes::from(line)
}

/// One watch event as a line for watchers that see it alike: the object's key and the event's
/// revision (one write), how it is told (ADDED, MODIFIED, DELETED) and the form it is served in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LineKey {
    revision: u64,
    key: String,
    kind: &'static str,
    api_version: String,
    protobuf: bool,
}

/// Encoded watch lines, shared by the watchers of a resource: informers watch whole resources
/// without selectors, so every one of them would otherwise decode, convert and encode the same
/// event again (100 watchers: 100 times). Holds the latest `WatchLines::CAPACITY` lines.
#[derive(Default)]
pub struct WatchLines {
    lines: std::sync::Mutex<(
        HashMap<LineKey, bytes::Bytes>,
        std::collections::VecDeque<LineKey>,
    )>,
}

impl std::fmt::Debug for WatchLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.lines.lock().map_or(0, |l| l.1.len());
        f.debug_struct("WatchLines").field("held", &held).finish()
    }
}

impl WatchLines {
    const CAPACITY: usize = 4096;

    fn get(&self, key: &LineKey) -> Option<bytes::Bytes> {
        self.lines.lock().ok()?.0.get(key).cloned()
    }

    fn put(&self, key: LineKey, line: bytes::Bytes) {
        let Ok(mut lines) = self.lines.lock() else { return };
        let (map, order) = &mut *lines;
        if map.insert(key.clone(), line).is_none() {
            order.push_back(key);
        }
        while order.len() > Self::CAPACITY {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}

/// The line for `event`, told as `kind`, to a watcher without selectors that sees objects whole
/// (`call` neither a table nor partial metadata): from the shared lines, or made and shared.
async fn shared_line(
    app: &App,
    call: &Call,
    event: &crate::store::Event,
    kind: &'static str,
) -> bytes::Bytes {
    let key = LineKey {
        revision: event.revision,
        key: event.kv.key.clone(),
        kind,
        api_version: call.info.api_version(),
        protobuf: call.protobuf,
    };
    if let Some(line) = app.watch_lines.get(&key) {
        return line;
    }
    let mut obj = call.info.decode(&event.kv);
    if let Err(e) = app
        .objects
        .served_form(&call.info, std::slice::from_mut(&mut obj))
        .await
    {
        return watch_line(call, "ERROR", e.to_status());
    }
    if event.kind == EventKind::Delete {
        set_resource_version(&mut obj, event.revision);
    }
    let line = watch_line(call, kind, obj);
    app.watch_lines.put(key, line.clone());
    line
}

/// A streaming watch (`?watch=true`).
pub async fn watch(app: Arc<App>, call: Call) -> Result<Response> {
    let (labels, fields) = call.selectors()?;
    let rv = call
        .query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    let bookmarks = call.query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let send_initial = call.query.get("sendInitialEvents").map(|v| v == "true");
    let timeout = call
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let mut initial = Vec::new();
    let from = if rv.is_empty() || rv == "0" || send_initial == Some(true) {
        let (items, revision, _) = list_objects(
            &app,
            &Call {
                query: strip_paging(&call.query),
                ..call.clone_meta()
            },
        )
        .await?;
        if send_initial != Some(false) {
            initial = items;
        }
        revision
    } else {
        rv.parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?
    };
    let prefix = call.info.prefix_in(call.ns.as_deref());
    let mut lines: std::collections::VecDeque<bytes::Bytes> = initial
        .into_iter()
        .map(|o| watch_line(&call, "ADDED", o))
        .collect();
    if send_initial == Some(true) && bookmarks {
        let bm = json!({"kind": call.info.kind, "apiVersion": call.info.api_version(),
            "metadata": {"resourceVersion": from.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
        lines.push_back(watch_line(&call, "BOOKMARK", bm));
    }
    let stream = match app.store.watch(&prefix, from) {
        Ok(s) => Some(s),
        Err(StoreError::Compacted { requested, oldest }) => {
            lines.push_back(watch_line(
                &call,
                "ERROR",
                ApiError::expired(requested, oldest).to_status(),
            ));
            None
        }
        Err(e) => return Err(ApiError::from_store(e, call.target(""))),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    struct State {
        app: Arc<App>,
        call: Call,
        lines: std::collections::VecDeque<bytes::Bytes>,
        stream: Option<crate::store::WatchStream>,
        labels: LabelSelector,
        fields: FieldSelector,
        bookmarks: bool,
        deadline: tokio::time::Instant,
        /// Events go as the shared lines (no selectors, objects whole).
        shared: bool,
    }
    let st_protobuf = call.protobuf;
    let shared = labels.is_empty() && fields.is_empty() && !call.table && call.partial.is_none();
    let state = State {
        app,
        call,
        lines,
        stream,
        labels,
        fields,
        bookmarks,
        deadline,
        shared,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(line) = st.lines.pop_front() {
                return Some((Ok::<_, std::io::Error>(line), st));
            }
            let stream = st.stream.as_mut()?;
            let bookmark_tick = tokio::time::sleep(Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep_until(st.deadline) => return None,
                _ = bookmark_tick, if st.bookmarks => {
                    let bm = json!({"kind": st.call.info.kind, "apiVersion": st.call.info.api_version(),
                        "metadata": {"resourceVersion": st.app.store.revision().to_string()}});
                    st.lines.push_back(watch_line(&st.call, "BOOKMARK", bm));
                }
                next = stream.next() => match next {
                    // Without selectors every event is told: a put of a key that existed as
                    // MODIFIED, else ADDED; a delete as DELETED.
                    Ok(Some(event)) if st.shared => {
                        let kind = match (event.kind, event.prev.is_some()) {
                            (EventKind::Delete, _) => "DELETED",
                            (EventKind::Put, true) => "MODIFIED",
                            (EventKind::Put, false) => "ADDED",
                        };
                        let line = shared_line(&st.app, &st.call, &event, kind).await;
                        st.lines.push_back(line);
                    }
                    Ok(Some(event)) => {
                        let matches = |o: &Value| st.labels.matches(o["metadata"].get("labels")) && st.fields.matches(o);
                        let line = match event.kind {
                            EventKind::Put => {
                                let mut new = st.call.info.decode(&event.kv);
                                if let Err(e) = st.app.objects.served_form(&st.call.info, std::slice::from_mut(&mut new)).await {
                                    st.lines.push_back(watch_line(&st.call, "ERROR", e.to_status()));
                                    continue;
                                }
                                let was = event.prev.as_ref().map(|p| matches(&st.call.info.decode(p))).unwrap_or(false);
                                match (matches(&new), was) {
                                    (true, false) => Some(("ADDED", new)),
                                    (true, true) => Some(("MODIFIED", new)),
                                    (false, true) => Some(("DELETED", new)),
                                    (false, false) => None,
                                }
                            }
                            EventKind::Delete => {
                                let mut old = st.call.info.decode(&event.kv);
                                if let Err(e) = st.app.objects.served_form(&st.call.info, std::slice::from_mut(&mut old)).await {
                                    st.lines.push_back(watch_line(&st.call, "ERROR", e.to_status()));
                                    continue;
                                }
                                set_resource_version(&mut old, event.revision);
                                matches(&old).then_some(("DELETED", old))
                            }
                        };
                        if let Some((kind, obj)) = line {
                            st.lines.push_back(watch_line(&st.call, kind, obj));
                        }
                    }
                    Ok(None) => return None,
                    Err(StoreError::Compacted { requested, oldest }) => {
                        st.lines.push_back(watch_line(&st.call, "ERROR", ApiError::expired(requested, oldest).to_status()));
                        st.stream = None;
                    }
                    Err(_) => return None,
                }
            }
        }
    });
    let content_type = if st_protobuf {
        protobuf::encode::WATCH_CONTENT_TYPE
    } else {
        "application/json"
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(body))
        .map_err(ApiError::internal)
}

fn strip_paging(q: &HashMap<String, String>) -> HashMap<String, String> {
    q.iter()
        .filter(|(k, _)| *k != "limit" && *k != "continue")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Call {
    /// `obj` as the client asked to see it: whole, or as `PartialObjectMetadata`.
    fn view(&self, obj: Value) -> Value {
        match self.partial {
            Some(v) => json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": format!("meta.k8s.io/{v}"),
                "metadata": obj["metadata"],
            }),
            None => obj,
        }
    }

    /// A copy of the call's addressing and options.
    pub fn clone_meta(&self) -> Call {
        Call {
            info: self.info.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
            sub: self.sub.clone(),
            query: self.query.clone(),
            table: self.table,
            partial: self.partial,
            protobuf: self.protobuf,
            content_type: self.content_type.clone(),
            user: self.user.clone(),
        }
    }
}

/// POST to a collection.
pub async fn create(app: &App, call: &Call, body: &[u8]) -> Result<Response> {
    let obj = require_object(parse_body_pooled(body, &call.content_type).await?)?;
    let created = app.objects.create(&call.write(), obj).await?;
    Ok(json_response(StatusCode::CREATED, &created))
}

/// POST of a CertificateSigningRequest: who asked is the caller, whatever the body says.
pub async fn create_csr(
    app: &App,
    call: &Call,
    body: &[u8],
    who: &super::server::Identity,
) -> Result<Response> {
    let mut obj = require_object(parse_body_pooled(body, &call.content_type).await?)?;
    let mut groups = who.groups.clone();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".to_owned());
    }
    crate::objects::certificates::set_requester(&mut obj, &who.user, &groups);
    let created = app.objects.create(&call.write(), obj).await?;
    Ok(json_response(StatusCode::CREATED, &created))
}

/// PUT of an object (or its status or scale).
pub async fn update(app: &App, call: &Call, body: &[u8]) -> Result<Response> {
    let new = require_object(parse_body_pooled(body, &call.content_type).await?)?;
    let req = call.write();
    check_unknown_fields(&req, &new)?;
    if call.sub.as_deref() != Some("scale") {
        let updated = app.objects.update(&req, new).await?;
        return Ok(json_response(StatusCode::OK, &updated));
    }
    let mut scale = new;
    check_type(&req, &mut scale, "Scale")?;
    // A Scale without a resourceVersion is unconditional, as an object's PUT.
    let unconditional = meta_str(&scale, "resourceVersion").is_empty();
    let whole = req.clone().at(None);
    let mut attempts = 0;
    loop {
        let current = app.objects.read(&req, call.name()).await?;
        let mut stored = call.info.decode(&current);
        app.objects
            .served_form(&call.info, std::slice::from_mut(&mut stored))
            .await?;
        let obj = from_scale(&stored, &scale, &current, &req)?;
        match app.objects.commit_update(&whole, &current, obj, true).await {
            Err(e) if unconditional && retry_unconditional(&e, &mut attempts) => {}
            updated => return Ok(json_response(StatusCode::OK, &to_scale(&updated?))),
        }
    }
}

/// PATCH of an object (or its status or scale).
pub async fn patch(app: &App, call: &Call, body: &[u8]) -> Result<Response> {
    let patch_type = PatchType::from_content_type(&call.content_type).ok_or_else(|| {
        ApiError::new(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json")
    })?;
    let req = call.write();
    check_patch_type(&req, patch_type)?;
    let patch = if patch_type == PatchType::Apply {
        parse_body_pooled(body, "application/yaml").await?
    } else {
        parse_body_pooled(body, "application/json").await?
    };
    let (patched, created) = app.objects.patch(&req, patch_type, patch, body.len()).await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(code, &patched))
}

/// POST pods/NAME/binding: assigns the pod to a node.
pub async fn bind(app: &App, call: &Call, body: &[u8]) -> Result<Response> {
    let binding = require_object(parse_body(body, &call.content_type)?)?;
    let node = binding["target"]["name"].as_str().unwrap_or_default().to_owned();
    if node.is_empty() {
        return Err(ApiError::invalid(
            call.target(call.name()),
            &[("target.name".into(), "Required value".into())],
        ));
    }
    let pod = app.objects.bind(&call.write().at(None), &node).await?;
    if call.dry_run() {
        return Ok(json_response(
            StatusCode::CREATED,
            &success(call.target(call.name()), meta_str(&pod, "uid")),
        ));
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// The `DeleteOptions` of a DELETE (body in any accepted encoding, or query parameters) and the
/// propagation policy they ask for.
fn delete_options(call: &Call, body: &[u8]) -> Result<(Value, Option<String>)> {
    let opts = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_body(body, &call.content_type)?
    };
    let policy = opts["propagationPolicy"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| call.query.get("propagationPolicy").cloned())
        .or_else(|| (opts["orphanDependents"] == json!(true)).then(|| "Orphan".to_owned()));
    Ok((opts, policy))
}

/// DELETE of one object, honouring preconditions, finalizers and propagation.
pub async fn delete(app: &App, call: &Call, body: &[u8]) -> Result<Response> {
    let (opts, policy) = delete_options(call, body)?;
    let grace = opts["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| call.query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let dry_run = call.dry_run()
        || opts["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let name = call.name().to_owned();
    let outcome = app
        .objects
        .delete(
            &call.write(),
            &name,
            &DeleteOptions {
                propagation: policy.as_deref().and_then(Propagation::parse),
                grace_seconds: grace,
                preconditions: Preconditions::from_json(&opts["preconditions"]),
                dry_run,
            },
        )
        .await?;
    Ok(json_response(StatusCode::OK, &outcome))
}

/// DELETE of a collection.
pub async fn delete_collection(app: &App, call: &Call, body: &[u8]) -> Result<Response> {
    let (_, policy) = delete_options(call, body)?;
    let (items, revision, _) = list_objects(
        app,
        &Call {
            query: strip_paging(&call.query),
            ..call.clone_meta()
        },
    )
    .await?;
    let mut deleted = Vec::new();
    for obj in items {
        let name = meta_str(&obj, "name").to_owned();
        let ns_call = Call {
            ns: obj["metadata"]["namespace"].as_str().map(str::to_owned),
            ..call.clone_meta()
        };
        match app
            .objects
            .delete(
                &ns_call.write(),
                &name,
                &DeleteOptions {
                    propagation: policy.as_deref().and_then(Propagation::parse),
                    dry_run: call.dry_run(),
                    ..DeleteOptions::default()
                },
            )
            .await
        {
            Ok(_) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": format!("{}List", call.info.kind),
        "apiVersion": call.info.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": deleted,
    });
    Ok(json_response(StatusCode::OK, &list))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(r: Response) -> Value {
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn streamed_lists_are_the_lists_they_stand_for() {
        let head = json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": []});
        for items in [
            vec![],
            vec![json!({"a": 1})],
            vec![json!({"a": 1}), json!({"b": [2, 3]}), json!("x")],
        ] {
            let mut want = head.clone();
            want["items"] = json!(items);
            assert_eq!(body_json(streamed_list(&head, items)).await, want);
        }
    }

    #[test]
    fn stored_labels_are_the_labels_of_the_whole_object() {
        let kv = |value: &str| crate::store::KeyValue {
            key: "/registry/configmaps/default/a".into(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
        };
        for value in [
            r#"{"metadata":{"name":"a","labels":{"app":"x","tier":"db"}},"data":{"k":"v\"labels\""}}"#,
            r#"{"data":{"labels":"no"},"metadata":{"labels":{}}}"#,
            r#"{"metadata":{"name":"a"}}"#,
            r#"{"metadata":null}"#,
            r#"{}"#,
            r#"not json"#,
        ] {
            let whole = crate::objects::meta::from_kv(&kv(value));
            let labels = whole["metadata"].get("labels").cloned();
            assert_eq!(stored_labels(&kv(value)), labels, "{value}");
            for selector in ["app=x", "app!=x", "!app", "tier in (db,web)", "app"] {
                let sel = crate::objects::selector::LabelSelector::parse(selector).unwrap();
                assert_eq!(
                    sel.matches(stored_labels(&kv(value)).as_ref()),
                    sel.matches(whole["metadata"].get("labels")),
                    "{selector} on {value}"
                );
            }
        }
    }
}
