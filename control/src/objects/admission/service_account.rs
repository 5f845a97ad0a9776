//! Upstream's ServiceAccount plugin: a new pod runs as `default` unless it names an account, and,
//! unless the pod or its account turns `automountServiceAccountToken` off, every container mounts
//! a `kube-api-access-*` projected volume at `/var/run/secrets/kubernetes.io/serviceaccount` with
//! what an in-cluster client reads: a bound token, the cluster CA (`kube-root-ca.crt`) and the
//! namespace. A pod naming an account that does not exist is refused, and one without image
//! pull secrets of its own gets its account's.

use serde_json::{Value, json};

use super::{Attributes, Lookup, Operation, Plugin};
use crate::objects::keys;
use crate::objects::meta::{ROOT_CA_CONFIG_MAP, generate_name};
use crate::objects::status::ApiError;

/// Where in-cluster clients (client-go, the Python client, kubectl) look for their credentials.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The prefix of the injected volume's name.
const VOLUME_PREFIX: &str = "kube-api-access-";
/// Marks a static pod's mirror, which gets no token.
const MIRROR: &str = "kubernetes.io/config.mirror";

/// Sets the pod's service account and mounts its API credentials.
#[derive(Debug)]
pub struct ServiceAccount;

/// The projected volume upstream injects (its defaults spelled out: admission runs after them).
fn api_access_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// The pod's service account. The `default` one, which the service account controller makes
/// for a new namespace, is looked for again for a second or so (upstream's ten tries).
async fn find_account(lookup: &dyn Lookup, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
    let key = keys::object(keys::SERVICE_ACCOUNTS, Some(ns), name);
    let tries = if name == "default" { 10 } else { 1 };
    for attempt in 0..tries {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100 + rand::random_range(0..100))).await;
        }
        // The local copy first (the account is rarely new); a miss asks the leader.
        if let Some(sa) = lookup.get_local(&key)? {
            return Ok(Some(sa));
        }
        if let Some(sa) = lookup.get(&key).await? {
            return Ok(Some(sa));
        }
    }
    Ok(None)
}

#[tonic::async_trait]
impl Plugin for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    async fn admit(
        &self,
        lookup: &dyn Lookup,
        attrs: &Attributes<'_>,
        pod: &mut Value,
    ) -> Result<(), ApiError> {
        if attrs.operation != Operation::Create
            || !attrs.is("", "Pod")
            || pod["metadata"]["annotations"].get(MIRROR).is_some()
        {
            return Ok(());
        }
        let account = match pod["spec"]["serviceAccountName"].as_str() {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => pod["spec"]["serviceAccount"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_owned(),
        };
        pod["spec"]["serviceAccountName"] = json!(account);
        pod["spec"]["serviceAccount"] = json!(account);
        let ns = attrs.namespace.unwrap_or("default");
        let sa = find_account(lookup, ns, &account).await?.ok_or_else(|| {
            ApiError::new(
                403,
                "Forbidden",
                format!(
                    "pods \"{}\" is forbidden: error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found",
                    pod["metadata"]["name"].as_str().unwrap_or_default()
                ),
            )
        })?;
        // The account's image pull secrets, unless the pod names its own.
        if pod["spec"]["imagePullSecrets"]
            .as_array()
            .is_none_or(Vec::is_empty)
            && let Some(secrets) = sa["imagePullSecrets"].as_array().filter(|s| !s.is_empty())
        {
            pod["spec"]["imagePullSecrets"] = json!(secrets);
        }
        let automount = pod["spec"]["automountServiceAccountToken"]
            .as_bool()
            .or_else(|| sa["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if !automount {
            return Ok(());
        }
        let existing = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with(VOLUME_PREFIX))
            .map(str::to_owned);
        let volume = existing.clone().unwrap_or_else(|| generate_name(VOLUME_PREFIX));
        let mount = json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH});
        let mut needed = false;
        for list in ["initContainers", "containers"] {
            let containers = pod["spec"].get_mut(list).and_then(Value::as_array_mut);
            for c in containers.into_iter().flatten() {
                let mounted = c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["mountPath"].as_str() == Some(MOUNT_PATH));
                if mounted {
                    continue;
                }
                match c["volumeMounts"].as_array_mut() {
                    Some(mounts) => mounts.push(mount.clone()),
                    None => c["volumeMounts"] = json!([mount.clone()]),
                }
                needed = true;
            }
        }
        if needed && existing.is_none() {
            match pod["spec"]["volumes"].as_array_mut() {
                Some(volumes) => volumes.push(api_access_volume(&volume)),
                None => pod["spec"]["volumes"] = json!([api_access_volume(&volume)]),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::admission::testing::{Objects, block_on, create, resource};

    /// The objects of namespace `shop` with its `default` account (and `extra` ones).
    fn shop(extra: &[Value]) -> Objects {
        let mut objects = Objects::default();
        for sa in std::iter::once(&json!({"metadata": {"name": "default"}})).chain(extra) {
            let name = sa["metadata"]["name"].as_str().unwrap();
            objects.0.insert(
                keys::object(keys::SERVICE_ACCOUNTS, Some("shop"), name),
                sa.clone(),
            );
        }
        objects
    }

    fn admit(objects: &Objects, pod: &mut Value) {
        let pods = resource("", "v1", "pods");
        block_on(ServiceAccount.admit(objects, &create(&pods, "shop"), pod)).unwrap();
    }

    #[test]
    fn a_missing_account_is_refused_and_an_accounts_pull_secrets_are_used() {
        let pods = resource("", "v1", "pods");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "ghost", "containers": [{"name": "a"}]}});
        let err = block_on(ServiceAccount.admit(&shop(&[]), &create(&pods, "shop"), &mut pod)).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "pods \"p\" is forbidden: error looking up service account shop/ghost: serviceaccount \"ghost\" not found"
        );
        let puller = json!({"metadata": {"name": "puller"}, "imagePullSecrets": [{"name": "regcred"}]});
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "puller", "containers": [{"name": "a"}]}});
        admit(&shop(std::slice::from_ref(&puller)), &mut pod);
        assert_eq!(pod["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));
        let mut own = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "puller",
            "imagePullSecrets": [{"name": "mine"}], "containers": [{"name": "a"}]}});
        admit(&shop(&[puller]), &mut own);
        assert_eq!(own["spec"]["imagePullSecrets"], json!([{"name": "mine"}]));
    }

    fn mounts<'a>(pod: &'a Value, list: &str, i: usize) -> Vec<&'a str> {
        pod["spec"][list][i]["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["mountPath"].as_str())
            .collect()
    }

    #[test]
    fn every_container_mounts_the_api_credentials_of_the_default_account() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}, {"name": "b"}],
            "volumes": [{"name": "data", "emptyDir": {}}]}});
        admit(&shop(&[]), &mut pod);
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["serviceAccount"], "default");
        assert_eq!(mounts(&pod, "initContainers", 0), [MOUNT_PATH]);
        assert_eq!(mounts(&pod, "containers", 0), ["/data", MOUNT_PATH]);
        assert_eq!(mounts(&pod, "containers", 1), [MOUNT_PATH]);
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().unwrap();
        assert!(name.starts_with("kube-api-access-") && name.len() == 21, "{name}");
        assert_eq!(pod["spec"]["containers"][1]["volumeMounts"][0]["name"], name);
        assert_eq!(pod["spec"]["containers"][1]["volumeMounts"][0]["readOnly"], true);
        let sources = &volumes[1]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
    }

    #[test]
    fn automount_off_on_the_pod_or_its_account_mounts_nothing() {
        let objects = shop(&[json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false})]);
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "quiet", "containers": [{"name": "a"}]}});
        admit(&objects, &mut pod);
        assert_eq!(pod["spec"]["volumes"], Value::Null);
        assert_eq!(pod["spec"]["serviceAccount"], "quiet");
        // The pod's own setting wins over its account's.
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "quiet",
            "automountServiceAccountToken": true, "containers": [{"name": "a"}]}});
        admit(&objects, &mut pod);
        assert_eq!(mounts(&pod, "containers", 0), [MOUNT_PATH]);
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "automountServiceAccountToken": false, "containers": [{"name": "a"}]}});
        admit(&objects, &mut pod);
        assert_eq!(pod["spec"]["volumes"], Value::Null);
    }

    #[test]
    fn a_container_with_its_own_mount_there_and_mirror_pods_are_left_alone() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}]}});
        admit(&shop(&[]), &mut pod);
        assert_eq!(pod["spec"].get("initContainers"), None, "no list added");
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(pod["spec"]["volumes"], Value::Null);
        let mut mirror = json!({"metadata": {"name": "p", "annotations": {MIRROR: "x"}},
                                "spec": {"containers": [{"name": "a"}]}});
        admit(&shop(&[]), &mut mirror);
        assert_eq!(mirror["spec"]["containers"][0].get("volumeMounts"), None);
    }
}
