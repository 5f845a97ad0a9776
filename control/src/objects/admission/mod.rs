//! Admission: what every create and update of an object passes through after it is decoded and
//! before it is stored, as upstream's chain of admission plugins. The mutating plugins run in
//! order, then (after managedFields are tracked) the validating ones; the first error ends the
//! request. A plugin is a file here and a line in [`MUTATING`] or [`VALIDATING`].
//!
//! Plugins read other objects through [`Lookup`] (the store, or a map in their unit tests).

mod custom_resources;
mod defaults;
mod job_selector;
mod limit_ranger;
mod namespace_lifecycle;
mod networking;
mod node_restriction;
mod pod_security;
mod priority;
pub mod service_account;
mod validation;
pub mod webhooks;

use serde_json::Value;

use super::registry::ResourceInfo;
use super::status::{ApiError, Target};
use crate::objects::meta::from_kv;
use crate::store::Store;

/// What admission says about one request besides its verdict.
#[derive(Debug, Default)]
struct Notes {
    /// `Warning` headers.
    warnings: Vec<String>,
    /// Annotations of the request's audit event.
    audit: Vec<(String, String)>,
}

tokio::task_local! {
    /// The notes of the request being served.
    static NOTES: std::sync::Arc<std::sync::Mutex<Notes>>;
}

fn with_notes<T>(f: impl FnOnce(&mut Notes) -> T) -> Option<T> {
    NOTES
        .try_with(|n| f(&mut n.lock().unwrap_or_else(|p| p.into_inner())))
        .ok()
}

/// Gives the request being served a warning (a `Warning` header, which kubectl prints); nothing
/// outside a request (controllers' writes).
pub fn warn(message: String) {
    with_notes(|n| n.warnings.push(message));
}

/// Annotates the audit event of the request being served (PodSecurity's `audit` verdicts).
pub fn annotate_audit(key: &str, value: String) {
    with_notes(|n| n.audit.push((key.to_owned(), value)));
}

/// The audit annotations given so far to the request being served.
pub fn audit_annotations() -> Vec<(String, String)> {
    with_notes(|n| n.audit.clone()).unwrap_or_default()
}

/// Runs `serve` collecting the warnings admission gives it.
pub async fn with_warnings<F: std::future::Future>(serve: F) -> (F::Output, Vec<String>) {
    let notes = std::sync::Arc::new(std::sync::Mutex::new(Notes::default()));
    let out = NOTES.scope(notes.clone(), serve).await;
    let list = std::mem::take(&mut notes.lock().unwrap_or_else(|p| p.into_inner()).warnings);
    (out, list)
}

/// The write being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new object.
    Create,
    /// A change to a stored object.
    Update,
    /// A deletion (admission webhooks only).
    Delete,
    /// A connection to a pod (`exec`, `attach`, `portforward`; admission webhooks only).
    Connect,
}

/// Who makes a request, as an `AdmissionReview` and a `TokenReview` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The `authentication/v1` `UserInfo` object.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"username": self.username, "groups": self.groups})
    }
}

/// What a plugin knows about the request besides the object.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The resource written.
    pub info: &'a ResourceInfo,
    /// Create or update.
    pub operation: Operation,
    /// The request's namespace, for namespaced resources.
    pub namespace: Option<&'a str>,
    /// The name on the request's path ("" for a create, whose name is in the object).
    pub url_name: &'a str,
    /// `fieldValidation=Strict`: unknown fields are errors rather than dropped.
    pub strict: bool,
    /// The object an update replaces or a delete removes (as served).
    pub old: Option<&'a Value>,
    /// The subresource written (`status`, `scale`, `attach`, ...).
    pub sub: Option<&'a str>,
    /// Who asks (None: the control plane itself).
    pub user: Option<&'a UserInfo>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

impl Attributes<'_> {
    /// Whether the resource is the built-in `group`/`kind`.
    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.info.group == group && self.info.kind == kind && self.info.crd.is_none()
    }

    /// The object `name` of this resource, for error messages.
    pub fn target<'n>(&'n self, name: &'n str) -> Target<'n> {
        self.info.target(name)
    }

    /// 422 with `causes` for `obj`, unless there are none.
    pub fn invalid(&self, obj: &Value, causes: Vec<(String, String)>) -> Result<(), ApiError> {
        if causes.is_empty() {
            Ok(())
        } else {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            Err(ApiError::invalid(self.target(name), &causes))
        }
    }
}

/// The objects plugins may read.
#[tonic::async_trait]
pub trait Lookup: Sync {
    /// The object at `key` (a linearizable read).
    async fn get(&self, key: &str) -> Result<Option<Value>, ApiError>;
    /// The object at `key` as this member has it, without a round trip to the leader.
    fn get_local(&self, key: &str) -> Result<Option<Value>, ApiError>;
    /// The objects under `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<Value>, ApiError>;
    /// The objects under `prefix` as this member has them, without a round trip to the leader
    /// (what upstream's plugins read from their informers' caches).
    fn list_local(&self, prefix: &str) -> Result<Vec<Value>, ApiError>;
    /// Whether the object at `key` is being deleted (`None`: there is none), as this member has
    /// it: what NamespaceLifecycle asks at every create, answered without building the object.
    fn deleting_local(&self, key: &str) -> Result<Option<bool>, ApiError> {
        Ok(self
            .get_local(key)?
            .map(|o| o["metadata"]["deletionTimestamp"].is_string()))
    }
}

#[tonic::async_trait]
impl Lookup for Store {
    async fn get(&self, key: &str) -> Result<Option<Value>, ApiError> {
        let kv = Store::get(self, key).await.map_err(ApiError::internal)?;
        Ok(kv.as_ref().map(from_kv))
    }

    fn get_local(&self, key: &str) -> Result<Option<Value>, ApiError> {
        let kv = Store::get_local(self, key).map_err(ApiError::internal)?;
        Ok(kv.as_ref().map(from_kv))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Value>, ApiError> {
        let all = Store::list(self, prefix, None, 0)
            .await
            .map_err(ApiError::internal)?;
        Ok(all.items.iter().map(from_kv).collect())
    }

    fn list_local(&self, prefix: &str) -> Result<Vec<Value>, ApiError> {
        let all = Store::list_local(self, prefix).map_err(ApiError::internal)?;
        Ok(all.items.iter().map(from_kv).collect())
    }

    fn deleting_local(&self, key: &str) -> Result<Option<bool>, ApiError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Object {
            metadata: Meta,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct Meta {
            deletion_timestamp: Option<String>,
        }
        let Some(kv) = Store::get_local(self, key).map_err(ApiError::internal)? else {
            return Ok(None);
        };
        // What from_kv would make of it: a value that does not parse is an empty object.
        let object: Object = serde_json::from_slice(&kv.value).unwrap_or_default();
        Ok(Some(object.metadata.deletion_timestamp.is_some()))
    }
}

/// One admission plugin. The default methods admit everything, so a plugin implements only the
/// phase it acts in.
#[tonic::async_trait]
pub trait Plugin: Sync {
    /// Its name, as upstream names its counterpart where there is one.
    fn name(&self) -> &'static str;

    /// Changes the object before it is validated (mutating phase).
    async fn admit(
        &self,
        _lookup: &dyn Lookup,
        _attrs: &Attributes<'_>,
        _obj: &mut Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// Accepts or refuses the object as it will be stored (validating phase).
    async fn validate(
        &self,
        _lookup: &dyn Lookup,
        _attrs: &Attributes<'_>,
        _obj: &Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }
}

/// The mutating plugins, in order: a Job's generated selector, a custom resource's schema
/// (pruning and defaults), a pod's priority, its LimitRange defaults, the built-in defaults, then a pod's service account and
/// its API credentials.
pub const MUTATING: &[&dyn Plugin] = &[
    &job_selector::JobSelector,
    &custom_resources::CustomResources,
    &priority::Priority,
    &limit_ranger::LimitRanger,
    &defaults::Defaults,
    &service_account::ServiceAccount,
];

/// The validating plugins, in order.
pub const VALIDATING: &[&dyn Plugin] = &[
    &validation::Validation,
    &namespace_lifecycle::NamespaceLifecycle,
    &limit_ranger::LimitRanger,
    &node_restriction::NodeRestriction,
    &pod_security::PodSecurity,
];

/// Runs the mutating phase on `obj`.
pub async fn mutate(lookup: &dyn Lookup, attrs: &Attributes<'_>, obj: &mut Value) -> Result<(), ApiError> {
    for plugin in MUTATING {
        plugin
            .admit(lookup, attrs, obj)
            .await
            .inspect_err(|e| tracing::debug!(plugin = plugin.name(), error = %e, "admission refused"))?;
    }
    Ok(())
}

/// Applies the built-in defaults and a custom resource's schema again, to an object admission
/// webhooks changed (upstream decodes their patched object, which defaults it).
pub async fn redefault(lookup: &dyn Lookup, attrs: &Attributes<'_>, obj: &mut Value) -> Result<(), ApiError> {
    for plugin in [
        &custom_resources::CustomResources as &dyn Plugin,
        &defaults::Defaults,
    ] {
        plugin.admit(lookup, attrs, obj).await?;
    }
    Ok(())
}

/// Runs the validating phase on `obj`.
pub async fn validate(lookup: &dyn Lookup, attrs: &Attributes<'_>, obj: &Value) -> Result<(), ApiError> {
    for plugin in VALIDATING {
        plugin
            .validate(lookup, attrs, obj)
            .await
            .inspect_err(|e| tracing::debug!(plugin = plugin.name(), error = %e, "admission refused"))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    //! A [`Lookup`] over a map, and the attributes of a request, for the plugins' unit tests.

    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::{Attributes, Lookup, Operation};
    use crate::objects::registry::{Registry, ResourceInfo};
    use crate::objects::status::ApiError;

    /// Objects by store key.
    #[derive(Default)]
    pub struct Objects(pub BTreeMap<String, Value>);

    #[tonic::async_trait]
    impl Lookup for Objects {
        async fn get(&self, key: &str) -> Result<Option<Value>, ApiError> {
            Ok(self.0.get(key).cloned())
        }

        fn get_local(&self, key: &str) -> Result<Option<Value>, ApiError> {
            Ok(self.0.get(key).cloned())
        }

        async fn list(&self, prefix: &str) -> Result<Vec<Value>, ApiError> {
            self.list_local(prefix)
        }

        fn list_local(&self, prefix: &str) -> Result<Vec<Value>, ApiError> {
            Ok(self
                .0
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect())
        }
    }

    /// The built-in resource `plural` of `group`/`version`.
    pub fn resource(group: &str, version: &str, plural: &str) -> ResourceInfo {
        Registry::new()
            .lookup(group, version, plural)
            .expect("a built-in resource")
            .as_ref()
            .clone()
    }

    /// A create in namespace `ns` (if the resource is namespaced).
    pub fn create<'a>(info: &'a ResourceInfo, ns: &'a str) -> Attributes<'a> {
        Attributes {
            info,
            operation: Operation::Create,
            namespace: info.namespaced.then_some(ns),
            url_name: "",
            strict: false,
            old: None,
            sub: None,
            user: None,
            dry_run: false,
        }
    }

    /// Runs a future to its end on a current-thread runtime.
    pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(f)
    }
}
