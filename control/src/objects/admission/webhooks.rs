//! Dynamic admission, as upstream's MutatingAdmissionWebhook and ValidatingAdmissionWebhook
//! plugins: the webhooks of `admissionregistration.k8s.io/v1` MutatingWebhookConfigurations and
//! ValidatingWebhookConfigurations are sent an `AdmissionReview` for each write their rules,
//! namespace selector and object selector match. Mutating webhooks run one after another at
//! the end of the mutating phase, their JSON patches applied in turn (and, with
//! `reinvocationPolicy: IfNeeded`, called once more when a later webhook changed the object);
//! validating webhooks run side by side after the built-in validation, and any one refusing
//! ends the request. A call that fails or times out refuses the request unless the webhook's
//! `failurePolicy` is `Ignore`. Writes to the webhook configurations themselves are never sent
//! to webhooks, so a webhook cannot lock the cluster out of removing it.
//!
//! This file decides what is sent and what an answer means; the [`Backend`] (the API server)
//! knows the configurations in force and carries the calls (TLS to a Service in the cluster or to
//! a URL).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::{Attributes, Lookup, Operation};
use crate::objects::keys;
use crate::objects::meta::new_uid;
use crate::objects::patch::apply_json_patch;
use crate::objects::selector::LabelSelector;
use crate::objects::status::ApiError;

/// The webhook configurations' API group.
pub const GROUP: &str = "admissionregistration.k8s.io";

/// Which configurations a webhook comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// MutatingWebhookConfiguration.
    Mutating,
    /// ValidatingWebhookConfiguration.
    Validating,
}

impl Phase {
    /// The plural of the configuration resource.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Mutating => "mutatingwebhookconfigurations",
            Self::Validating => "validatingwebhookconfigurations",
        }
    }
}

/// What the API server provides: the configurations in force and the calls.
#[tonic::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The configurations of `phase` as last seen.
    fn configurations(&self, phase: Phase) -> Vec<Arc<Value>>;

    /// POSTs `body` (an `AdmissionReview`) to the webhook `client_config` names, at `path`
    /// (with its query), and returns the answer's body; errors are what went wrong, in a few
    /// words (`context deadline exceeded` is the caller's, on timeout).
    async fn call(&self, client_config: &Value, path: &str, body: Vec<u8>) -> Result<Vec<u8>, String>;
}

/// The JSON names of the operations.
fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

fn strs(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// How a rule matched: the version the webhook asked for (the request's own, or with
/// `matchPolicy: Equivalent` another version of the same resource).
fn rule_version<'a>(rule: &'a Value, attrs: &'a Attributes<'_>, equivalent: bool) -> Option<&'a str> {
    let info = attrs.info;
    if !strs(&rule["operations"]).any(|o| o == "*" || o == operation_name(attrs.operation)) {
        return None;
    }
    if !strs(&rule["apiGroups"]).any(|g| g == "*" || g == info.group) {
        return None;
    }
    let resource = match attrs.sub {
        Some(sub) => format!("{}/{sub}", info.plural),
        None => info.plural.clone(),
    };
    let resource_ok = strs(&rule["resources"]).any(|r| {
        r == "*/*"
            || r == resource
            || (r == "*" && attrs.sub.is_none())
            || r.strip_prefix("*/").is_some_and(|s| Some(s) == attrs.sub)
            || r.strip_suffix("/*")
                .is_some_and(|p| p == info.plural && attrs.sub.is_some())
    });
    if !resource_ok {
        return None;
    }
    match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" if info.namespaced => return None,
        "Namespaced" if !info.namespaced => return None,
        _ => {}
    }
    if strs(&rule["apiVersions"]).any(|v| v == "*" || v == info.version) {
        return Some(&info.version);
    }
    if !equivalent {
        return None;
    }
    // Another served version of the same resource (a custom resource's); a built-in kind is
    // served at one version, which stands for every other.
    let served = |v: &str| match &info.crd {
        Some(crd) => crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|ver| ver["name"] == v && ver["served"] == true),
        None => true,
    };
    strs(&rule["apiVersions"]).find(|v| served(v))
}

/// The version a webhook wants the request in, or None when its rules do not match.
fn matching_version<'a>(hook: &'a Value, attrs: &'a Attributes<'_>) -> Option<&'a str> {
    let equivalent = hook["matchPolicy"].as_str() != Some("Exact");
    let rules: Vec<&Value> = hook["rules"].as_array().into_iter().flatten().collect();
    rules
        .iter()
        .find_map(|r| rule_version(r, attrs, false))
        .or_else(|| {
            equivalent
                .then(|| rules.iter().find_map(|r| rule_version(r, attrs, true)))
                .flatten()
        })
}

fn selector(hook: &Value, field: &str) -> Result<LabelSelector, String> {
    match hook.get(field) {
        None | Some(Value::Null) => Ok(LabelSelector::default()),
        Some(sel) => LabelSelector::from_object(sel),
    }
}

/// Whether the webhook's namespace and object selectors select the request.
async fn selected(
    lookup: &dyn Lookup,
    hook: &Value,
    attrs: &Attributes<'_>,
    obj: Option<&Value>,
) -> Result<bool, ApiError> {
    let labels = |o: Option<&Value>| o.map(|o| o["metadata"]["labels"].clone());
    let objects = selector(hook, "objectSelector").map_err(ApiError::internal)?;
    if !objects.is_empty() {
        let (new, old) = (labels(obj), labels(attrs.old));
        let any = [new, old].iter().flatten().any(|l| objects.matches(Some(l)));
        if !any {
            return Ok(false);
        }
    }
    let namespaces = selector(hook, "namespaceSelector").map_err(ApiError::internal)?;
    if namespaces.is_empty() {
        return Ok(true);
    }
    let info = attrs.info;
    // A Namespace is selected by its own labels; other cluster-scoped objects always.
    if info.group.is_empty() && info.kind == "Namespace" && info.crd.is_none() {
        let own = obj.or(attrs.old).map(|o| o["metadata"]["labels"].clone());
        return Ok(namespaces.matches(own.as_ref()));
    }
    let Some(ns) = attrs.namespace.filter(|ns| !ns.is_empty()) else {
        return Ok(true);
    };
    let namespace = lookup.get_local(&keys::object(keys::NAMESPACES, None, ns))?;
    Ok(namespaces.matches(namespace.as_ref().map(|n| &n["metadata"]["labels"])))
}

/// An object as the webhook's version serves it (custom resources differ in apiVersion only).
fn at_version(obj: &Value, attrs: &Attributes<'_>, version: &str) -> Value {
    let mut obj = obj.clone();
    if version != attrs.info.version && obj.is_object() && !attrs.info.group.is_empty() {
        obj["apiVersion"] = json!(format!("{}/{version}", attrs.info.group));
    }
    obj
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// The kind of what is sent: the object's own (`Scale`, `PodExecOptions`, ...) or the resource's.
fn kind_of(attrs: &Attributes<'_>, obj: Option<&Value>, version: &str) -> Value {
    let obj = obj.or(attrs.old);
    let (api_version, kind) = match obj {
        Some(o) if o["kind"].is_string() && attrs.sub.is_some() => (
            o["apiVersion"].as_str().unwrap_or_default().to_owned(),
            o["kind"].as_str().unwrap_or_default().to_owned(),
        ),
        _ => (group_version(&attrs.info.group, version), attrs.info.kind.clone()),
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    json!({"group": group, "version": version, "kind": kind})
}

/// The `AdmissionReview` asking one webhook about the request.
fn review(
    attrs: &Attributes<'_>,
    obj: Option<&Value>,
    version: &str,
    review_version: &str,
    uid: &str,
) -> Value {
    let info = attrs.info;
    let name = obj
        .or(attrs.old)
        .and_then(|o| o["metadata"]["name"].as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(attrs.url_name);
    let kind = kind_of(attrs, obj, version);
    let resource = json!({"group": info.group, "version": version, "resource": info.plural});
    let request_kind = kind_of(attrs, obj, &info.version);
    let request_resource = json!({"group": info.group, "version": info.version, "resource": info.plural});
    let options_kind = match attrs.operation {
        Operation::Create => Some("CreateOptions"),
        Operation::Update => Some("UpdateOptions"),
        Operation::Delete => Some("DeleteOptions"),
        Operation::Connect => None,
    };
    let mut request = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": request_kind,
        "requestResource": request_resource,
        "name": name,
        "operation": operation_name(attrs.operation),
        "userInfo": attrs.user.map_or_else(|| json!({"username": "system:apiserver", "groups": ["system:masters"]}), super::UserInfo::to_json),
        "object": obj.map(|o| at_version(o, attrs, version)),
        "oldObject": attrs.old.filter(|_| attrs.operation != Operation::Connect).map(|o| at_version(o, attrs, version)),
        "dryRun": attrs.dry_run,
    });
    if let Some(ns) = attrs.namespace {
        request["namespace"] = json!(ns);
    }
    if let Some(sub) = attrs.sub {
        request["subResource"] = json!(sub);
        request["requestSubResource"] = json!(sub);
    }
    if let Some(kind) = options_kind {
        request["options"] = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
        if attrs.dry_run {
            request["options"]["dryRun"] = json!(["All"]);
        }
    }
    json!({
        "kind": "AdmissionReview",
        "apiVersion": format!("admission.k8s.io/{review_version}"),
        "request": request,
    })
}

/// Reasons a webhook's `Status` may carry, as the static strings errors hold.
fn reason_of(reason: &str, code: u16) -> &'static str {
    const KNOWN: &[&str] = &[
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "Timeout",
        "TooManyRequests",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    if let Some(known) = KNOWN.iter().find(|k| **k == reason) {
        return known;
    }
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        500..=599 => "InternalError",
        _ => "BadRequest",
    }
}

/// The refusal of webhook `name` with the `Status` it answered (upstream's `ToStatusErr`): its
/// code (400 at least), its reason and details, and a message naming the webhook.
fn denied(name: &str, result: &Value) -> ApiError {
    let code = result["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .unwrap_or(400);
    let by = format!("admission webhook \"{name}\" denied the request");
    let message = match (result["message"].as_str(), result["reason"].as_str()) {
        (Some(m), _) if !m.is_empty() => format!("{by}: {m}"),
        (_, Some(r)) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let mut err = ApiError::new(
        code,
        reason_of(result["reason"].as_str().unwrap_or_default(), code),
        message,
    );
    if result["details"].is_object() {
        err.details = Some(result["details"].clone());
    }
    err
}

/// A webhook's `warnings`, passed on to the client.
fn give_warnings(response: &Value) {
    for w in strs(&response["warnings"]) {
        super::warn(w.to_owned());
    }
}

/// A call that did not give an answer: an internal error naming the webhook.
fn failed(name: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("failed calling webhook \"{name}\": {what}"))
}

/// The service or URL a webhook's client config names, as upstream prints it in errors (also
/// for CRD conversion webhooks).
pub(crate) fn url_of(client_config: &Value, timeout: u64) -> String {
    let base = match client_config["url"].as_str() {
        Some(url) => url.to_owned(),
        None => {
            let svc = &client_config["service"];
            format!(
                "https://{}.{}.svc:{}{}",
                svc["name"].as_str().unwrap_or_default(),
                svc["namespace"].as_str().unwrap_or_default(),
                svc["port"].as_u64().unwrap_or(443),
                svc["path"].as_str().unwrap_or_default()
            )
        }
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}timeout={timeout}s")
}

/// The path (and query) of the call on the webhook's server.
pub(crate) fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].to_owned(),
        None => match rest.find('?') {
            Some(i) => format!("/{}", &rest[i..]),
            None => "/".to_owned(),
        },
    }
}

/// The webhook's answer to the request, or why there is none.
async fn ask(
    backend: &dyn Backend,
    hook: &Value,
    attrs: &Attributes<'_>,
    obj: Option<&Value>,
    version: &str,
) -> Result<Value, String> {
    let review_version = if strs(&hook["admissionReviewVersions"]).any(|v| v == "v1") {
        "v1"
    } else if strs(&hook["admissionReviewVersions"]).any(|v| v == "v1beta1") {
        "v1beta1"
    } else {
        return Err("webhook does not accept v1 or v1beta1 AdmissionReview".to_owned());
    };
    let uid = new_uid();
    let body =
        serde_json::to_vec(&review(attrs, obj, version, review_version, &uid)).map_err(|e| e.to_string())?;
    let timeout = hook["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30);
    let url = url_of(&hook["clientConfig"], timeout);
    let path = path_of(&url);
    let call = backend.call(&hook["clientConfig"], &path, body);
    let answer = match tokio::time::timeout(Duration::from_secs(timeout), call).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return Err(format!("failed to call webhook: Post \"{url}\": {e}")),
        Err(_) => {
            return Err(format!(
                "failed to call webhook: Post \"{url}\": context deadline exceeded"
            ));
        }
    };
    let answer: Value =
        serde_json::from_slice(&answer).map_err(|e| format!("received invalid webhook response: {e}"))?;
    let response = answer
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("webhook response was absent")?;
    if review_version == "v1" {
        if answer["apiVersion"] != "admission.k8s.io/v1" || answer["kind"] != "AdmissionReview" {
            return Err(format!(
                "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
                answer["apiVersion"].as_str().unwrap_or_default(),
                answer["kind"].as_str().unwrap_or_default()
            ));
        }
        if response["uid"] != uid.as_str() {
            return Err(format!(
                "expected response.uid=\"{uid}\", got \"{}\"",
                response["uid"].as_str().unwrap_or_default()
            ));
        }
    }
    Ok(response.clone())
}

/// The webhooks of `phase` that apply to the request, in order (configurations by name, then
/// as listed), each with the version it wants; none for writes to webhook configurations.
async fn applicable(
    lookup: &dyn Lookup,
    backend: &dyn Backend,
    phase: Phase,
    attrs: &Attributes<'_>,
    obj: Option<&Value>,
) -> Result<Vec<(Value, String)>, ApiError> {
    if attrs.info.group == GROUP && attrs.info.crd.is_none() {
        return Ok(Vec::new());
    }
    let mut configurations = backend.configurations(phase);
    if configurations.is_empty() {
        return Ok(Vec::new());
    }
    configurations.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    let mut out = Vec::new();
    for config in &configurations {
        for hook in config["webhooks"].as_array().into_iter().flatten() {
            let Some(version) = matching_version(hook, attrs) else {
                continue;
            };
            let version = version.to_owned();
            if selected(lookup, hook, attrs, obj).await? {
                out.push((hook.clone(), version));
            }
        }
    }
    Ok(out)
}

/// A dry-run request may only reach webhooks without side effects.
fn check_dry_run(hook: &Value, attrs: &Attributes<'_>) -> Result<(), ApiError> {
    if attrs.dry_run && !matches!(hook["sideEffects"].as_str(), Some("None" | "NoneOnDryRun")) {
        return Err(ApiError::bad_request(format!(
            "admission webhook \"{}\" does not support dry run",
            hook["name"].as_str().unwrap_or_default()
        )));
    }
    Ok(())
}

fn ignores_failures(hook: &Value) -> bool {
    hook["failurePolicy"].as_str() == Some("Ignore")
}

/// Calls one mutating webhook and applies its patch to `obj`; whether it changed the object.
async fn mutate_one(
    backend: &dyn Backend,
    hook: &Value,
    version: &str,
    attrs: &Attributes<'_>,
    obj: &mut Value,
) -> Result<bool, ApiError> {
    let name = hook["name"].as_str().unwrap_or_default();
    let response = match ask(backend, hook, attrs, Some(obj), version).await {
        Ok(r) => r,
        Err(e) if ignores_failures(hook) => {
            tracing::warn!(webhook = name, error = %e, "webhook failed, ignored (failurePolicy Ignore)");
            return Ok(false);
        }
        Err(e) => return Err(failed(name, e)),
    };
    give_warnings(&response);
    if response["allowed"] != true {
        return Err(denied(name, &response["status"]));
    }
    let Some(patch) = response["patch"].as_str().filter(|p| !p.is_empty()) else {
        return Ok(false);
    };
    let patch_type = response["patchType"].as_str().unwrap_or("JSONPatch");
    if patch_type != "JSONPatch" {
        return Err(failed(name, format!("unsupported patch type \"{patch_type}\"")));
    }
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| failed(name, format!("patch is not base64: {e}")))?;
    let patch: Value =
        serde_json::from_slice(&patch).map_err(|e| failed(name, format!("patch is not JSON: {e}")))?;
    let base = at_version(obj, attrs, version);
    let mut patched = apply_json_patch(&base, &patch).map_err(|e| failed(name, e))?;
    if patched == base {
        return Ok(false);
    }
    if !patched.is_object() {
        return Err(failed(name, "the patched object is not an object"));
    }
    if version != attrs.info.version {
        patched["apiVersion"] = json!(attrs.info.api_version());
    }
    *obj = patched;
    Ok(true)
}

/// The mutating webhooks' turn on `obj`; whether any of them changed it (the built-in defaults
/// and a custom resource's schema then apply again).
pub async fn mutate(
    lookup: &dyn Lookup,
    backend: &dyn Backend,
    attrs: &Attributes<'_>,
    obj: &mut Value,
) -> Result<bool, ApiError> {
    let hooks = applicable(lookup, backend, Phase::Mutating, attrs, Some(obj)).await?;
    let mut changed = false;
    // The number of changes made when each webhook's call ended.
    let mut seen = Vec::with_capacity(hooks.len());
    let mut mutations = 0usize;
    for (hook, version) in &hooks {
        check_dry_run(hook, attrs)?;
        if mutate_one(backend, hook, version, attrs, obj).await? {
            mutations += 1;
            changed = true;
        }
        seen.push(mutations);
    }
    // Reinvocation: a webhook that asked for it is called once more when a webhook after it
    // changed the object.
    for ((hook, version), at) in hooks.iter().zip(seen) {
        if hook["reinvocationPolicy"] == "IfNeeded"
            && mutations > at
            && mutate_one(backend, hook, version, attrs, obj).await?
        {
            changed = true;
        }
    }
    Ok(changed)
}

/// The validating webhooks' turn: all called at once; the first (in order) that refuses or
/// fails under `failurePolicy: Fail` ends the request. `obj` is None for a delete.
pub async fn validate(
    lookup: &dyn Lookup,
    backend: &dyn Backend,
    attrs: &Attributes<'_>,
    obj: Option<&Value>,
) -> Result<(), ApiError> {
    let hooks = applicable(lookup, backend, Phase::Validating, attrs, obj).await?;
    for (hook, _) in &hooks {
        check_dry_run(hook, attrs)?;
    }
    let answers = futures::future::join_all(
        hooks
            .iter()
            .map(|(hook, version)| ask(backend, hook, attrs, obj, version)),
    )
    .await;
    for ((hook, _), answer) in hooks.iter().zip(answers) {
        let name = hook["name"].as_str().unwrap_or_default();
        if let Ok(response) = &answer {
            give_warnings(response);
        }
        match answer {
            Ok(response) if response["allowed"] == true => {}
            Ok(response) => return Err(denied(name, &response["status"])),
            Err(e) if ignores_failures(hook) => {
                tracing::warn!(webhook = name, error = %e, "webhook failed, ignored (failurePolicy Ignore)");
            }
            Err(e) => return Err(failed(name, e)),
        }
    }
    Ok(())
}

/// Upstream's defaults for a webhook configuration (`admissionregistration/v1`).
pub fn default_configuration(mutating: bool, obj: &mut Value) {
    for hook in obj
        .get_mut("webhooks")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(h) = hook.as_object_mut() else { continue };
        let mut set = |k: &str, v: Value| {
            if h.get(k).is_none_or(Value::is_null) {
                h.insert(k.to_owned(), v);
            }
        };
        set("failurePolicy", json!("Fail"));
        set("matchPolicy", json!("Equivalent"));
        set("namespaceSelector", json!({}));
        set("objectSelector", json!({}));
        set("timeoutSeconds", json!(10));
        if mutating {
            set("reinvocationPolicy", json!("Never"));
        }
        for rule in h
            .get_mut("rules")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(r) = rule.as_object_mut()
                && r.get("scope").is_none_or(Value::is_null)
            {
                r.insert("scope".into(), json!("*"));
            }
        }
        if let Some(svc) = h
            .get_mut("clientConfig")
            .and_then(|c| c.get_mut("service"))
            .and_then(Value::as_object_mut)
            && svc.get("port").is_none_or(Value::is_null)
        {
            svc.insert("port".into(), json!(443));
        }
    }
}

/// Whether `name` is a fully qualified domain name of three labels at least, as webhook names
/// must be.
fn fully_qualified(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 3
        && name.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn one_of(causes: &mut Vec<(String, String)>, field: String, value: &Value, allowed: &[&str]) {
    let v = value.as_str().unwrap_or_default();
    if !allowed.contains(&v) {
        let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        causes.push((
            field,
            format!(
                "Unsupported value: \"{v}\": supported values: {}",
                list.join(", ")
            ),
        ));
    }
}

/// Upstream's validation of a webhook configuration (after defaults).
pub fn validate_configuration(mutating: bool, obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, hook) in obj["webhooks"].as_array().into_iter().flatten().enumerate() {
        let at = |f: &str| format!("webhooks[{i}].{f}");
        let name = hook["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push((at("name"), "Required value".into()));
        } else if !fully_qualified(name) {
            causes.push((
                at("name"),
                format!("Invalid value: \"{name}\": should be a domain with at least three segments separated by dots"),
            ));
        } else if !names.insert(name) {
            causes.push((at("name"), format!("Duplicate value: \"{name}\"")));
        }
        let versions: Vec<&str> = strs(&hook["admissionReviewVersions"]).collect();
        if versions.is_empty() {
            causes.push((
                at("admissionReviewVersions"),
                "Required value: must specify one of v1, v1beta1".into(),
            ));
        } else if !versions.iter().any(|v| matches!(*v, "v1" | "v1beta1")) {
            causes.push((
                at("admissionReviewVersions"),
                format!("Invalid value: {versions:?}: must include at least one of v1, v1beta1"),
            ));
        }
        if hook["sideEffects"].is_null() {
            causes.push((
                at("sideEffects"),
                "Required value: must specify one of None, NoneOnDryRun".into(),
            ));
        } else {
            one_of(
                &mut causes,
                at("sideEffects"),
                &hook["sideEffects"],
                &["None", "NoneOnDryRun"],
            );
        }
        one_of(
            &mut causes,
            at("failurePolicy"),
            &hook["failurePolicy"],
            &["Fail", "Ignore"],
        );
        one_of(
            &mut causes,
            at("matchPolicy"),
            &hook["matchPolicy"],
            &["Equivalent", "Exact"],
        );
        if mutating {
            one_of(
                &mut causes,
                at("reinvocationPolicy"),
                &hook["reinvocationPolicy"],
                &["IfNeeded", "Never"],
            );
        }
        if let Some(t) = hook["timeoutSeconds"].as_i64().filter(|t| !(1..=30).contains(t)) {
            causes.push((
                at("timeoutSeconds"),
                format!("Invalid value: {t}: the timeout value must be between 1 and 30 seconds"),
            ));
        }
        for field in ["namespaceSelector", "objectSelector"] {
            if let Err(e) = selector(hook, field) {
                causes.push((at(field), format!("Invalid value: {e}")));
            }
        }
        let config = &hook["clientConfig"];
        match (config["url"].as_str(), config["service"].is_object()) {
            (Some(_), true) | (None, false) => causes.push((
                at("clientConfig"),
                "Required value: exactly one of url or service is required".into(),
            )),
            (Some(url), false) => {
                if !url.starts_with("https://") {
                    causes.push((
                        at("clientConfig.url"),
                        "Invalid value: 'https' is the only allowed URL scheme".into(),
                    ));
                } else if url.contains('#')
                    || url["https://".len()..]
                        .split('/')
                        .next()
                        .unwrap_or_default()
                        .contains('@')
                {
                    causes.push((
                        at("clientConfig.url"),
                        "Invalid value: fragments and user information are not permitted".into(),
                    ));
                }
            }
            (None, true) => {
                let svc = &config["service"];
                for f in ["name", "namespace"] {
                    if svc[f].as_str().is_none_or(str::is_empty) {
                        causes.push((at(&format!("clientConfig.service.{f}")), "Required value".into()));
                    }
                }
                if let Some(path) = svc["path"]
                    .as_str()
                    .filter(|p| !p.is_empty() && !p.starts_with('/'))
                {
                    causes.push((
                        at("clientConfig.service.path"),
                        format!("Invalid value: \"{path}\": must start with a '/'"),
                    ));
                }
                if let Some(port) = svc["port"].as_i64().filter(|p| !(1..=65535).contains(p)) {
                    causes.push((
                        at("clientConfig.service.port"),
                        format!(
                            "Invalid value: {port}: port is not valid: must be between 1 and 65535, inclusive"
                        ),
                    ));
                }
            }
        }
        if let Some(bundle) = config["caBundle"].as_str()
            && base64::engine::general_purpose::STANDARD.decode(bundle).is_err()
        {
            causes.push((at("clientConfig.caBundle"), "Invalid value: not base64".into()));
        }
        for (j, rule) in hook["rules"].as_array().into_iter().flatten().enumerate() {
            let rat = |f: &str| format!("webhooks[{i}].rules[{j}].{f}");
            for f in ["operations", "apiGroups", "apiVersions", "resources"] {
                if strs(&rule[f]).next().is_none() {
                    causes.push((rat(f), "Required value".into()));
                }
            }
            for op in strs(&rule["operations"]) {
                if !matches!(op, "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT") {
                    causes.push((
                        rat("operations"),
                        format!("Unsupported value: \"{op}\": supported values: \"*\", \"CONNECT\", \"CREATE\", \"DELETE\", \"UPDATE\""),
                    ));
                }
            }
            one_of(
                &mut causes,
                rat("scope"),
                &rule["scope"],
                &["*", "Cluster", "Namespaced"],
            );
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::testing::{Objects, block_on, create, resource};
    use super::*;

    /// Answers every call with `answer(review)`, recording what it was sent.
    #[derive(Debug)]
    struct Fake {
        configs: Vec<Arc<Value>>,
        phase: Phase,
        sent: Mutex<Vec<(Value, String)>>,
        answer: fn(&Value) -> Result<Value, String>,
    }

    #[tonic::async_trait]
    impl Backend for Fake {
        fn configurations(&self, phase: Phase) -> Vec<Arc<Value>> {
            if phase == self.phase {
                self.configs.clone()
            } else {
                Vec::new()
            }
        }

        async fn call(&self, _: &Value, path: &str, body: Vec<u8>) -> Result<Vec<u8>, String> {
            let review: Value = serde_json::from_slice(&body).unwrap();
            self.sent.lock().unwrap().push((review.clone(), path.to_owned()));
            let mut response = (self.answer)(&review)?;
            response["uid"] = review["request"]["uid"].clone();
            Ok(serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})).unwrap())
        }
    }

    fn config(mutating: bool, hooks: Value) -> Arc<Value> {
        let mut obj = json!({"metadata": {"name": "c"}, "webhooks": hooks});
        default_configuration(mutating, &mut obj);
        assert_eq!(
            validate_configuration(mutating, &obj),
            Vec::<(String, String)>::new()
        );
        Arc::new(obj)
    }

    fn hook(name: &str, resources: &str, extra: Value) -> Value {
        let mut h = json!({
            "name": name,
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": [resources]}],
            "clientConfig": {"service": {"namespace": "hooks", "name": "svc", "path": "/check", "port": 8443}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1", "v1beta1"],
        });
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    }

    fn namespaces() -> Objects {
        let mut o = Objects::default();
        o.0.insert(
            "/registry/core/namespaces/team".into(),
            json!({"metadata": {"name": "team", "labels": {"hooked": "yes"}}}),
        );
        o.0.insert(
            "/registry/core/namespaces/other".into(),
            json!({"metadata": {"name": "other"}}),
        );
        o
    }

    #[test]
    fn a_validating_webhook_refuses_with_its_message_and_only_where_selected() {
        let backend = Fake {
            configs: vec![config(
                false,
                json!([hook(
                    "deny.example.com",
                    "configmaps",
                    json!({"namespaceSelector": {"matchLabels": {"hooked": "yes"}}})
                )]),
            )],
            phase: Phase::Validating,
            sent: Mutex::default(),
            answer: |_| {
                Ok(json!({"allowed": false, "status": {"message": "no configmaps here", "code": 403}}))
            },
        };
        let info = resource("", "v1", "configmaps");
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "team"}});
        let err = block_on(validate(
            &namespaces(),
            &backend,
            &create(&info, "team"),
            Some(&cm),
        ))
        .unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(err.reason, "Forbidden");
        assert_eq!(
            err.message,
            "admission webhook \"deny.example.com\" denied the request: no configmaps here"
        );
        let (review, path) = backend.sent.lock().unwrap()[0].clone();
        assert_eq!(path, "/check?timeout=10s");
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["request"]["operation"], "CREATE");
        assert_eq!(
            review["request"]["resource"],
            json!({"group": "", "version": "v1", "resource": "configmaps"})
        );
        assert_eq!(review["request"]["kind"]["kind"], "ConfigMap");
        assert_eq!(review["request"]["namespace"], "team");
        assert_eq!(review["request"]["object"], cm);
        // Another namespace is not selected; pods are not in the rules.
        block_on(validate(
            &namespaces(),
            &backend,
            &create(&info, "other"),
            Some(&cm),
        ))
        .unwrap();
        let pods = resource("", "v1", "pods");
        block_on(validate(
            &namespaces(),
            &backend,
            &create(&pods, "team"),
            Some(&cm),
        ))
        .unwrap();
        assert_eq!(backend.sent.lock().unwrap().len(), 1);
    }

    #[test]
    fn failures_refuse_unless_ignored() {
        let failing = |policy: &str| Fake {
            configs: vec![config(
                false,
                json!([hook("down.example.com", "*", json!({"failurePolicy": policy}))]),
            )],
            phase: Phase::Validating,
            sent: Mutex::default(),
            answer: |_| Err("x509: certificate signed by unknown authority".into()),
        };
        let info = resource("", "v1", "configmaps");
        let cm = json!({"metadata": {"name": "x"}});
        let err = block_on(validate(
            &namespaces(),
            &failing("Fail"),
            &create(&info, "team"),
            Some(&cm),
        ))
        .unwrap_err();
        assert_eq!(err.code, 500);
        assert_eq!(
            err.message,
            "Internal error occurred: failed calling webhook \"down.example.com\": failed to call webhook: Post \"https://svc.hooks.svc:8443/check?timeout=10s\": x509: certificate signed by unknown authority"
        );
        block_on(validate(
            &namespaces(),
            &failing("Ignore"),
            &create(&info, "team"),
            Some(&cm),
        ))
        .unwrap();
    }

    #[test]
    fn mutating_webhooks_patch_in_order_and_reinvoke_when_asked() {
        // Each adds the next stage when it sees the one before.
        let answer = |review: &Value| {
            let data = &review["request"]["object"]["data"];
            let patch = if data["stage-1"].is_null() {
                json!([{"op": "add", "path": "/data/stage-1", "value": "yes"}])
            } else if data["stage-2"].is_null() {
                json!([{"op": "add", "path": "/data/stage-2", "value": "yes"}])
            } else {
                json!([])
            };
            Ok(
                json!({"allowed": true, "patchType": "JSONPatch", "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string())}),
            )
        };
        let backend = Fake {
            configs: vec![config(
                true,
                json!([
                    hook(
                        "one.example.com",
                        "configmaps",
                        json!({"reinvocationPolicy": "IfNeeded"})
                    ),
                    hook("two.example.com", "configmaps", json!({})),
                ]),
            )],
            phase: Phase::Mutating,
            sent: Mutex::default(),
            answer,
        };
        let info = resource("", "v1", "configmaps");
        let mut cm = json!({"metadata": {"name": "x"}, "data": {"start": "yes"}});
        assert!(block_on(mutate(&namespaces(), &backend, &create(&info, "team"), &mut cm)).unwrap());
        assert_eq!(
            cm["data"],
            json!({"start": "yes", "stage-1": "yes", "stage-2": "yes"})
        );
        // one, two, then one again (two changed the object after one).
        assert_eq!(backend.sent.lock().unwrap().len(), 3);
    }

    #[test]
    fn configurations_get_upstreams_defaults_and_checks() {
        let mut obj = json!({"webhooks": [{"name": "a.b.c", "clientConfig": {"service": {"namespace": "n", "name": "s"}}, "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}], "sideEffects": "None", "admissionReviewVersions": ["v1"]}]});
        default_configuration(true, &mut obj);
        let h = &obj["webhooks"][0];
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(h["rules"][0]["scope"], "*");
        assert_eq!(h["clientConfig"]["service"]["port"], 443);
        let bad = json!({"webhooks": [{"name": "short", "clientConfig": {"url": "http://x"}, "rules": [], "sideEffects": "Some", "admissionReviewVersions": ["v2"], "timeoutSeconds": 31}]});
        let fields: Vec<String> = validate_configuration(false, &bad)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            [
                "webhooks[0].name",
                "webhooks[0].admissionReviewVersions",
                "webhooks[0].sideEffects",
                "webhooks[0].failurePolicy",
                "webhooks[0].matchPolicy",
                "webhooks[0].timeoutSeconds",
                "webhooks[0].clientConfig.url"
            ]
        );
    }

    #[test]
    fn rules_match_subresources_scopes_and_operations() {
        let pods = resource("", "v1", "pods");
        let mut attrs = create(&pods, "team");
        let rule = |resources: Value, scope: &str| json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": resources, "scope": scope});
        assert!(rule_version(&rule(json!(["pods"]), "*"), &attrs, false).is_some());
        assert!(rule_version(&rule(json!(["pods"]), "Cluster"), &attrs, false).is_none());
        attrs.sub = Some("attach");
        attrs.operation = Operation::Connect;
        assert!(rule_version(&rule(json!(["pods"]), "*"), &attrs, false).is_none());
        assert!(rule_version(&rule(json!(["*"]), "*"), &attrs, false).is_none());
        for r in ["pods/attach", "pods/*", "*/attach", "*/*"] {
            assert!(
                rule_version(&rule(json!([r]), "*"), &attrs, false).is_some(),
                "{r}"
            );
        }
        let creates = json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/attach"]});
        assert!(rule_version(&creates, &attrs, false).is_none());
    }
}
