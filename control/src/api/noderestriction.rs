//! What a node may touch beyond its own Node and Lease, as upstream's Node authorizer and
//! NodeRestriction admission allow it: it reads a Secret, ConfigMap, PersistentVolumeClaim or
//! PersistentVolume only when a pod bound to it uses that object (and never lists or watches
//! them), and it writes the status of, or deletes, only pods bound to it. [`super::authz`] has let
//! the request through by verb and resource; this looks at the objects.

use crate::objects::keys;
use serde_json::Value;

use super::App;
use super::handlers::Call;
use crate::objects::meta::from_kv;
use crate::objects::status::ApiError;

fn forbidden(node: &str, verb: &str, call: &Call, why: &str) -> ApiError {
    let resource = match &call.sub {
        Some(sub) => format!("{}/{sub}", call.info.plural),
        None => call.info.plural.clone(),
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{} \"{}\" is forbidden: User \"system:node:{node}\" cannot {verb} resource \"{resource}\" in API group \"{}\" in the namespace \"{}\": {why}",
            call.info.plural,
            call.name(),
            call.info.group,
            call.ns.as_deref().unwrap_or_default(),
        ),
    )
}

/// A node reading an object none of its pods uses.
fn unrelated(node: &str, verb: &str, call: &Call) -> ApiError {
    forbidden(
        node,
        verb,
        call,
        &format!("no relationship found between node '{node}' and this object"),
    )
}

/// The pods bound to `node`, in namespace `ns` or (None) in every namespace.
async fn pods_on(app: &App, node: &str, ns: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let prefix = match ns {
        Some(ns) => keys::in_namespace(keys::PODS, ns),
        None => keys::PODS.to_owned(),
    };
    let listed = app
        .store
        .list(&prefix, None, 0)
        .await
        .map_err(ApiError::internal)?;
    Ok(listed
        .items
        .iter()
        .map(from_kv)
        .filter(|p| p["spec"]["nodeName"].as_str() == Some(node))
        .collect())
}

/// The objects of `resource` (`secrets`, `configmaps`, `persistentvolumeclaims`) that `pod` uses:
/// in volumes (projected ones too), environment and image pull secrets.
pub fn referenced(pod: &Value, resource: &str) -> Vec<String> {
    let spec = &pod["spec"];
    let mut out: Vec<String> = Vec::new();
    let mut push = |v: &Value| {
        if let Some(n) = v.as_str().filter(|n| !n.is_empty()) {
            out.push(n.to_owned());
        }
    };
    let volumes = spec["volumes"].as_array().into_iter().flatten();
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten());
    // Where a pod names a Secret or a ConfigMap: the volume source and its name field, the
    // projected source, the env key reference and the envFrom source.
    let fields = match resource {
        "secrets" => Some((("secret", "secretName"), "secret", "secretKeyRef", "secretRef")),
        "configmaps" => Some((
            ("configMap", "name"),
            "configMap",
            "configMapKeyRef",
            "configMapRef",
        )),
        _ => None,
    };
    if let Some(((volume, volume_name), projected, key_ref, env_from)) = fields {
        for v in volumes {
            push(&v[volume][volume_name]);
            for s in v["projected"]["sources"].as_array().into_iter().flatten() {
                push(&s[projected]["name"]);
            }
        }
        for c in containers {
            for e in c["env"].as_array().into_iter().flatten() {
                push(&e["valueFrom"][key_ref]["name"]);
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                push(&e[env_from]["name"]);
            }
        }
        if resource == "secrets" {
            for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
                push(&s["name"]);
            }
        }
        return out;
    }
    if resource == "persistentvolumeclaims" {
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
        for v in volumes {
            push(&v["persistentVolumeClaim"]["claimName"]);
            // A generic ephemeral volume's claim is named after the pod and the volume.
            if v["ephemeral"].is_object()
                && let Some(name) = v["name"].as_str()
            {
                push(&Value::String(format!("{pod_name}-{name}")));
            }
        }
    }
    out
}

/// Checks a request from node `node` that [`super::authz`] allowed by verb and resource.
pub async fn check(app: &App, node: &str, verb: &str, call: &Call) -> Result<(), ApiError> {
    let (group, resource) = (call.info.group.as_str(), call.info.plural.as_str());
    if !group.is_empty() {
        return Ok(());
    }
    let ns = call.ns.as_deref();
    match (resource, call.sub.as_deref(), verb) {
        ("secrets" | "configmaps" | "persistentvolumeclaims", None, "get") => {
            let name = call.name();
            let used = pods_on(app, node, ns)
                .await?
                .iter()
                .any(|p| referenced(p, resource).iter().any(|r| r == name));
            if used {
                return Ok(());
            }
            Err(unrelated(node, verb, call))
        }
        ("persistentvolumes", None, "get") => {
            let name = call.name();
            for pod in pods_on(app, node, None).await? {
                let pod_ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
                for claim in referenced(&pod, "persistentvolumeclaims") {
                    let key = keys::object(keys::PERSISTENT_VOLUME_CLAIMS, Some(pod_ns), &claim);
                    if let Some(kv) = app.store.get(&key).await.map_err(ApiError::internal)?
                        && from_kv(&kv)["spec"]["volumeName"].as_str() == Some(name)
                    {
                        return Ok(());
                    }
                }
            }
            Err(unrelated(node, verb, call))
        }
        ("pods", Some("status"), _) | ("pods", None, "delete") => {
            let key = keys::object(keys::PODS, Some(ns.unwrap_or_default()), call.name());
            let Some(kv) = app.store.get(&key).await.map_err(ApiError::internal)? else {
                // The handler answers NotFound.
                return Ok(());
            };
            if from_kv(&kv)["spec"]["nodeName"].as_str() == Some(node) {
                return Ok(());
            }
            Err(forbidden(
                node,
                verb,
                call,
                &format!("node \"{node}\" can only update pod status or delete pods bound to it"),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_come_from_volumes_env_and_pull_secrets() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol"}},
                {"name": "b", "projected": {"sources": [{"secret": {"name": "proj"}}, {"configMap": {"name": "proj-cm"}}]}},
                {"name": "c", "configMap": {"name": "cm"}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "e", "ephemeral": {"volumeClaimTemplate": {}}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
            ]}],
        }});
        let mut secrets = referenced(&pod, "secrets");
        secrets.sort();
        assert_eq!(secrets, ["env", "init-env", "proj", "pull", "vol"]);
        let mut maps = referenced(&pod, "configmaps");
        maps.sort();
        assert_eq!(maps, ["cm", "env-cm", "proj-cm"]);
        assert_eq!(referenced(&pod, "persistentvolumeclaims"), ["claim", "p-e"]);
    }
}
