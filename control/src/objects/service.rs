//! Service address allocation: cluster IPs from the service CIDR and node ports from 30000-32767.
//!
//! Allocations are derived from the stored Services under the API server's allocation lock, so two
//! creates can never take the same address.

use crate::objects::keys;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use rand::Rng;
use serde_json::{Value, json};

use super::Objects;
use super::validation::Causes;
use crate::objects::meta::{from_kv, items_mut};

/// The node port range, as upstream's default.
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

/// An IPv4 CIDR.
#[derive(Debug, Clone, Copy)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, len) = s.split_once('/').ok_or_else(|| format!("invalid CIDR {s:?}"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("invalid CIDR {s:?}"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("invalid CIDR {s:?}"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: u32::from(ip) & mask,
            prefix,
        })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// Whether `ip` is inside the range (network and broadcast excluded).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.base && ip < self.base + self.size() - 1
    }

    /// The `n`th address of the range (1 = first usable).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n)
    }
}

/// The cluster IPs and node ports Services hold, except the Service with uid `except`.
async fn used(objects: &Objects, except: &str) -> Result<(HashSet<String>, HashSet<i64>), Causes> {
    let list = objects
        .store
        .list(keys::SERVICES, None, 0)
        .await
        .map_err(|e| vec![("spec.clusterIP".to_owned(), format!("Internal error: {e}"))])?;
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for kv in &list.items {
        let svc = from_kv(kv);
        if !except.is_empty() && svc["metadata"]["uid"] == except {
            continue;
        }
        for ip in svc["spec"]["clusterIPs"].as_array().into_iter().flatten() {
            ips.extend(ip.as_str().map(str::to_owned));
        }
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            ports.extend(p["nodePort"].as_i64());
        }
    }
    Ok((ips, ports))
}

/// Allocates (or checks) the cluster IP and node ports of a new Service (or of an updated one,
/// whose own allocations do not count as taken).
pub async fn allocate(objects: &Objects, svc: &mut Value, _old: Option<&Value>) -> Result<(), Causes> {
    let own = svc["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let spec = &mut svc["spec"];
    if spec["type"] == "ExternalName" {
        return Ok(());
    }
    let (ips, ports) = used(objects, &own).await?;
    let cidr = objects.service_cidr;
    match spec["clusterIP"].as_str().unwrap_or_default() {
        "None" => spec["clusterIPs"] = json!(["None"]),
        "" => {
            let size = cidr.size() - 2;
            let start = rand::rng().random_range(1..=size);
            let free = (0..size)
                .map(|i| cidr.nth((start + i - 1) % size + 1))
                .find(|ip| !ips.contains(&ip.to_string()) && *ip != cidr.nth(1) && *ip != cidr.nth(10))
                .ok_or_else(|| {
                    vec![(
                        "spec.clusterIPs".to_owned(),
                        "Internal error: range is full".to_owned(),
                    )]
                })?;
            spec["clusterIP"] = json!(free.to_string());
            spec["clusterIPs"] = json!([free.to_string()]);
        }
        ip => {
            let parsed: Option<Ipv4Addr> = ip.parse().ok();
            let Some(addr) = parsed.filter(|a| cidr.contains(*a)) else {
                return Err(vec![(
                    "spec.clusterIPs".into(),
                    format!(
                        "Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}",
                        cidr.nth(0),
                        cidr.prefix
                    ),
                )]);
            };
            if ips.contains(&addr.to_string()) {
                return Err(vec![(
                    "spec.clusterIPs".into(),
                    format!(
                        "Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"
                    ),
                )]);
            }
            spec["clusterIPs"] = json!([ip]);
        }
    }
    if spec["type"] == "NodePort" || spec["type"] == "LoadBalancer" {
        let mut taken = ports;
        for (i, port) in items_mut(spec, "ports").enumerate() {
            match port["nodePort"].as_i64() {
                Some(p) if !NODE_PORTS.contains(&p) => {
                    return Err(vec![(
                        format!("spec.ports[{i}].nodePort"),
                        format!(
                            "Invalid value: {p}: provided port is not in the valid range. The range of valid ports is 30000-32767"
                        ),
                    )]);
                }
                Some(p) if taken.contains(&p) => {
                    return Err(vec![(
                        format!("spec.ports[{i}].nodePort"),
                        format!("Invalid value: {p}: provided port is already allocated"),
                    )]);
                }
                Some(p) => {
                    taken.insert(p);
                }
                None => {
                    let span = NODE_PORTS.end() - NODE_PORTS.start() + 1;
                    let start = rand::rng().random_range(0..span);
                    let free = (0..span)
                        .map(|i| NODE_PORTS.start() + (start + i) % span)
                        .find(|p| !taken.contains(p))
                        .ok_or_else(|| {
                            vec![(
                                format!("spec.ports[{i}].nodePort"),
                                "Internal error: range is full".to_owned(),
                            )]
                        })?;
                    taken.insert(free);
                    port["nodePort"] = json!(free);
                }
            }
        }
    }
    Ok(())
}

fn has_node_ports(svc: &Value) -> bool {
    matches!(svc["spec"]["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

/// On update, a Service keeps its cluster IP and node ports while its new type has them; changing
/// the IP is rejected. A type that no longer has them drops those the update left as they were,
/// as upstream's `dropTypeDependentFields`: ExternalName has no cluster IP, ClusterIP no node ports.
pub fn keep_allocations(old: &Value, new: &mut Value) -> Result<(), Causes> {
    let keep_ports = has_node_ports(new);
    let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
    for port in new
        .get_mut("spec")
        .map(|s| items_mut(s, "ports"))
        .into_iter()
        .flatten()
    {
        let prev = old_ports
            .iter()
            .find(|p| p["port"] == port["port"] && p["protocol"] == port["protocol"])
            .and_then(|p| p.get("nodePort"));
        match (port.get("nodePort"), prev) {
            (None, Some(np)) if keep_ports => port["nodePort"] = np.clone(),
            (Some(np), Some(was)) if !keep_ports && np == was => {
                if let Some(p) = port.as_object_mut() {
                    p.remove("nodePort");
                }
            }
            _ => {}
        }
    }
    let old_ip = old["spec"]["clusterIP"].clone();
    if new["spec"]["type"] == "ExternalName" {
        if let Some(spec) = new["spec"].as_object_mut()
            && spec.get("clusterIP").is_none_or(|ip| ip == &old_ip || ip == "")
        {
            for f in [
                "clusterIP",
                "clusterIPs",
                "ipFamilies",
                "ipFamilyPolicy",
                "internalTrafficPolicy",
            ] {
                spec.remove(f);
            }
        }
        return Ok(());
    }
    match new["spec"]["clusterIP"].as_str() {
        None | Some("") => {
            new["spec"]["clusterIP"] = old_ip;
            new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
            if new["spec"]["clusterIP"].is_null()
                && let Some(spec) = new["spec"].as_object_mut()
            {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        }
        Some(ip) if Some(ip) != old_ip.as_str() && old_ip.is_string() => {
            return Err(vec![(
                "spec.clusterIPs[0]".into(),
                format!("Invalid value: \"{ip}\": may not change once set"),
            )]);
        }
        Some(_) => {
            if new["spec"]["clusterIPs"].is_null() {
                new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
            }
        }
    }
    Ok(())
}

/// Whether an updated Service lacks an allocation its type needs (ExternalName changed to a type
/// with a cluster IP, ClusterIP changed to NodePort).
pub fn needs_allocation(svc: &Value) -> bool {
    let spec = &svc["spec"];
    (spec["type"] != "ExternalName" && spec["clusterIP"].as_str().is_none_or(str::is_empty))
        || (has_node_ports(svc)
            && spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p.get("nodePort").is_none()))
}

/// Allocates what an updated Service's new type needs, under the allocation lock; the guard is
/// held until the caller has stored the Service.
pub async fn reallocate<'a>(
    objects: &'a Objects,
    svc: &mut Value,
) -> Result<Option<tokio::sync::MutexGuard<'a, ()>>, Causes> {
    if !needs_allocation(svc) {
        return Ok(None);
    }
    let guard = objects.alloc.lock().await;
    allocate(objects, svc, None).await?;
    Ok(Some(guard))
}
