//! One write path for every writer: the API's create, update, patch and delete handlers, the
//! controllers and the scheduler. A [`Request`] names what is written (resource, namespace, name,
//! subresource) and how ([`WriteOptions`]: field manager, dry run, strict field validation); the
//! methods on [`Objects`] check the object against its endpoint, fill what the server owns (uid,
//! timestamps, generation, managedFields), run admission, allocate Service addresses and store
//! the result with compare-and-swap. `deletion` holds the transport-free rules of a delete.

mod deletion;
mod scale;

use std::sync::Arc;

use serde_json::{Value, json};

pub use self::deletion::*;
pub use self::scale::{from_scale, to_scale};
use super::Objects;
use super::admission::{self, Operation};
use super::limits;
use super::meta::{
    finalizers, from_kv, generate_name, meta_str, new_uid, now, set_resource_version, to_stored,
};
use super::patch::{Ctx, PatchType, apply_json_patch, apply_merge_patch, apply_strategic_patch};
use super::registry::ResourceInfo;
use super::status::{ApiError, Target};
use crate::store::{KeyValue, StoreError};

type Result<T> = std::result::Result<T, ApiError>;

/// How a write is made: the options of upstream's CreateOptions, UpdateOptions and PatchOptions.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `fieldManager`: who owns the fields this write sets ("unknown" when absent).
    pub manager: Option<String>,
    /// `dryRun=All`: everything but the store write.
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields are errors rather than dropped.
    pub strict: bool,
    /// `force=true`: a server-side apply takes fields other managers own.
    pub force: bool,
    /// Who writes (None: the control plane itself), for admission webhooks.
    pub user: Option<Arc<admission::UserInfo>>,
}

/// What a write addresses: a resource, and the namespace, name and subresource of the object.
#[derive(Debug, Clone)]
pub struct Request {
    /// The resource.
    pub info: Arc<ResourceInfo>,
    /// The namespace (for namespaced resources).
    pub ns: Option<String>,
    /// The object's name (none for a create, whose name is in the object).
    pub name: Option<String>,
    /// The subresource (`status`, `scale`, ...).
    pub sub: Option<String>,
    /// How the write is made.
    pub options: WriteOptions,
}

impl Request {
    /// A write to the object `name` (if given) of `info` in `ns`.
    pub fn new(info: Arc<ResourceInfo>, ns: Option<&str>, name: Option<&str>) -> Self {
        Self {
            info,
            ns: ns.map(str::to_owned),
            name: name.map(str::to_owned),
            sub: None,
            options: WriteOptions::default(),
        }
    }

    /// The same write as field manager `manager`.
    #[must_use]
    pub fn by(mut self, manager: &str) -> Self {
        self.options.manager = Some(manager.to_owned());
        self
    }

    /// The same write to subresource `sub` (or the object itself).
    #[must_use]
    pub fn at(mut self, sub: Option<&str>) -> Self {
        self.sub = sub.map(str::to_owned);
        self
    }

    /// The object name, or "".
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// The store key of object `name`.
    pub fn key(&self, name: &str) -> String {
        self.info.key(self.ns.as_deref(), name)
    }

    /// Object `name` of this resource, for errors.
    pub fn target<'a>(&'a self, name: &'a str) -> Target<'a> {
        self.info.target(name)
    }

    /// What admission plugins know of this write.
    fn admission(&self, operation: Operation) -> admission::Attributes<'_> {
        admission::Attributes {
            info: &self.info,
            operation,
            namespace: self.ns.as_deref().filter(|_| self.info.namespaced),
            url_name: self.name(),
            strict: self.options.strict,
            old: None,
            sub: self.sub.as_deref(),
            user: self.options.user.as_deref(),
            dry_run: self.options.dry_run,
        }
    }
}

/// Checks `apiVersion`/`kind` against the endpoint, filling them when absent.
pub fn check_type(req: &Request, obj: &mut Value, expected_kind: &str) -> Result<()> {
    let expected_av = if req.sub.as_deref() == Some("scale") {
        "autoscaling/v1".to_owned()
    } else {
        req.info.api_version()
    };
    match obj["apiVersion"].as_str() {
        None | Some("") => obj["apiVersion"] = json!(expected_av),
        Some(v) if v == expected_av => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected_av})"
            )));
        }
    }
    match obj["kind"].as_str() {
        None | Some("") => obj["kind"] = json!(expected_kind),
        Some(k) if k == expected_kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({expected_kind})"
            )));
        }
    }
    if !obj["metadata"].is_object() {
        if obj["metadata"].is_null() {
            obj["metadata"] = json!({});
        } else {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
    }
    Ok(())
}

/// Checks or fills the object's namespace from the request.
fn check_namespace(req: &Request, obj: &mut Value) -> Result<()> {
    if !req.info.namespaced {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        return Ok(());
    }
    let path_ns = req.ns.as_deref().unwrap_or_default();
    match obj["metadata"]["namespace"].as_str() {
        None | Some("") => obj["metadata"]["namespace"] = json!(path_ns),
        Some(ns) if ns == path_ns => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(())
}

/// Collects the paths of fields the schema does not know, below `ctx`.
fn unknown_fields(value: &Value, ctx: Ctx, path: &str, out: &mut Vec<String>) {
    match (value, ctx) {
        (Value::Object(map), Ctx::Msg(_)) => {
            for (k, v) in map {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if ctx.field(k).is_none() && !(path.is_empty() && (k == "apiVersion" || k == "kind")) {
                    out.push(format!("unknown field \"{here}\""));
                    continue;
                }
                match v {
                    Value::Array(items) => {
                        let item_ctx = ctx.items(k);
                        for (i, item) in items.iter().enumerate() {
                            unknown_fields(item, item_ctx, &format!("{here}[{i}]"), out);
                        }
                    }
                    _ => unknown_fields(v, ctx.child(k), &here, out),
                }
            }
        }
        (Value::Object(map), Ctx::MapOf(Some(_))) => {
            for (k, v) in map {
                unknown_fields(v, ctx.child(k), &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// Under `fieldValidation=Strict`, rejects fields the kind's schema does not have, at any depth.
pub fn check_unknown_fields(req: &Request, obj: &Value) -> Result<()> {
    if !req.options.strict {
        return Ok(());
    }
    let root = if req.sub.as_deref() == Some("scale") {
        super::schema::message_for("autoscaling/v1", "Scale")
    } else {
        req.info.schema()
    };
    let Some(root) = root else { return Ok(()) };
    let mut unknown = Vec::new();
    unknown_fields(obj, Ctx::Msg(root), "", &mut unknown);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            unknown.join(", ")
        )))
    }
}

/// The bytes to store for `obj`, or 413 when they exceed the store's value limit (etcd's 1.5 MiB).
pub fn stored_bytes(obj: &Value) -> Result<Vec<u8>> {
    let bytes = to_stored(obj);
    if bytes.len() > limits::MAX_OBJECT_BYTES {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!(
                "Request entity too large: the object is {} bytes, the store's limit is {}",
                bytes.len(),
                limits::MAX_OBJECT_BYTES
            ),
        ));
    }
    Ok(bytes)
}

/// Everything but metadata and status: a change here bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    o
}

/// How often an unconditional update (one without a `resourceVersion`) is tried again when
/// another write lands between its read and its own. Upstream retries until the request times
/// out; this bound only stops a loop that could never win (some writer wins every round).
const UNCONDITIONAL_RETRIES: u32 = 64;

/// Whether an unconditional update that failed with `e` is tried again on a fresh read
/// (upstream's `GuaranteedUpdate`); counts the attempt.
pub fn retry_unconditional(e: &ApiError, attempts: &mut u32) -> bool {
    if e.reason != "Conflict" || *attempts >= UNCONDITIONAL_RETRIES {
        return false;
    }
    *attempts += 1;
    true
}

impl Objects {
    /// The built-in (or served custom) resource `group`/`plural`.
    ///
    /// # Panics
    /// If it is not served: callers name built-in resources, which always are.
    pub fn resource(&self, group: &str, plural: &str) -> Arc<ResourceInfo> {
        self.registry
            .all()
            .into_iter()
            .find(|r| r.group == group && r.plural == plural)
            .expect("built-in resource is registered")
    }

    /// Reads object `name` of the request's resource, or fails with 404.
    pub async fn read(&self, req: &Request, name: &str) -> Result<KeyValue> {
        self.store
            .get(&req.key(name))
            .await
            .map_err(|e| ApiError::from_store(e, req.target(name)))?
            .ok_or_else(|| ApiError::not_found(req.target(name)))
    }

    /// Creates `obj` with everything a POST does (defaults, validation, admission, allocation);
    /// returns the stored object.
    pub async fn create(&self, req: &Request, mut obj: Value) -> Result<Value> {
        check_type(req, &mut obj, &req.info.kind)?;
        check_unknown_fields(req, &obj)?;
        check_namespace(req, &mut obj)?;
        let meta = obj["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        if meta.get("name").and_then(Value::as_str).is_none_or(str::is_empty)
            && let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
        {
            let name = generate_name(prefix);
            meta.insert("name".into(), json!(name));
        }
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(f);
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now()));
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
        let name = meta_str(&obj, "name").to_owned();
        let attrs = req.admission(Operation::Create);
        admission::mutate(&self.store, &attrs, &mut obj).await?;
        self.mutate_by_webhooks(&attrs, &mut obj).await?;
        if obj["metadata"].get("managedFields").is_none() {
            super::apply::track_update(req, None, &mut obj);
        }
        admission::validate(&self.store, &attrs, &obj).await?;
        self.validate_by_webhooks(&attrs, Some(&obj)).await?;
        // A built-in kind with a status carries one from the start, `{}` at least, as upstream
        // writes its types' status structs.
        if obj.get("status").is_none() && req.info.schema().is_some_and(|m| m.field("status").is_some()) {
            obj["status"] = json!({});
        }
        if req.info.crd.is_none() && req.info.kind == "CustomResourceDefinition" {
            obj["status"] = super::crd::established_status(&obj, &now());
            obj["metadata"]["finalizers"] = super::crd::initial_finalizers(&obj["metadata"]["finalizers"]);
        }
        if let Some(ns) = attrs.namespace {
            self.charge_quotas(&req.info, ns, &obj, req.options.dry_run)
                .await?;
        }
        // Only Services allocate; their lock is held until the create is stored.
        let is_service = req.info.group.is_empty() && req.info.kind == "Service";
        let _alloc = if is_service {
            Some(self.alloc.lock().await)
        } else {
            None
        };
        if is_service {
            super::service::allocate(self, &mut obj, None)
                .await
                .map_err(|causes| ApiError::invalid(req.target(&name), &causes))?;
        }
        if req.options.dry_run {
            return Ok(obj);
        }
        let kv = self
            .store
            .create(
                &req.key(&name),
                stored_bytes(self.storage_form(&req.info, &obj).await?.as_ref())?,
            )
            .await
            .map_err(|e| ApiError::from_store(e, req.target(&name)))?;
        set_resource_version(&mut obj, kv.mod_revision);
        Ok(obj)
    }

    /// Replaces the request's object (or, with `req.sub` = `status`, its status) as a PUT does.
    /// When `new` carries the `resourceVersion` it was read at, a concurrent change fails with a
    /// conflict; without one the update is unconditional, and a write that lands between the
    /// read and this one is written over on a fresh read (upstream's `GuaranteedUpdate`).
    pub async fn update(&self, req: &Request, new: Value) -> Result<Value> {
        if !meta_str(&new, "resourceVersion").is_empty() {
            let current = self.read(req, req.name()).await?;
            return self.commit_update(req, &current, new, true).await;
        }
        let mut attempts = 0;
        loop {
            let current = self.read(req, req.name()).await?;
            match self.commit_update(req, &current, new.clone(), true).await {
                Err(e) if retry_unconditional(&e, &mut attempts) => {}
                done => return done,
            }
        }
    }

    /// Writes `new` over `current` with the update rules shared by PUT and PATCH; `track`: record
    /// the fields changed as the manager's (a server-side apply has recorded them itself).
    pub async fn commit_update(
        &self,
        req: &Request,
        current: &KeyValue,
        mut new: Value,
        track: bool,
    ) -> Result<Value> {
        let name = req.name().to_owned();
        let mut old = req.info.decode(current);
        self.served_form(&req.info, std::slice::from_mut(&mut old))
            .await?;
        check_type(req, &mut new, &req.info.kind)?;
        check_namespace(req, &mut new)?;
        if meta_str(&new, "name") != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&new, "name")
            )));
        }
        let rv = meta_str(&new, "resourceVersion");
        if !rv.is_empty() && rv != current.mod_revision.to_string() {
            return Err(ApiError::conflict(req.target(&name)));
        }
        match req.sub.as_deref() {
            sub @ (Some("status") | Some("approval")) => {
                // A status write changes the status, and the labels and annotations (upstream's
                // status strategies reset the spec; the apps workloads keep their labels too);
                // an approval the conditions only, and the labels and annotations (upstream's
                // CSR approval strategy).
                let meta = new["metadata"].take();
                if sub == Some("approval") {
                    let conditions = new["status"]["conditions"].take();
                    new = old.clone();
                    new["status"]["conditions"] = conditions;
                } else {
                    let status = new["status"].take();
                    new = old.clone();
                    new["status"] = status;
                }
                let fields: &[&str] = if req.info.group == "apps" {
                    &["annotations"]
                } else {
                    &["labels", "annotations"]
                };
                for &field in fields {
                    match &meta[field] {
                        Value::Null => {
                            if let Some(m) = new["metadata"].as_object_mut() {
                                m.remove(field);
                            }
                        }
                        v => new["metadata"][field] = v.clone(),
                    }
                }
            }
            Some("ephemeralcontainers") => {
                new = super::ephemeral::add(&old, &new)
                    .map_err(|causes| ApiError::invalid(req.target(&name), &causes))?;
            }
            _ if req.info.has_subresource("status") && req.info.kind != "CustomResourceDefinition" => {
                if req.info.has_subresource("ephemeralcontainers") {
                    super::ephemeral::keep(&old, &mut new);
                }
                new["status"] = old["status"].clone();
                if new["status"].is_null()
                    && let Some(m) = new.as_object_mut()
                {
                    m.remove("status");
                }
            }
            None if req.info.crd.is_none() && req.info.kind == "CustomResourceDefinition" => {
                // A new storage version joins the versions objects were ever stored at.
                if new["status"].is_null() {
                    new["status"] = old["status"].clone();
                }
                let stored = super::crd::established_status(&new, &now())["storedVersions"].take();
                new["status"]["storedVersions"] = stored;
            }
            _ => {}
        }
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        // Only kinds with a spec (and custom resources) count generations; an Event a Go
        // client created with `generation: 0` keeps it.
        let counted = old.get("spec").is_some() || new.get("spec").is_some() || req.info.crd.is_some();
        let generation = old["metadata"]["generation"].as_i64().filter(|_| counted);
        if let Some(g) = generation {
            let bump = spec_part(&old) != spec_part(&new);
            new["metadata"]["generation"] = json!(if bump { g + 1 } else { g });
        }
        let mut attrs = req.admission(Operation::Update);
        attrs.old = Some(&old);
        admission::mutate(&self.store, &attrs, &mut new).await?;
        self.mutate_by_webhooks(&attrs, &mut new).await?;
        if track {
            super::apply::track_update(req, Some(&old), &mut new);
        }
        admission::validate(&self.store, &attrs, &new).await?;
        self.validate_by_webhooks(&attrs, Some(&new)).await?;
        // A Service keeps its addresses, and gets those a new type needs (the lock is held
        // until it is stored).
        let mut _alloc = None;
        if req.info.group.is_empty() && req.info.kind == "Service" {
            super::service::keep_allocations(&old, &mut new)
                .map_err(|c| ApiError::invalid(req.target(&name), &c))?;
            if !req.options.dry_run {
                _alloc = super::service::reallocate(self, &mut new)
                    .await
                    .map_err(|c| ApiError::invalid(req.target(&name), &c))?;
            }
        }
        if req.options.dry_run {
            return Ok(new);
        }
        // The last finalizer removed from an object being deleted completes the deletion.
        if old["metadata"]["deletionTimestamp"].is_string() && finalizers(&new).is_empty() {
            let kv = self
                .store
                .delete(&req.key(&name), Some(current.mod_revision))
                .await
                .map_err(|e| ApiError::from_store(e, req.target(&name)))?;
            set_resource_version(&mut new, kv.mod_revision);
            return Ok(new);
        }
        let kv = self
            .store
            .update(
                &req.key(&name),
                stored_bytes(self.storage_form(&req.info, &new).await?.as_ref())?,
                Some(current.mod_revision),
            )
            .await
            .map_err(|e| ApiError::from_store(e, req.target(&name)))?;
        set_resource_version(&mut new, kv.mod_revision);
        Ok(new)
    }

    /// Deletes (or starts deleting) object `name` of the request's resource, honouring
    /// preconditions, finalizers and propagation; returns what a DELETE responds with.
    pub async fn delete(&self, req: &Request, name: &str, opts: &DeleteOptions) -> Result<Value> {
        let core = req.info.group.is_empty();
        for attempt in 0..8 {
            let current = self.read(req, name).await?;
            let mut obj = req.info.decode(&current);
            self.served_form(&req.info, std::slice::from_mut(&mut obj))
                .await?;
            if attempt == 0 {
                let mut attrs = req.admission(Operation::Delete);
                attrs.old = Some(&obj);
                attrs.dry_run = opts.dry_run;
                self.admit_by_webhooks(&attrs, None).await?;
            }
            opts.preconditions
                .check(&obj, current.mod_revision)
                .map_err(|e| {
                    ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": {e}",
                            req.target(name).qualified()
                        ),
                    )
                })?;
            let written =
                match plan_deletion(&obj, core, &req.info.kind, opts, time::OffsetDateTime::now_utc()) {
                    Deletion::Unchanged => return Ok(obj),
                    Deletion::Remove if opts.dry_run => return Ok(obj),
                    Deletion::Remove => self
                        .store
                        .delete(&current.key, Some(current.mod_revision))
                        .await
                        .map(|_| super::status::success(req.target(name), meta_str(&obj, "uid"))),
                    Deletion::Mark(marked) if opts.dry_run => return Ok(marked),
                    Deletion::Mark(mut marked) => {
                        let bytes = to_stored(self.storage_form(&req.info, &marked).await?.as_ref());
                        self.store
                            .update(&current.key, bytes, Some(current.mod_revision))
                            .await
                            .map(|kv| {
                                set_resource_version(&mut marked, kv.mod_revision);
                                marked
                            })
                    }
                };
            match written {
                Ok(answer) => return Ok(answer),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, req.target(name))),
            }
        }
        Err(ApiError::conflict(req.target(name)))
    }

    /// The mutating admission webhooks' turn on `obj`; what they change gets the built-in
    /// defaults (and a custom resource's schema) again.
    async fn mutate_by_webhooks(&self, attrs: &admission::Attributes<'_>, obj: &mut Value) -> Result<()> {
        let Some(backend) = self.webhooks.get() else {
            return Ok(());
        };
        if admission::webhooks::mutate(&self.store, backend.as_ref(), attrs, obj).await? {
            admission::redefault(&self.store, attrs, obj).await?;
        }
        Ok(())
    }

    /// The validating admission webhooks' turn on `obj` (None for a delete or a connect).
    async fn validate_by_webhooks(
        &self,
        attrs: &admission::Attributes<'_>,
        obj: Option<&Value>,
    ) -> Result<()> {
        match self.webhooks.get() {
            Some(backend) => admission::webhooks::validate(&self.store, backend.as_ref(), attrs, obj).await,
            None => Ok(()),
        }
    }

    /// Both webhook phases for a request that writes no object of its own: a delete (the
    /// object in `attrs.old`) or a connect (`obj`: its options, such as `PodAttachOptions`). A
    /// mutating webhook may refuse it; what it would change is dropped.
    pub async fn admit_by_webhooks(
        &self,
        attrs: &admission::Attributes<'_>,
        obj: Option<&Value>,
    ) -> Result<()> {
        let Some(backend) = self.webhooks.get() else {
            return Ok(());
        };
        let mut scratch = obj.cloned().unwrap_or(Value::Null);
        if obj.is_some() {
            admission::webhooks::mutate(&self.store, backend.as_ref(), attrs, &mut scratch).await?;
        }
        admission::webhooks::validate(&self.store, backend.as_ref(), attrs, obj).await
    }

    /// Assigns the request's pod to `node` (the `binding` subresource): 409 if it already has
    /// one. Returns the bound pod (not stored under dry run).
    pub async fn bind(&self, req: &Request, node: &str) -> Result<Value> {
        let name = req.name();
        let current = self.read(req, name).await?;
        let mut pod = from_kv(&current);
        if pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{}\"",
                    pod["spec"]["nodeName"].as_str().unwrap_or_default()
                ),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        let conditions = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}),
        );
        pod["status"]["conditions"] = Value::Array(conditions);
        if req.options.dry_run {
            return Ok(pod);
        }
        self.store
            .update(&current.key, to_stored(&pod), Some(current.mod_revision))
            .await
            .map_err(|e| ApiError::from_store(e, req.target(name)))?;
        Ok(pod)
    }

    /// Patches the request's object (or its status or scale) with `patch` of `patch_type`
    /// (`body_len`: the patch's encoded size, which decides whether the work goes to the CPU
    /// pool); retried on conflicts unless the patch pins a `resourceVersion`. A server-side apply
    /// of an object that does not exist creates it. Returns the result and whether it was created.
    pub async fn patch(
        &self,
        req: &Request,
        patch_type: PatchType,
        patch: Value,
        body_len: usize,
    ) -> Result<(Value, bool)> {
        check_patch_type(req, patch_type)?;
        // Shared with each attempt's (possibly pooled) patch job instead of copied into it.
        let patch = Arc::new(patch);
        let scale = req.sub.as_deref() == Some("scale");
        for attempt in 0..8 {
            let current = match self.read(req, req.name()).await {
                Ok(kv) => kv,
                Err(e) if e.code == 404 && patch_type == PatchType::Apply && req.sub.is_none() => {
                    return self.create_from_apply(req, &patch).await.map(|o| (o, true));
                }
                Err(e) => return Err(e),
            };
            let mut base = req.info.decode(&current);
            self.served_form(&req.info, std::slice::from_mut(&mut base))
                .await?;
            let base = if scale { to_scale(&base) } else { base };
            let size = current.value.len() + body_len;
            let (job_req, patch_doc) = (req.clone(), Arc::clone(&patch));
            let patched = super::cpu::run_sized(size, move || {
                let (req, patch) = (job_req, patch_doc);
                match patch_type {
                    PatchType::Json => {
                        apply_json_patch(&base, &patch).map_err(|e| ApiError::new(422, "Invalid", e))
                    }
                    PatchType::Merge => Ok(apply_merge_patch(&base, &patch)),
                    PatchType::Strategic => {
                        let root = if req.sub.as_deref() == Some("scale") {
                            super::schema::message_for("autoscaling/v1", "Scale")
                        } else {
                            req.info.schema()
                        };
                        apply_strategic_patch(&base, &patch, root).map_err(ApiError::bad_request)
                    }
                    PatchType::Apply => super::apply::apply(&req, &base, &patch),
                }
            })
            .await?;
            if limits::too_deep(&patched, limits::MAX_DEPTH) {
                return Err(ApiError::bad_request(limits::too_deep_message()));
            }
            let mut patched = patched;
            check_unknown_fields(req, &patched)?;
            // A patch that carries resourceVersion is a precondition; otherwise retry on conflicts.
            let pinned = !meta_str(&patched, "resourceVersion").is_empty()
                && meta_str(&patched, "resourceVersion") != current.mod_revision.to_string();
            if !pinned {
                patched["metadata"]["resourceVersion"] = json!(current.mod_revision.to_string());
            }
            let result = if scale {
                let mut stored = req.info.decode(&current);
                self.served_form(&req.info, std::slice::from_mut(&mut stored))
                    .await?;
                let obj = from_scale(&stored, &patched, &current, req)?;
                self.commit_update(&req.clone().at(None), &current, obj, true)
                    .await
                    .map(|o| to_scale(&o))
            } else {
                // Server-side apply has recorded ownership itself.
                self.commit_update(req, &current, patched, patch_type != PatchType::Apply)
                    .await
            };
            match result {
                Err(e) if e.reason == "Conflict" && !pinned && attempt < 7 => continue,
                Err(e) => return Err(e),
                Ok(obj) => return Ok((obj, false)),
            }
        }
        Err(ApiError::conflict(req.target(req.name())))
    }

    /// Server-side apply of an object that does not exist yet: a create owned by the applier.
    async fn create_from_apply(&self, req: &Request, patch: &Value) -> Result<Value> {
        let mut obj = super::apply::apply(req, &json!({"metadata": {}}), patch)?;
        if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            obj["metadata"]["name"] = json!(req.name());
        }
        let create = Request {
            name: None,
            sub: None,
            ..req.clone()
        };
        self.create(&create, obj).await
    }
}

/// Whether a patch of `patch_type` may be made to the request's resource: custom resources have
/// no strategic merge patch (their schemas carry no patch strategies).
pub fn check_patch_type(req: &Request, patch_type: PatchType) -> Result<()> {
    if patch_type == PatchType::Strategic && req.info.crd.is_some() {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "strategic merge patch is not supported for custom resources",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
