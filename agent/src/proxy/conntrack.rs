//! Stale UDP flows in the kernel's connection tracking (nftables plane). A UDP "connection" that was
//! DNATed to a backend keeps going there for as long as its client keeps sending, even after the
//! backend left the service: the NAT decision lives in its conntrack entry, not in the ruleset. So,
//! as upstream kube-proxy does, when a UDP service port loses a backend the entries that were
//! translated from that service port to that backend are deleted over ctnetlink; the client's next
//! datagram is then a new flow and picks a current backend. TCP needs no flush: a vanished backend
//! resets or times out its connections.
//!
//! The messages are built and parsed here (nfnetlink: `nlmsghdr`, `nfgenmsg`, then `CTA_*`
//! attributes), so the logic is unit-tested without root; only [`flush`] touches the kernel.

use std::net::Ipv4Addr;

use skiff_abi::{Backend, PROTO_UDP, ServiceKey};

use super::model::Entry;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const AF_INET: u8 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const HEADER: usize = 16 + 4;

/// One direction of a tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl Default for Tuple {
    fn default() -> Self {
        Tuple {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            protocol: 0,
            sport: 0,
            dport: 0,
        }
    }
}

/// A tracked flow: as the client sent it, and as the answers come back (from the backend, after
/// DNAT).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    /// The original direction.
    pub orig: Tuple,
    /// The reply direction.
    pub reply: Tuple,
    /// The conntrack zone (0 unless a ruleset sets one).
    pub zone: u16,
}

/// A service port that lost a backend: flows from it to that backend are stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// The service address and port the clients send to.
    pub service: ServiceKey,
    /// The backend that left.
    pub backend: Backend,
}

impl Stale {
    fn matches(&self, f: &Flow) -> bool {
        f.orig.protocol == self.service.protocol
            && f.orig.dst.octets() == self.service.addr
            && f.orig.dport == self.service.port
            && f.reply.src.octets() == self.backend.addr
            && f.reply.sport == self.backend.port
    }
}

/// The UDP backends that `before` had and `after` lacks, for one service port; and, when the
/// port gains its first backends, the flows to it that no rule translated (a client that sent
/// before the port had a backend keeps its untranslated entry for as long as it keeps sending,
/// and would never reach one: upstream's kube-proxy deletes those too). Such a flow answers from
/// the service address itself, so it is matched as a "backend" at the service's address and port.
pub fn stale(key: &ServiceKey, before: Option<&Entry>, after: Option<&Entry>) -> Vec<Stale> {
    if key.protocol != PROTO_UDP {
        return Vec::new();
    }
    let had = before.is_some_and(|b| !b.backends.is_empty());
    let has = after.is_some_and(|a| !a.backends.is_empty());
    if !had && has {
        return vec![Stale {
            service: *key,
            backend: Backend {
                addr: key.addr,
                port: key.port,
                pad: 0,
            },
        }];
    }
    let Some(before) = before else {
        return Vec::new();
    };
    before
        .backends
        .iter()
        .filter(|b| !after.is_some_and(|a| a.backends.contains(b)))
        .map(|b| Stale {
            service: *key,
            backend: *b,
        })
        .collect()
}

/// Deletes the conntrack entries of `stale` flows in the node's network namespace; returns how
/// many went. Blocking (netlink round trips): call it off the async runtime.
pub fn flush(stale: &[Stale]) -> std::io::Result<usize> {
    if stale.is_empty() {
        return Ok(0);
    }
    crate::network::pod_net::in_node_netns(|| {
        let sock = Netlink::open()?;
        let flows = sock.dump()?;
        let mut deleted = 0;
        for f in flows.iter().filter(|f| stale.iter().any(|s| s.matches(f))) {
            match sock.delete(f) {
                Ok(()) => deleted += 1,
                // Gone meanwhile (expired, or deleted by someone else).
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    })?
}

/// A ctnetlink socket.
struct Netlink {
    fd: std::os::fd::OwnedFd,
}

impl Netlink {
    fn open() -> std::io::Result<Netlink> {
        use nix::sys::socket::{AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket};
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &NetlinkAddr::new(0, 0))?;
        Ok(Netlink { fd })
    }

    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        use nix::sys::socket::{MsgFlags, send};
        send(std::os::fd::AsRawFd::as_raw_fd(&self.fd), msg, MsgFlags::empty())?;
        Ok(())
    }

    /// Reads messages until the dump ends (or the ack arrives), handing each payload to `each`.
    fn receive(&self, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        use nix::sys::socket::{MsgFlags, recv};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                &mut buf,
                MsgFlags::empty(),
            )?;
            if n == 0 {
                return Ok(());
            }
            let mut rest = &buf[..n];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let flags = u16::from_ne_bytes([rest[6], rest[7]]);
                if len < 16 || len > rest.len() {
                    return Err(std::io::Error::other("a truncated netlink message"));
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = rest
                            .get(16..20)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                            .unwrap_or(0);
                        return match code {
                            0 => Ok(()),
                            c => Err(std::io::Error::from_raw_os_error(-c)),
                        };
                    }
                    _ => each(&rest[..len]),
                }
                // A single message that is not part of a multipart dump ends the answer.
                if flags & 0x2 == 0 {
                    return Ok(());
                }
                rest = &rest[align(len).min(rest.len())..];
            }
        }
    }

    fn dump(&self) -> std::io::Result<Vec<Flow>> {
        self.send(&dump_request())?;
        let mut flows = Vec::new();
        self.receive(|msg| flows.extend(parse_flow(msg)))?;
        Ok(flows)
    }

    fn delete(&self, flow: &Flow) -> std::io::Result<()> {
        self.send(&delete_request(flow))?;
        self.receive(|_| {})
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message: header (length filled in), `nfgenmsg` for IPv4, then `attrs`.
fn message(kind: u16, flags: u16, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + attrs.len());
    m.extend_from_slice(&((HEADER + attrs.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[AF_INET, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(out.len()), 0);
}

fn nested(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    fill(&mut inner);
    attr(out, kind | NLA_F_NESTED, &inner);
}

fn dump_request() -> Vec<u8> {
    message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, &[])
}

/// A tuple as the nested attribute `kind` (`CTA_TUPLE_ORIG` or `CTA_TUPLE_REPLY`).
fn tuple(out: &mut Vec<u8>, kind: u16, t: &Tuple) {
    nested(out, kind, |a| {
        nested(a, CTA_TUPLE_IP, |a| {
            attr(a, CTA_IP_V4_SRC, &t.src.octets());
            attr(a, CTA_IP_V4_DST, &t.dst.octets());
        });
        nested(a, CTA_TUPLE_PROTO, |a| {
            attr(a, CTA_PROTO_NUM, &[t.protocol]);
            attr(a, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
            attr(a, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        });
    });
}

fn delete_request(flow: &Flow) -> Vec<u8> {
    let mut attrs = Vec::new();
    tuple(&mut attrs, CTA_TUPLE_ORIG, &flow.orig);
    if flow.zone != 0 {
        attr(&mut attrs, CTA_ZONE, &flow.zone.to_be_bytes());
    }
    message(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, &attrs)
}

/// The attributes in `buf`, as (type without flags, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((kind, payload))
    })
}

fn parse_tuple(buf: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (kind, payload) in attrs(buf) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, p) in attrs(payload) {
                    let Ok(a) = <[u8; 4]>::try_from(p) else { continue };
                    match k {
                        CTA_IP_V4_SRC => t.src = a.into(),
                        CTA_IP_V4_DST => t.dst = a.into(),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, p) in attrs(payload) {
                    match (k, p) {
                        (CTA_PROTO_NUM, [n, ..]) => t.protocol = *n,
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => t.sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => t.dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// The flow in one `IPCTNL_MSG_CT_NEW` message of a dump (IPv4 only).
fn parse_flow(msg: &[u8]) -> Option<Flow> {
    if msg.len() < HEADER || msg[16] != AF_INET {
        return None;
    }
    let mut f = Flow::default();
    for (kind, payload) in attrs(&msg[HEADER..]) {
        match (kind, payload) {
            (CTA_TUPLE_ORIG, _) => f.orig = parse_tuple(payload),
            (CTA_TUPLE_REPLY, _) => f.reply = parse_tuple(payload),
            (CTA_ZONE, [a, b, ..]) => f.zone = u16::from_be_bytes([*a, *b]),
            _ => {}
        }
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_abi::PROTO_TCP;

    fn key(protocol: u8) -> ServiceKey {
        ServiceKey {
            addr: [10, 96, 0, 10],
            port: 53,
            protocol,
            pad: 0,
        }
    }

    fn backend(last: u8) -> Backend {
        Backend {
            addr: [10, 244, 0, last],
            port: 5353,
            pad: 0,
        }
    }

    fn entry(backends: &[u8]) -> Entry {
        Entry {
            backends: backends.iter().map(|&b| backend(b)).collect(),
            ..Entry::default()
        }
    }

    fn flow(backend_last: u8) -> Flow {
        Flow {
            orig: Tuple {
                src: Ipv4Addr::new(10, 244, 0, 9),
                dst: Ipv4Addr::new(10, 96, 0, 10),
                protocol: PROTO_UDP,
                sport: 40000,
                dport: 53,
            },
            reply: Tuple {
                src: Ipv4Addr::new(10, 244, 0, backend_last),
                dst: Ipv4Addr::new(10, 244, 0, 9),
                protocol: PROTO_UDP,
                sport: 5353,
                dport: 40000,
            },
            zone: 0,
        }
    }

    #[test]
    fn only_udp_backends_that_left_are_stale() {
        let k = key(PROTO_UDP);
        let gone = stale(&k, Some(&entry(&[2, 3, 4])), Some(&entry(&[3, 5])));
        assert_eq!(
            gone,
            vec![
                Stale {
                    service: k,
                    backend: backend(2)
                },
                Stale {
                    service: k,
                    backend: backend(4)
                }
            ]
        );
        assert_eq!(stale(&k, Some(&entry(&[2])), None).len(), 1);
        assert!(stale(&key(PROTO_TCP), Some(&entry(&[2])), None).is_empty());
        assert!(stale(&k, Some(&entry(&[])), Some(&entry(&[]))).is_empty());
    }

    #[test]
    fn a_port_gaining_its_first_backend_drops_the_flows_no_rule_translated() {
        let k = key(PROTO_UDP);
        for before in [None, Some(entry(&[]))] {
            let s = stale(&k, before.as_ref(), Some(&entry(&[2])));
            assert_eq!(s.len(), 1);
            // Sent before there was a backend: its answers would come from the service address.
            let mut untranslated = flow(2);
            untranslated.reply.src = Ipv4Addr::new(10, 96, 0, 10);
            untranslated.reply.sport = 53;
            assert!(s[0].matches(&untranslated));
            assert!(!s[0].matches(&flow(2)), "a translated flow stays");
        }
        assert!(stale(&key(PROTO_TCP), None, Some(&entry(&[2]))).is_empty());
    }

    #[test]
    fn a_stale_backend_matches_only_flows_translated_to_it_from_its_service() {
        let s = stale(&key(PROTO_UDP), Some(&entry(&[2])), None)[0];
        assert!(s.matches(&flow(2)));
        assert!(!s.matches(&flow(3)));
        let mut other_port = flow(2);
        other_port.orig.dport = 54;
        assert!(!s.matches(&other_port));
    }

    /// The delete request is what the kernel sends back in a dump: parsing it as a dump message
    /// gives the flow's original tuple.
    #[test]
    fn delete_requests_carry_the_original_tuple() {
        let mut f = flow(2);
        f.zone = 7;
        let msg = delete_request(&f);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 0x102);
        let parsed = parse_flow(&msg).unwrap();
        assert_eq!(parsed.orig, f.orig);
        assert_eq!(parsed.zone, 7);
        assert_eq!(parsed.reply, Tuple::default());
    }

    #[test]
    fn dump_messages_give_both_directions() {
        // A kernel dump message carries both tuples (and more attributes, skipped here).
        let f = flow(3);
        let mut attrs = Vec::new();
        tuple(&mut attrs, CTA_TUPLE_ORIG, &f.orig);
        tuple(&mut attrs, CTA_TUPLE_REPLY, &f.reply);
        attr(&mut attrs, 3, &[0, 0, 0, 8]);
        let msg = message(0, 0x2, &attrs);
        assert_eq!(parse_flow(&msg), Some(f));
    }
}
