//! Controllers that run inside skiff-control on the store's own watch streams (no HTTP round
//! trips to itself).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{finalizers, from_kv, to_stored};
use crate::objects::write::Request;
use crate::store::StoreError;

pub mod cluster_dns;
mod clusterrole_aggregation;
mod compaction;
mod crd;
pub mod cronjob;
mod csr_signer;
mod daemonset;
mod deployment;
pub mod disruption;
mod endpoints;
pub mod error;

pub mod events;
mod gc;
pub mod hpa;
pub mod job;
mod namespace;
pub mod node_ipam;
mod node_lifecycle;
pub mod replicaset;
mod resource_quota;
mod root_ca;
pub mod runtime;
mod serviceaccount;
mod statefulset;
pub mod volume;
pub mod write;

/// What the controllers are told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a node may go without a heartbeat before it is considered lost.
    pub node_grace: Duration,
    /// The cluster CA certificate (PEM) published in every namespace as `kube-root-ca.crt`.
    pub root_ca: Option<String>,
    /// The cluster CA that signs approved CertificateSigningRequests.
    pub ca: Option<Arc<crate::pki::Pki>>,
    /// Where the horizontal pod autoscaler reads pods' resource use.
    pub metrics: Option<Arc<dyn hpa::MetricsSource>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_grace: Duration::from_secs(40),
            root_ca: None,
            ca: None,
            metrics: None,
        }
    }
}

/// Starts the controllers; returns their shared caches, which the scheduler reads too.
pub fn start(app: Arc<Objects>, config: &Config) -> runtime::Caches {
    tokio::spawn(compaction::run(app.clone()));
    tokio::spawn(crd::run(app.clone()));
    tokio::spawn(gc::run(app.clone()));
    tokio::spawn(namespace::run(app.clone()));
    let caches = runtime::Caches::default();
    replicaset::start(app.clone(), &caches);
    deployment::start(app.clone(), &caches);
    serviceaccount::start(app.clone(), &caches);
    root_ca::start(app.clone(), &caches, config.root_ca.as_deref());
    clusterrole_aggregation::start(app.clone(), &caches);
    csr_signer::start(app.clone(), &caches, config.ca.clone());
    endpoints::start(app.clone(), &caches);
    job::start(app.clone(), &caches);
    node_lifecycle::start(app.clone(), &caches, config.node_grace);
    node_ipam::start(app.clone(), &caches);
    cluster_dns::start(app.clone(), &caches);
    daemonset::start(app.clone(), &caches);
    statefulset::start(app.clone(), &caches);
    disruption::start(app.clone(), &caches);
    volume::start(app.clone(), &caches);
    resource_quota::start(app.clone(), &caches);
    hpa::start(app.clone(), &caches, config.metrics.clone());
    cronjob::start(app, &caches, Arc::new(cronjob::SystemClock));
    caches
}

/// How long a controller waits before retrying after a failure, and between resyncs.
const RESYNC: Duration = Duration::from_secs(1);

/// The write addressing the object stored at `key`, if the key belongs to a served resource.
pub(crate) fn call_for_key(app: &Objects, key: &str) -> Option<Request> {
    let (group, plural, rest) = keys::split(key)?;
    let mut parts = rest.split('/');
    let info = app
        .registry
        .all()
        .into_iter()
        .find(|r| r.group == group && r.plural == plural)?;
    let (ns, name) = if info.namespaced {
        (Some(parts.next()?.to_owned()), parts.next()?.to_owned())
    } else {
        (None, parts.next()?.to_owned())
    };
    Some(Request::new(info, ns.as_deref(), Some(&name)))
}

/// Rewrites the object at `key` with `edit` (compare-and-swap, retried on conflict). If the object
/// is being deleted and `edit` leaves it without finalizers, the deletion completes.
pub(crate) async fn edit_object(
    app: &Objects,
    key: &str,
    edit: impl Fn(&mut Value) -> bool,
) -> Result<(), StoreError> {
    loop {
        let Some(kv) = app.store.get(key).await? else {
            return Ok(());
        };
        let mut obj = from_kv(&kv);
        if !edit(&mut obj) {
            return Ok(());
        }
        let result = if obj["metadata"]["deletionTimestamp"].is_string() && finalizers(&obj).is_empty() {
            app.store.delete(key, Some(kv.mod_revision)).await
        } else {
            app.store
                .update(key, to_stored(&obj), Some(kv.mod_revision))
                .await
        };
        match result {
            Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes one finalizer from the object at `key`.
pub(crate) async fn remove_finalizer(app: &Objects, key: &str, finalizer: &str) -> Result<(), StoreError> {
    edit_object(app, key, |obj| {
        let Some(list) = obj["metadata"]["finalizers"].as_array_mut() else {
            return false;
        };
        let before = list.len();
        list.retain(|f| f != finalizer);
        let changed = list.len() != before;
        if list.is_empty()
            && let Some(m) = obj["metadata"].as_object_mut()
        {
            m.remove("finalizers");
        }
        changed
    })
    .await
}
