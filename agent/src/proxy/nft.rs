//! The nftables data plane: one `inet skiff` table in the node's network namespace, shaped like
//! upstream kube-proxy's nftables mode. A verdict map keyed by (cluster IP, protocol, port) sends a
//! new connection to its service's chain in one lookup; the service chain picks an endpoint chain at
//! random (or the client's remembered one under `sessionAffinity: ClientIP`), which DNATs to the
//! backend. Service ports without endpoints are in a second map that rejects them (TCP reset, or
//! ICMP port unreachable), and anything else sent to the service range is rejected too, so it never
//! leaves the node.
//!
//! Every change is one `nft -f` transaction: a service is never seen half-written.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use skiff_abi::{Backend, MASQUERADE_MARK, PROTO_SCTP, PROTO_TCP, PROTO_UDP, ServiceKey};

use super::model::Entry;

/// The table's name (family `inet`).
pub const TABLE: &str = "skiff";

/// The nftables data plane and what it has programmed.
#[derive(Debug)]
pub struct Nft {
    service_cidr: String,
    /// What the kernel holds now (after the last successful transaction).
    programmed: HashMap<ServiceKey, Entry>,
    /// What should be held: `programmed` plus changes not yet applied.
    desired: HashMap<ServiceKey, Entry>,
    /// The table must be (re)built from `desired` (at start, and after a failed transaction).
    rebuild: bool,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_UDP => "udp",
        PROTO_SCTP => "sctp",
        PROTO_TCP => "tcp",
        _ => "tcp",
    }
}

/// The element of the service maps for `key`: `10.96.0.10 . tcp . 80`.
fn element(key: &ServiceKey) -> String {
    format!(
        "{} . {} . {}",
        Ipv4Addr::from(key.addr),
        proto_name(key.protocol),
        key.port
    )
}

/// The service port's own chain.
fn service_chain(key: &ServiceKey) -> String {
    let [a, b, c, d] = key.addr;
    format!("svc-{a}.{b}.{c}.{d}-{}-{}", proto_name(key.protocol), key.port)
}

/// The chain that sends a connection of `key` to `backend`.
fn endpoint_chain(key: &ServiceKey, backend: &Backend) -> String {
    let [a, b, c, d] = backend.addr;
    format!("ep-{}-{a}.{b}.{c}.{d}-{}", &service_chain(key)[4..], backend.port)
}

/// The set of clients that `sessionAffinity: ClientIP` keeps on `backend`.
fn affinity_set(key: &ServiceKey, backend: &Backend, timeout: u32) -> String {
    format!("aff-{}-t{timeout}", &endpoint_chain(key, backend)[3..])
}

impl Nft {
    /// A data plane that rejects traffic to `service_cidr` unless a service port matches. Nothing
    /// touches the kernel before the first [`Nft::apply`].
    pub fn new(service_cidr: &str) -> Self {
        Self {
            service_cidr: service_cidr.to_string(),
            programmed: HashMap::new(),
            desired: HashMap::new(),
            rebuild: true,
        }
    }

    /// Programs `changes` (a service port's new entry, or `None` to remove it) in one transaction.
    /// After a failure the next call rebuilds the whole table.
    pub async fn apply(&mut self, changes: &[(ServiceKey, Option<Entry>)]) -> anyhow::Result<()> {
        for (key, entry) in changes {
            match entry {
                Some(e) => self.desired.insert(*key, e.clone()),
                None => self.desired.remove(key),
            };
        }
        if !self.rebuild && changes.is_empty() {
            return Ok(());
        }
        let script = self.script(changes);
        match crate::net::nft(&script).await {
            Ok(()) => {
                if self.rebuild {
                    self.programmed = self.desired.clone();
                    self.rebuild = false;
                } else {
                    // Only the changed ports: an endpoint change costs the same at any table size.
                    for (key, _) in changes {
                        match self.desired.get(key) {
                            Some(e) => self.programmed.insert(*key, e.clone()),
                            None => self.programmed.remove(key),
                        };
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.rebuild = true;
                Err(e)
            }
        }
    }

    /// The transaction that brings the table from `programmed` to `desired` (`changes` name the
    /// service ports that differ).
    fn script(&self, changes: &[(ServiceKey, Option<Entry>)]) -> String {
        let mut s = String::new();
        if self.rebuild {
            self.base(&mut s);
            let empty = HashMap::new();
            let mut keys: Vec<&ServiceKey> = self.desired.keys().collect();
            keys.sort();
            for key in keys {
                change(&mut s, &empty, key, self.desired.get(key));
            }
        } else {
            let keys: BTreeSet<&ServiceKey> = changes.iter().map(|(k, _)| k).collect();
            for key in keys {
                change(&mut s, &self.programmed, key, self.desired.get(key));
            }
        }
        s
    }

    /// The table from scratch: an earlier agent's table goes in the same transaction. Priorities
    /// are numeric (dstnat is -100, srcnat 100, filter 0) since older nft names them per hook only.
    fn base(&self, s: &mut String) {
        let t = format!("inet {TABLE}");
        let cidr = &self.service_cidr;
        let lines = [
            format!("add table {t}"),
            format!("delete table {t}"),
            format!("add table {t}"),
            format!("add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}"),
            format!(
                "add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}"
            ),
            format!("add chain {t} reject-chain"),
            format!("add rule {t} reject-chain meta l4proto tcp reject with tcp reset"),
            format!("add rule {t} reject-chain reject"),
            format!("add chain {t} mark-for-masquerade"),
            format!("add rule {t} mark-for-masquerade meta mark set meta mark or {MASQUERADE_MARK:#x}"),
            format!("add chain {t} services"),
            format!("add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"),
            format!("add chain {t} endpoints-check"),
            format!(
                "add rule {t} endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
            ),
            // Service ports without endpoints are refused before any NAT.
            format!(
                "add chain {t} filter-prerouting {{ type filter hook prerouting priority -110 ; policy accept ; }}"
            ),
            format!("add rule {t} filter-prerouting ct state new jump endpoints-check"),
            format!(
                "add chain {t} filter-output {{ type filter hook output priority -110 ; policy accept ; }}"
            ),
            format!("add rule {t} filter-output ct state new jump endpoints-check"),
            // DNAT to a backend, for pods (prerouting) and the node's own processes (output).
            format!(
                "add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; policy accept ; }}"
            ),
            format!("add rule {t} nat-prerouting jump services"),
            format!("add chain {t} nat-output {{ type nat hook output priority -100 ; policy accept ; }}"),
            format!("add rule {t} nat-output jump services"),
            // Hairpin: a pod reaching itself through its service is masqueraded, so the answer
            // comes back through the node and is translated back.
            format!(
                "add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; policy accept ; }}"
            ),
            format!(
                "add rule {t} nat-postrouting meta mark and {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} meta mark set meta mark xor {MASQUERADE_MARK:#x} masquerade"
            ),
            // Whatever still heads for the service range after DNAT matched no service port.
            format!(
                "add chain {t} filter-forward {{ type filter hook forward priority -10 ; policy accept ; }}"
            ),
            format!("add rule {t} filter-forward ct state new ip daddr {cidr} jump reject-chain"),
            format!(
                "add chain {t} filter-output-post {{ type filter hook output priority -10 ; policy accept ; }}"
            ),
            format!("add rule {t} filter-output-post ct state new ip daddr {cidr} jump reject-chain"),
        ];
        for l in lines {
            s.push_str(&l);
            s.push('\n');
        }
    }
}

/// Appends the commands that take service port `key` from `programmed[key]` to `want`.
fn change(s: &mut String, programmed: &HashMap<ServiceKey, Entry>, key: &ServiceKey, want: Option<&Entry>) {
    let t = format!("inet {TABLE}");
    let old = programmed.get(key);
    let had_backends = old.is_some_and(|e| !e.backends.is_empty());
    let had_reject = old.is_some_and(|e| e.backends.is_empty());
    let wants_backends = want.is_some_and(|e| !e.backends.is_empty());
    let wants_reject = want.is_some_and(|e| e.backends.is_empty());
    let elem = element(key);
    let svc = service_chain(key);
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };

    if had_reject && !wants_reject {
        line(format!("delete element {t} no-endpoint-services {{ {elem} }}"));
    }
    if had_backends && !wants_backends {
        line(format!("delete element {t} service-ips {{ {elem} }}"));
    }
    if wants_reject && !had_reject {
        line(format!(
            "add element {t} no-endpoint-services {{ {elem} : goto reject-chain }}"
        ));
    }

    // The endpoint chains and affinity sets wanted now; the service chain is rewritten after them.
    let mut new_chains = BTreeSet::new();
    let mut new_sets = BTreeSet::new();
    if let Some(e) = want.filter(|_| wants_backends) {
        line(format!("add chain {t} {svc}"));
        line(format!("flush chain {t} {svc}"));
        if e.masquerade {
            // From outside under `externalTrafficPolicy: Cluster`: the answer must come back here.
            line(format!("add rule {t} {svc} jump mark-for-masquerade"));
        }
        let mut picks = String::new();
        for (i, b) in e.backends.iter().enumerate() {
            let ep = endpoint_chain(key, b);
            let addr = Ipv4Addr::from(b.addr);
            line(format!("add chain {t} {ep}"));
            line(format!("flush chain {t} {ep}"));
            line(format!(
                "add rule {t} {ep} ip saddr {addr} jump mark-for-masquerade"
            ));
            if e.affinity_timeout > 0 {
                let set = affinity_set(key, b, e.affinity_timeout);
                line(format!(
                    "add set {t} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {}s ; }}",
                    e.affinity_timeout
                ));
                line(format!("add rule {t} {ep} update @{set} {{ ip saddr }}"));
                line(format!("add rule {t} {svc} ip saddr @{set} goto {ep}"));
                new_sets.insert(set);
            }
            line(format!(
                "add rule {t} {ep} meta l4proto {} dnat ip to {addr}:{}",
                proto_name(key.protocol),
                b.port
            ));
            let _ = write!(picks, "{}{i} : goto {ep}", if i == 0 { "" } else { ", " });
            new_chains.insert(ep);
        }
        line(format!(
            "add rule {t} {svc} numgen random mod {} vmap {{ {picks} }}",
            e.backends.len()
        ));
        if !had_backends {
            line(format!("add element {t} service-ips {{ {elem} : goto {svc} }}"));
        }
    }

    // What the old entry had and the new one does not: the service chain (flushed first, so that
    // nothing refers to the endpoint chains and sets any more), then its endpoint chains and sets.
    if let Some(o) = old.filter(|_| had_backends) {
        if !wants_backends {
            line(format!("flush chain {t} {svc}"));
        }
        for b in &o.backends {
            let ep = endpoint_chain(key, b);
            if !new_chains.contains(&ep) {
                line(format!("flush chain {t} {ep}"));
                line(format!("delete chain {t} {ep}"));
            }
            if o.affinity_timeout > 0 {
                let set = affinity_set(key, b, o.affinity_timeout);
                if !new_sets.contains(&set) {
                    line(format!("delete set {t} {set}"));
                }
            }
        }
        if !wants_backends {
            line(format!("delete chain {t} {svc}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ServiceKey {
        ServiceKey {
            addr: [10, 96, 0, 10],
            port: 80,
            protocol: PROTO_TCP,
            pad: 0,
        }
    }

    fn backend(last: u8) -> Backend {
        Backend {
            addr: [10, 42, 0, last],
            port: 8080,
            pad: 0,
        }
    }

    fn entry(backends: &[u8], affinity: u32) -> Entry {
        Entry {
            backends: backends.iter().map(|b| backend(*b)).collect(),
            affinity_timeout: affinity,
            ..Entry::default()
        }
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    #[test]
    fn first_transaction_rebuilds_the_table_with_every_service() {
        let mut n = Nft::new("10.96.0.0/12");
        n.desired.insert(key(), entry(&[5, 6], 0));
        let s = n.script(&[]);
        let l = lines(&s);
        assert_eq!(
            &l[..3],
            [
                "add table inet skiff",
                "delete table inet skiff",
                "add table inet skiff"
            ]
        );
        assert!(l.contains(
            &"add rule inet skiff filter-forward ct state new ip daddr 10.96.0.0/12 jump reject-chain"
        ));
        assert!(l.contains(
            &"add element inet skiff service-ips { 10.96.0.10 . tcp . 80 : goto svc-10.96.0.10-tcp-80 }"
        ));
        assert!(l.contains(
            &"add rule inet skiff svc-10.96.0.10-tcp-80 numgen random mod 2 vmap { 0 : goto ep-10.96.0.10-tcp-80-10.42.0.5-8080, 1 : goto ep-10.96.0.10-tcp-80-10.42.0.6-8080 }"
        ));
        assert!(l.contains(&"add rule inet skiff ep-10.96.0.10-tcp-80-10.42.0.6-8080 meta l4proto tcp dnat ip to 10.42.0.6:8080"));
        assert!(!s.contains("delete element"), "{s}");
    }

    #[test]
    fn scaling_rewrites_the_service_chain_before_dropping_old_endpoints() {
        let mut n = Nft::new("10.96.0.0/12");
        n.rebuild = false;
        n.programmed.insert(key(), entry(&[5, 6], 0));
        n.desired.insert(key(), entry(&[6, 7], 0));
        let s = n.script(&[(key(), Some(entry(&[6, 7], 0)))]);
        let l = lines(&s);
        let pos = |needle: &str| {
            l.iter()
                .position(|x| *x == needle)
                .unwrap_or_else(|| panic!("{needle} in {s}"))
        };
        let rewrite = pos("flush chain inet skiff svc-10.96.0.10-tcp-80");
        let dropped = pos("delete chain inet skiff ep-10.96.0.10-tcp-80-10.42.0.5-8080");
        assert!(rewrite < dropped);
        assert!(
            !s.contains("delete chain inet skiff ep-10.96.0.10-tcp-80-10.42.0.6-8080"),
            "{s}"
        );
        // The map element already points at the service chain.
        assert!(!s.contains("element"), "{s}");
    }

    #[test]
    fn no_endpoints_moves_the_port_to_the_reject_map_and_back() {
        let mut n = Nft::new("10.96.0.0/12");
        n.rebuild = false;
        n.programmed.insert(key(), entry(&[5], 60));
        n.desired.insert(key(), entry(&[], 60));
        let s = n.script(&[(key(), Some(entry(&[], 60)))]);
        let l = lines(&s);
        assert!(l.contains(&"delete element inet skiff service-ips { 10.96.0.10 . tcp . 80 }"));
        assert!(l.contains(
            &"add element inet skiff no-endpoint-services { 10.96.0.10 . tcp . 80 : goto reject-chain }"
        ));
        assert!(l.contains(&"delete set inet skiff aff-10.96.0.10-tcp-80-10.42.0.5-8080-t60"));
        assert_eq!(l.last(), Some(&"delete chain inet skiff svc-10.96.0.10-tcp-80"));

        n.programmed.insert(key(), entry(&[], 60));
        n.desired.insert(key(), entry(&[5], 60));
        let s = n.script(&[(key(), Some(entry(&[5], 60)))]);
        let l = lines(&s);
        assert_eq!(
            l[0],
            "delete element inet skiff no-endpoint-services { 10.96.0.10 . tcp . 80 }"
        );
        assert!(l.contains(&"add rule inet skiff svc-10.96.0.10-tcp-80 ip saddr @aff-10.96.0.10-tcp-80-10.42.0.5-8080-t60 goto ep-10.96.0.10-tcp-80-10.42.0.5-8080"));
        assert!(l.contains(
            &"add element inet skiff service-ips { 10.96.0.10 . tcp . 80 : goto svc-10.96.0.10-tcp-80 }"
        ));
    }

    #[test]
    fn removing_a_port_removes_everything_it_had() {
        let mut n = Nft::new("10.96.0.0/12");
        n.rebuild = false;
        n.programmed.insert(key(), entry(&[5], 0));
        let s = n.script(&[(key(), None)]);
        assert_eq!(
            lines(&s),
            [
                "delete element inet skiff service-ips { 10.96.0.10 . tcp . 80 }",
                "flush chain inet skiff svc-10.96.0.10-tcp-80",
                "flush chain inet skiff ep-10.96.0.10-tcp-80-10.42.0.5-8080",
                "delete chain inet skiff ep-10.96.0.10-tcp-80-10.42.0.5-8080",
                "delete chain inet skiff svc-10.96.0.10-tcp-80",
            ]
        );
    }

    #[test]
    fn external_ports_under_cluster_policy_are_marked_for_masquerade() {
        let mut nft = Nft::new("10.96.0.0/12");
        nft.rebuild = false;
        let mut e = entry(&[5], 0);
        e.external = true;
        e.masquerade = true;
        nft.desired.insert(key(), e.clone());
        let s = nft.script(&[(key(), Some(e))]);
        let svc = service_chain(&key());
        let first = lines(&s)
            .into_iter()
            .position(|l| l.starts_with(&format!("add rule inet skiff {svc} ")))
            .expect("a service chain rule");
        assert_eq!(
            lines(&s)[first],
            format!("add rule inet skiff {svc} jump mark-for-masquerade")
        );
    }
}
