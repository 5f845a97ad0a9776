//! Container environment: the image's, then `envFrom`, then `env` (with `valueFrom` configMap/secret
//! keys, pod fields and resource fields), as the kubelet builds it.

use std::collections::HashMap;

use anyhow::bail;
use base64::Engine;
use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::node::client::{ApiClient, status_code};

/// The ConfigMap with the cluster CA in every namespace.
const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// A configuration error the pod status reports as `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Reads configMaps and secrets of one namespace through the API, each at most once per sync.
#[derive(Debug)]
pub struct Lookup<'a> {
    api: &'a ApiClient,
    namespace: String,
    ca_pem: &'a str,
    cache: Mutex<HashMap<(String, String), Option<Value>>>,
}

impl<'a> Lookup<'a> {
    /// A lookup in `namespace`.
    pub fn new(api: &'a ApiClient, namespace: &str, ca_pem: &'a str) -> Self {
        Lookup {
            api,
            namespace: namespace.to_string(),
            ca_pem,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn get(&self, resource: &str, name: &str) -> anyhow::Result<Option<Value>> {
        let key = (resource.to_string(), name.to_string());
        if let Some(v) = self.cache.lock().await.get(&key) {
            return Ok(v.clone());
        }
        let path = format!("/api/v1/namespaces/{}/{resource}/{name}", self.namespace);
        let v = match self.api.json(Method::GET, &path, None).await {
            Ok(v) => Some(v),
            Err(e) if status_code(&e) == Some(404) => None,
            Err(e) => return Err(e),
        };
        self.cache.lock().await.insert(key, v.clone());
        Ok(v)
    }

    /// A configMap, or None if it does not exist. `kube-root-ca.crt`, which every pod's
    /// `kube-api-access-*` volume projects and the control plane keeps equal to the cluster CA in
    /// every namespace, comes from the CA this node joined with: no request per pod and pass (the
    /// kubelet reads it from a watch).
    pub async fn config_map(&self, name: &str) -> anyhow::Result<Option<Value>> {
        if name == ROOT_CA_CONFIG_MAP && !self.ca_pem.is_empty() {
            return Ok(Some(json!({"data": {"ca.crt": self.ca_pem}})));
        }
        self.get("configmaps", name).await
    }

    /// A PersistentVolumeClaim, or None if it does not exist.
    pub async fn claim(&self, name: &str) -> anyhow::Result<Option<Value>> {
        self.get("persistentvolumeclaims", name).await
    }

    /// A PersistentVolume (cluster-scoped), or None if it does not exist.
    pub async fn volume(&self, name: &str) -> anyhow::Result<Option<Value>> {
        match self
            .api
            .json(Method::GET, &format!("/api/v1/persistentvolumes/{name}"), None)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A secret, or None if it does not exist.
    pub async fn secret(&self, name: &str) -> anyhow::Result<Option<Value>> {
        self.get("secrets", name).await
    }

    /// The cluster CA (for `clusterTrustBundle`-like projections).
    pub fn ca_pem(&self) -> &str {
        self.ca_pem
    }

    /// A bound service-account token through the TokenRequest API; the same one until 80% of its
    /// lifetime has passed, as the kubelet renews it (volumes are refreshed every few seconds).
    pub async fn service_account_token(&self, pod: &Value, source: &Value) -> anyhow::Result<String> {
        use std::time::{Duration, Instant};
        type Tokens = std::sync::Mutex<HashMap<String, (String, Instant)>>;
        static TOKENS: std::sync::OnceLock<Tokens> = std::sync::OnceLock::new();
        let tokens = TOKENS.get_or_init(Default::default);
        let seconds = source["expirationSeconds"].as_i64().unwrap_or(3607);
        let key = format!(
            "{}/{}/{seconds}",
            pod["metadata"]["uid"].as_str().unwrap_or_default(),
            source["audience"].as_str().unwrap_or_default()
        );
        let now = Instant::now();
        if let Ok(mut held) = tokens.lock() {
            // Tokens of pods long gone are forgotten.
            held.retain(|_, (_, renew)| now < *renew + Duration::from_secs(3600));
            if let Some((token, renew)) = held.get(&key)
                && now < *renew
            {
                return Ok(token.clone());
            }
        }
        let token = self.request_token(pod, source).await?;
        let renew = now + Duration::from_secs(u64::try_from(seconds).unwrap_or(3600) * 8 / 10);
        if let Ok(mut held) = tokens.lock() {
            held.insert(key, (token.clone(), renew));
        }
        Ok(token)
    }

    async fn request_token(&self, pod: &Value, source: &Value) -> anyhow::Result<String> {
        let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
        let req = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": source["audience"].as_str().map(|a| vec![a]).unwrap_or_default(),
                "expirationSeconds": source["expirationSeconds"].as_i64().unwrap_or(3607),
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
            },
        });
        let path = format!("/api/v1/namespaces/{}/serviceaccounts/{sa}/token", self.namespace);
        match self.api.json(Method::POST, &path, Some(&req)).await {
            Ok(v) => Ok(v["status"]["token"].as_str().unwrap_or_default().to_string()),
            Err(e) => Err(anyhow::anyhow!(
                "failed to fetch token for service account {sa}: {e}"
            )),
        }
    }
}

/// The value of a `fieldRef` path.
pub fn field_ref(pod: &Value, path: &str) -> anyhow::Result<String> {
    let m = &pod["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let map = |v: &Value| {
        let mut lines: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                format!(
                    "{k}=\"{}\"",
                    v.as_str()
                        .unwrap_or_default()
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n")
                )
            })
            .collect();
        lines.sort();
        lines.join("\n")
    };
    Ok(match path {
        "metadata.name" => s(&m["name"]),
        "metadata.namespace" => s(&m["namespace"]),
        "metadata.uid" => s(&m["uid"]),
        "metadata.labels" => map(&m["labels"]),
        "metadata.annotations" => map(&m["annotations"]),
        "spec.nodeName" => s(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => s(&pod["spec"]["serviceAccountName"]),
        "status.hostIP" => s(&pod["status"]["hostIP"]),
        "status.hostIPs" => pod["status"]["hostIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| s(&i["ip"]))
            .collect::<Vec<_>>()
            .join(","),
        "status.podIP" => s(&pod["status"]["podIP"]),
        "status.podIPs" => pod["status"]["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| s(&i["ip"]))
            .collect::<Vec<_>>()
            .join(","),
        p => {
            if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|r| r.strip_suffix("']"))
            {
                s(&m["labels"][k])
            } else if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|r| r.strip_suffix("']"))
            {
                s(&m["annotations"][k])
            } else {
                bail!(ConfigError(format!("unsupported fieldRef path {p:?}")))
            }
        }
    })
}

/// The value of a `resourceFieldRef` (limits default to the node's allocatable, as upstream).
pub fn resource_field_ref(pod: &Value, r: &Value, default_container: Option<&str>) -> anyhow::Result<String> {
    let cname = r["containerName"]
        .as_str()
        .or(default_container)
        .unwrap_or_default();
    let container = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["spec"]["initContainers"].as_array().into_iter().flatten())
        .find(|c| c["name"].as_str() == Some(cname));
    let Some(c) = container else {
        bail!(ConfigError(format!(
            "resourceFieldRef names unknown container {cname:?}"
        )))
    };
    let resource = r["resource"].as_str().unwrap_or_default();
    let (section, res) = resource.split_once('.').unwrap_or(("limits", resource));
    let quantity = c["resources"][section][res].as_str();
    // A zero divisor (what a Go client's unset Quantity sends) means 1, as the kubelet reads it.
    let divisor = r["divisor"]
        .as_str()
        .filter(|d| super::spec::bytes(d) != Some(0) && super::spec::cpu_millis(d) != Some(0))
        .unwrap_or("1");
    let value = if res == "cpu" {
        let millis = quantity.and_then(super::spec::cpu_millis).unwrap_or_else(|| {
            if section == "limits" {
                crate::node::capacity::cpu_count() as i64 * 1000
            } else {
                0
            }
        });
        let d = super::spec::cpu_millis(divisor).unwrap_or(1000).max(1);
        (millis + d - 1) / d
    } else {
        let bytes = quantity.and_then(super::spec::bytes).unwrap_or_else(|| {
            if section == "limits" {
                crate::node::capacity::memory_bytes() as i64
            } else {
                0
            }
        });
        let d = super::spec::bytes(divisor).unwrap_or(1).max(1);
        (bytes + d - 1) / d
    };
    Ok(value.to_string())
}

/// The PATH a container gets when its image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The container's environment, in the order the kubelet builds it.
pub async fn resolve(
    lookup: &Lookup<'_>,
    pod: &Value,
    container: &Value,
    image_env: &[String],
    service_env: &[(String, String)],
) -> anyhow::Result<Vec<(String, String)>> {
    // As containerd and CRI-O: a PATH for images whose config sets none (theirs wins if set).
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into())];
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(x, _)| *x != k);
        env.push((k, v));
    };
    for e in image_env {
        if let Some((k, v)) = e.split_once('=') {
            set(&mut env, k.into(), v.into());
        }
    }
    // The services' variables come after the image's (the runtime lets the pod's win) and before
    // envFrom and env, which may use them in `$(VAR)` and override them.
    for (k, v) in service_env {
        set(&mut env, k.clone(), v.clone());
    }
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or("");
        if let Some(r) = from.get("configMapRef") {
            let name = r["name"].as_str().unwrap_or_default();
            match lookup.config_map(name).await? {
                Some(cm) => {
                    for (k, v) in cm["data"].as_object().into_iter().flatten() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            v.as_str().unwrap_or_default().into(),
                        );
                    }
                }
                None if r["optional"].as_bool() == Some(true) => {}
                None => bail!(ConfigError(format!("configmap \"{name}\" not found"))),
            }
        }
        if let Some(r) = from.get("secretRef") {
            let name = r["name"].as_str().unwrap_or_default();
            match lookup.secret(name).await? {
                Some(s) => {
                    for (k, v) in s["data"].as_object().into_iter().flatten() {
                        set(&mut env, format!("{prefix}{k}"), b64(v));
                    }
                }
                None if r["optional"].as_bool() == Some(true) => {}
                None => bail!(ConfigError(format!("secret \"{name}\" not found"))),
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        if let Some(v) = e["value"].as_str() {
            let expanded = super::spec::expand(v, &env);
            set(&mut env, name, expanded);
            continue;
        }
        let from = &e["valueFrom"];
        let value = if let Some(r) = from.get("configMapKeyRef") {
            let (cm, key) = (
                r["name"].as_str().unwrap_or_default(),
                r["key"].as_str().unwrap_or_default(),
            );
            match lookup.config_map(cm).await? {
                Some(obj) => match obj["data"][key].as_str() {
                    Some(v) => Some(v.to_string()),
                    None if r["optional"].as_bool() == Some(true) => None,
                    None => bail!(ConfigError(format!(
                        "couldn't find key {key} in ConfigMap {}/{cm}",
                        lookup.namespace
                    ))),
                },
                None if r["optional"].as_bool() == Some(true) => None,
                None => bail!(ConfigError(format!("configmap \"{cm}\" not found"))),
            }
        } else if let Some(r) = from.get("secretKeyRef") {
            let (sec, key) = (
                r["name"].as_str().unwrap_or_default(),
                r["key"].as_str().unwrap_or_default(),
            );
            match lookup.secret(sec).await? {
                Some(obj) => match obj["data"].get(key) {
                    Some(v) => Some(b64(v)),
                    None if r["optional"].as_bool() == Some(true) => None,
                    None => bail!(ConfigError(format!(
                        "couldn't find key {key} in Secret {}/{sec}",
                        lookup.namespace
                    ))),
                },
                None if r["optional"].as_bool() == Some(true) => None,
                None => bail!(ConfigError(format!("secret \"{sec}\" not found"))),
            }
        } else if let Some(f) = from["fieldRef"]["fieldPath"].as_str() {
            Some(field_ref(pod, f)?)
        } else if from["resourceFieldRef"].is_object() {
            Some(resource_field_ref(
                pod,
                &from["resourceFieldRef"],
                container["name"].as_str(),
            )?)
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(&mut env, name, v);
        }
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.insert(0, ("HOSTNAME".into(), super::spec::pod_hostname(pod)));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_fields_round_up_to_their_divisor_and_a_zero_divisor_is_one() {
        let pod = json!({"spec": {"containers": [{"name": "c", "resources": {
            "limits": {"cpu": "1250m", "memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "32Mi"}}}]}});
        let field = |resource: &str, divisor: Value| {
            let mut r = json!({"containerName": "c", "resource": resource});
            if !divisor.is_null() {
                r["divisor"] = divisor;
            }
            resource_field_ref(&pod, &r, None).unwrap()
        };
        assert_eq!(field("limits.cpu", Value::Null), "2");
        assert_eq!(
            field("limits.cpu", json!("0")),
            "2",
            "a Go client's unset divisor"
        );
        assert_eq!(field("requests.cpu", json!("0")), "1");
        assert_eq!(field("requests.cpu", json!("1m")), "250");
        assert_eq!(field("limits.memory", json!("0")), "67108864");
        assert_eq!(field("limits.memory", json!("1Mi")), "64");
    }
}
