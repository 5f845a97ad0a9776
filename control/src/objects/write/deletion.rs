//! The rules of a write that do not depend on who asks or how: a delete's options and
//! preconditions, and what a delete does to an object — remove it now, or mark it with a deletion
//! timestamp and the finalizers that hold it (graceful pods, namespaces, propagation). The API's
//! DELETE, evictions, the controllers and the scheduler all delete through them.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::objects::meta::{finalizers, format_time, meta_str};

/// How a delete treats the object's dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are left, their owner reference removed (finalizer `orphan`).
    Orphan,
    /// The object goes now; the garbage collector deletes dependents after it.
    Background,
    /// The object stays until its dependents are gone (finalizer `foregroundDeletion`).
    Foreground,
}

impl Propagation {
    /// `Orphan`, `Background` or `Foreground`, as `propagationPolicy` spells them.
    pub fn parse(policy: &str) -> Option<Self> {
        match policy {
            "Orphan" => Some(Self::Orphan),
            "Background" => Some(Self::Background),
            "Foreground" => Some(Self::Foreground),
            _ => None,
        }
    }

    /// The finalizer that holds the object while the policy is carried out, if any.
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Self::Orphan => Some("orphan"),
            Self::Foreground => Some("foregroundDeletion"),
            Self::Background => None,
        }
    }
}

/// `DeleteOptions.preconditions`: the delete goes ahead only on this uid and resource version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// The object's `metadata.uid`.
    pub uid: Option<String>,
    /// The object's `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

/// A precondition that does not hold (409 Conflict on the API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreconditionFailed {
    /// Another object of the same name.
    #[error("Precondition failed: UID in precondition: {expected}, UID in object meta: {found}")]
    Uid {
        /// What the caller named.
        expected: String,
        /// What is stored.
        found: String,
    },
    /// The object changed since the caller read it.
    #[error(
        "Precondition failed: ResourceVersion in precondition: {expected}, ResourceVersion in object meta: {found}"
    )]
    ResourceVersion {
        /// What the caller named.
        expected: String,
        /// What is stored.
        found: u64,
    },
}

impl Preconditions {
    /// The `preconditions` of a `DeleteOptions` document (absent: none).
    pub fn from_json(preconditions: &Value) -> Self {
        let field = |k: &str| preconditions[k].as_str().map(str::to_owned);
        Self {
            uid: field("uid"),
            resource_version: field("resourceVersion"),
        }
    }

    /// Checks `obj`, stored at `revision`.
    pub fn check(&self, obj: &Value, revision: u64) -> Result<(), PreconditionFailed> {
        if let Some(uid) = self.uid.as_deref().filter(|u| *u != meta_str(obj, "uid")) {
            return Err(PreconditionFailed::Uid {
                expected: uid.to_owned(),
                found: meta_str(obj, "uid").to_owned(),
            });
        }
        if let Some(rv) = self
            .resource_version
            .as_deref()
            .filter(|rv| *rv != revision.to_string())
        {
            return Err(PreconditionFailed::ResourceVersion {
                expected: rv.to_owned(),
                found: revision,
            });
        }
        Ok(())
    }
}

/// What a delete asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// `propagationPolicy` (None: the resource's default, which holds nothing back).
    pub propagation: Option<Propagation>,
    /// `gracePeriodSeconds` (None: a pod's own `terminationGracePeriodSeconds`).
    pub grace_seconds: Option<i64>,
    /// `preconditions`.
    pub preconditions: Preconditions,
    /// `dryRun=All`: everything but the write.
    pub dry_run: bool,
}

impl DeleteOptions {
    /// A controller's delete: dependents are collected in the background.
    pub fn background() -> Self {
        Self {
            propagation: Some(Propagation::Background),
            ..Self::default()
        }
    }
}

/// What deleting an object does.
#[derive(Debug, Clone, PartialEq)]
pub enum Deletion {
    /// Nothing holds it: remove it from the store now.
    Remove,
    /// It stays, marked: the object to store (deletion timestamp, grace, finalizers, phase).
    Mark(Value),
    /// It is being deleted already and the delete adds nothing.
    Unchanged,
}

/// What deleting `obj`, a `kind` of the core group if `core`, does at `now` (seconds since the
/// epoch, UTC). A pod bound to a node that has not finished is deleted gracefully (its kubelet
/// removes it); a namespace always goes through its finalizers; a propagation policy may add one.
pub fn plan_deletion(
    obj: &Value,
    core: bool,
    kind: &str,
    opts: &DeleteOptions,
    now: time::OffsetDateTime,
) -> Deletion {
    let mut fins: BTreeSet<String> = finalizers(obj).into_iter().collect();
    let changed = opts
        .propagation
        .and_then(Propagation::finalizer)
        .is_some_and(|f| fins.insert(f.to_owned()));
    let grace = opts
        .grace_seconds
        .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30);
    let graceful_pod = core
        && kind == "Pod"
        && obj["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())
        && !matches!(obj["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        && grace > 0;
    let is_namespace = core && kind == "Namespace";
    let already_deleting = obj["metadata"]["deletionTimestamp"].is_string();
    if fins.is_empty() && !graceful_pod && !is_namespace {
        return Deletion::Remove;
    }
    if already_deleting && !changed {
        return Deletion::Unchanged;
    }
    let mut obj = obj.clone();
    if !already_deleting {
        let grace = if graceful_pod { grace } else { 0 };
        obj["metadata"]["deletionTimestamp"] = json!(format_time(now + time::Duration::seconds(grace)));
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    }
    if !fins.is_empty() {
        obj["metadata"]["finalizers"] = json!(fins.into_iter().collect::<Vec<_>>());
    }
    if is_namespace {
        obj["status"]["phase"] = json!("Terminating");
    }
    Deletion::Mark(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_796_212_800).unwrap()
    }

    #[test]
    fn preconditions_name_the_uid_and_the_resource_version() {
        let obj = json!({"metadata": {"uid": "u-1"}});
        let both = Preconditions::from_json(&json!({"uid": "u-1", "resourceVersion": "7"}));
        assert_eq!(both.check(&obj, 7), Ok(()));
        assert_eq!(Preconditions::default().check(&obj, 9), Ok(()));
        let err = both.check(&obj, 8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Precondition failed: ResourceVersion in precondition: 7, ResourceVersion in object meta: 8"
        );
        let other = Preconditions::from_json(&json!({"uid": "u-2"}));
        assert_eq!(
            other.check(&obj, 7).unwrap_err().to_string(),
            "Precondition failed: UID in precondition: u-2, UID in object meta: u-1"
        );
    }

    #[test]
    fn an_object_nothing_holds_is_removed_now() {
        let cm = json!({"metadata": {"name": "c"}});
        assert_eq!(
            plan_deletion(&cm, true, "ConfigMap", &DeleteOptions::background(), now()),
            Deletion::Remove
        );
        let unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(
            plan_deletion(&unbound, true, "Pod", &DeleteOptions::default(), now()),
            Deletion::Remove
        );
        let done =
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Succeeded"}});
        assert_eq!(
            plan_deletion(&done, true, "Pod", &DeleteOptions::default(), now()),
            Deletion::Remove
        );
        let forced = DeleteOptions {
            grace_seconds: Some(0),
            ..DeleteOptions::default()
        };
        let running =
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}});
        assert_eq!(
            plan_deletion(&running, true, "Pod", &forced, now()),
            Deletion::Remove
        );
    }

    #[test]
    fn a_running_pod_is_marked_with_its_grace_period() {
        let pod =
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n", "terminationGracePeriodSeconds": 5}});
        let Deletion::Mark(marked) = plan_deletion(&pod, true, "Pod", &DeleteOptions::default(), now())
        else {
            panic!("a running pod is deleted gracefully");
        };
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 5);
        assert_eq!(
            marked["metadata"]["deletionTimestamp"],
            format_time(now() + time::Duration::seconds(5))
        );
        assert!(marked["metadata"].get("finalizers").is_none());
        let shorter = DeleteOptions {
            grace_seconds: Some(1),
            ..DeleteOptions::default()
        };
        let Deletion::Mark(marked) = plan_deletion(&pod, true, "Pod", &shorter, now()) else {
            panic!("still graceful");
        };
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 1);
        // A second delete of a pod already on its way adds nothing.
        assert_eq!(
            plan_deletion(&marked, true, "Pod", &shorter, now()),
            Deletion::Unchanged
        );
    }

    #[test]
    fn finalizers_and_propagation_hold_the_object() {
        let held = json!({"metadata": {"name": "d", "finalizers": ["example.com/keep"]}});
        let Deletion::Mark(marked) =
            plan_deletion(&held, false, "Deployment", &DeleteOptions::default(), now())
        else {
            panic!("a finalizer holds it");
        };
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 0);
        assert_eq!(marked["metadata"]["finalizers"], json!(["example.com/keep"]));
        let foreground = DeleteOptions {
            propagation: Some(Propagation::Foreground),
            ..DeleteOptions::default()
        };
        let Deletion::Mark(marked) = plan_deletion(&marked, false, "Deployment", &foreground, now()) else {
            panic!("foreground adds its finalizer to an object being deleted");
        };
        assert_eq!(
            marked["metadata"]["finalizers"],
            json!(["example.com/keep", "foregroundDeletion"])
        );
        let orphan = DeleteOptions {
            propagation: Some(Propagation::Orphan),
            ..DeleteOptions::default()
        };
        let plain = json!({"metadata": {"name": "rs"}});
        let Deletion::Mark(marked) = plan_deletion(&plain, false, "ReplicaSet", &orphan, now()) else {
            panic!("orphaning holds it until its dependents are released");
        };
        assert_eq!(marked["metadata"]["finalizers"], json!(["orphan"]));
    }

    #[test]
    fn a_namespace_is_always_marked_terminating() {
        let ns = json!({"metadata": {"name": "team"}, "status": {"phase": "Active"}});
        let Deletion::Mark(marked) =
            plan_deletion(&ns, true, "Namespace", &DeleteOptions::background(), now())
        else {
            panic!("namespaces go through their finalizers");
        };
        assert_eq!(marked["status"]["phase"], "Terminating");
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(Propagation::parse("Foreground"), Some(Propagation::Foreground));
        assert_eq!(Propagation::parse("Sideways"), None);
    }
}
