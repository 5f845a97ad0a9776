//! `Table` responses for `kubectl get`, with the columns upstream prints for each kind.

use serde_json::{Value, json};

use super::handlers::Call;
use crate::objects::meta::{meta_str, parse_time};
use crate::objects::registry::ResourceInfo;

/// A column: name, type, priority (1 = only with `-o wide`).
type Column = (&'static str, &'static str, u8);

fn age(obj: &Value) -> String {
    let Some(t) = parse_time(meta_str(obj, "creationTimestamp")) else {
        return "<unknown>".into();
    };
    human_duration((time::OffsetDateTime::now_utc() - t).whole_seconds())
}

/// Upstream's `HumanDuration` (`5s`, `3m12s`, `2d4h`, ...).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn selector_string(sel: &Value) -> String {
    sel.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn containers(obj: &Value, field: &str) -> String {
    obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| s(&c[field]))
        .collect::<Vec<_>>()
        .join(",")
}

fn pod_row(pod: &Value) -> Vec<Value> {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.iter().filter(|c| c["ready"] == json!(true)).count();
    let restarts: i64 = statuses
        .iter()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let mut reason = pod["status"]["reason"]
        .as_str()
        .or(pod["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_owned();
    for c in &statuses {
        if let Some(r) = c["state"]["waiting"]["reason"].as_str().filter(|r| !r.is_empty()) {
            reason = r.to_owned();
        } else if let Some(r) = c["state"]["terminated"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = r.to_owned();
        }
    }
    if pod["metadata"]["deletionTimestamp"].is_string() {
        reason = "Terminating".into();
    }
    vec![
        json!(meta_str(pod, "name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(age(pod)),
        json!(or_none(s(&pod["status"]["podIP"]))),
        json!(or_none(s(&pod["spec"]["nodeName"]))),
        json!(or_none(s(&pod["status"]["nominatedNodeName"]))),
        json!("<none>"),
    ]
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["nodePort"].as_i64() {
            Some(np) => format!("{}:{np}/{}", s(&p["port"]), s(&p["protocol"])),
            None => format!("{}/{}", s(&p["port"]), s(&p["protocol"])),
        })
        .collect();
    or_none(ports.join(","))
}

/// Upstream's `formatHPAMetrics`: `cpu: 45%/50%`, `<unknown>` until measured, two at most.
fn hpa_targets(specs: &Value, statuses: &Value) -> String {
    let specs = specs.as_array().map(Vec::as_slice).unwrap_or_default();
    if specs.is_empty() {
        return "<none>".into();
    }
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let field = match spec["type"].as_str() {
                Some("Resource") => "resource",
                Some("ContainerResource") => "containerResource",
                Some("Pods") => "pods",
                Some("Object") => "object",
                Some("External") => "external",
                _ => return "<unknown type>".to_owned(),
            };
            let (target, current) = (&spec[field]["target"], &statuses[i][field]["current"]);
            let average = if field == "external" && !target["averageValue"].is_null() {
                " (avg)"
            } else {
                ""
            };
            let shown = |v: &Value| match v {
                Value::Null => "<unknown>".to_owned(),
                Value::Number(n) => format!("{n}%"),
                v => s(v),
            };
            let (current, target) = if !target["averageUtilization"].is_null() {
                (
                    shown(&current["averageUtilization"]),
                    shown(&target["averageUtilization"]),
                )
            } else if !target["averageValue"].is_null() {
                (shown(&current["averageValue"]), s(&target["averageValue"]))
            } else {
                (shown(&current["value"]), s(&target["value"]))
            };
            match field {
                "resource" | "containerResource" => {
                    format!("{}: {current}/{target}", s(&spec[field]["name"]))
                }
                _ => format!("{current}/{target}{average}"),
            }
        })
        .collect();
    match list.len() {
        n if n > 2 => format!("{} + {} more...", list[..2].join(", "), n - 2),
        _ => list.join(", "),
    }
}

fn columns_and_row(info: &ResourceInfo, obj: &Value) -> (Vec<Column>, Vec<Value>) {
    let name = json!(meta_str(obj, "name"));
    let st = &obj["status"];
    let spec = &obj["spec"];
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => (
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Status", "string", 0),
                ("Restarts", "string", 0),
                ("Age", "string", 0),
                ("IP", "string", 1),
                ("Node", "string", 1),
                ("Nominated Node", "string", 1),
                ("Readiness Gates", "string", 1),
            ],
            pod_row(obj),
        ),
        ("", "Namespace") => (
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Age", "string", 0),
            ],
            vec![name, json!(s(&st["phase"])), json!(age(obj))],
        ),
        ("", "Service") => (
            vec![
                ("Name", "string", 0),
                ("Type", "string", 0),
                ("Cluster-IP", "string", 0),
                ("External-IP", "string", 0),
                ("Port(s)", "string", 0),
                ("Age", "string", 0),
                ("Selector", "string", 1),
            ],
            vec![
                name,
                json!(s(&spec["type"])),
                json!(s(&spec["clusterIP"])),
                json!(or_none(
                    spec["externalIPs"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                        .unwrap_or_default()
                )),
                json!(service_ports(obj)),
                json!(age(obj)),
                json!(or_none(selector_string(&spec["selector"]))),
            ],
        ),
        ("", "ConfigMap") => (
            vec![
                ("Name", "string", 0),
                ("Data", "integer", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(
                    obj["data"].as_object().map_or(0, |m| m.len())
                        + obj["binaryData"].as_object().map_or(0, |m| m.len())
                ),
                json!(age(obj)),
            ],
        ),
        ("", "Secret") => (
            vec![
                ("Name", "string", 0),
                ("Type", "string", 0),
                ("Data", "integer", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(s(&obj["type"])),
                json!(obj["data"].as_object().map_or(0, |m| m.len())),
                json!(age(obj)),
            ],
        ),
        ("", "ServiceAccount") => (
            vec![
                ("Name", "string", 0),
                ("Secrets", "integer", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(obj["secrets"].as_array().map_or(0, Vec::len)),
                json!(age(obj)),
            ],
        ),
        ("", "Node") => {
            let ready = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready");
            let mut status = match ready.map(|c| s(&c["status"])) {
                Some(v) if v == "True" => "Ready".to_owned(),
                Some(_) => "NotReady".to_owned(),
                None => "Unknown".to_owned(),
            };
            if spec["unschedulable"] == json!(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = obj["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(str::to_owned))
                .collect();
            (
                vec![
                    ("Name", "string", 0),
                    ("Status", "string", 0),
                    ("Roles", "string", 0),
                    ("Age", "string", 0),
                    ("Version", "string", 0),
                ],
                vec![
                    name,
                    json!(status),
                    json!(or_none(roles.join(","))),
                    json!(age(obj)),
                    json!(s(&st["nodeInfo"]["kubeletVersion"])),
                ],
            )
        }
        ("", "Endpoints") => {
            let eps: Vec<String> = obj["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|sub| {
                    let ports: Vec<String> = sub["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| s(&p["port"]))
                        .collect();
                    sub["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(move |a| {
                            let ip = s(&a["ip"]);
                            ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            (
                vec![
                    ("Name", "string", 0),
                    ("Endpoints", "string", 0),
                    ("Age", "string", 0),
                ],
                vec![name, json!(or_none(eps.join(","))), json!(age(obj))],
            )
        }
        ("", "Event") => (
            vec![
                ("Last Seen", "string", 0),
                ("Type", "string", 0),
                ("Reason", "string", 0),
                ("Object", "string", 0),
                ("Message", "string", 0),
            ],
            vec![
                json!(age(obj)),
                json!(s(&obj["type"])),
                json!(s(&obj["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&obj["involvedObject"]["kind"]).to_lowercase(),
                    s(&obj["involvedObject"]["name"])
                )),
                json!(s(&obj["message"])),
            ],
        ),
        ("apps", "Deployment") => (
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Up-to-date", "string", 0),
                ("Available", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    st["readyReplicas"].as_i64().unwrap_or(0),
                    spec["replicas"].as_i64().unwrap_or(0)
                )),
                json!(st["updatedReplicas"].as_i64().unwrap_or(0)),
                json!(st["availableReplicas"].as_i64().unwrap_or(0)),
                json!(age(obj)),
                json!(containers(obj, "name")),
                json!(containers(obj, "image")),
                json!(selector_string(&spec["selector"]["matchLabels"])),
            ],
        ),
        ("apps", "ReplicaSet") | ("", "ReplicationController") => (
            vec![
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            vec![
                name,
                json!(spec["replicas"].as_i64().unwrap_or(0)),
                json!(st["replicas"].as_i64().unwrap_or(0)),
                json!(st["readyReplicas"].as_i64().unwrap_or(0)),
                json!(age(obj)),
                json!(containers(obj, "name")),
                json!(containers(obj, "image")),
                json!(selector_string(if info.kind == "ReplicationController" {
                    &spec["selector"]
                } else {
                    &spec["selector"]["matchLabels"]
                })),
            ],
        ),
        ("apps", "StatefulSet") => (
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    st["readyReplicas"].as_i64().unwrap_or(0),
                    spec["replicas"].as_i64().unwrap_or(0)
                )),
                json!(age(obj)),
                json!(containers(obj, "name")),
                json!(containers(obj, "image")),
            ],
        ),
        ("apps", "DaemonSet") => (
            vec![
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Node Selector", "string", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(st["desiredNumberScheduled"].as_i64().unwrap_or(0)),
                json!(st["currentNumberScheduled"].as_i64().unwrap_or(0)),
                json!(st["numberReady"].as_i64().unwrap_or(0)),
                json!(st["updatedNumberScheduled"].as_i64().unwrap_or(0)),
                json!(st["numberAvailable"].as_i64().unwrap_or(0)),
                json!(or_none(selector_string(
                    &spec["template"]["spec"]["nodeSelector"]
                ))),
                json!(age(obj)),
            ],
        ),
        ("batch", "Job") => (
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Completions", "string", 0),
                ("Duration", "string", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(job_status(obj)),
                json!(format!(
                    "{}/{}",
                    st["succeeded"].as_i64().unwrap_or(0),
                    spec["completions"].as_i64().map_or("1".into(), |c| c.to_string())
                )),
                json!(""),
                json!(age(obj)),
            ],
        ),
        ("batch", "CronJob") => (
            vec![
                ("Name", "string", 0),
                ("Schedule", "string", 0),
                ("Timezone", "string", 0),
                ("Suspend", "boolean", 0),
                ("Active", "integer", 0),
                ("Last Schedule", "string", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(s(&spec["schedule"])),
                json!(or_none(s(&spec["timeZone"]))),
                json!(spec["suspend"].as_bool().unwrap_or(false)),
                json!(st["active"].as_array().map_or(0, Vec::len)),
                json!(or_none(s(&st["lastScheduleTime"]))),
                json!(age(obj)),
            ],
        ),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let v2 = match info.version.as_str() {
                "v1" => crate::objects::autoscaling::from_v1(obj),
                _ => obj.clone(),
            };
            let target = &v2["spec"]["scaleTargetRef"];
            (
                vec![
                    ("Name", "string", 0),
                    ("Reference", "string", 0),
                    ("Targets", "string", 0),
                    ("MinPods", "string", 0),
                    ("MaxPods", "string", 0),
                    ("Replicas", "string", 0),
                    ("Age", "string", 0),
                ],
                vec![
                    name,
                    json!(format!("{}/{}", s(&target["kind"]), s(&target["name"]))),
                    json!(hpa_targets(
                        &v2["spec"]["metrics"],
                        &v2["status"]["currentMetrics"]
                    )),
                    json!(match &v2["spec"]["minReplicas"] {
                        Value::Null => "<unset>".to_owned(),
                        v => s(v),
                    }),
                    json!(s(&v2["spec"]["maxReplicas"])),
                    json!(v2["status"]["currentReplicas"].as_i64().unwrap_or(0)),
                    json!(age(obj)),
                ],
            )
        }
        ("scheduling.k8s.io", "PriorityClass") => (
            vec![
                ("Name", "string", 0),
                ("Value", "integer", 0),
                ("Global-Default", "boolean", 0),
                ("Age", "string", 0),
                ("PreemptionPolicy", "string", 0),
            ],
            vec![
                name,
                obj["value"].clone(),
                json!(obj["globalDefault"].as_bool().unwrap_or(false)),
                json!(age(obj)),
                json!(s(&obj["preemptionPolicy"])),
            ],
        ),
        ("policy", "PodDisruptionBudget") => {
            let or_na = |v: &Value| if v.is_null() { "N/A".to_owned() } else { s(v) };
            (
                vec![
                    ("Name", "string", 0),
                    ("Min Available", "string", 0),
                    ("Max Unavailable", "string", 0),
                    ("Allowed Disruptions", "integer", 0),
                    ("Age", "string", 0),
                ],
                vec![
                    name,
                    json!(or_na(&spec["minAvailable"])),
                    json!(or_na(&spec["maxUnavailable"])),
                    json!(st["disruptionsAllowed"].as_i64().unwrap_or(0)),
                    json!(age(obj)),
                ],
            )
        }
        ("", "PersistentVolume") => {
            let claim = &spec["claimRef"];
            (
                vec![
                    ("Name", "string", 0),
                    ("Capacity", "string", 0),
                    ("Access Modes", "string", 0),
                    ("Reclaim Policy", "string", 0),
                    ("Status", "string", 0),
                    ("Claim", "string", 0),
                    ("StorageClass", "string", 0),
                    ("VolumeAttributesClass", "string", 0),
                    ("Reason", "string", 0),
                    ("Age", "string", 0),
                    ("VolumeMode", "string", 1),
                ],
                vec![
                    name,
                    json!(s(&spec["capacity"]["storage"])),
                    json!(access_modes(&spec["accessModes"])),
                    json!(s(&spec["persistentVolumeReclaimPolicy"])),
                    json!(s(&st["phase"])),
                    json!(if claim.is_object() {
                        format!("{}/{}", s(&claim["namespace"]), s(&claim["name"]))
                    } else {
                        String::new()
                    }),
                    json!(s(&spec["storageClassName"])),
                    json!("<unset>"),
                    json!(s(&st["reason"])),
                    json!(age(obj)),
                    json!(s(&spec["volumeMode"])),
                ],
            )
        }
        ("", "PersistentVolumeClaim") => (
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Volume", "string", 0),
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("StorageClass", "string", 0),
                ("VolumeAttributesClass", "string", 0),
                ("Age", "string", 0),
                ("VolumeMode", "string", 1),
            ],
            vec![
                name,
                json!(s(&st["phase"])),
                json!(s(&spec["volumeName"])),
                json!(s(&st["capacity"]["storage"])),
                json!(access_modes(&st["accessModes"])),
                json!(s(&spec["storageClassName"])),
                json!("<unset>"),
                json!(age(obj)),
                json!(s(&spec["volumeMode"])),
            ],
        ),
        ("storage.k8s.io", "StorageClass") => {
            let default =
                obj["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true";
            (
                vec![
                    ("Name", "string", 0),
                    ("Provisioner", "string", 0),
                    ("ReclaimPolicy", "string", 0),
                    ("VolumeBindingMode", "string", 0),
                    ("AllowVolumeExpansion", "string", 0),
                    ("Age", "string", 0),
                ],
                vec![
                    json!(if default {
                        format!("{} (default)", meta_str(obj, "name"))
                    } else {
                        meta_str(obj, "name").to_owned()
                    }),
                    json!(s(&obj["provisioner"])),
                    json!(obj["reclaimPolicy"].as_str().unwrap_or("Delete")),
                    json!(obj["volumeBindingMode"].as_str().unwrap_or("Immediate")),
                    json!(obj["allowVolumeExpansion"].as_bool().unwrap_or(false)),
                    json!(age(obj)),
                ],
            )
        }
        ("coordination.k8s.io", "Lease") => (
            vec![
                ("Name", "string", 0),
                ("Holder", "string", 0),
                ("Age", "string", 0),
            ],
            vec![name, json!(s(&spec["holderIdentity"])), json!(age(obj))],
        ),
        ("", "ComponentStatus") => {
            let healthy = &obj["conditions"][0];
            (
                vec![
                    ("Name", "string", 0),
                    ("Status", "string", 0),
                    ("Message", "string", 0),
                    ("Error", "string", 0),
                ],
                vec![
                    name,
                    json!(if healthy["status"] == "True" {
                        "Healthy"
                    } else {
                        "Unhealthy"
                    }),
                    json!(s(&healthy["message"])),
                    json!(s(&healthy["error"])),
                ],
            )
        }
        ("networking.k8s.io", "Ingress") => {
            let rules = spec["rules"].as_array().cloned().unwrap_or_default();
            let hosts: Vec<String> = rules
                .iter()
                .map(|r| {
                    r["host"]
                        .as_str()
                        .filter(|h| !h.is_empty())
                        .unwrap_or("*")
                        .to_owned()
                })
                .collect();
            let address: Vec<String> = st["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
                .map(str::to_owned)
                .collect();
            let tls = spec["tls"].as_array().is_some_and(|t| !t.is_empty());
            (
                vec![
                    ("Name", "string", 0),
                    ("Class", "string", 0),
                    ("Hosts", "string", 0),
                    ("Address", "string", 0),
                    ("Ports", "string", 0),
                    ("Age", "string", 0),
                ],
                vec![
                    name,
                    json!(or_none(s(&spec["ingressClassName"]))),
                    json!(if hosts.is_empty() {
                        "*".to_owned()
                    } else {
                        hosts.join(",")
                    }),
                    json!(address.join(",")),
                    json!(if tls { "80, 443" } else { "80" }),
                    json!(age(obj)),
                ],
            )
        }
        ("networking.k8s.io", "IngressClass") => (
            vec![
                ("Name", "string", 0),
                ("Controller", "string", 0),
                ("Parameters", "string", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(s(&spec["controller"])),
                json!(match spec["parameters"]["kind"].as_str() {
                    Some(kind) => format!("{kind}/{}", s(&spec["parameters"]["name"])),
                    None => "<none>".to_owned(),
                }),
                json!(age(obj)),
            ],
        ),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            // Upstream's CONDITION: the condition types that hold, then Issued once signed.
            let mut condition: Vec<String> = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["status"] == "True")
                .filter_map(|c| c["type"].as_str().map(str::to_owned))
                .collect();
            if st["certificate"].as_str().is_some_and(|c| !c.is_empty()) {
                condition.push("Issued".to_owned());
            }
            let condition = if condition.is_empty() {
                "Pending".to_owned()
            } else {
                condition.join(",")
            };
            (
                vec![
                    ("Name", "string", 0),
                    ("Age", "string", 0),
                    ("SignerName", "string", 0),
                    ("Requestor", "string", 0),
                    ("RequestedDuration", "string", 0),
                    ("Condition", "string", 0),
                ],
                vec![
                    name,
                    json!(age(obj)),
                    json!(s(&spec["signerName"])),
                    json!(s(&spec["username"])),
                    json!(
                        spec["expirationSeconds"]
                            .as_i64()
                            .map_or("<none>".to_owned(), human_duration)
                    ),
                    json!(condition),
                ],
            )
        }
        ("networking.k8s.io", "NetworkPolicy") => (
            vec![
                ("Name", "string", 0),
                ("Pod-Selector", "string", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(or_none(selector_string(&spec["podSelector"]["matchLabels"]))),
                json!(age(obj)),
            ],
        ),
        ("node.k8s.io", "RuntimeClass") => (
            vec![
                ("Name", "string", 0),
                ("Handler", "string", 0),
                ("Age", "string", 0),
            ],
            vec![name, json!(s(&obj["handler"])), json!(age(obj))],
        ),
        ("flowcontrol.apiserver.k8s.io", "FlowSchema") => {
            let dangling = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Dangling")
                .and_then(|c| c["status"].as_str())
                .unwrap_or("?");
            (
                vec![
                    ("Name", "string", 0),
                    ("PriorityLevel", "string", 0),
                    ("MatchingPrecedence", "string", 0),
                    ("DistinguisherMethod", "string", 0),
                    ("Age", "string", 0),
                    ("MissingPL", "string", 0),
                ],
                vec![
                    name,
                    json!(s(&spec["priorityLevelConfiguration"]["name"])),
                    json!(spec["matchingPrecedence"].as_i64().unwrap_or(1000).to_string()),
                    json!(spec["distinguisherMethod"]["type"].as_str().unwrap_or("*")),
                    json!(age(obj)),
                    json!(dangling),
                ],
            )
        }
        ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration") => {
            let limited = &spec["limited"];
            let queuing = &limited["limitResponse"]["queuing"];
            let number = |v: &Value| v.as_i64().map_or("<none>".to_owned(), |n| n.to_string());
            (
                vec![
                    ("Name", "string", 0),
                    ("Type", "string", 0),
                    ("NominalConcurrencyShares", "string", 0),
                    ("Queues", "string", 0),
                    ("HandSize", "string", 0),
                    ("QueueLengthLimit", "string", 0),
                    ("Age", "string", 0),
                ],
                vec![
                    name,
                    json!(s(&spec["type"])),
                    json!(number(&limited["nominalConcurrencyShares"])),
                    json!(number(&queuing["queues"])),
                    json!(number(&queuing["handSize"])),
                    json!(number(&queuing["queueLengthLimit"])),
                    json!(age(obj)),
                ],
            )
        }
        ("apiregistration.k8s.io", "APIService") => {
            let service = match spec["service"]["name"].as_str() {
                Some(svc) => format!("{}/{svc}", s(&spec["service"]["namespace"])),
                None => "Local".to_owned(),
            };
            let available = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Available")
                .map_or("Unknown".to_owned(), |c| match c["status"].as_str() {
                    Some("True") => "True".to_owned(),
                    other => format!("{} ({})", other.unwrap_or("Unknown"), s(&c["reason"])),
                });
            (
                vec![
                    ("Name", "string", 0),
                    ("Service", "string", 0),
                    ("Available", "string", 0),
                    ("Age", "string", 0),
                ],
                vec![name, json!(service), json!(available), json!(age(obj))],
            )
        }
        ("", "ResourceQuota") => {
            let (mut request, mut limit) = (Vec::new(), Vec::new());
            for (k, v) in spec["hard"].as_object().into_iter().flatten() {
                let used = st["used"][k].as_str().unwrap_or("0");
                let entry = format!("{k}: {used}/{}", v.as_str().unwrap_or_default());
                if k.starts_with("limits.") {
                    limit.push(entry);
                } else {
                    request.push(entry);
                }
            }
            (
                vec![
                    ("Name", "string", 0),
                    ("Age", "string", 0),
                    ("Request", "string", 0),
                    ("Limit", "string", 0),
                ],
                vec![
                    name,
                    json!(age(obj)),
                    json!(request.join(", ")),
                    json!(limit.join(", ")),
                ],
            )
        }
        ("", "LimitRange") => (
            vec![("Name", "string", 0), ("Created At", "date", 0)],
            vec![name, json!(meta_str(obj, "creationTimestamp"))],
        ),
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => (
            vec![
                ("Name", "string", 0),
                ("Webhooks", "integer", 0),
                ("Age", "string", 0),
            ],
            vec![
                name,
                json!(obj["webhooks"].as_array().map_or(0, Vec::len)),
                json!(age(obj)),
            ],
        ),
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => (
            vec![("Name", "string", 0), ("Created At", "date", 0)],
            vec![name, json!(meta_str(obj, "creationTimestamp"))],
        ),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let subjects = |kind: &str| {
                let names: Vec<String> = obj["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|sub| sub["kind"] == kind)
                    .map(|sub| match (kind, sub["namespace"].as_str()) {
                        ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s(&sub["name"])),
                        _ => s(&sub["name"]),
                    })
                    .collect();
                json!(names.join(", "))
            };
            (
                vec![
                    ("Name", "string", 0),
                    ("Role", "string", 0),
                    ("Age", "string", 0),
                    ("Users", "string", 1),
                    ("Groups", "string", 1),
                    ("ServiceAccounts", "string", 1),
                ],
                vec![
                    name,
                    json!(format!(
                        "{}/{}",
                        s(&obj["roleRef"]["kind"]),
                        s(&obj["roleRef"]["name"])
                    )),
                    json!(age(obj)),
                    subjects("User"),
                    subjects("Group"),
                    subjects("ServiceAccount"),
                ],
            )
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => (
            vec![("Name", "string", 0), ("Created At", "date", 0)],
            vec![name, json!(meta_str(obj, "creationTimestamp"))],
        ),
        _ => (
            vec![("Name", "string", 0), ("Age", "string", 0)],
            vec![name, json!(age(obj))],
        ),
    }
}

/// `RWO,ROX` as kubectl prints access modes.
fn access_modes(modes: &Value) -> String {
    modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn job_status(job: &Value) -> &'static str {
    let conds = job["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if job["spec"]["suspend"] == json!(true) {
        "Suspended"
    } else {
        "Running"
    }
}

fn jsonpath_value(obj: &Value, path: &str) -> Value {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.').filter(|s| !s.is_empty()) {
        cur = &cur[seg];
    }
    cur.clone()
}

/// Builds a `Table` for `objs` (all of `info`'s kind).
pub fn table(info: &ResourceInfo, objs: &[Value], rv: &str, token: Option<&str>, call: &Call) -> Value {
    let include = call
        .query
        .get("includeObject")
        .map(String::as_str)
        .unwrap_or("Metadata");
    let custom = crate::objects::crd::printer_columns(info);
    let mut defs: Vec<Value> = Vec::new();
    let mut rows = Vec::new();
    for (i, obj) in objs.iter().enumerate() {
        let (cols, cells) = if info.crd.is_some() && !custom.is_empty() {
            let mut cols = vec![("Name", "string", 0u8)];
            let mut cells = vec![json!(meta_str(obj, "name"))];
            for (_, ty, path, _) in &custom {
                cols.push(("", if ty == "integer" { "integer" } else { "string" }, 0));
                let v = jsonpath_value(obj, path);
                cells.push(if ty == "date" {
                    json!(
                        parse_time(v.as_str().unwrap_or_default())
                            .map(|t| human_duration((time::OffsetDateTime::now_utc() - t).whole_seconds()))
                            .unwrap_or_default()
                    )
                } else {
                    v
                });
            }
            (cols, cells)
        } else {
            columns_and_row(info, obj)
        };
        if i == 0 || defs.is_empty() {
            defs = cols
                .iter()
                .enumerate()
                .map(|(j, (n, t, p))| {
                    let name = if n.is_empty() { custom.get(j - 1).map(|c| c.0.clone()).unwrap_or_default() } else { n.to_string() };
                    let priority = if n.is_empty() { custom.get(j - 1).map(|c| c.3).unwrap_or(0) } else { i64::from(*p) };
                    json!({"name": name, "type": t, "format": if j == 0 { "name" } else { "" }, "description": "", "priority": priority})
                })
                .collect();
        }
        let object = match include {
            "None" => Value::Null,
            "Object" => obj.clone(),
            _ => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
            }
        };
        rows.push(json!({"cells": cells, "object": object}));
    }
    if defs.is_empty() {
        let (cols, _) = if info.crd.is_some() && !custom.is_empty() {
            (vec![("Name", "string", 0u8)], vec![])
        } else {
            columns_and_row(info, &json!({}))
        };
        defs = cols
            .iter()
            .map(|(n, t, p)| json!({"name": n, "type": t, "format": "", "description": "", "priority": p}))
            .collect();
        for (n, t, _, p) in &custom {
            defs.push(json!({"name": n, "type": t, "format": "", "description": "", "priority": p}));
        }
    }
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(t) = token {
        metadata["continue"] = json!(t);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": defs, "rows": rows})
}
