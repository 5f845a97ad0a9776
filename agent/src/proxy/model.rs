//! What a Service and its EndpointSlices mean for this node: per service port (cluster IP, port,
//! protocol), the backends to balance over. Pure functions, the same for every data plane.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::Value;
use skiff_abi::{Backend, PROTO_SCTP, PROTO_TCP, PROTO_UDP, ServiceKey};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (three hours, as upstream).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// What one service port is programmed with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Backends to choose from, sorted; empty means connections are refused.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds (0: none).
    pub affinity_timeout: u32,
}

/// `namespace/name` of a Service, or of the Service an EndpointSlice belongs to.
pub fn service_of_slice(slice: &Value) -> Option<String> {
    let ns = slice["metadata"]["namespace"].as_str()?;
    let name = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str()?;
    Some(format!("{ns}/{name}"))
}

pub use crate::node::watch::key_of;

fn protocol(name: Option<&str>) -> Option<u8> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

/// An endpoint condition, with upstream's defaults for a missing value.
fn condition(endpoint: &Value, name: &str, default: bool) -> bool {
    endpoint["conditions"][name].as_bool().unwrap_or(default)
}

/// The service ports of `service` with their backends from `slices`, as kube-proxy programs them on
/// node `node`: ready endpoints, or the serving terminating ones when none is ready; only this
/// node's endpoints under `internalTrafficPolicy: Local`. Headless and ExternalName services have
/// none.
pub fn entries(service: &Value, slices: &[&Value], node: &str) -> BTreeMap<ServiceKey, Entry> {
    let mut out = BTreeMap::new();
    let spec = &service["spec"];
    if spec["type"].as_str() == Some("ExternalName") {
        return out;
    }
    let mut ips: Vec<Ipv4Addr> = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&spec["clusterIP"]))
        .filter_map(|ip| ip.as_str()?.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    let local_only = spec["internalTrafficPolicy"].as_str() == Some("Local");
    let affinity_timeout = if spec["sessionAffinity"].as_str() == Some("ClientIP") {
        spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    } else {
        0
    };
    for port in spec["ports"].as_array().into_iter().flatten() {
        let Some(proto) = protocol(port["protocol"].as_str()) else {
            continue;
        };
        let Some(number) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        let port_name = port["name"].as_str().unwrap_or_default();
        let mut ready = BTreeSet::new();
        let mut terminating = BTreeSet::new();
        for slice in slices {
            if slice["addressType"].as_str().unwrap_or("IPv4") != "IPv4" {
                continue;
            }
            let Some(target) = slice["ports"].as_array().into_iter().flatten().find(|p| {
                p["name"].as_str().unwrap_or_default() == port_name
                    && protocol(p["protocol"].as_str()) == Some(proto)
            }) else {
                continue;
            };
            let Some(target) = target["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
                if local_only && endpoint["nodeName"].as_str() != Some(node) {
                    continue;
                }
                let is_ready = condition(endpoint, "ready", true);
                let serving = condition(endpoint, "serving", is_ready);
                let is_terminating = condition(endpoint, "terminating", false);
                for addr in endpoint["addresses"].as_array().into_iter().flatten() {
                    let Some(ip) = addr.as_str().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                        continue;
                    };
                    let backend = Backend {
                        addr: ip.octets(),
                        port: target,
                        pad: 0,
                    };
                    if is_ready {
                        ready.insert(backend);
                    } else if serving && is_terminating {
                        terminating.insert(backend);
                    }
                }
            }
        }
        let backends: Vec<Backend> = if ready.is_empty() { terminating } else { ready }
            .into_iter()
            .collect();
        for ip in &ips {
            let key = ServiceKey {
                addr: ip.octets(),
                port: number,
                protocol: proto,
                pad: 0,
            };
            out.insert(
                key,
                Entry {
                    backends: backends.clone(),
                    affinity_timeout,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(extra: Value) -> Value {
        let mut s = json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        });
        if let (Some(spec), Some(more)) = (s["spec"].as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                spec.insert(k.clone(), v.clone());
            }
        }
        s
    }

    fn slice(endpoints: Value) -> Value {
        json!({
            "metadata": {"namespace": "default", "name": "web-abc",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        })
    }

    fn backend(ip: &str) -> Backend {
        Backend {
            addr: ip.parse::<Ipv4Addr>().unwrap().octets(),
            port: 8080,
            pad: 0,
        }
    }

    fn key() -> ServiceKey {
        ServiceKey {
            addr: [10, 96, 0, 10],
            port: 80,
            protocol: PROTO_TCP,
            pad: 0,
        }
    }

    #[test]
    fn ready_endpoints_back_the_service_port() {
        let s = slice(json!([
            {"addresses": ["10.42.0.5"], "conditions": {"ready": true}, "nodeName": "a"},
            {"addresses": ["10.42.0.4"], "conditions": {"ready": true}, "nodeName": "b"},
            {"addresses": ["10.42.0.6"], "conditions": {"ready": false}, "nodeName": "a"},
        ]));
        let e = entries(&service(json!({})), &[&s], "a");
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[&key()].backends,
            vec![backend("10.42.0.4"), backend("10.42.0.5")]
        );
        assert_eq!(service_of_slice(&s).as_deref(), Some("default/web"));
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let term = json!({"addresses": ["10.42.0.7"],
            "conditions": {"ready": false, "serving": true, "terminating": true}});
        let only = slice(json!([term.clone()]));
        assert_eq!(
            entries(&service(json!({})), &[&only], "a")[&key()].backends,
            vec![backend("10.42.0.7")]
        );
        let both = slice(json!([term, {"addresses": ["10.42.0.8"], "conditions": {"ready": true}}]));
        assert_eq!(
            entries(&service(json!({})), &[&both], "a")[&key()].backends,
            vec![backend("10.42.0.8")]
        );
    }

    #[test]
    fn no_endpoints_means_an_empty_entry_that_refuses() {
        let e = entries(&service(json!({})), &[], "a");
        assert_eq!(e[&key()], Entry::default());
    }

    #[test]
    fn local_internal_traffic_uses_this_nodes_endpoints_only() {
        let s = slice(json!([
            {"addresses": ["10.42.0.5"], "nodeName": "a"},
            {"addresses": ["10.42.1.5"], "nodeName": "b"},
        ]));
        let svc = service(json!({"internalTrafficPolicy": "Local"}));
        assert_eq!(
            entries(&svc, &[&s], "b")[&key()].backends,
            vec![backend("10.42.1.5")]
        );
    }

    #[test]
    fn headless_and_external_name_services_are_not_programmed() {
        assert!(
            entries(
                &service(json!({"clusterIP": "None", "clusterIPs": ["None"]})),
                &[],
                "a"
            )
            .is_empty()
        );
        assert!(entries(&service(json!({"type": "ExternalName"})), &[], "a").is_empty());
    }

    #[test]
    fn ports_match_by_name_and_protocol_and_affinity_has_a_default_timeout() {
        let svc = service(json!({
            "sessionAffinity": "ClientIP",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                      {"name": "dns", "port": 53, "protocol": "UDP"}]
        }));
        let mut s = slice(json!([{"addresses": ["10.42.0.5"]}]));
        s["ports"] = json!([{"name": "dns", "port": 5353, "protocol": "UDP"},
                            {"name": "http", "port": 8080, "protocol": "TCP"}]);
        let e = entries(&svc, &[&s], "a");
        let udp = ServiceKey {
            addr: [10, 96, 0, 10],
            port: 53,
            protocol: PROTO_UDP,
            pad: 0,
        };
        assert_eq!(e[&udp].backends[0].port, 5353);
        assert_eq!(e[&key()].backends[0].port, 8080);
        assert_eq!(e[&key()].affinity_timeout, 10_800);
    }
}
