//! Cluster DNS, answered by every agent for its own node's pods on the pod bridge address (the
//! `kube-dns` Service sends each node's pods to their own agent, see the control plane's
//! `cluster_dns` controller). Records follow the Kubernetes DNS specification:
//!
//! - `<service>.<ns>.svc.<domain>`: A of the cluster IP; for a headless service, A of each ready
//!   endpoint; CNAME for an ExternalName service.
//! - `<hostname>.<service>.<ns>.svc.<domain>` (an endpoint's `hostname`, or its address with dashes):
//!   A of that endpoint of a headless service.
//! - `_<port>._<proto>.<service>.<ns>.svc.<domain>`: SRV per named port (per endpoint when headless).
//! - `<a-b-c-d>.<ns>.pod.<domain>`: A of that address.
//! - `<d>.<c>.<b>.<a>.in-addr.arpa`: PTR of a cluster IP to its service's name, of a headless
//!   service's endpoint to the endpoint's name (as CoreDNS answers); other addresses are forwarded.
//!
//! Other names are forwarded to the node's upstream resolvers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Time to live of the answers, in seconds (CoreDNS's default for the cluster domain).
const TTL: u32 = 5;

/// DNS settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// Where the server listens (the pod bridge address), port 53.
    pub listen: Ipv4Addr,
    /// Resolvers for names outside the cluster domain.
    pub upstreams: Vec<SocketAddr>,
    /// The node's Service and EndpointSlice watches.
    pub feeds: crate::node::stream::Feeds,
}

/// What a name resolves to.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// Records for the answer section.
    Records(Vec<Record>),
    /// The name exists but has no record of the asked type.
    NoData,
    /// No such name in the cluster domain.
    NxDomain,
    /// Not in the cluster domain: forward.
    Elsewhere,
}

/// Services and their EndpointSlices (by `namespace/name`), as DNS sees them: a view of the
/// node's shared watches.
#[derive(Debug, Clone, Copy)]
pub struct Zone<'a> {
    domain: &'a str,
    services: &'a BTreeMap<String, Value>,
    slices: &'a BTreeMap<String, Value>,
}

/// A ready endpoint of a service: its address, hostname and ports (name, protocol, number).
struct Endpoint {
    ip: Ipv4Addr,
    hostname: Option<String>,
    ports: Vec<(String, String, u16)>,
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn undashed(label: &str) -> Option<Ipv4Addr> {
    label.replace('-', ".").parse().ok()
}

impl<'a> Zone<'a> {
    /// The zone `domain` (lowercase, no dots around it) over these services and slices.
    pub fn new(
        domain: &'a str,
        services: &'a BTreeMap<String, Value>,
        slices: &'a BTreeMap<String, Value>,
    ) -> Self {
        Self {
            domain,
            services,
            slices,
        }
    }

    fn endpoints(&self, ns: &str, svc: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let key = format!("{ns}/{svc}");
        for slice in self.slices.values() {
            if crate::node::watch::service_of_slice(slice).as_deref() != Some(key.as_str())
                || slice["addressType"].as_str().unwrap_or("IPv4") != "IPv4"
            {
                continue;
            }
            let ports: Vec<(String, String, u16)> = slice["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p["name"].as_str().unwrap_or_default().to_lowercase(),
                        p["protocol"].as_str().unwrap_or("TCP").to_lowercase(),
                        u16::try_from(p["port"].as_u64()?).ok()?,
                    ))
                })
                .collect();
            for e in slice["endpoints"].as_array().into_iter().flatten() {
                if !e["conditions"]["ready"].as_bool().unwrap_or(true) {
                    continue;
                }
                for addr in e["addresses"].as_array().into_iter().flatten() {
                    if let Some(ip) = addr.as_str().and_then(|a| a.parse().ok()) {
                        out.push(Endpoint {
                            ip,
                            hostname: e["hostname"].as_str().map(str::to_lowercase),
                            ports: ports.clone(),
                        });
                    }
                }
            }
        }
        out.sort_by_key(|e| e.ip);
        out.dedup_by_key(|e| e.ip);
        out
    }

    fn name(&self, labels: &[&str]) -> Option<Name> {
        Name::from_ascii(format!("{}.{}.", labels.join("."), self.domain)).ok()
    }

    /// The name of the service whose cluster IP is `ip`, or of the headless service endpoint at
    /// `ip`.
    fn reverse(&self, ip: Ipv4Addr) -> Option<Name> {
        let text = ip.to_string();
        for (key, service) in self.services {
            let Some((ns, svc)) = key.split_once('/') else {
                continue;
            };
            let spec = &service["spec"];
            let ips = spec["clusterIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .chain([&spec["clusterIP"]]);
            if ips.clone().any(|i| i.as_str() == Some(text.as_str())) {
                return self.name(&[svc, ns, "svc"]);
            }
            if spec["clusterIP"] == "None"
                && let Some(e) = self.endpoints(ns, svc).into_iter().find(|e| e.ip == ip)
            {
                let host = e.hostname.unwrap_or_else(|| dashed(e.ip));
                return self.name(&[&host, svc, ns, "svc"]);
            }
        }
        None
    }

    /// Answers `qtype` for `name` (any case, with or without the final dot).
    pub fn lookup(&self, name: &str, qtype: RecordType) -> Lookup {
        let name = name.trim_end_matches('.').to_lowercase();
        if let Some(reversed) = name.strip_suffix(".in-addr.arpa") {
            let octets: Vec<&str> = reversed.split('.').rev().collect();
            let Ok(ip) = octets.join(".").parse::<Ipv4Addr>() else {
                return Lookup::Elsewhere;
            };
            return match (self.reverse(ip), Name::from_ascii(format!("{name}."))) {
                (Some(target), Ok(owner)) if qtype == RecordType::PTR => {
                    Lookup::Records(vec![Record::from_rdata(owner, TTL, RData::PTR(PTR(target)))])
                }
                (Some(_), _) => Lookup::NoData,
                (None, _) => Lookup::Elsewhere,
            };
        }
        let rest = if name == self.domain {
            ""
        } else if let Some(r) = name.strip_suffix(&format!(".{}", self.domain)) {
            r
        } else {
            return Lookup::Elsewhere;
        };
        let labels: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.').collect()
        };
        let a = |owner: Name, ip: Ipv4Addr| Record::from_rdata(owner, TTL, RData::A(A(ip)));
        match labels.as_slice() {
            [] | ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => Lookup::NoData,
            [ip, _ns, "pod"] => match undashed(ip) {
                Some(addr) if qtype == RecordType::A => Lookup::Records(vec![a(self.owner(&labels), addr)]),
                Some(_) => Lookup::NoData,
                None => Lookup::NxDomain,
            },
            [svc, ns, "svc"] => {
                let Some(service) = self.services.get(&format!("{ns}/{svc}")) else {
                    return Lookup::NxDomain;
                };
                let spec = &service["spec"];
                let owner = self.owner(&labels);
                if spec["type"] == "ExternalName" {
                    return match spec["externalName"]
                        .as_str()
                        .and_then(|n| Name::from_ascii(format!("{}.", n.trim_end_matches('.'))).ok())
                    {
                        Some(target) => {
                            Lookup::Records(vec![Record::from_rdata(owner, TTL, RData::CNAME(CNAME(target)))])
                        }
                        None => Lookup::NxDomain,
                    };
                }
                if qtype != RecordType::A {
                    return Lookup::NoData;
                }
                match spec["clusterIP"].as_str() {
                    Some("None") => {
                        let records: Vec<Record> = self
                            .endpoints(ns, svc)
                            .iter()
                            .map(|e| a(owner.clone(), e.ip))
                            .collect();
                        if records.is_empty() {
                            Lookup::NoData
                        } else {
                            Lookup::Records(records)
                        }
                    }
                    Some(ip) => match ip.parse() {
                        Ok(ip) => Lookup::Records(vec![a(owner, ip)]),
                        Err(_) => Lookup::NoData,
                    },
                    None => Lookup::NoData,
                }
            }
            [host, svc, ns, "svc"] if !host.starts_with('_') => {
                let Some(service) = self.services.get(&format!("{ns}/{svc}")) else {
                    return Lookup::NxDomain;
                };
                if service["spec"]["clusterIP"] != "None" {
                    return Lookup::NxDomain;
                }
                let hit: Vec<Record> = self
                    .endpoints(ns, svc)
                    .iter()
                    .filter(|e| e.hostname.as_deref() == Some(*host) || dashed(e.ip) == *host)
                    .map(|e| a(self.owner(&labels), e.ip))
                    .collect();
                match (hit.is_empty(), qtype) {
                    (true, _) => Lookup::NxDomain,
                    (false, RecordType::A) => Lookup::Records(hit),
                    (false, _) => Lookup::NoData,
                }
            }
            [port, proto, svc, ns, "svc"] => {
                let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else {
                    return Lookup::NxDomain;
                };
                let Some(service) = self.services.get(&format!("{ns}/{svc}")) else {
                    return Lookup::NxDomain;
                };
                let owner = self.owner(&labels);
                let mut records = Vec::new();
                if service["spec"]["clusterIP"] == "None" {
                    for e in self.endpoints(ns, svc) {
                        let Some((_, _, number)) = e.ports.iter().find(|(n, p, _)| n == port && p == proto)
                        else {
                            continue;
                        };
                        let host = e.hostname.clone().unwrap_or_else(|| dashed(e.ip));
                        if let Some(target) = self.name(&[&host, svc, ns, "svc"]) {
                            records.push(Record::from_rdata(
                                owner.clone(),
                                TTL,
                                RData::SRV(SRV::new(0, 100, *number, target)),
                            ));
                        }
                    }
                } else {
                    let found = service["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| {
                            p["name"].as_str().unwrap_or_default().eq_ignore_ascii_case(port)
                                && p["protocol"]
                                    .as_str()
                                    .unwrap_or("TCP")
                                    .eq_ignore_ascii_case(proto)
                        });
                    if let (Some(p), Some(target)) = (found, self.name(&[svc, ns, "svc"]))
                        && let Some(number) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok())
                    {
                        records.push(Record::from_rdata(
                            owner,
                            TTL,
                            RData::SRV(SRV::new(0, 100, number, target)),
                        ));
                    }
                }
                match (records.is_empty(), qtype) {
                    (true, _) => Lookup::NxDomain,
                    (false, RecordType::SRV) => Lookup::Records(records),
                    (false, _) => Lookup::NoData,
                }
            }
            _ => Lookup::NxDomain,
        }
    }

    fn owner(&self, labels: &[&str]) -> Name {
        self.name(labels).unwrap_or_default()
    }
}

/// Answers one query message (raw bytes); `None` when it must be forwarded.
pub fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let Ok(msg) = Message::from_vec(query) else {
        return None;
    };
    let q = msg.queries.first()?;
    let lookup = zone.lookup(&q.name().to_ascii(), q.query_type());
    let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.add_query(q.clone());
    match lookup {
        Lookup::Elsewhere => return None,
        Lookup::Records(records) => {
            resp.add_answers(records);
        }
        Lookup::NoData => {}
        Lookup::NxDomain => resp.metadata.response_code = ResponseCode::NXDomain,
    }
    resp.to_vec().ok()
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut resp = Message::error_msg(msg.metadata.id, msg.metadata.op_code, ResponseCode::ServFail);
    resp.add_queries(msg.queries);
    resp.to_vec().ok()
}

/// Forwards a query over UDP to the first upstream that answers (from the agent's own network).
async fn forward(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let any: SocketAddr = if up.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(any).await else {
            continue;
        };
        // Connected, so that an unreachable resolver fails at once instead of timing out.
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    servfail(query)
}

/// Answers from the node's watches, or forwards.
async fn respond(cfg: &Config, query: &[u8]) -> Option<Vec<u8>> {
    let local = cfg.feeds.services.read(|services| {
        cfg.feeds
            .slices
            .read(|slices| answer(&Zone::new(&cfg.domain, services, slices), query))
    });
    match local {
        Some(r) => Some(r),
        None => forward(&cfg.upstreams, query).await,
    }
}

/// The nameservers of the host's `/etc/resolv.conf`, port 53.
pub fn host_upstreams() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Serves DNS until the process ends.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let addr = SocketAddr::from((cfg.listen, 53));
    let (udp, tcp) = crate::network::pod_net::in_node_netns(|| -> std::io::Result<_> {
        let udp = std::net::UdpSocket::bind(addr)?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind(addr)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
    .and_then(|r| r)
    .with_context(|| format!("listening for DNS on {addr}"))?;
    let udp = Arc::new(tokio::net::UdpSocket::from_std(udp)?);
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    let cfg = Arc::new(cfg);
    {
        let cfg = cfg.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = tcp.accept().await else {
                    continue;
                };
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    // Length-prefixed messages (RFC 1035 4.2.2), several per connection.
                    loop {
                        let Ok(Ok(len)) =
                            tokio::time::timeout(Duration::from_secs(10), conn.read_u16()).await
                        else {
                            return;
                        };
                        let mut query = vec![0u8; usize::from(len)];
                        if conn.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let Some(resp) = respond(&cfg, &query).await else {
                            return;
                        };
                        let Ok(n) = u16::try_from(resp.len()) else { return };
                        if conn.write_u16(n).await.is_err() || conn.write_all(&resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    tracing::info!(%addr, domain = %cfg.domain, "cluster DNS listening");
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = udp.recv_from(&mut buf).await?;
        let query = buf[..n].to_vec();
        let (cfg, udp) = (cfg.clone(), udp.clone());
        tokio::spawn(async move {
            if let Some(mut resp) = respond(&cfg, &query).await {
                // Over UDP an answer is at most 512 bytes unless the client said otherwise (EDNS):
                // set the truncation bit so that it retries over TCP.
                let limit = Message::from_vec(&query)
                    .ok()
                    .and_then(|m| m.edns.map(|e| usize::from(e.max_payload())))
                    .unwrap_or(512)
                    .max(512);
                if resp.len() > limit
                    && let Ok(m) = Message::from_vec(&resp)
                    && let Ok(t) = m.truncate().to_vec()
                {
                    resp = t;
                }
                let _ = udp.send_to(&resp, from).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::node::watch::key_of;

    /// (services, slices) by `namespace/name`.
    fn objects() -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
        let by_key = |items: Vec<Value>| items.into_iter().map(|o| (key_of(&o), o)).collect();
        let services = by_key(vec![
            json!({"metadata": {"namespace": "default", "name": "web"},
                   "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            json!({"metadata": {"namespace": "default", "name": "db"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
            json!({"metadata": {"namespace": "default", "name": "ext"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ]);
        let slices = by_key(vec![json!({
            "metadata": {"namespace": "default", "name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.1.8"], "conditions": {"ready": true}},
                {"addresses": ["10.42.1.9"], "conditions": {"ready": false}},
            ]
        })]);
        (services, slices)
    }

    fn ips(l: Lookup) -> BTreeSet<String> {
        match l {
            Lookup::Records(r) => r
                .iter()
                .map(|r| match &r.data {
                    RData::A(a) => a.0.to_string(),
                    RData::CNAME(c) => c.0.to_ascii(),
                    RData::SRV(s) => format!("{} {}", s.port, s.target.to_ascii()),
                    RData::PTR(p) => p.0.to_ascii(),
                    other => format!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn services_resolve_as_the_kubernetes_dns_spec_says() {
        let (services, slices) = objects();
        let z = Zone::new("cluster.local", &services, &slices);
        assert_eq!(
            ips(z.lookup("web.default.svc.cluster.local.", RecordType::A)),
            set(&["10.96.0.20"])
        );
        assert_eq!(
            ips(z.lookup("WEB.default.svc.cluster.local", RecordType::A)),
            set(&["10.96.0.20"])
        );
        assert_eq!(
            z.lookup("web.default.svc.cluster.local", RecordType::AAAA),
            Lookup::NoData
        );
        assert_eq!(
            ips(z.lookup("db.default.svc.cluster.local", RecordType::A)),
            set(&["10.42.0.7", "10.42.1.8"])
        );
        assert_eq!(
            ips(z.lookup("db-0.db.default.svc.cluster.local", RecordType::A)),
            set(&["10.42.0.7"])
        );
        assert_eq!(
            ips(z.lookup("10-42-1-8.db.default.svc.cluster.local", RecordType::A)),
            set(&["10.42.1.8"])
        );
        // Reverse lookups: a cluster IP names its service, a headless endpoint itself; other
        // addresses are not the cluster's to answer.
        assert_eq!(
            ips(z.lookup("20.0.96.10.in-addr.arpa.", RecordType::PTR)),
            set(&["web.default.svc.cluster.local."])
        );
        assert_eq!(
            ips(z.lookup("7.0.42.10.in-addr.arpa", RecordType::PTR)),
            set(&["db-0.db.default.svc.cluster.local."])
        );
        assert_eq!(
            ips(z.lookup("8.1.42.10.in-addr.arpa", RecordType::PTR)),
            set(&["10-42-1-8.db.default.svc.cluster.local."])
        );
        assert_eq!(z.lookup("20.0.96.10.in-addr.arpa", RecordType::A), Lookup::NoData);
        assert_eq!(
            z.lookup("1.1.168.192.in-addr.arpa", RecordType::PTR),
            Lookup::Elsewhere
        );
        assert_eq!(
            ips(z.lookup("_http._tcp.web.default.svc.cluster.local", RecordType::SRV)),
            set(&["80 web.default.svc.cluster.local."])
        );
        assert_eq!(
            ips(z.lookup("_pg._tcp.db.default.svc.cluster.local", RecordType::SRV)),
            set(&[
                "5432 db-0.db.default.svc.cluster.local.",
                "5432 10-42-1-8.db.default.svc.cluster.local."
            ])
        );
        assert_eq!(
            ips(z.lookup("ext.default.svc.cluster.local", RecordType::A)),
            set(&["example.org."])
        );
        assert_eq!(
            ips(z.lookup("10-42-0-5.default.pod.cluster.local", RecordType::A)),
            set(&["10.42.0.5"])
        );
        assert_eq!(
            z.lookup("nope.default.svc.cluster.local", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup("web.other.svc.cluster.local", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(z.lookup("svc.cluster.local", RecordType::A), Lookup::NoData);
        assert_eq!(z.lookup("example.org", RecordType::A), Lookup::Elsewhere);
    }

    #[test]
    fn answers_are_wire_messages_with_the_query_id() {
        let (services, slices) = objects();
        let z = Zone::new("cluster.local", &services, &slices);
        let mut q = Message::query();
        q.metadata.id = 4242;
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let resp = Message::from_vec(&answer(&z, &q.to_vec().unwrap()).unwrap()).unwrap();
        assert_eq!(resp.metadata.id, 4242);
        assert_eq!(resp.answers.len(), 1);
        let mut q = Message::query();
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::A,
        ));
        assert!(answer(&z, &q.to_vec().unwrap()).is_none());
    }
}
