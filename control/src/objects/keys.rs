//! Every store key the control plane uses, in one place: `/registry/<group>/<resource>/` (`core`
//! for the core group), then `<namespace>/<name>` or `<name>`. Nothing else spells a key, so the
//! layout can change here alone (etcd's upstream layout is the next one, for `etcdctl` users).

/// The root of every object key.
pub const ROOT: &str = "/registry/";

/// Pods.
pub const PODS: &str = "/registry/core/pods/";
/// Nodes.
pub const NODES: &str = "/registry/core/nodes/";
/// Namespaces.
pub const NAMESPACES: &str = "/registry/core/namespaces/";
/// Services.
pub const SERVICES: &str = "/registry/core/services/";
/// Endpoints.
pub const ENDPOINTS: &str = "/registry/core/endpoints/";
/// Events (core/v1).
pub const EVENTS: &str = "/registry/core/events/";
/// ConfigMaps.
pub const CONFIG_MAPS: &str = "/registry/core/configmaps/";
/// ServiceAccounts.
pub const SERVICE_ACCOUNTS: &str = "/registry/core/serviceaccounts/";
/// PersistentVolumes.
pub const PERSISTENT_VOLUMES: &str = "/registry/core/persistentvolumes/";
/// PersistentVolumeClaims.
pub const PERSISTENT_VOLUME_CLAIMS: &str = "/registry/core/persistentvolumeclaims/";
/// EndpointSlices.
pub const ENDPOINT_SLICES: &str = "/registry/discovery.k8s.io/endpointslices/";
/// StorageClasses.
pub const STORAGE_CLASSES: &str = "/registry/storage.k8s.io/storageclasses/";
/// PriorityClasses.
pub const PRIORITY_CLASSES: &str = "/registry/scheduling.k8s.io/priorityclasses/";
/// Node heartbeat Leases (namespace `kube-node-lease`).
pub const NODE_LEASES: &str = "/registry/coordination.k8s.io/leases/kube-node-lease/";
/// Deployments.
pub const DEPLOYMENTS: &str = "/registry/apps/deployments/";
/// ReplicaSets.
pub const REPLICA_SETS: &str = "/registry/apps/replicasets/";
/// ReplicationControllers.
pub const REPLICATION_CONTROLLERS: &str = "/registry/core/replicationcontrollers/";
/// StatefulSets.
pub const STATEFUL_SETS: &str = "/registry/apps/statefulsets/";
/// DaemonSets.
pub const DAEMON_SETS: &str = "/registry/apps/daemonsets/";
/// ControllerRevisions.
pub const CONTROLLER_REVISIONS: &str = "/registry/apps/controllerrevisions/";
/// Jobs.
pub const JOBS: &str = "/registry/batch/jobs/";
/// CronJobs.
pub const CRON_JOBS: &str = "/registry/batch/cronjobs/";
/// HorizontalPodAutoscalers.
pub const HORIZONTAL_POD_AUTOSCALERS: &str = "/registry/autoscaling/horizontalpodautoscalers/";
/// PodDisruptionBudgets.
pub const POD_DISRUPTION_BUDGETS: &str = "/registry/policy/poddisruptionbudgets/";
/// CustomResourceDefinitions.
pub const CUSTOM_RESOURCE_DEFINITIONS: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";
/// CertificateSigningRequests (cluster-scoped).
pub const CERTIFICATE_SIGNING_REQUESTS: &str = "/registry/certificates.k8s.io/certificatesigningrequests/";

/// The prefix of every object of `resource` in `group` ("" for core).
pub fn prefix(group: &str, resource: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    format!("{ROOT}{group}/{resource}/")
}

/// The prefix of every resource of API group `group`.
pub fn group_prefix(group: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    format!("{ROOT}{group}/")
}

/// The key of an object under `prefix` (one of the constants or [`prefix`]): namespaced when
/// `ns` is given.
pub fn object(prefix: &str, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{prefix}{ns}/{name}"),
        None => format!("{prefix}{name}"),
    }
}

/// The prefix of the objects under `prefix` in namespace `ns`.
pub fn in_namespace(prefix: &str, ns: &str) -> String {
    format!("{prefix}{ns}/")
}

/// The group ("" for core), resource and the rest (`ns/name` or `name`) of a key.
pub fn split(key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = key.strip_prefix(ROOT)?.splitn(3, '/');
    let group = parts.next()?;
    let group = if group == "core" { "" } else { group };
    Some((group, parts.next()?, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(prefix("", "pods"), PODS);
        assert_eq!(prefix("apps", "deployments"), DEPLOYMENTS);
        assert_eq!(prefix("", "configmaps"), CONFIG_MAPS);
        let key = object(PODS, Some("default"), "web");
        assert_eq!(key, "/registry/core/pods/default/web");
        assert_eq!(split(&key), Some(("", "pods", "default/web")));
        assert_eq!(split(&object(NODES, None, "n1")), Some(("", "nodes", "n1")));
        assert_eq!(
            in_namespace(PODS, "kube-system"),
            "/registry/core/pods/kube-system/"
        );
        assert_eq!(split("/elsewhere/x"), None);
        for constant in [
            NODE_LEASES,
            CUSTOM_RESOURCE_DEFINITIONS,
            POD_DISRUPTION_BUDGETS,
            HORIZONTAL_POD_AUTOSCALERS,
        ] {
            let key = format!("{constant}x");
            let (group, resource, _) = split(&key).unwrap();
            assert!(constant.starts_with(&prefix(group, resource)));
        }
    }
}
