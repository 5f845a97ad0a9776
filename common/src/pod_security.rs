//! The Pod Security Standards' checks: which fields of a pod spec break the `baseline` or
//! `restricted` level, in upstream's words. The API server's PodSecurity admission holds new pods
//! to their namespace's levels with them; the agent refuses, with the same words, a pod that
//! breaks its namespace's enforced level however it got into the store.

use serde_json::Value;

/// The namespace label prefix of the levels (`pod-security.kubernetes.io/enforce`, ...).
pub const LABEL: &str = "pod-security.kubernetes.io/";

/// The levels, least strict first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// Known privilege escalations are refused.
    Baseline,
    /// Hardened, as current best practice.
    Restricted,
}

impl Level {
    /// A level from its label value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    /// The level as labels write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// Capabilities a baseline container may add.
const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls a baseline pod may set.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Volume kinds a restricted pod may use.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    if names.len() == 1 {
        format!("container {}", quoted[0])
    } else {
        format!("containers {}", quoted.join(", "))
    }
}

/// Every container of the pod spec (init, regular, ephemeral).
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|f| spec[*f].as_array().into_iter().flatten())
        .collect()
}

fn name_of(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_owned()
}

fn strs(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// The violations of `level` by a pod spec (and its metadata), as upstream words them: a
/// reason and its detail.
pub fn violations(spec: &Value, level: Level) -> Vec<String> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let all = containers(spec);
    let pod_sc = &spec["securityContext"];
    let filter = |f: &dyn Fn(&Value) -> bool| -> Vec<String> {
        all.iter().filter(|c| f(c)).map(|c| name_of(c)).collect()
    };
    // Baseline.
    let host: Vec<&str> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| spec[*k] == true)
        .collect();
    if !host.is_empty() {
        let detail: Vec<String> = host.iter().map(|k| format!("{k}=true")).collect();
        out.push(format!("host namespaces ({})", detail.join(", ")));
    }
    let privileged = filter(&|c| c["securityContext"]["privileged"] == true);
    if !privileged.is_empty() {
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            containers_phrase(&privileged)
        ));
    }
    let mut added: Vec<String> = Vec::new();
    let mut adders: Vec<String> = Vec::new();
    for c in &all {
        let extra: Vec<&str> = strs(&c["securityContext"]["capabilities"]["add"])
            .filter(|cap| !BASELINE_CAPS.contains(&cap.trim_start_matches("CAP_")))
            .collect();
        if !extra.is_empty() {
            adders.push(name_of(c));
            added.extend(extra.iter().map(|s| format!("\"{s}\"")));
        }
    }
    if !adders.is_empty() {
        added.dedup();
        out.push(format!(
            "non-default capabilities ({} must not include {} in securityContext.capabilities.add)",
            containers_phrase(&adders),
            added.join(", ")
        ));
    }
    let host_paths: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| format!("\"{}\"", v["name"].as_str().unwrap_or_default()))
        .collect();
    if !host_paths.is_empty() {
        let word = if host_paths.len() == 1 {
            "volume"
        } else {
            "volumes"
        };
        out.push(format!("hostPath volumes ({word} {})", host_paths.join(", ")));
    }
    let mut ports = Vec::new();
    for c in &all {
        let used: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64().filter(|p| *p != 0))
            .map(|p| p.to_string())
            .collect();
        if !used.is_empty() {
            let word = if used.len() == 1 { "hostPort" } else { "hostPorts" };
            ports.push(format!(
                "{} uses {word} {}",
                containers_phrase(&[name_of(c)]),
                used.join(", ")
            ));
        }
    }
    if !ports.is_empty() {
        out.push(format!("hostPort ({})", ports.join("; ")));
    }
    let unconfined_pod = pod_sc["seccompProfile"]["type"] == "Unconfined";
    let unconfined = filter(&|c| c["securityContext"]["seccompProfile"]["type"] == "Unconfined");
    if unconfined_pod || !unconfined.is_empty() {
        let mut who = Vec::new();
        if unconfined_pod {
            who.push("pod".to_owned());
        }
        if !unconfined.is_empty() {
            who.push(containers_phrase(&unconfined));
        }
        out.push(format!(
            "seccompProfile ({} must not set securityContext.seccompProfile.type to \"Unconfined\")",
            who.join(" and ")
        ));
    }
    let unmasked = filter(&|c| c["securityContext"]["procMount"] == "Unmasked");
    if !unmasked.is_empty() {
        out.push(format!(
            "procMount ({} must not set securityContext.procMount to \"Unmasked\")",
            containers_phrase(&unmasked)
        ));
    }
    let sysctls: Vec<String> = pod_sc["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(str::to_owned)
        .collect();
    if !sysctls.is_empty() {
        out.push(format!("forbidden sysctls ({})", sysctls.join(", ")));
    }
    if level == Level::Baseline {
        return out;
    }
    // Restricted.
    let mut restricted_volumes = Vec::new();
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(kind) = v
            .as_object()
            .and_then(|m| m.keys().find(|k| *k != "name"))
            .filter(|k| !RESTRICTED_VOLUMES.contains(&k.as_str()))
        {
            restricted_volumes.push(format!(
                "volume \"{}\" uses restricted volume type \"{kind}\"",
                v["name"].as_str().unwrap_or_default()
            ));
        }
    }
    if !restricted_volumes.is_empty() {
        out.push(format!(
            "restricted volume types ({})",
            restricted_volumes.join(", ")
        ));
    }
    let escalating = filter(&|c| c["securityContext"]["allowPrivilegeEscalation"] != false);
    if !escalating.is_empty() {
        out.push(format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            containers_phrase(&escalating)
        ));
    }
    let not_dropping = filter(&|c| !strs(&c["securityContext"]["capabilities"]["drop"]).any(|d| d == "ALL"));
    let adding: Vec<String> = all
        .iter()
        .filter(|c| strs(&c["securityContext"]["capabilities"]["add"]).any(|a| a != "NET_BIND_SERVICE"))
        .map(|c| name_of(c))
        .collect();
    if !not_dropping.is_empty() || !adding.is_empty() {
        let mut parts = Vec::new();
        if !not_dropping.is_empty() {
            parts.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                containers_phrase(&not_dropping)
            ));
        }
        if !adding.is_empty() {
            parts.push(format!(
                "{} must not include capabilities other than \"NET_BIND_SERVICE\" in securityContext.capabilities.add",
                containers_phrase(&adding)
            ));
        }
        out.push(format!("unrestricted capabilities ({})", parts.join("; ")));
    }
    let pod_non_root = pod_sc["runAsNonRoot"] == true;
    let root_allowed = filter(&|c| match c["securityContext"]["runAsNonRoot"].as_bool() {
        Some(v) => !v,
        None => !pod_non_root,
    });
    if !root_allowed.is_empty() {
        let who = if pod_non_root {
            containers_phrase(&root_allowed)
        } else {
            format!("pod or {}", containers_phrase(&root_allowed))
        };
        out.push(format!(
            "runAsNonRoot != true ({who} must set securityContext.runAsNonRoot=true)"
        ));
    }
    let root_user = filter(&|c| c["securityContext"]["runAsUser"] == 0);
    if pod_sc["runAsUser"] == 0 || !root_user.is_empty() {
        let mut who = Vec::new();
        if pod_sc["runAsUser"] == 0 {
            who.push("pod".to_owned());
        }
        if !root_user.is_empty() {
            who.push(containers_phrase(&root_user));
        }
        out.push(format!(
            "runAsUser=0 ({} must not set runAsUser=0)",
            who.join(" and ")
        ));
    }
    let pod_profile = matches!(
        pod_sc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault" | "Localhost")
    );
    let unprofiled = filter(
        &|c| match c["securityContext"]["seccompProfile"]["type"].as_str() {
            Some(t) => !matches!(t, "RuntimeDefault" | "Localhost"),
            None => !pod_profile,
        },
    );
    let unprofiled: Vec<String> = unprofiled
        .into_iter()
        .filter(|n| !unconfined.contains(n))
        .collect();
    if !unprofiled.is_empty() {
        let who = if pod_profile {
            containers_phrase(&unprofiled)
        } else {
            format!("pod or {}", containers_phrase(&unprofiled))
        };
        out.push(format!(
            "seccompProfile ({who} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        ));
    }
    out
}
