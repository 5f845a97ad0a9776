//! The nftables data plane: one `inet skiff` table in the node's network namespace, shaped like
//! upstream kube-proxy's nftables mode. A verdict map keyed by (cluster IP, protocol, port) sends a
//! new connection, in one lookup, to a chain shared by every service port with the same number of
//! endpoints (`pick-N`), which DNATs to the endpoint in slot `numgen random mod N` of the
//! `endpoints` map. A service port is thus only map elements, so the table's size (and what `nft`
//! reads back before every transaction) does not grow with the services, and an endpoint change is
//! a few element updates. Ports with `sessionAffinity: ClientIP` get upstream's shape instead: their
//! own service chain and one chain and timed set per endpoint. Service ports without endpoints are
//! in a second map that rejects them (TCP reset, or ICMP port unreachable), and anything else sent
//! to the service range is rejected too, so it never leaves the node.
//!
//! Every change is one `nft -f` transaction: a service is never seen half-written.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use skiff_abi::{Backend, MASQUERADE_MARK, PROTO_SCTP, PROTO_TCP, PROTO_UDP, ServiceKey};

use super::conntrack;
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
    /// The shared `pick-N` chains the kernel holds.
    picks: BTreeSet<(usize, bool)>,
    /// Backend addresses in the `hairpin` set, with how many programmed ports use each.
    hairpins: HashMap<[u8; 4], usize>,
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
    /// What the table holds: service ports and their backends.
    pub fn entries(&self) -> Vec<(&'static str, usize)> {
        let backends = self.programmed.values().map(|e| e.backends.len()).sum();
        vec![("services", self.programmed.len()), ("backends", backends)]
    }

    /// A data plane that rejects traffic to `service_cidr` unless a service port matches. Nothing
    /// touches the kernel before the first [`Nft::apply`].
    pub fn new(service_cidr: &str) -> Self {
        Self {
            service_cidr: service_cidr.to_string(),
            programmed: HashMap::new(),
            desired: HashMap::new(),
            picks: BTreeSet::new(),
            hairpins: HashMap::new(),
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
        let mut tx = self.script(changes);
        let mut result = crate::network::pod_net::nft(&tx.s).await;
        if let Err(e) = &result
            && !self.rebuild
        {
            // A change that fails on its own goes in with the whole table at once: nft 1.0.6 cannot
            // add a rule that uses the `endpoints` map once it has to read that map back from
            // Linux 6.1 ("conflicting protocols specified: ip vs. th"), so there a new `pick-N`
            // chain only goes in with a rebuild.
            tracing::debug!(error = %format!("{e:#}"), "an incremental nftables transaction failed; rebuilding the table");
            self.rebuild = true;
            tx = self.script(changes);
            result = crate::network::pod_net::nft(&tx.s).await;
        }
        match result {
            Ok(()) => {
                self.flush_stale_udp(changes).await;
                self.picks = tx.picks;
                self.hairpins = tx.hairpins;
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

    /// Deletes the conntrack entries of UDP flows to backends that the committed transaction took
    /// out of their service ports (while `programmed` still holds what was there before).
    async fn flush_stale_udp(&self, changes: &[(ServiceKey, Option<Entry>)]) {
        let keys: BTreeSet<&ServiceKey> = if self.rebuild {
            self.programmed.keys().chain(self.desired.keys()).collect()
        } else {
            changes.iter().map(|(k, _)| k).collect()
        };
        let stale: Vec<conntrack::Stale> = keys
            .into_iter()
            .flat_map(|k| conntrack::stale(k, self.programmed.get(k), self.desired.get(k)))
            .collect();
        if stale.is_empty() {
            return;
        }
        match tokio::task::spawn_blocking(move || conntrack::flush(&stale)).await {
            Ok(Ok(n)) => tracing::debug!(deleted = n, "stale UDP conntrack entries deleted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "deleting stale UDP conntrack entries failed"),
            Err(e) => tracing::warn!(error = %e, "the conntrack flush task failed"),
        }
    }

    /// The transaction that brings the table from `programmed` to `desired` (`changes` name the
    /// service ports that differ).
    fn script(&self, changes: &[(ServiceKey, Option<Entry>)]) -> Tx {
        let mut tx = Tx {
            s: String::new(),
            picks: BTreeSet::new(),
            hairpins: HashMap::new(),
        };
        if self.rebuild {
            self.base(&mut tx.s);
            let empty = HashMap::new();
            let keys: BTreeSet<&ServiceKey> = self.desired.keys().collect();
            for key in keys {
                tx.change(&empty, key, self.desired.get(key));
            }
        } else {
            tx.picks = self.picks.clone();
            tx.hairpins = self.hairpins.clone();
            let keys: BTreeSet<&ServiceKey> = changes.iter().map(|(k, _)| k).collect();
            for key in keys {
                tx.change(&self.programmed, key, self.desired.get(key));
            }
        }
        tx
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
            // Slot i of a service port's endpoints: the `pick-N` chains DNAT through it.
            format!(
                "add map {t} endpoints {{ typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport ; }}"
            ),
            // Every backend address twice: a connection DNATed back to its own source (hairpin).
            format!("add set {t} hairpin {{ type ipv4_addr . ipv4_addr ; }}"),
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
            format!("add rule {t} nat-postrouting ct status dnat ip saddr . ip daddr @hairpin masquerade"),
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

/// How a service port is programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Not at all.
    Absent,
    /// Refused: an element of `no-endpoint-services`.
    Reject,
    /// The common case: `service-ips` sends it to the shared chain `pick-N` (`pick-N-masq`), which
    /// DNATs through the `endpoints` map; no chain of its own.
    Pick { count: usize, masquerade: bool },
    /// `sessionAffinity: ClientIP`: its own service chain and one chain and timed set per
    /// endpoint, as upstream.
    Chains,
}

fn shape(entry: Option<&Entry>) -> Shape {
    match entry {
        None => Shape::Absent,
        Some(e) if e.backends.is_empty() => Shape::Reject,
        Some(e) if e.affinity_timeout > 0 => Shape::Chains,
        Some(e) => Shape::Pick {
            count: e.backends.len(),
            masquerade: e.masquerade,
        },
    }
}

/// The shared chain that picks among `count` endpoints.
fn pick_chain(count: usize, masquerade: bool) -> String {
    if masquerade {
        format!("pick-{count}-masq")
    } else {
        format!("pick-{count}")
    }
}

/// The chain `service-ips` sends `key` to, when it has one.
fn target(shape: Shape, key: &ServiceKey) -> Option<String> {
    match shape {
        Shape::Pick { count, masquerade } => Some(pick_chain(count, masquerade)),
        Shape::Chains => Some(service_chain(key)),
        Shape::Absent | Shape::Reject => None,
    }
}

/// The backends a port reaches through the `endpoints` map (slot `i` is element `... . i`).
fn mapped(entry: Option<&Entry>) -> &[Backend] {
    match (shape(entry), entry) {
        (Shape::Pick { .. }, Some(e)) => &e.backends,
        _ => &[],
    }
}

/// One transaction being written, with what the kernel will hold once it commits.
struct Tx {
    s: String,
    /// The `pick-N` chains that exist.
    picks: BTreeSet<(usize, bool)>,
    /// Backend addresses in the `hairpin` set, with how many service ports use each.
    hairpins: HashMap<[u8; 4], usize>,
}

impl Tx {
    fn line(&mut self, l: String) {
        self.s.push_str(&l);
        self.s.push('\n');
    }

    fn hairpin(&mut self, addr: [u8; 4], add: bool) {
        let t = format!("inet {TABLE}");
        let a = Ipv4Addr::from(addr);
        let n = self.hairpins.entry(addr).or_default();
        if add {
            *n += 1;
            if *n == 1 {
                self.line(format!("add element {t} hairpin {{ {a} . {a} }}"));
            }
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.hairpins.remove(&addr);
                self.line(format!("delete element {t} hairpin {{ {a} . {a} }}"));
            }
        }
    }

    /// Appends the commands that take service port `key` from `programmed[key]` to `want`: map
    /// elements that go away first, then chains, then new elements (which may point at them), then
    /// chains nothing points at any more.
    fn change(&mut self, programmed: &HashMap<ServiceKey, Entry>, key: &ServiceKey, want: Option<&Entry>) {
        let t = format!("inet {TABLE}");
        let old = programmed.get(key);
        let (was, will) = (shape(old), shape(want));
        let elem = element(key);
        let (from, to) = (target(was, key), target(will, key));
        let (old_slots, new_slots) = (mapped(old), mapped(want));
        let slots = old_slots.len().max(new_slots.len());

        if was == Shape::Reject && will != Shape::Reject {
            self.line(format!("delete element {t} no-endpoint-services {{ {elem} }}"));
        }
        if from.is_some() && from != to {
            self.line(format!("delete element {t} service-ips {{ {elem} }}"));
        }
        for i in 0..slots {
            if old_slots.get(i).is_some() && old_slots.get(i) != new_slots.get(i) {
                self.line(format!("delete element {t} endpoints {{ {elem} . {i} }}"));
            }
        }

        if let Shape::Pick { count, masquerade } = will
            && self.picks.insert((count, masquerade))
        {
            let chain = pick_chain(count, masquerade);
            self.line(format!("add chain {t} {chain}"));
            if masquerade {
                // From outside under `externalTrafficPolicy: Cluster`: the answer must come back here.
                self.line(format!("add rule {t} {chain} jump mark-for-masquerade"));
            }
            self.line(format!(
                "add rule {t} {chain} dnat ip to ip daddr . meta l4proto . th dport . numgen random mod {count} map @endpoints"
            ));
        }
        let (new_chains, new_sets) = match want {
            Some(e) if will == Shape::Chains => self.chains(key, e),
            _ => Default::default(),
        };

        for (i, b) in new_slots.iter().enumerate() {
            if old_slots.get(i) != Some(b) {
                let addr = Ipv4Addr::from(b.addr);
                self.line(format!(
                    "add element {t} endpoints {{ {elem} . {i} : {addr} . {} }}",
                    b.port
                ));
            }
        }
        for b in want.map(|e| e.backends.as_slice()).unwrap_or_default() {
            self.hairpin(b.addr, true);
        }
        if let Some(to) = to.as_ref().filter(|_| from != to) {
            self.line(format!("add element {t} service-ips {{ {elem} : goto {to} }}"));
        }
        if will == Shape::Reject && was != Shape::Reject {
            self.line(format!(
                "add element {t} no-endpoint-services {{ {elem} : goto reject-chain }}"
            ));
        }
        for b in old.map(|e| e.backends.as_slice()).unwrap_or_default() {
            self.hairpin(b.addr, false);
        }

        // The old service chain (flushed first, so nothing refers to its endpoint chains and sets
        // any more), then its endpoint chains and sets.
        if let Some(o) = old.filter(|_| was == Shape::Chains) {
            let svc = service_chain(key);
            if will != Shape::Chains {
                self.line(format!("flush chain {t} {svc}"));
            }
            for b in &o.backends {
                let ep = endpoint_chain(key, b);
                if !new_chains.contains(&ep) {
                    self.line(format!("flush chain {t} {ep}"));
                    self.line(format!("delete chain {t} {ep}"));
                }
                let set = affinity_set(key, b, o.affinity_timeout);
                if !new_sets.contains(&set) {
                    self.line(format!("delete set {t} {set}"));
                }
            }
            if will != Shape::Chains {
                self.line(format!("delete chain {t} {svc}"));
            }
        }
    }

    /// Writes (or rewrites) the service chain of an affinity port with its endpoint chains and
    /// sets; returns their names.
    fn chains(&mut self, key: &ServiceKey, e: &Entry) -> (BTreeSet<String>, BTreeSet<String>) {
        let t = format!("inet {TABLE}");
        let svc = service_chain(key);
        let (mut chains, mut sets) = (BTreeSet::new(), BTreeSet::new());
        self.line(format!("add chain {t} {svc}"));
        self.line(format!("flush chain {t} {svc}"));
        if e.masquerade {
            self.line(format!("add rule {t} {svc} jump mark-for-masquerade"));
        }
        let mut picks = String::new();
        for (i, b) in e.backends.iter().enumerate() {
            let ep = endpoint_chain(key, b);
            let addr = Ipv4Addr::from(b.addr);
            let set = affinity_set(key, b, e.affinity_timeout);
            self.line(format!("add chain {t} {ep}"));
            self.line(format!("flush chain {t} {ep}"));
            self.line(format!(
                "add set {t} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {}s ; }}",
                e.affinity_timeout
            ));
            self.line(format!("add rule {t} {ep} update @{set} {{ ip saddr }}"));
            self.line(format!("add rule {t} {svc} ip saddr @{set} goto {ep}"));
            self.line(format!(
                "add rule {t} {ep} meta l4proto {} dnat ip to {addr}:{}",
                proto_name(key.protocol),
                b.port
            ));
            let _ = write!(picks, "{}{i} : goto {ep}", if i == 0 { "" } else { ", " });
            chains.insert(ep);
            sets.insert(set);
        }
        self.line(format!(
            "add rule {t} {svc} numgen random mod {} vmap {{ {picks} }}",
            e.backends.len()
        ));
        (chains, sets)
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

    fn script(n: &Nft, changes: &[(ServiceKey, Option<Entry>)]) -> String {
        n.script(changes).s
    }

    /// `n` after `changes` went in (what `apply` records on success).
    fn committed(n: &mut Nft, changes: &[(ServiceKey, Option<Entry>)]) -> String {
        for (k, e) in changes {
            match e {
                Some(e) => n.desired.insert(*k, e.clone()),
                None => n.desired.remove(k),
            };
        }
        let tx = n.script(changes);
        n.programmed = n.desired.clone();
        n.picks = tx.picks;
        n.hairpins = tx.hairpins;
        n.rebuild = false;
        tx.s
    }

    #[test]
    fn first_transaction_rebuilds_the_table_with_every_service() {
        let mut n = Nft::new("10.96.0.0/12");
        n.desired.insert(key(), entry(&[5, 6], 0));
        let s = script(&n, &[]);
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
        let pick = "add rule inet skiff pick-2 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints";
        let elem = "add element inet skiff service-ips { 10.96.0.10 . tcp . 80 : goto pick-2 }";
        assert!(l.contains(&pick) && l.contains(&elem), "{s}");
        for (slot, last) in [(0, 5), (1, 6)] {
            let e = format!(
                "add element inet skiff endpoints {{ 10.96.0.10 . tcp . 80 . {slot} : 10.42.0.{last} . 8080 }}"
            );
            assert!(l.contains(&e.as_str()), "{e} in {s}");
            let h = format!("add element inet skiff hairpin {{ 10.42.0.{last} . 10.42.0.{last} }}");
            assert!(l.contains(&h.as_str()), "{h} in {s}");
        }
        assert!(!s.contains("delete element") && !s.contains("svc-"), "{s}");
    }

    #[test]
    fn an_endpoint_change_touches_only_its_elements() {
        let mut n = Nft::new("10.96.0.0/12");
        committed(&mut n, &[(key(), Some(entry(&[5, 6], 0)))]);
        let s = committed(&mut n, &[(key(), Some(entry(&[5, 7], 0)))]);
        assert_eq!(
            lines(&s),
            [
                "delete element inet skiff endpoints { 10.96.0.10 . tcp . 80 . 1 }",
                "add element inet skiff endpoints { 10.96.0.10 . tcp . 80 . 1 : 10.42.0.7 . 8080 }",
                "add element inet skiff hairpin { 10.42.0.7 . 10.42.0.7 }",
                "delete element inet skiff hairpin { 10.42.0.6 . 10.42.0.6 }",
            ]
        );
        // Scaling up moves the port to the next shared chain, created once.
        let s = committed(&mut n, &[(key(), Some(entry(&[5, 7, 8], 0)))]);
        let l = lines(&s);
        let pos = |needle: &str| {
            l.iter()
                .position(|x| *x == needle)
                .unwrap_or_else(|| panic!("{needle} in {s}"))
        };
        assert!(
            pos("add chain inet skiff pick-3")
                < pos("add element inet skiff service-ips { 10.96.0.10 . tcp . 80 : goto pick-3 }")
        );
        assert!(
            pos("delete element inet skiff service-ips { 10.96.0.10 . tcp . 80 }")
                < pos("add chain inet skiff pick-3")
        );
        let other = ServiceKey { port: 81, ..key() };
        let s = committed(&mut n, &[(other, Some(entry(&[5, 7, 9], 0)))]);
        assert!(!s.contains("add chain"), "{s}");
        // A backend address shared by two ports stays in the hairpin set until both let it go.
        assert!(!s.contains("hairpin { 10.42.0.5"), "{s}");
        let s = committed(&mut n, &[(key(), None)]);
        assert!(!s.contains("hairpin { 10.42.0.5"), "{s}");
        assert!(
            s.contains("delete element inet skiff hairpin { 10.42.0.8 . 10.42.0.8 }"),
            "{s}"
        );
    }

    #[test]
    fn affinity_ports_get_their_own_chains_and_lose_them_again() {
        let mut n = Nft::new("10.96.0.0/12");
        committed(&mut n, &[(key(), Some(entry(&[5, 6], 0)))]);
        let s = committed(&mut n, &[(key(), Some(entry(&[5, 6], 60)))]);
        let l = lines(&s);
        let pos = |needle: &str| {
            l.iter()
                .position(|x| *x == needle)
                .unwrap_or_else(|| panic!("{needle} in {s}"))
        };
        assert!(
            pos("delete element inet skiff endpoints { 10.96.0.10 . tcp . 80 . 0 }")
                < pos("add chain inet skiff svc-10.96.0.10-tcp-80")
        );
        assert!(l.contains(&"add rule inet skiff svc-10.96.0.10-tcp-80 ip saddr @aff-10.96.0.10-tcp-80-10.42.0.5-8080-t60 goto ep-10.96.0.10-tcp-80-10.42.0.5-8080"));
        assert!(l.contains(&"add rule inet skiff ep-10.96.0.10-tcp-80-10.42.0.6-8080 meta l4proto tcp dnat ip to 10.42.0.6:8080"));
        assert!(
            pos(
                "add rule inet skiff svc-10.96.0.10-tcp-80 numgen random mod 2 vmap { 0 : goto ep-10.96.0.10-tcp-80-10.42.0.5-8080, 1 : goto ep-10.96.0.10-tcp-80-10.42.0.6-8080 }"
            ) < pos(
                "add element inet skiff service-ips { 10.96.0.10 . tcp . 80 : goto svc-10.96.0.10-tcp-80 }"
            )
        );
        assert!(!s.contains("hairpin"), "{s}");

        // One endpoint goes: only its chain and set are dropped, after the service chain's rewrite.
        let s = committed(&mut n, &[(key(), Some(entry(&[6], 60)))]);
        let l = lines(&s);
        let pos = |needle: &str| {
            l.iter()
                .position(|x| *x == needle)
                .unwrap_or_else(|| panic!("{needle} in {s}"))
        };
        assert!(
            pos("flush chain inet skiff svc-10.96.0.10-tcp-80")
                < pos("delete chain inet skiff ep-10.96.0.10-tcp-80-10.42.0.5-8080")
        );
        assert!(l.contains(&"delete set inet skiff aff-10.96.0.10-tcp-80-10.42.0.5-8080-t60"));
        assert!(
            !s.contains("delete chain inet skiff ep-10.96.0.10-tcp-80-10.42.0.6-8080")
                && !s.contains("service-ips"),
            "{s}"
        );

        // Without endpoints the port is refused and every chain goes.
        let s = committed(&mut n, &[(key(), Some(entry(&[], 60)))]);
        assert_eq!(
            lines(&s),
            [
                "delete element inet skiff service-ips { 10.96.0.10 . tcp . 80 }",
                "add element inet skiff no-endpoint-services { 10.96.0.10 . tcp . 80 : goto reject-chain }",
                "delete element inet skiff hairpin { 10.42.0.6 . 10.42.0.6 }",
                "flush chain inet skiff svc-10.96.0.10-tcp-80",
                "flush chain inet skiff ep-10.96.0.10-tcp-80-10.42.0.6-8080",
                "delete chain inet skiff ep-10.96.0.10-tcp-80-10.42.0.6-8080",
                "delete set inet skiff aff-10.96.0.10-tcp-80-10.42.0.6-8080-t60",
                "delete chain inet skiff svc-10.96.0.10-tcp-80",
            ]
        );
        let s = committed(&mut n, &[(key(), Some(entry(&[5], 0)))]);
        assert_eq!(
            lines(&s)[0],
            "delete element inet skiff no-endpoint-services { 10.96.0.10 . tcp . 80 }"
        );
    }

    #[test]
    fn removing_a_port_removes_everything_it_had() {
        let mut n = Nft::new("10.96.0.0/12");
        committed(&mut n, &[(key(), Some(entry(&[5], 0)))]);
        let s = committed(&mut n, &[(key(), None)]);
        assert_eq!(
            lines(&s),
            [
                "delete element inet skiff service-ips { 10.96.0.10 . tcp . 80 }",
                "delete element inet skiff endpoints { 10.96.0.10 . tcp . 80 . 0 }",
                "delete element inet skiff hairpin { 10.42.0.5 . 10.42.0.5 }",
            ]
        );
    }

    #[test]
    fn external_ports_under_cluster_policy_are_marked_for_masquerade() {
        let mut n = Nft::new("10.96.0.0/12");
        let mut e = entry(&[5], 0);
        e.external = true;
        e.masquerade = true;
        let s = committed(&mut n, &[(key(), Some(e))]);
        let l = lines(&s);
        let chain = l
            .iter()
            .position(|x| *x == "add chain inet skiff pick-1-masq")
            .expect("pick-1-masq");
        assert_eq!(
            l[chain + 1],
            "add rule inet skiff pick-1-masq jump mark-for-masquerade"
        );
        assert!(
            l.contains(&"add element inet skiff service-ips { 10.96.0.10 . tcp . 80 : goto pick-1-masq }")
        );
    }
}
