//! Upstream's system default topology spread: a pod with no `topologySpreadConstraints` of its
//! own that belongs to a Service, ReplicationController, ReplicaSet or StatefulSet is spread
//! softly over hosts (`maxSkew: 3`) and zones (`maxSkew: 5`) among the pods those objects select,
//! so replicas without resource requests do not pile onto one node.

use std::sync::Arc;

use serde_json::Value;

use crate::controllers::runtime::Cache;
use crate::objects::selector::LabelSelector;

/// The host name label the default host constraint spreads over.
pub const HOSTNAME: &str = "kubernetes.io/hostname";
/// The zone label the default zone constraint spreads over.
pub const ZONE: &str = "topology.kubernetes.io/zone";

/// The default constraints, as upstream's `systemDefaultConstraints`: (topology key, max skew).
pub const CONSTRAINTS: [(&str, i64); 2] = [(HOSTNAME, 3), (ZONE, 5)];

/// The objects a pod's default spread selector comes from.
#[derive(Debug)]
pub struct Owners {
    /// Services: their `spec.selector` maps.
    pub services: Arc<Cache>,
    /// ReplicationControllers: their `spec.selector` maps.
    pub replication_controllers: Arc<Cache>,
    /// ReplicaSets: their `spec.selector` objects.
    pub replica_sets: Arc<Cache>,
    /// StatefulSets: their `spec.selector` objects.
    pub stateful_sets: Arc<Cache>,
}

/// A non-empty `selector` map that selects the pod.
fn map_selecting(selector: &Value, labels: &Value) -> Option<LabelSelector> {
    let map = selector.as_object().filter(|m| !m.is_empty())?;
    let s = LabelSelector::from_map(map);
    s.matches(Some(labels)).then_some(s)
}

/// A non-empty `LabelSelector` object that selects the pod.
fn object_selecting(selector: &Value, labels: &Value) -> Option<LabelSelector> {
    let s = LabelSelector::from_object(selector)
        .ok()
        .filter(|s| !s.is_empty())?;
    s.matches(Some(labels)).then_some(s)
}

impl Owners {
    /// Upstream's `DefaultSelector`: the requirements of every Service and ReplicationController
    /// (`spec.selector` maps) and ReplicaSet and StatefulSet (`spec.selector` objects) of the pod's
    /// namespace that select it, together. None when nothing selects the pod.
    pub fn selector(&self, pod: &Value) -> Option<LabelSelector> {
        // The pod's labels, borrowed: this runs for every scheduling decision.
        let labels = &pod["metadata"]["labels"];
        labels.as_object().filter(|l| !l.is_empty())?;
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let maps = [&self.services, &self.replication_controllers]
            .into_iter()
            .flat_map(|c| c.list(Some(ns)))
            .filter_map(|o| map_selecting(&o["spec"]["selector"], labels));
        let objects = [&self.replica_sets, &self.stateful_sets]
            .into_iter()
            .flat_map(|c| c.list(Some(ns)))
            .filter_map(|o| object_selecting(&o["spec"]["selector"], labels));
        let merged = maps
            .chain(objects)
            .fold(LabelSelector::default(), |all, s| all.and(&s));
        (!merged.is_empty()).then_some(merged)
    }
}
