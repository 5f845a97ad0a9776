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
    /// Reached from outside the node (a NodePort on a node address, an external IP, a load
    /// balancer address), not only from its sockets.
    pub external: bool,
    /// Connections from outside are masqueraded (`externalTrafficPolicy: Cluster`).
    pub masquerade: bool,
}

pub use crate::node::watch::{key_of, service_of_slice};

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
/// node `node` (whose NodePorts listen on `node_ips`): ready endpoints, or the serving terminating
/// ones when none is ready. Cluster IPs use only this node's endpoints under
/// `internalTrafficPolicy: Local`; NodePorts, external IPs and load-balancer addresses under
/// `externalTrafficPolicy: Local` (keeping the client's address), and are masqueraded otherwise.
/// Headless and ExternalName services have none. An endpoint on loopback (the API server of a
/// single-host cluster) is reached at `host`, the node's address that pods can reach and where
/// [`crate::network::api_relay`] listens, when there is one.
pub fn entries(
    service: &Value,
    slices: &[&Value],
    node: &str,
    node_ips: &[Ipv4Addr],
    host: Option<Ipv4Addr>,
) -> BTreeMap<ServiceKey, Entry> {
    let mut out = BTreeMap::new();
    let spec = &service["spec"];
    if spec["type"].as_str() == Some("ExternalName") {
        return out;
    }
    let cluster_ips = ipv4s(items(&spec["clusterIPs"]).chain([&spec["clusterIP"]]));
    let load_balancer = &service["status"]["loadBalancer"]["ingress"];
    let external_ips = ipv4s(
        items(&spec["externalIPs"])
            .chain(items(load_balancer).filter(|_| spec["type"].as_str() == Some("LoadBalancer"))),
    );
    let node_port_type = matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"));
    let internal_local = spec["internalTrafficPolicy"].as_str() == Some("Local");
    let external_local = spec["externalTrafficPolicy"].as_str() == Some("Local");
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
        let node_port = port["nodePort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| node_port_type && *p != 0);
        let candidates = endpoints(slices, port["name"].as_str().unwrap_or_default(), proto, host);
        let backends = |local_only: bool| -> Vec<Backend> {
            let mine = |e: &&Candidate| !local_only || e.1 == Some(node);
            let ready: BTreeSet<Backend> = candidates.0.iter().filter(mine).map(|e| e.0).collect();
            let terminating: BTreeSet<Backend> = candidates.1.iter().filter(mine).map(|e| e.0).collect();
            if ready.is_empty() { terminating } else { ready }
                .into_iter()
                .collect()
        };
        let key = |ip: &Ipv4Addr, port: u16| ServiceKey {
            addr: ip.octets(),
            port,
            protocol: proto,
            pad: 0,
        };
        let internal = Entry {
            backends: backends(internal_local),
            affinity_timeout,
            external: false,
            masquerade: false,
        };
        for ip in &cluster_ips {
            out.insert(key(ip, number), internal.clone());
        }
        let external = Entry {
            backends: backends(external_local),
            affinity_timeout,
            external: true,
            masquerade: !external_local,
        };
        for ip in &external_ips {
            out.insert(key(ip, number), external.clone());
        }
        if let Some(np) = node_port {
            for ip in node_ips {
                out.insert(key(ip, np), external.clone());
            }
        }
    }
    out
}

/// The elements of a JSON array (none for anything else).
fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// The distinct IPv4 addresses among `values` (address strings, or load-balancer ingress objects
/// with an `ip`), sorted.
fn ipv4s<'a>(values: impl Iterator<Item = &'a Value>) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = values
        .filter_map(|v| v.as_str().or(v["ip"].as_str())?.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// A backend and the node it runs on.
type Candidate<'a> = (Backend, Option<&'a str>);

/// The endpoints behind the service port named `port_name` (protocol `proto`): the ready ones, and
/// the serving terminating ones.
fn endpoints<'a>(
    slices: &[&'a Value],
    port_name: &str,
    proto: u8,
    host: Option<Ipv4Addr>,
) -> (Vec<Candidate<'a>>, Vec<Candidate<'a>>) {
    let (mut ready, mut terminating) = (Vec::new(), Vec::new());
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
            let is_ready = condition(endpoint, "ready", true);
            let serving = condition(endpoint, "serving", is_ready);
            let is_terminating = condition(endpoint, "terminating", false);
            let node = endpoint["nodeName"].as_str();
            for addr in endpoint["addresses"].as_array().into_iter().flatten() {
                let Some(mut ip) = addr.as_str().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                    continue;
                };
                if ip.is_loopback()
                    && let Some(host) = host
                {
                    ip = host;
                }
                let backend = Backend {
                    addr: ip.octets(),
                    port: target,
                    pad: 0,
                };
                if is_ready {
                    ready.push((backend, node));
                } else if serving && is_terminating {
                    terminating.push((backend, node));
                }
            }
        }
    }
    (ready, terminating)
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
        let e = entries(&service(json!({})), &[&s], "a", &[], None);
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
            entries(&service(json!({})), &[&only], "a", &[], None)[&key()].backends,
            vec![backend("10.42.0.7")]
        );
        let both = slice(json!([term, {"addresses": ["10.42.0.8"], "conditions": {"ready": true}}]));
        assert_eq!(
            entries(&service(json!({})), &[&both], "a", &[], None)[&key()].backends,
            vec![backend("10.42.0.8")]
        );
    }

    #[test]
    fn loopback_endpoints_are_reached_at_the_host_alias() {
        let s = slice(json!([{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]));
        let svc = service(json!({}));
        assert_eq!(
            entries(&svc, &[&s], "a", &[], None)[&key()].backends,
            vec![backend("127.0.0.1")]
        );
        let alias = Some(Ipv4Addr::new(10, 42, 0, 1));
        assert_eq!(
            entries(&svc, &[&s], "a", &[], alias)[&key()].backends,
            vec![backend("10.42.0.1")]
        );
    }

    #[test]
    fn no_endpoints_means_an_empty_entry_that_refuses() {
        let e = entries(&service(json!({})), &[], "a", &[], None);
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
            entries(&svc, &[&s], "b", &[], None)[&key()].backends,
            vec![backend("10.42.1.5")]
        );
    }

    #[test]
    fn headless_and_external_name_services_are_not_programmed() {
        assert!(
            entries(
                &service(json!({"clusterIP": "None", "clusterIPs": ["None"]})),
                &[],
                "a",
                &[],
                None
            )
            .is_empty()
        );
        assert!(entries(&service(json!({"type": "ExternalName"})), &[], "a", &[], None).is_empty());
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
        let e = entries(&svc, &[&s], "a", &[], None);
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

    #[test]
    fn node_ports_and_external_ips_follow_the_external_traffic_policy() {
        let s = slice(json!([
            {"addresses": ["10.42.0.5"], "nodeName": "a"},
            {"addresses": ["10.42.1.5"], "nodeName": "b"},
        ]));
        let node_ips = ["172.31.0.2".parse().unwrap()];
        let at = |ip: [u8; 4], port: u16| ServiceKey {
            addr: ip,
            port,
            protocol: PROTO_TCP,
            pad: 0,
        };
        let svc = service(json!({
            "type": "NodePort",
            "externalIPs": ["192.0.2.10"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]
        }));
        let e = entries(&svc, &[&s], "a", &node_ips, None);
        assert_eq!(e.len(), 3);
        let np = &e[&at([172, 31, 0, 2], 30080)];
        assert_eq!(np.backends.len(), 2);
        assert!(np.external && np.masquerade);
        assert_eq!(&e[&at([192, 0, 2, 10], 80)], np);
        assert!(!e[&key()].external);

        let mut local = svc.clone();
        local["spec"]["externalTrafficPolicy"] = json!("Local");
        let e = entries(&local, &[&s], "a", &node_ips, None);
        let np = &e[&at([172, 31, 0, 2], 30080)];
        assert_eq!(np.backends, vec![backend("10.42.0.5")]);
        assert!(np.external && !np.masquerade);
        assert_eq!(e[&key()].backends.len(), 2, "cluster IPs keep every endpoint");

        let mut cluster_ip = svc;
        cluster_ip["spec"]["type"] = json!("ClusterIP");
        let e = entries(&cluster_ip, &[&s], "a", &node_ips, None);
        assert!(
            !e.contains_key(&at([172, 31, 0, 2], 30080)),
            "a ClusterIP service has no node port"
        );
    }
}
