//! Upstream's PodSecurity plugin (Pod Security Standards): a namespace's
//! `pod-security.kubernetes.io/enforce`, `warn` and `audit` labels name a level — `privileged`,
//! `baseline` or `restricted` — that new pods are held to. `enforce` refuses a pod that violates
//! it, `warn` lets it in with a warning (`kubectl` prints it), `audit` notes it in the log; pod
//! templates of workloads get the warnings (and notes) too, never the refusal. The checks and
//! their words are upstream's (`violates PodSecurity "restricted:latest": ...`).

use serde_json::Value;
use skiff_common::pod_security::{LABEL, Level, violations};

use super::{Attributes, Lookup, Operation, Plugin};
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::status::ApiError;

/// Holds pods to their namespace's Pod Security Standard.
pub struct PodSecurity;

/// The pod spec a write carries: a pod's, or a workload's template.
fn pod_spec<'a>(attrs: &Attributes<'_>, obj: &'a Value) -> Option<(&'a Value, bool)> {
    let info = attrs.info;
    if info.crd.is_some() {
        return None;
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => Some((&obj["spec"], true)),
        ("", "PodTemplate") => Some((&obj["template"]["spec"], false)),
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => Some((&obj["spec"]["template"]["spec"], false)),
        ("batch", "CronJob") => Some((&obj["spec"]["jobTemplate"]["spec"]["template"]["spec"], false)),
        _ => None,
    }
}

/// A namespace's enforced level (privileged when unset or not a level).
fn enforced(namespace: &Value) -> Level {
    namespace["metadata"]["labels"][format!("{LABEL}enforce")]
        .as_str()
        .and_then(Level::parse)
        .unwrap_or(Level::Privileged)
}

/// When an update makes a namespace's enforced level stricter, warns about the pods already in it
/// that the new level forbids (they keep running), in upstream's words: `existing pods in
/// namespace "ns" violate the new PodSecurity enforce level "baseline:latest"`, then one line per
/// set of reasons, `web: privileged` or `web (and 2 other pods): host namespaces, privileged`.
fn warn_existing_pods(
    lookup: &dyn Lookup,
    attrs: &Attributes<'_>,
    namespace: &Value,
) -> Result<(), ApiError> {
    let level = enforced(namespace);
    let before = attrs.old.map(enforced).unwrap_or(Level::Privileged);
    if attrs.operation != Operation::Update || level <= before {
        return Ok(());
    }
    let name = meta_str(namespace, "name");
    let pods = lookup.list_local(&keys::in_namespace(keys::PODS, name))?;
    // Reasons (without their details) → the pods that have them, in the order first seen.
    let mut found: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for pod in &pods {
        if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let reasons: Vec<String> = violations(&pod["spec"], level)
            .iter()
            .map(|v| v.split(" (").next().unwrap_or(v).to_owned())
            .collect();
        if reasons.is_empty() {
            continue;
        }
        let pod_name = meta_str(pod, "name").to_owned();
        match found.iter_mut().find(|(r, _)| *r == reasons) {
            Some((_, names)) => names.push(pod_name),
            None => found.push((reasons, vec![pod_name])),
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    super::warn(format!(
        "existing pods in namespace \"{name}\" violate the new PodSecurity enforce level \"{}:latest\"",
        level.name()
    ));
    for (reasons, names) in found {
        let who = match names.len() {
            1 => names[0].clone(),
            2 => format!("{} (and 1 other pod)", names[0]),
            n => format!("{} (and {} other pods)", names[0], n - 1),
        };
        super::warn(format!("{who}: {}", reasons.join(", ")));
    }
    Ok(())
}

#[tonic::async_trait]
impl Plugin for PodSecurity {
    fn name(&self) -> &'static str {
        "PodSecurity"
    }

    async fn validate(
        &self,
        lookup: &dyn Lookup,
        attrs: &Attributes<'_>,
        obj: &Value,
    ) -> Result<(), ApiError> {
        if attrs.sub.is_some() {
            return Ok(());
        }
        if attrs.is("", "Namespace") {
            warn_existing_pods(lookup, attrs, obj)?;
            return Ok(());
        }
        let Some((spec, is_pod)) = pod_spec(attrs, obj) else {
            return Ok(());
        };
        // Pods are judged when they are made (their spec hardly changes after); templates on
        // every write.
        if is_pod && attrs.operation != Operation::Create {
            return Ok(());
        }
        let Some(ns) = attrs.namespace else { return Ok(()) };
        let Some(namespace) = lookup.get_local(&keys::object(keys::NAMESPACES, None, ns))? else {
            return Ok(());
        };
        let level = |mode: &str| {
            namespace["metadata"]["labels"][format!("{LABEL}{mode}")]
                .as_str()
                .and_then(Level::parse)
                .unwrap_or(Level::Privileged)
        };
        let (enforce, warn, audit) = (level("enforce"), level("warn"), level("audit"));
        if is_pod && enforce > Level::Privileged {
            let found = violations(spec, enforce);
            if !found.is_empty() {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "pods \"{}\" is forbidden: violates PodSecurity \"{}:latest\": {}",
                        meta_str(obj, "name"),
                        enforce.name(),
                        found.join(", ")
                    ),
                ));
            }
        }
        // Templates are warned about at the enforced level too, as upstream does.
        let warn = if is_pod { warn } else { warn.max(enforce) };
        if warn > Level::Privileged {
            let found = violations(spec, warn);
            if !found.is_empty() {
                super::warn(format!(
                    "would violate PodSecurity \"{}:latest\": {}",
                    warn.name(),
                    found.join(", ")
                ));
            }
        }
        if audit > Level::Privileged {
            let found = violations(spec, audit);
            if !found.is_empty() {
                // On the request's audit event, as upstream.
                super::annotate_audit(
                    "pod-security.kubernetes.io/audit-violations",
                    format!(
                        "would violate PodSecurity \"{}:latest\": {}",
                        audit.name(),
                        found.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{Objects, block_on, create, resource};
    use super::*;

    fn namespace(labels: Value) -> Objects {
        let mut o = Objects::default();
        o.0.insert(
            "/registry/core/namespaces/team".into(),
            json!({"metadata": {"name": "team", "labels": labels}}),
        );
        o
    }

    #[test]
    fn restricted_refuses_with_upstreams_words_and_baseline_allows_plain_pods() {
        let pods = resource("", "v1", "pods");
        let attrs = create(&pods, "team");
        let plain = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let restricted = namespace(json!({"pod-security.kubernetes.io/enforce": "restricted"}));
        let err = block_on(PodSecurity.validate(&restricted, &attrs, &plain)).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        let hardened = json!({"metadata": {"name": "p"}, "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "x", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}});
        block_on(PodSecurity.validate(&restricted, &attrs, &hardened)).unwrap();
        let baseline = namespace(json!({"pod-security.kubernetes.io/enforce": "baseline"}));
        block_on(PodSecurity.validate(&baseline, &attrs, &plain)).unwrap();
        let privileged = json!({"metadata": {"name": "p"}, "spec": {"hostNetwork": true,
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]}});
        let err = block_on(PodSecurity.validate(&baseline, &attrs, &privileged)).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"p\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true), privileged (container \"c\" must not set securityContext.privileged=true)"
        );
        block_on(PodSecurity.validate(&namespace(json!({})), &attrs, &privileged)).unwrap();
    }

    #[test]
    fn a_stricter_namespace_warns_about_the_pods_already_in_it() {
        let namespaces = resource("", "v1", "namespaces");
        let old = json!({"metadata": {"name": "team"}});
        let mut attrs = create(&namespaces, "");
        attrs.operation = Operation::Update;
        attrs.old = Some(&old);
        let mut objects = Objects::default();
        let privileged = |name: &str| json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "securityContext": {"privileged": true}}]}});
        for name in ["a", "b", "c"] {
            objects
                .0
                .insert(format!("/registry/core/pods/team/{name}"), privileged(name));
        }
        objects.0.insert(
            "/registry/core/pods/team/d".into(),
            json!({"metadata": {"name": "d"}, "spec": {"hostNetwork": true, "containers": [{"name": "c"}]}}),
        );
        objects.0.insert(
            "/registry/core/pods/team/e".into(),
            json!({"metadata": {"name": "e"}, "spec": {"containers": [{"name": "c"}]}}),
        );
        let labelled = json!({"metadata": {"name": "team", "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}});
        let (result, warnings) = block_on(super::super::with_warnings(
            PodSecurity.validate(&objects, &attrs, &labelled),
        ));
        result.unwrap();
        assert_eq!(
            warnings,
            [
                "existing pods in namespace \"team\" violate the new PodSecurity enforce level \"baseline:latest\"",
                "a (and 2 other pods): privileged",
                "d: host namespaces",
            ]
        );
        // The same level again, or a looser one, says nothing.
        attrs.old = Some(&labelled);
        let (_, warnings) = block_on(super::super::with_warnings(
            PodSecurity.validate(&objects, &attrs, &labelled),
        ));
        assert!(warnings.is_empty());
    }
}
