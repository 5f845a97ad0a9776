//! The resource types the API server serves: the built-in kinds plus those that
//! CustomResourceDefinitions add at run time.

use crate::objects::keys;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

/// One served resource in one group/version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    /// API group ("" for core).
    pub group: String,
    /// Version (`v1`).
    pub version: String,
    /// Kind (`Pod`).
    pub kind: String,
    /// Plural resource name (`pods`), used in paths and store keys.
    pub plural: String,
    /// Singular name (`pod`).
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names (`po`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Served subresources (`status`, `scale`, `binding`).
    pub subresources: Vec<String>,
    /// Set for custom resources: the CRD's printer columns and schema live there.
    pub crd: Option<Arc<Value>>,
}

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key prefix for all objects of this resource (`events.k8s.io` Events are stored
    /// as core Events: see `convert.rs`).
    pub fn prefix(&self) -> String {
        if super::convert::converted(self) {
            return keys::EVENTS.to_owned();
        }
        keys::prefix(&self.group, &self.plural)
    }

    /// Object `name` of this resource, for errors.
    pub fn target<'a>(&'a self, name: &'a str) -> super::status::Target<'a> {
        super::status::Target {
            group: &self.group,
            resource: &self.plural,
            kind: &self.kind,
            name,
        }
    }

    /// A stored object as this resource serves it.
    pub fn decode(&self, kv: &crate::store::KeyValue) -> Value {
        let mut obj = super::convert::to_served(self, super::meta::from_kv(kv));
        if self.crd.is_some() {
            super::crd::default_stored(self, &mut obj);
        }
        obj
    }

    /// The store key prefix for one namespace (or all objects when cluster-scoped / `ns` is None).
    pub fn prefix_in(&self, ns: Option<&str>) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    /// The store key of one object.
    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    /// The schema of the kind, for built-in kinds (custom resources have their CRD's schema).
    pub fn schema(&self) -> Option<&'static super::schema::Message> {
        if self.crd.is_some() {
            return None;
        }
        super::schema::message_for(&self.api_version(), &self.kind)
    }

    /// Whether `sub` is served for this resource.
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.iter().any(|s| s == sub)
    }

    /// Whether the resource is a request answered in place and never stored (the access and
    /// token reviews): it can only be created.
    pub fn is_review(&self) -> bool {
        self.crd.is_none()
            && matches!(
                self.group.as_str(),
                "authorization.k8s.io" | "authentication.k8s.io"
            )
    }

    /// The discovery entry (`APIResource`) for the resource and its subresources.
    pub fn discovery(&self) -> Vec<Value> {
        let verbs: &[&str] = if self.is_review() {
            &["create"]
        } else {
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        };
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        for sub in &self.subresources {
            let (kind, group, version, verbs): (&str, &str, &str, &[&str]) = match sub.as_str() {
                "scale" => ("Scale", "autoscaling", "v1", &["get", "patch", "update"]),
                "binding" => ("Binding", "", "v1", &["create"]),
                "eviction" => ("Eviction", "policy", "v1", &["create"]),
                "log" => ("Pod", "", "", &["get"]),
                "exec" => ("PodExecOptions", "", "", &["create", "get"]),
                "token" => ("TokenRequest", "authentication.k8s.io", "v1", &["create"]),
                _ => (&self.kind, "", "", &["get", "patch", "update"]),
            };
            let mut entry = json!({
                "name": format!("{}/{sub}", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if !group.is_empty() || !version.is_empty() {
                entry["group"] = json!(group);
                entry["version"] = json!(version);
            }
            out.push(entry);
        }
        out
    }
}

struct Builtin {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    all: bool,
    subs: &'static [&'static str],
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        short: &["ns"],
        all: false,
        subs: &["status", "finalize"],
    },
    Builtin {
        group: "",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        short: &["po"],
        all: true,
        subs: &[
            "status",
            "binding",
            "eviction",
            "log",
            "exec",
            "ephemeralcontainers",
        ],
    },
    Builtin {
        group: "",
        kind: "Service",
        plural: "services",
        namespaced: true,
        short: &["svc"],
        all: true,
        subs: &["status"],
    },
    Builtin {
        group: "",
        kind: "Endpoints",
        plural: "endpoints",
        namespaced: true,
        short: &["ep"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
        short: &["cm"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
        short: &["sa"],
        all: false,
        subs: &["token"],
    },
    Builtin {
        group: "",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        short: &["no"],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "apps",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
        short: &["deploy"],
        all: true,
        subs: &["status", "scale"],
    },
    Builtin {
        group: "apps",
        kind: "ReplicaSet",
        plural: "replicasets",
        namespaced: true,
        short: &["rs"],
        all: true,
        subs: &["status", "scale"],
    },
    Builtin {
        group: "apps",
        kind: "StatefulSet",
        plural: "statefulsets",
        namespaced: true,
        short: &["sts"],
        all: true,
        subs: &["status", "scale"],
    },
    Builtin {
        group: "apps",
        kind: "DaemonSet",
        plural: "daemonsets",
        namespaced: true,
        short: &["ds"],
        all: true,
        subs: &["status"],
    },
    Builtin {
        group: "apps",
        kind: "ControllerRevision",
        plural: "controllerrevisions",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "batch",
        kind: "Job",
        plural: "jobs",
        namespaced: true,
        short: &[],
        all: true,
        subs: &["status"],
    },
    Builtin {
        group: "batch",
        kind: "CronJob",
        plural: "cronjobs",
        namespaced: true,
        short: &["cj"],
        all: true,
        subs: &["status"],
    },
    Builtin {
        group: "autoscaling",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        namespaced: true,
        short: &["hpa"],
        all: true,
        subs: &["status"],
    },
    Builtin {
        group: "discovery.k8s.io",
        kind: "EndpointSlice",
        plural: "endpointslices",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "coordination.k8s.io",
        kind: "Lease",
        plural: "leases",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        kind: "PersistentVolume",
        plural: "persistentvolumes",
        namespaced: false,
        short: &["pv"],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "",
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        namespaced: true,
        short: &["pvc"],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "storage.k8s.io",
        kind: "StorageClass",
        plural: "storageclasses",
        namespaced: false,
        short: &["sc"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "scheduling.k8s.io",
        kind: "PriorityClass",
        plural: "priorityclasses",
        namespaced: false,
        short: &["pc"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "policy",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        namespaced: true,
        short: &["pdb"],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "",
        kind: "ComponentStatus",
        plural: "componentstatuses",
        namespaced: false,
        short: &["cs"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        kind: "ReplicationController",
        plural: "replicationcontrollers",
        namespaced: true,
        short: &["rc"],
        all: true,
        subs: &["status", "scale"],
    },
    Builtin {
        group: "",
        kind: "PodTemplate",
        plural: "podtemplates",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "networking.k8s.io",
        kind: "Ingress",
        plural: "ingresses",
        namespaced: true,
        short: &["ing"],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "certificates.k8s.io",
        kind: "CertificateSigningRequest",
        plural: "certificatesigningrequests",
        namespaced: false,
        short: &["csr"],
        all: false,
        subs: &["status", "approval"],
    },
    Builtin {
        group: "networking.k8s.io",
        kind: "IngressClass",
        plural: "ingressclasses",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "networking.k8s.io",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        namespaced: true,
        short: &["netpol"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "events.k8s.io",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "node.k8s.io",
        kind: "RuntimeClass",
        plural: "runtimeclasses",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "storage.k8s.io",
        kind: "CSIDriver",
        plural: "csidrivers",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "storage.k8s.io",
        kind: "CSINode",
        plural: "csinodes",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "storage.k8s.io",
        kind: "VolumeAttachment",
        plural: "volumeattachments",
        namespaced: false,
        short: &[],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "flowcontrol.apiserver.k8s.io",
        kind: "FlowSchema",
        plural: "flowschemas",
        namespaced: false,
        short: &[],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "flowcontrol.apiserver.k8s.io",
        kind: "PriorityLevelConfiguration",
        plural: "prioritylevelconfigurations",
        namespaced: false,
        short: &[],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "apiregistration.k8s.io",
        kind: "APIService",
        plural: "apiservices",
        namespaced: false,
        short: &[],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        kind: "Role",
        plural: "roles",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        kind: "RoleBinding",
        plural: "rolebindings",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        plural: "clusterroles",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authorization.k8s.io",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authorization.k8s.io",
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authorization.k8s.io",
        kind: "LocalSubjectAccessReview",
        plural: "localsubjectaccessreviews",
        namespaced: true,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authorization.k8s.io",
        kind: "SelfSubjectRulesReview",
        plural: "selfsubjectrulesreviews",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authentication.k8s.io",
        kind: "TokenReview",
        plural: "tokenreviews",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "authentication.k8s.io",
        kind: "SelfSubjectReview",
        plural: "selfsubjectreviews",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "",
        kind: "ResourceQuota",
        plural: "resourcequotas",
        namespaced: true,
        short: &["quota"],
        all: false,
        subs: &["status"],
    },
    Builtin {
        group: "",
        kind: "LimitRange",
        plural: "limitranges",
        namespaced: true,
        short: &["limits"],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "admissionregistration.k8s.io",
        kind: "MutatingWebhookConfiguration",
        plural: "mutatingwebhookconfigurations",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "admissionregistration.k8s.io",
        kind: "ValidatingWebhookConfiguration",
        plural: "validatingwebhookconfigurations",
        namespaced: false,
        short: &[],
        all: false,
        subs: &[],
    },
    Builtin {
        group: "apiextensions.k8s.io",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        namespaced: false,
        short: &["crd", "crds"],
        all: false,
        subs: &["status"],
    },
];

/// The preferred order of groups in discovery.
const GROUP_ORDER: &[&str] = &[
    "",
    "apps",
    "batch",
    "autoscaling",
    "discovery.k8s.io",
    "coordination.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "policy",
    "networking.k8s.io",
    "events.k8s.io",
    "node.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "apiregistration.k8s.io",
    "rbac.authorization.k8s.io",
    "authorization.k8s.io",
    "authentication.k8s.io",
];

/// The versions a built-in kind is served in, the preferred (stored) one first.
fn versions(b: &Builtin) -> &'static [&'static str] {
    match (b.group, b.kind) {
        ("autoscaling", "HorizontalPodAutoscaler") => &["v2", "v1"],
        _ => &["v1"],
    }
}

/// All served resources; custom resources come and go with their CRDs.
#[derive(Debug, Default)]
pub struct Registry {
    custom: RwLock<Vec<Arc<ResourceInfo>>>,
    builtin: Vec<Arc<ResourceInfo>>,
}

impl Registry {
    /// The built-in kinds.
    pub fn new() -> Self {
        let builtin = BUILTINS
            .iter()
            .flat_map(|b| versions(b).iter().map(move |v| (b, *v)))
            .map(|(b, version)| {
                Arc::new(ResourceInfo {
                    group: b.group.into(),
                    version: version.into(),
                    kind: b.kind.into(),
                    plural: b.plural.into(),
                    singular: b.kind.to_lowercase(),
                    namespaced: b.namespaced,
                    short_names: b.short.iter().map(|s| s.to_string()).collect(),
                    categories: if b.all { vec!["all".into()] } else { vec![] },
                    subresources: b.subs.iter().map(|s| s.to_string()).collect(),
                    crd: None,
                })
            })
            .collect();
        Self {
            custom: RwLock::new(Vec::new()),
            builtin,
        }
    }

    /// Every served resource.
    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        let custom = self.custom.read().unwrap_or_else(|p| p.into_inner());
        self.builtin.iter().chain(custom.iter()).cloned().collect()
    }

    /// The resource served at `group/version/plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.all()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The resource for a kind in a group/version.
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        self.all()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }

    /// Groups with their versions, in discovery order (preferred version first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.all() {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version.clone()),
                Some(_) => {}
                None => groups.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        groups.sort_by_key(|(g, _)| {
            GROUP_ORDER
                .iter()
                .position(|o| o == g)
                .unwrap_or(GROUP_ORDER.len())
        });
        groups
    }

    /// Resources in one group/version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceInfo>> {
        self.all()
            .into_iter()
            .filter(|r| r.group == group && r.version == version)
            .collect()
    }

    /// Replaces the custom resources that come from CRDs.
    pub fn set_custom(&self, custom: Vec<Arc<ResourceInfo>>) {
        *self.custom.write().unwrap_or_else(|p| p.into_inner()) = custom;
    }
}
