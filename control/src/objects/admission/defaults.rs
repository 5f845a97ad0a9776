//! The defaults of the built-in kinds (upstream's `SetDefaults_*` and the DefaultTolerationSeconds
//! plugin): the last mutating plugin, so that what earlier plugins set is kept.

use serde_json::{Value, json};

use super::{Attributes, Lookup, Operation, Plugin};
use crate::objects::meta::items_mut;
use crate::objects::registry::ResourceInfo;
use crate::objects::status::ApiError;

/// Fills unset fields with upstream's defaults.
pub struct Defaults;

#[tonic::async_trait]
impl Plugin for Defaults {
    fn name(&self) -> &'static str {
        "Defaults"
    }

    async fn admit(&self, _: &dyn Lookup, attrs: &Attributes<'_>, obj: &mut Value) -> Result<(), ApiError> {
        apply_defaults(attrs.info, obj, attrs.operation == Operation::Create);
        Ok(())
    }
}

fn set_default(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut()
        && map.get(key).is_none_or(Value::is_null)
    {
        map.insert(key.to_owned(), value);
    }
}

fn default_container(c: &mut Value) {
    // A limit without a request is the request too.
    if let Some(limits) = c["resources"]["limits"].as_object().cloned() {
        if !c["resources"]["requests"].is_object() && !limits.is_empty() {
            c["resources"]["requests"] = json!({});
        }
        for (k, v) in limits {
            if c["resources"]["requests"].get(&k).is_none() {
                c["resources"]["requests"][k] = v;
            }
        }
    }
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    let image = c["image"].as_str().unwrap_or_default();
    let tag = image.rsplit('/').next().unwrap_or_default();
    let pinned = image.contains('@') || tag.split_once(':').is_some_and(|(_, t)| t != "latest");
    set_default(
        c,
        "imagePullPolicy",
        json!(if pinned { "IfNotPresent" } else { "Always" }),
    );
    for port in items_mut(c, "ports") {
        set_default(port, "protocol", json!("TCP"));
    }
}

/// Fills a pod spec's defaults (also used for templates).
fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        for c in items_mut(spec, field) {
            default_container(c);
        }
    }
}

fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
    let has = |c: &Value, k: &str| c["resources"][k].as_object().is_some_and(|m| !m.is_empty());
    if containers
        .iter()
        .all(|c| !has(c, "requests") && !has(c, "limits"))
    {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let limits = &c["resources"]["limits"];
        let requests = &c["resources"]["requests"];
        ["cpu", "memory"]
            .iter()
            .all(|r| limits.get(*r).is_some() && requests.get(*r).is_none_or(|q| Some(q) == limits.get(*r)))
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

fn default_pod(obj: &mut Value, creating: bool) {
    default_pod_spec(&mut obj["spec"]);
    let spec = &mut obj["spec"];
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "priority", json!(0));
    set_default(spec, "serviceAccountName", json!("default"));
    // Upstream's DefaultTolerationSeconds admission plugin.
    let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut tolerations = tolerations;
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        if !tolerations.iter().any(|t| t["key"] == key) {
            tolerations.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
            );
        }
    }
    spec["tolerations"] = Value::Array(tolerations);
    if creating {
        let qos = qos_class(&obj["spec"]);
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
    }
}

/// Defaults a workload's update strategy: `RollingUpdate` with `rolling` as its parameters.
fn default_strategy(spec: &mut Value, field: &str, rolling: Value) {
    set_default(spec, field, json!({}));
    let strategy = &mut spec[field];
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        set_default(strategy, "rollingUpdate", json!({}));
        for (k, v) in rolling.as_object().into_iter().flatten() {
            set_default(&mut strategy["rollingUpdate"], k, v.clone());
        }
    }
}

fn default_template(obj: &mut Value) {
    default_pod_spec(&mut obj["spec"]["template"]["spec"]);
}

/// Applies defaults for `info`'s kind to `obj`. `creating` is false on updates.
fn apply_defaults(info: &ResourceInfo, obj: &mut Value, creating: bool) {
    if !info.group.is_empty() && info.crd.is_some() {
        return;
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => default_pod(obj, creating),
        ("", "LimitRange") => super::limit_ranger::default_limit_range(obj),
        (
            super::webhooks::GROUP,
            kind @ ("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration"),
        ) => {
            super::webhooks::default_configuration(kind.starts_with("Mutating"), obj);
        }
        ("", "Namespace") => {
            set_default(obj, "spec", json!({"finalizers": ["kubernetes"]}));
            if creating {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        ("", "Secret") => {
            set_default(obj, "type", json!("Opaque"));
            if let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                use base64::Engine;
                let data = obj
                    .as_object_mut()
                    .map(|m| m.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (k, v) in string_data {
                        let encoded =
                            base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
                        data.insert(k, json!(encoded));
                    }
                }
            }
        }
        ("", "PodTemplate") => default_pod_spec(&mut obj["template"]["spec"]),
        ("autoscaling", "HorizontalPodAutoscaler") if info.version == "v1" => {
            crate::objects::autoscaling::default_v1(obj)
        }
        ("autoscaling", "HorizontalPodAutoscaler") => crate::objects::autoscaling::default_v2(obj),
        ("networking.k8s.io", kind) => super::networking::defaults(kind, obj),
        ("", "Service") => {
            let spec = &mut obj["spec"];
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            for port in items_mut(spec, "ports") {
                set_default(port, "protocol", json!("TCP"));
                // A Go client's zero nodePort (protobuf sends it) is no node port.
                if port["nodePort"] == json!(0)
                    && let Some(p) = port.as_object_mut()
                {
                    p.remove("nodePort");
                }
                // Unset, 0 or "" (what a Go client's zero IntOrString sends) means the port itself.
                if matches!(&port["targetPort"], Value::Null)
                    || port["targetPort"] == json!(0)
                    || port["targetPort"] == json!("")
                {
                    port["targetPort"] = port["port"].clone();
                }
            }
            if spec["type"] != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            }
            if spec["type"] == "NodePort" || spec["type"] == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if creating {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        ("apps", "Deployment") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            default_strategy(
                spec,
                "strategy",
                json!({"maxUnavailable": "25%", "maxSurge": "25%"}),
            );
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            default_template(obj);
        }
        ("apps", "ReplicaSet") => {
            set_default(&mut obj["spec"], "replicas", json!(1));
            default_template(obj);
        }
        ("", "ReplicationController") => {
            // The selector, and the controller's own labels, default to the template's labels.
            let labels = obj["spec"]["template"]["metadata"]["labels"].clone();
            if labels.as_object().is_some_and(|l| !l.is_empty()) {
                let empty = |v: &Value| v.as_object().is_none_or(serde_json::Map::is_empty);
                if empty(&obj["spec"]["selector"]) {
                    obj["spec"]["selector"] = labels.clone();
                }
                if empty(&obj["metadata"]["labels"]) {
                    obj["metadata"]["labels"] = labels;
                }
            }
            set_default(&mut obj["spec"], "replicas", json!(1));
            default_template(obj);
        }
        ("apps", "StatefulSet") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            default_strategy(spec, "updateStrategy", json!({"partition": 0}));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            default_template(obj);
        }
        ("apps", "DaemonSet") => {
            let spec = &mut obj["spec"];
            default_strategy(
                spec,
                "updateStrategy",
                json!({"maxUnavailable": 1, "maxSurge": 0}),
            );
            set_default(spec, "revisionHistoryLimit", json!(10));
            default_template(obj);
        }
        ("batch", "Job") => {
            let spec = &mut obj["spec"];
            if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
                spec["completions"] = json!(1);
            }
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "manualSelector", json!(false));
            default_template(obj);
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            set_default(obj, "preemptionPolicy", json!("PreemptLowerPriority"))
        }
        ("batch", "CronJob") => {
            let spec = &mut obj["spec"];
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            default_pod_spec(&mut spec["jobTemplate"]["spec"]["template"]["spec"]);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::admission::testing::{Objects, block_on, create, resource};

    fn admit(info: &ResourceInfo, operation: Operation, obj: &mut Value) {
        let mut attrs = create(info, "default");
        attrs.operation = operation;
        block_on(Defaults.admit(&Objects::default(), &attrs, obj)).unwrap();
    }

    #[test]
    fn a_new_pod_gets_upstreams_defaults_qos_and_tolerations() {
        let pods = resource("", "v1", "pods");
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
             "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "b", "image": "busybox:1.36", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
        ]}});
        admit(&pods, Operation::Create, &mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(
            spec["containers"][0]["imagePullPolicy"], "Always",
            "an untagged image"
        );
        assert_eq!(
            spec["containers"][1]["imagePullPolicy"], "IfNotPresent",
            "a pinned tag"
        );
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        let tolerated: Vec<&Value> = spec["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| &t["key"])
            .collect();
        assert_eq!(
            tolerated,
            ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"]
        );
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "Guaranteed"})
        );
    }

    #[test]
    fn set_fields_are_kept_and_updates_leave_status_alone() {
        let pods = resource("", "v1", "pods");
        let mut pod = json!({
            "spec": {"restartPolicy": "Never", "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}],
                     "containers": [{"name": "a", "image": "busybox", "imagePullPolicy": "Never"}]},
            "status": {"phase": "Running"}
        });
        admit(&pods, Operation::Update, &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
        assert_eq!(
            pod["spec"]["tolerations"].as_array().unwrap().len(),
            2,
            "only the missing one added"
        );
        assert_eq!(pod["status"], json!({"phase": "Running"}));
    }

    #[test]
    fn workloads_get_strategies_and_secrets_their_string_data_encoded() {
        let deployments = resource("apps", "v1", "deployments");
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        admit(&deployments, Operation::Create, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        let mut recreate = json!({"spec": {"strategy": {"type": "Recreate"}, "template": {"spec": {}}}});
        admit(&deployments, Operation::Create, &mut recreate);
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));

        let secrets = resource("", "v1", "secrets");
        let mut secret = json!({"stringData": {"password": "s3cret"}, "data": {"user": "YWRtaW4="}});
        admit(&secrets, Operation::Create, &mut secret);
        assert_eq!(
            secret,
            json!({"type": "Opaque", "data": {"user": "YWRtaW4=", "password": "czNjcmV0"}})
        );
    }

    #[test]
    fn services_default_their_ports_and_policies_by_type() {
        let services = resource("", "v1", "services");
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        admit(&services, Operation::Create, &mut svc);
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        // A Go client's zero targetPort is the port too.
        let mut zero =
            json!({"spec": {"ports": [{"port": 81, "targetPort": 0}, {"port": 82, "targetPort": "http"}]}});
        admit(&services, Operation::Create, &mut zero);
        assert_eq!(zero["spec"]["ports"][0]["targetPort"], 81);
        assert_eq!(zero["spec"]["ports"][1]["targetPort"], "http");
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
        let mut external = json!({"spec": {"type": "ExternalName", "externalName": "example.com"}});
        admit(&services, Operation::Create, &mut external);
        assert!(external["spec"].get("ipFamilies").is_none());
        assert!(external["spec"].get("externalTrafficPolicy").is_none());
    }
}
