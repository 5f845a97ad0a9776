//! Volume binding, as upstream's VolumeBinding plugin: a pod's PersistentVolumeClaims must exist;
//! bound claims keep the pod on nodes their volume's node affinity admits; claims of
//! `WaitForFirstConsumer` classes need a node with a matching available volume (or a class Skiff
//! provisions for), and once the pod has a node the claims are told which (`selected-node`) so the
//! binder binds or provisions there.

use std::sync::Arc;

use serde_json::Value;

use crate::controllers::runtime::Cache;
use crate::controllers::volume::{
    self, PV_PREFIX, PVC_PREFIX, provisions, volume_fits_node, waits_for_consumer,
};

/// The caches volume binding reads.
#[derive(Debug)]
pub struct Volumes {
    /// PersistentVolumes.
    pub pvs: Arc<Cache>,
    /// PersistentVolumeClaims.
    pub claims: Arc<Cache>,
    /// StorageClasses.
    pub classes: Arc<Cache>,
}

/// A pod's claims, resolved once per decision.
#[derive(Debug, Default)]
pub struct Claims {
    /// Set when no node can run the pod: upstream's message (`pod has unbound immediate
    /// PersistentVolumeClaims`).
    pub blocked: Option<String>,
    /// Volumes of bound claims.
    bound: Vec<Arc<Value>>,
    /// Unbound claims that wait for this pod, with whether Skiff can provision for them.
    waiting: Vec<(Arc<Value>, bool)>,
    /// Every volume, when some claim waits (to look for a matching one per node).
    pvs: Vec<Arc<Value>>,
}

impl Volumes {
    /// Resolves the pod's `persistentVolumeClaim` volumes.
    pub fn resolve(&self, pod: &Value) -> Claims {
        let mut out = Claims::default();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let Some(name) = v["persistentVolumeClaim"]["claimName"].as_str() else {
                continue;
            };
            let Some(claim) = self.claims.get(&format!("{PVC_PREFIX}{ns}/{name}")) else {
                out.blocked = Some(format!("persistentvolumeclaim \"{name}\" not found"));
                return out;
            };
            if claim["metadata"]["deletionTimestamp"].is_string() {
                out.blocked = Some(format!("persistentvolumeclaim \"{name}\" is being deleted"));
                return out;
            }
            match claim["spec"]["volumeName"].as_str().filter(|n| !n.is_empty()) {
                Some(pv) => match self.pvs.get(&format!("{PV_PREFIX}{pv}")) {
                    Some(pv) => out.bound.push(pv),
                    None => {
                        out.blocked = Some(format!("persistentvolume \"{pv}\" not found"));
                        return out;
                    }
                },
                None => {
                    let class = volume::class_of(&self.classes, &claim);
                    if !waits_for_consumer(class.as_deref()) {
                        out.blocked = Some("pod has unbound immediate PersistentVolumeClaims".to_owned());
                        return out;
                    }
                    out.waiting.push((claim, provisions(class.as_deref())));
                }
            }
        }
        if !out.waiting.is_empty() {
            out.pvs = self.pvs.list(None);
        }
        out
    }
}

impl Claims {
    /// Upstream's reason when the pod's volumes rule the node out.
    pub fn check(&self, node: &Value) -> Option<&'static str> {
        if self.bound.iter().any(|pv| !volume_fits_node(pv, node)) {
            return Some("node(s) had volume node affinity conflict");
        }
        let unmet = self
            .waiting
            .iter()
            .any(|(claim, dynamic)| !dynamic && volume::best_volume(&self.pvs, claim, Some(node)).is_none());
        unmet.then_some("node(s) didn't find available persistent volumes to bind")
    }

    /// The claims to mark with the chosen node before the pod is bound.
    pub fn waiting(&self) -> Vec<Arc<Value>> {
        self.waiting.iter().map(|(c, _)| c.clone()).collect()
    }
}
