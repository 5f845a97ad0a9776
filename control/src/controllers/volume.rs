//! The PersistentVolume controller: binds claims to volumes (immediately, or once the scheduler
//! has picked a node for `WaitForFirstConsumer` classes), provisions node-local hostPath volumes
//! for the built-in `skiff.io/local-path` provisioner, assigns the default StorageClass to claims
//! without one, and releases or deletes volumes whose claim is gone, as upstream's
//! persistentvolume-binder does.

use std::sync::Arc;

use serde_json::{Value, json};

use super::error::Error;
use super::events;
use super::runtime::{Cache, Caches, Next, Queue, queue_changes, run_workers};
use super::write::{call, put_object, put_status};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::quantity;
use crate::objects::scheduling::term_matches;
use crate::objects::selector::LabelSelector;
use crate::objects::write::DeleteOptions;

/// Store prefix of PersistentVolumes.
pub const PV_PREFIX: &str = keys::PERSISTENT_VOLUMES;
/// Store prefix of PersistentVolumeClaims.
pub const PVC_PREFIX: &str = keys::PERSISTENT_VOLUME_CLAIMS;
/// Store prefix of StorageClasses.
pub const SC_PREFIX: &str = keys::STORAGE_CLASSES;
/// The provisioner Skiff implements itself: a directory on the chosen node.
pub const LOCAL_PATH: &str = "skiff.io/local-path";
/// The annotation through which the scheduler tells the binder which node a claim's pod got.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const MANAGER: &str = "persistentvolume-controller";
/// Where `skiff.io/local-path` puts volumes unless the class's `path` parameter says otherwise.
pub const DEFAULT_LOCAL_PATH: &str = "/var/lib/skiff/storage";

/// The class a claim asks for: its `storageClassName`, "" for none.
pub fn claim_class(claim: &Value) -> &str {
    claim["spec"]["storageClassName"].as_str().unwrap_or_default()
}

/// The StorageClass a claim names (None for no class, or one that does not exist).
pub fn class_of(classes: &Cache, claim: &Value) -> Option<Arc<Value>> {
    let name = claim_class(claim);
    if name.is_empty() {
        return None;
    }
    classes.get(&format!("{SC_PREFIX}{name}"))
}

/// Whether binding of claims of `class` waits for a pod to be scheduled.
pub fn waits_for_consumer(class: Option<&Value>) -> bool {
    class.is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer")
}

/// Whether Skiff provisions volumes for `class` itself.
pub fn provisions(class: Option<&Value>) -> bool {
    class.is_some_and(|c| c["provisioner"] == LOCAL_PATH)
}

fn storage(v: &Value) -> f64 {
    v.as_str().and_then(quantity::parse).unwrap_or(0.0)
}

/// Whether `pv`'s required node affinity admits `node` (volumes without one fit every node).
pub fn volume_fits_node(pv: &Value, node: &Value) -> bool {
    match pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"].as_array() {
        Some(terms) => terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

/// Whether the unbound volume `pv` can satisfy `claim` (on `node`, when given): same class,
/// available (or pre-bound to this claim), access modes, size, volume mode and selector.
pub fn volume_matches(pv: &Value, claim: &Value, node: Option<&Value>) -> bool {
    let (spec, cspec) = (&pv["spec"], &claim["spec"]);
    let claim_ref = &spec["claimRef"];
    let free = if claim_ref.is_object() {
        claim_ref["name"] == claim["metadata"]["name"]
            && claim_ref["namespace"] == claim["metadata"]["namespace"]
            && (claim_ref["uid"].is_null() || claim_ref["uid"] == claim["metadata"]["uid"])
    } else {
        !matches!(pv["status"]["phase"].as_str(), Some("Released" | "Failed"))
    };
    let wanted_name = cspec["volumeName"].as_str().unwrap_or_default();
    let modes_ok = cspec["accessModes"].as_array().into_iter().flatten().all(|m| {
        spec["accessModes"]
            .as_array()
            .is_some_and(|have| have.contains(m))
    });
    let mode = |v: &Value| v.as_str().unwrap_or("Filesystem").to_owned();
    let selector_ok = match cspec.get("selector").filter(|s| s.is_object()) {
        Some(sel) => LabelSelector::from_object(sel).is_ok_and(|s| s.matches(pv["metadata"].get("labels"))),
        None => true,
    };
    free && pv["metadata"]["deletionTimestamp"].is_null()
        && (wanted_name.is_empty() || wanted_name == meta_str(pv, "name"))
        && spec["storageClassName"].as_str().unwrap_or_default() == claim_class(claim)
        && modes_ok
        && storage(&spec["capacity"]["storage"]) >= storage(&cspec["resources"]["requests"]["storage"])
        && mode(&spec["volumeMode"]) == mode(&cspec["volumeMode"])
        && selector_ok
        && node.is_none_or(|n| volume_fits_node(pv, n))
}

/// The smallest volume that satisfies the claim (ties by name), as upstream picks.
pub fn best_volume<'a>(pvs: &'a [Arc<Value>], claim: &Value, node: Option<&Value>) -> Option<&'a Arc<Value>> {
    pvs.iter()
        .filter(|pv| volume_matches(pv, claim, node))
        .min_by(|a, b| {
            storage(&a["spec"]["capacity"]["storage"])
                .total_cmp(&storage(&b["spec"]["capacity"]["storage"]))
                .then_with(|| meta_str(a, "name").cmp(meta_str(b, "name")))
        })
}

struct Ctx {
    app: Arc<Objects>,
    pvs: Arc<Cache>,
    claims: Arc<Cache>,
    classes: Arc<Cache>,
    nodes: Arc<Cache>,
}

impl Ctx {
    fn default_class(&self) -> Option<Arc<Value>> {
        let mut defaults: Vec<Arc<Value>> = self
            .classes
            .list(None)
            .into_iter()
            .filter(|c| c["metadata"]["annotations"][DEFAULT_CLASS] == "true")
            .collect();
        // Upstream picks the newest default when several are marked.
        defaults.sort_by(|a, b| {
            meta_str(b, "creationTimestamp")
                .cmp(meta_str(a, "creationTimestamp"))
                .then_with(|| meta_str(a, "name").cmp(meta_str(b, "name")))
        });
        defaults.into_iter().next()
    }

    async fn update(&self, plural: &str, obj: Value) -> Result<Value, Error> {
        put_object(&self.app, obj, "", plural, None, MANAGER).await
    }

    async fn set_phase(&self, obj: &Value, plural: &str, phase: &str, extra: Value) -> Result<(), Error> {
        let mut status = obj["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        status["phase"] = json!(phase);
        if let Some(extra) = extra.as_object() {
            for (k, v) in extra {
                status[k] = v.clone();
            }
        }
        if obj["status"] == status {
            return Ok(());
        }
        put_status(&self.app, obj, "", plural, status, MANAGER).await
    }

    async fn sync_claim(&self, key: &str) -> Result<Next, Error> {
        let Some(claim) = self.claims.get(key) else {
            return Ok(Next::Done);
        };
        if claim["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Next::Done);
        }
        // Claims created without a class get the default one once it exists.
        if claim["spec"].get("storageClassName").is_none_or(Value::is_null)
            && let Some(default) = self.default_class()
        {
            let mut next = (*claim).clone();
            next["spec"]["storageClassName"] = json!(meta_str(&default, "name"));
            self.update("persistentvolumeclaims", next).await?;
            return Ok(Next::Done);
        }
        let volume_name = claim["spec"]["volumeName"].as_str().unwrap_or_default();
        if !volume_name.is_empty() {
            return match self.pvs.get(&format!("{PV_PREFIX}{volume_name}")) {
                Some(pv) if pv["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"] => {
                    self.finish_binding(&pv, &claim).await
                }
                Some(pv) if pv["spec"]["claimRef"].is_null() => self.bind(&pv, &claim).await,
                Some(_) => Ok(Next::Done),
                None => {
                    self.set_phase(&claim, "persistentvolumeclaims", "Lost", json!({}))
                        .await?;
                    Ok(Next::Done)
                }
            };
        }
        let class = class_of(&self.classes, &claim);
        let node = if waits_for_consumer(class.as_deref()) {
            let Some(node_name) = claim["metadata"]["annotations"][SELECTED_NODE].as_str() else {
                self.pending(
                    &claim,
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )
                .await?;
                return Ok(Next::Done);
            };
            match self.nodes.get(&keys::object(keys::NODES, None, node_name)) {
                Some(n) => Some(n),
                None => return Ok(Next::After(std::time::Duration::from_secs(2))),
            }
        } else {
            None
        };
        let pvs = self.pvs.list(None);
        if let Some(pv) = best_volume(&pvs, &claim, node.as_deref()) {
            return self.bind(pv, &claim).await;
        }
        match (&class, &node) {
            (Some(class), Some(node)) if provisions(Some(class)) => self.provision(class, &claim, node).await,
            _ => {
                let why = if claim_class(&claim).is_empty() {
                    "no persistent volumes available for this claim and no storage class is set"
                } else if class.is_none() {
                    "storageclass.storage.k8s.io not found"
                } else {
                    "no persistent volumes available for this claim"
                };
                self.pending(&claim, "FailedBinding", why).await?;
                Ok(Next::Done)
            }
        }
    }

    async fn pending(&self, claim: &Value, reason: &str, message: &str) -> Result<(), Error> {
        if claim["status"]["phase"] != "Pending" {
            events::record(&self.app, claim, MANAGER, "Normal", reason, message).await;
        }
        self.set_phase(claim, "persistentvolumeclaims", "Pending", json!({}))
            .await
    }

    /// Points the volume at the claim, then the claim at the volume; statuses follow.
    async fn bind(&self, pv: &Value, claim: &Value) -> Result<Next, Error> {
        let mut pv_next = pv.clone();
        pv_next["spec"]["claimRef"] = json!({
            "kind": "PersistentVolumeClaim",
            "apiVersion": "v1",
            "namespace": meta_str(claim, "namespace"),
            "name": meta_str(claim, "name"),
            "uid": meta_str(claim, "uid"),
            "resourceVersion": meta_str(claim, "resourceVersion"),
        });
        let pv = if pv["spec"]["claimRef"] == pv_next["spec"]["claimRef"] {
            pv.clone()
        } else {
            self.update("persistentvolumes", pv_next).await?
        };
        self.finish_binding(&pv, claim).await
    }

    async fn finish_binding(&self, pv: &Value, claim: &Value) -> Result<Next, Error> {
        self.set_phase(pv, "persistentvolumes", "Bound", json!({}))
            .await?;
        let claim = if claim["spec"]["volumeName"] == pv["metadata"]["name"] {
            claim.clone()
        } else {
            let mut next = claim.clone();
            next["spec"]["volumeName"] = pv["metadata"]["name"].clone();
            next["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
            next["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
            self.update("persistentvolumeclaims", next).await?
        };
        let was_bound = claim["status"]["phase"] == "Bound";
        self.set_phase(
            &claim,
            "persistentvolumeclaims",
            "Bound",
            json!({"accessModes": pv["spec"]["accessModes"], "capacity": pv["spec"]["capacity"]}),
        )
        .await?;
        if !was_bound {
            events::record(
                &self.app,
                &claim,
                MANAGER,
                "Normal",
                "Bound",
                &format!("bound to volume {}", meta_str(pv, "name")),
            )
            .await;
        }
        Ok(Next::Done)
    }

    /// Creates a hostPath volume on `node` for the claim, pre-bound to it.
    async fn provision(&self, class: &Value, claim: &Value, node: &Value) -> Result<Next, Error> {
        let name = format!("pvc-{}", meta_str(claim, "uid"));
        if self.pvs.get(&format!("{PV_PREFIX}{name}")).is_some() {
            return Ok(Next::Done);
        }
        let base = class["parameters"]["path"].as_str().unwrap_or(DEFAULT_LOCAL_PATH);
        let hostname = node["metadata"]["labels"]["kubernetes.io/hostname"]
            .as_str()
            .unwrap_or(meta_str(node, "name"));
        let pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: LOCAL_PATH}},
            "spec": {
                "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"].as_str().unwrap_or("1Gi")},
                "accessModes": claim["spec"]["accessModes"],
                "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
                "storageClassName": meta_str(class, "name"),
                "volumeMode": claim["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
                "hostPath": {
                    "path": format!("{}/{name}_{}_{}", base.trim_end_matches('/'), meta_str(claim, "namespace"), meta_str(claim, "name")),
                    "type": "DirectoryOrCreate",
                },
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}]}]}},
                "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                    "namespace": meta_str(claim, "namespace"), "name": meta_str(claim, "name"), "uid": meta_str(claim, "uid")},
            },
        });
        let c = call(&self.app, "", "persistentvolumes", "", None, None, MANAGER);
        match self.app.create(&c, pv).await {
            Ok(_) => {
                events::record(
                    &self.app,
                    claim,
                    MANAGER,
                    "Normal",
                    "ProvisioningSucceeded",
                    &format!(
                        "Successfully provisioned volume {name} on node {}",
                        meta_str(node, "name")
                    ),
                )
                .await;
                Ok(Next::Done)
            }
            Err(e) if e.code == 409 => Ok(Next::Done),
            Err(e) => Err(e.into()),
        }
    }

    async fn sync_volume(&self, key: &str) -> Result<Next, Error> {
        let Some(pv) = self.pvs.get(key) else {
            return Ok(Next::Done);
        };
        if pv["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Next::Done);
        }
        let claim_ref = &pv["spec"]["claimRef"];
        if !claim_ref.is_object() {
            self.set_phase(&pv, "persistentvolumes", "Available", json!({}))
                .await?;
            return Ok(Next::Done);
        }
        let claim_key = format!(
            "{PVC_PREFIX}{}/{}",
            claim_ref["namespace"].as_str().unwrap_or_default(),
            claim_ref["name"].as_str().unwrap_or_default()
        );
        let claim = self.claims.get(&claim_key);
        match claim {
            Some(c) if claim_ref["uid"].is_null() || c["metadata"]["uid"] == claim_ref["uid"] => {
                // Pre-bound or bound: the claim's side finishes the binding.
                if c["spec"]["volumeName"] != pv["metadata"]["name"] || c["status"]["phase"] != "Bound" {
                    return self.sync_claim(&claim_key).await;
                }
                self.set_phase(&pv, "persistentvolumes", "Bound", json!({}))
                    .await?;
                Ok(Next::Done)
            }
            _ if claim_ref["uid"].is_null() => {
                // Pre-bound to a claim that does not exist yet: keep it for that claim.
                self.set_phase(&pv, "persistentvolumes", "Available", json!({}))
                    .await?;
                Ok(Next::Done)
            }
            _ => self.release(&pv).await,
        }
    }

    /// The volume's claim is gone: keep it (Retain), or delete it when Skiff provisioned it.
    async fn release(&self, pv: &Value) -> Result<Next, Error> {
        let policy = pv["spec"]["persistentVolumeReclaimPolicy"]
            .as_str()
            .unwrap_or("Retain");
        match policy {
            "Delete" if pv["metadata"]["annotations"][PROVISIONED_BY] == LOCAL_PATH => {
                let c = call(&self.app, "", "persistentvolumes", "", None, None, MANAGER);
                match self
                    .app
                    .delete(&c, meta_str(pv, "name"), &DeleteOptions::default())
                    .await
                {
                    Ok(_) => Ok(Next::Done),
                    Err(e) if e.code == 404 => Ok(Next::Done),
                    Err(e) => Err(e.into()),
                }
            }
            "Delete" => {
                self.set_phase(
                    pv,
                    "persistentvolumes",
                    "Failed",
                    json!({"message": "no volume plugin matched: Skiff deletes only the volumes it provisioned"}),
                )
                .await?;
                Ok(Next::Done)
            }
            _ => {
                self.set_phase(pv, "persistentvolumes", "Released", json!({}))
                    .await?;
                Ok(Next::Done)
            }
        }
    }
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let ctx = Arc::new(Ctx {
        pvs: caches.get(&app, PV_PREFIX),
        claims: caches.get(&app, PVC_PREFIX),
        classes: caches.get(&app, SC_PREFIX),
        nodes: caches.get(&app, keys::NODES),
        app: app.clone(),
    });
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &ctx.pvs);
    queue_changes(&queue, &ctx.claims);
    // A new or changed class (a default appearing) may unblock pending claims.
    {
        let (queue, ctx, mut changes) = (queue.clone(), ctx.clone(), ctx.classes.changes());
        tokio::spawn(async move {
            while changes.recv().await.is_some() {
                for claim in ctx.claims.list(None) {
                    if claim["spec"]["volumeName"].as_str().is_none_or(str::is_empty) {
                        queue.add(&format!(
                            "{PVC_PREFIX}{}/{}",
                            meta_str(&claim, "namespace"),
                            meta_str(&claim, "name")
                        ));
                    }
                }
            }
        });
    }
    // A volume that becomes available may satisfy a pending claim.
    {
        let (queue, ctx, mut changes) = (queue.clone(), ctx.clone(), ctx.pvs.changes());
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                if change
                    .new
                    .as_ref()
                    .is_some_and(|pv| pv["spec"]["claimRef"].is_null())
                {
                    for claim in ctx.claims.list(None) {
                        if claim["status"]["phase"] == "Pending" {
                            queue.add(&format!(
                                "{PVC_PREFIX}{}/{}",
                                meta_str(&claim, "namespace"),
                                meta_str(&claim, "name")
                            ));
                        }
                    }
                }
            }
        });
    }
    // A deleted claim releases its volume.
    {
        let (queue, mut changes) = (queue.clone(), ctx.claims.changes());
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                if change.new.is_none()
                    && let Some(old) = &change.old
                    && let Some(pv) = old["spec"]["volumeName"].as_str().filter(|v| !v.is_empty())
                {
                    queue.add(&format!("{PV_PREFIX}{pv}"));
                }
            }
        });
    }
    for pv in ctx.pvs.list(None) {
        queue.add(&format!("{PV_PREFIX}{}", meta_str(&pv, "name")));
    }
    for claim in ctx.claims.list(None) {
        queue.add(&format!(
            "{PVC_PREFIX}{}/{}",
            meta_str(&claim, "namespace"),
            meta_str(&claim, "name")
        ));
    }
    run_workers(app, "persistentvolume", queue, 1, move |key| {
        let ctx = ctx.clone();
        async move {
            if key.starts_with(PV_PREFIX) {
                ctx.sync_volume(&key).await
            } else {
                ctx.sync_claim(&key).await
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, size: &str, node: Option<&str>) -> Arc<Value> {
        let mut pv = json!({"metadata": {"name": name, "labels": {"tier": "fast"}}, "spec": {
            "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
            "hostPath": {"path": "/x"}}});
        if let Some(n) = node {
            pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}]}]}});
        }
        Arc::new(pv)
    }

    #[test]
    fn the_smallest_fitting_volume_on_the_node_wins() {
        let pvs = vec![
            pv("big", "10Gi", None),
            pv("small", "1Gi", Some("a")),
            pv("mid", "2Gi", Some("b")),
        ];
        let claim = json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u"}, "spec": {
            "storageClassName": "local", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        let node_b = json!({"metadata": {"name": "b", "labels": {"kubernetes.io/hostname": "b"}}});
        assert_eq!(
            meta_str(best_volume(&pvs, &claim, None).unwrap(), "name"),
            "small"
        );
        assert_eq!(
            meta_str(best_volume(&pvs, &claim, Some(&node_b)).unwrap(), "name"),
            "mid"
        );
        let mut too_big = claim.clone();
        too_big["spec"]["resources"]["requests"]["storage"] = json!("20Gi");
        assert!(best_volume(&pvs, &too_big, None).is_none());
        let mut rwx = claim.clone();
        rwx["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert!(best_volume(&pvs, &rwx, None).is_none());
        let mut other_class = claim.clone();
        other_class["spec"]["storageClassName"] = json!("");
        assert!(best_volume(&pvs, &other_class, None).is_none());
        let mut selected = claim.clone();
        selected["spec"]["selector"] = json!({"matchLabels": {"tier": "slow"}});
        assert!(best_volume(&pvs, &selected, None).is_none());
        let mut taken = (*pvs[1]).clone();
        taken["spec"]["claimRef"] = json!({"namespace": "ns", "name": "other", "uid": "v"});
        assert!(!volume_matches(&taken, &claim, None));
        taken["spec"]["claimRef"] = json!({"namespace": "ns", "name": "c"});
        assert!(volume_matches(&taken, &claim, None), "pre-bound to this claim");
    }
}
