//! Host ports (`containers[].ports[].hostPort`): connections to a port of the node reach the pod
//! that asked for it, as upstream's CNI `portmap` plugin does it. One nftables table (family
//! `ip`) per bridge, rewritten whole in one transaction whenever the set of mappings changes:
//! - `prerouting` (from outside and from pods) and `output` (from the node itself, host-network
//!   pods included) DNAT connections to a local address and a mapped port to the pod's address and
//!   container port; a mapping with a `hostIP` matches only that address (`127.0.0.1` included);
//! - `postrouting` masquerades what the DNAT sent back out the bridge it came from (a pod reaching
//!   a host port served on its own node) and connections from a loopback address (the bridge is
//!   given `route_localnet`, so `curl 127.0.0.1:PORT` on the node works), so replies come back
//!   through the translation.
//!
//! The mappings come from the pods bound to this node as the control plane reports them: a
//! running pod with its `status.podIP`, not on the host network (those bind the port themselves).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::Context;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::node::watch::Event;

/// Connection mark bit of the connections a host-port rule translated, for `postrouting`.
const HOST_PORT_CT_MARK: u32 = 0x0002_0000;

/// One host port of one pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mapping {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    /// `hostIP` when the pod set one other than `0.0.0.0`.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

/// The host ports of `pod`, when it is running with an address of its own.
pub fn mappings(pod: &Value) -> Vec<Mapping> {
    if pod["spec"]["hostNetwork"] == true
        || matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    {
        return Vec::new();
    }
    let Some(pod_ip) = pod["status"]["podIP"].as_str().and_then(|s| s.parse().ok()) else {
        return Vec::new();
    };
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| {
            let host_port = u16::try_from(p["hostPort"].as_i64()?).ok().filter(|p| *p > 0)?;
            let container_port = u16::try_from(p["containerPort"].as_i64()?).ok()?;
            let protocol = match p["protocol"].as_str().unwrap_or("TCP") {
                "UDP" => "udp",
                "SCTP" => "sctp",
                _ => "tcp",
            };
            let host_ip = p["hostIP"]
                .as_str()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .filter(|ip| !ip.is_unspecified());
            Some(Mapping {
                protocol,
                host_ip,
                host_port,
                pod_ip,
                container_port,
            })
        })
        .collect()
}

/// The table of the agent running bridge `bridge`.
pub fn table(bridge: &str) -> String {
    format!("skiff-{bridge}-hostports")
}

/// The nftables transaction that makes the table hold exactly `mappings`.
pub fn script(bridge: &str, mappings: &[Mapping]) -> String {
    let t = table(bridge);
    let mut rules = String::new();
    for m in mappings {
        let addr = m.host_ip.map(|ip| format!("ip daddr {ip} ")).unwrap_or_default();
        rules.push_str(&format!(
            "    {addr}meta l4proto {p} th dport {hp} ct mark set ct mark or {HOST_PORT_CT_MARK:#x} dnat ip to {ip}:{cp}\n",
            p = m.protocol,
            hp = m.host_port,
            ip = m.pod_ip,
            cp = m.container_port,
        ));
    }
    format!(
        "table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump ports\n  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump ports\n  }}\n  chain ports {{\n{rules}  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ct mark and {HOST_PORT_CT_MARK:#x} == {HOST_PORT_CT_MARK:#x} ip saddr 127.0.0.0/8 masquerade\n    ct mark and {HOST_PORT_CT_MARK:#x} == {HOST_PORT_CT_MARK:#x} iifname \"{bridge}\" oifname \"{bridge}\" masquerade\n  }}\n}}\n"
    )
}

/// Keeps the host-port table of `bridge` in step with the pods of this node until the process
/// ends. The table exists only while some pod has a host port.
pub async fn run(mut rx: mpsc::Receiver<Event>, bridge: String) -> anyhow::Result<()> {
    let mut pods: BTreeMap<String, Vec<Mapping>> = BTreeMap::new();
    let mut have: Option<Vec<Mapping>> = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Listed(items) => {
                pods = items
                    .iter()
                    .filter_map(|p| Some((p["metadata"]["uid"].as_str()?.to_owned(), mappings(p))))
                    .collect();
            }
            Event::Applied(p) => {
                if let Some(uid) = p["metadata"]["uid"].as_str() {
                    pods.insert(uid.to_owned(), mappings(&p));
                }
            }
            Event::Deleted(p) => {
                if let Some(uid) = p["metadata"]["uid"].as_str() {
                    pods.remove(uid);
                }
            }
        }
        if !rx.is_empty() {
            continue;
        }
        let mut want: Vec<Mapping> = pods.values().flatten().cloned().collect();
        want.sort();
        want.dedup();
        if have.as_ref() == Some(&want) || (have.is_none() && want.is_empty()) {
            continue;
        }
        let result = if want.is_empty() {
            let t = table(&bridge);
            crate::network::pod_net::nft(&format!("table ip {t} {{}}\ndelete table ip {t}\n")).await
        } else {
            localnet(&bridge).await;
            crate::network::pod_net::nft(&script(&bridge, &want)).await
        };
        match result.context("programming host ports") {
            Ok(()) => {
                tracing::info!(mappings = want.len(), "host ports programmed");
                have = Some(want);
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "host ports not programmed"),
        }
    }
    Ok(())
}

/// Lets connections from a loopback address be routed out the bridge once translated (the
/// kernel drops them as martians otherwise), as `portmap` sets it. Only the agent's own bridge.
async fn localnet(bridge: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    let result = crate::network::pod_net::in_node_netns(|| std::fs::write(&path, "1")).and_then(|r| r);
    if let Err(e) = result {
        tracing::warn!(error = %e, %path, "connections from 127.0.0.1 to host ports will not work");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn running_pods_with_an_address_map_their_host_ports() {
        let pod = json!({
            "spec": {"containers": [{"ports": [
                {"containerPort": 80, "hostPort": 54321, "hostIP": "127.0.0.1"},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "0.0.0.0"},
                {"containerPort": 8080}
            ]}]},
            "status": {"phase": "Running", "podIP": "10.88.0.5"}
        });
        let m = mappings(&pod);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((m[1].protocol, m[1].host_ip, m[1].host_port), ("udp", None, 5353));
        let s = script("skiff0", &m);
        assert!(
            s.contains("ip daddr 127.0.0.1 meta l4proto tcp th dport 54321 ct mark set ct mark or 0x20000 dnat ip to 10.88.0.5:80"),
            "{s}"
        );
        assert!(s.contains("    meta l4proto udp th dport 5353 "), "{s}");
        let mut host_network = pod.clone();
        host_network["spec"]["hostNetwork"] = json!(true);
        assert!(mappings(&host_network).is_empty());
        let mut done = pod.clone();
        done["status"]["phase"] = json!("Succeeded");
        assert!(mappings(&done).is_empty());
        let mut unaddressed = pod;
        unaddressed["status"] = json!({"phase": "Pending"});
        assert!(mappings(&unaddressed).is_empty());
    }
}
