//! The tc programs on the node's interfaces: connections from outside the node to a NodePort or an
//! external IP, translated per packet (the socket hooks never see them).
//!
//! `nodeport_in` (ingress) sends a new connection to a backend chosen as the socket hooks choose,
//! remembers it in `nat_flows_v1` (so its later packets follow) and in `nat_replies_v1`, and rewrites
//! the destination; the kernel then routes the packet to the pod, here or on another node. Under
//! `externalTrafficPolicy: Cluster` the packet is also marked for the node's masquerade rule, so the
//! answer from a pod on another node comes back through this one. `nodeport_out` (egress) gives
//! the answers the address the client sent to. A service port without endpoints (a cluster IP
//! routed here from elsewhere, a NodePort, an external IP) is answered by `reject`: a TCP reset or
//! an ICMP port unreachable, as kube-proxy rejects it.

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK};
use aya_ebpf::macros::classifier;
use aya_ebpf::programs::TcContext;
use skiff_abi::{
    Backend, FLAG_EXTERNAL, FLAG_MASQUERADE, FlowKey, Frontend, MASQUERADE_MARK, NatTarget, PROTO_TCP,
    PROTO_UDP, ServiceKey,
};

use crate::maps::{NAT_FLOWS_V1, NAT_REPLIES_V1, SERVICES_V1};
use crate::sock_addr::pick;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Offsets in the IPv4 header.
const IP_FRAG: usize = ETH_HLEN + 6;
const IP_PROTO: usize = ETH_HLEN + 9;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
/// Session-affinity clients from outside are keyed by address, tagged apart from the socket hooks'
/// network namespace cookies.
const REMOTE_CLIENT: u64 = 1 << 63;

/// A parsed TCP or UDP packet over IPv4.
struct Packet {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    protocol: u8,
    /// Offset of the transport header.
    l4: usize,
}

impl Packet {
    fn parse(ctx: &TcContext) -> Option<Packet> {
        let ethertype: u16 = ctx.load(12).ok()?;
        if u16::from_be(ethertype) != ETH_P_IP {
            return None;
        }
        let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        // Later fragments carry no ports.
        let frag: u16 = ctx.load(IP_FRAG).ok()?;
        if u16::from_be(frag) & 0x1fff != 0 {
            return None;
        }
        let protocol: u8 = ctx.load(IP_PROTO).ok()?;
        if protocol != PROTO_TCP && protocol != PROTO_UDP {
            return None;
        }
        let l4 = ETH_HLEN + ihl;
        let sport: u16 = ctx.load(l4).ok()?;
        let dport: u16 = ctx.load(l4 + 2).ok()?;
        Some(Packet {
            src: ctx.load(IP_SRC).ok()?,
            dst: ctx.load(IP_DST).ok()?,
            sport: u16::from_be(sport),
            dport: u16::from_be(dport),
            protocol,
            l4,
        })
    }

    /// The connection this packet belongs to, keyed by the remote client: arriving, the client is
    /// the source; leaving, the destination.
    fn flow(&self, arriving: bool) -> FlowKey {
        let ((client, client_port), (peer, peer_port)) = if arriving {
            ((self.src, self.sport), (self.dst, self.dport))
        } else {
            ((self.dst, self.dport), (self.src, self.sport))
        };
        FlowKey {
            client,
            peer,
            client_port,
            peer_port,
            protocol: self.protocol,
            pad: [0; 3],
        }
    }

    /// Offset of the transport checksum, and the flags its updates need.
    fn csum(&self) -> (usize, u64) {
        if self.protocol == PROTO_TCP {
            (self.l4 + 16, 0)
        } else {
            // A UDP checksum of zero means "none" and must stay so.
            (self.l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))
        }
    }
}

/// Rewrites the address at `addr_off` and the port at `port_off` (both in network order in the
/// packet), fixing the IP and transport checksums.
fn rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    addr_off: usize,
    port_off: usize,
    (old_addr, new_addr): ([u8; 4], [u8; 4]),
    (old_port, new_port): (u16, u16),
) -> Option<()> {
    let (csum, flags) = pkt.csum();
    if old_addr != new_addr {
        let (from, to) = (
            u64::from(u32::from_ne_bytes(old_addr)),
            u64::from(u32::from_ne_bytes(new_addr)),
        );
        ctx.l4_csum_replace(csum, from, to, flags | u64::from(BPF_F_PSEUDO_HDR) | 4)
            .ok()?;
        ctx.l3_csum_replace(IP_CSUM, from, to, 4).ok()?;
        ctx.store(addr_off, &new_addr, 0).ok()?;
    }
    if old_port != new_port {
        let (from, to) = (old_port.to_be(), new_port.to_be());
        ctx.l4_csum_replace(csum, u64::from(from), u64::from(to), flags | 2)
            .ok()?;
        ctx.store(port_off, &to, 0).ok()?;
    }
    Some(())
}

/// Packets arriving on a node interface: a connection to a NodePort or external IP goes to a backend.
#[classifier]
pub fn nodeport_in(ctx: TcContext) -> i32 {
    match ingress(&ctx) {
        Some(Verdict::Answered(verdict)) => verdict,
        _ => TC_ACT_OK as i32,
    }
}

/// What became of an arriving packet.
enum Verdict {
    /// Translated to a backend (or left alone): it goes on.
    Pass,
    /// Turned into the reject answer and sent back: the program returns this.
    Answered(i32),
}

/// Packets leaving a node interface: a backend's answer to a translated connection gets the address
/// the client sent to.
#[classifier]
pub fn nodeport_out(ctx: TcContext) -> i32 {
    let _ = egress(&ctx);
    TC_ACT_OK as i32
}

fn ingress(ctx: &TcContext) -> Option<Verdict> {
    let pkt = Packet::parse(ctx)?;
    let flow = pkt.flow(true);
    let target = match NAT_FLOWS_V1.get_ptr(&flow) {
        // SAFETY: a map value pointer from a successful lookup; copied out at once.
        Some(t) => unsafe { *t },
        None => {
            let key = ServiceKey {
                addr: pkt.dst,
                port: pkt.dport,
                protocol: pkt.protocol,
                pad: 0,
            };
            // SAFETY: as above.
            let service = unsafe { *SERVICES_V1.get_ptr(&key)? };
            if service.count == 0 {
                // A service port without endpoints: refused, as the socket hooks refuse it.
                return crate::reject::answer(ctx, pkt.protocol, pkt.l4 - ETH_HLEN).map(Verdict::Answered);
            }
            if service.flags & FLAG_EXTERNAL == 0 {
                return None;
            }
            let client = || REMOTE_CLIENT | u64::from(u32::from_be_bytes(pkt.src));
            let backend: Backend = pick(&key, &service, client)?;
            let target = NatTarget {
                backend,
                flags: service.flags,
                pad: 0,
            };
            NAT_FLOWS_V1.insert(&flow, &target, 0).ok()?;
            let reply = FlowKey {
                peer: backend.addr,
                peer_port: backend.port,
                ..flow
            };
            let frontend = Frontend {
                addr: pkt.dst,
                port: pkt.dport,
                pad: 0,
            };
            NAT_REPLIES_V1.insert(&reply, &frontend, 0).ok()?;
            target
        }
    };
    if target.flags & FLAG_MASQUERADE != 0 {
        // SAFETY: reading a field of the program's own context.
        let mark = unsafe { (*ctx.skb.skb).mark };
        ctx.set_mark(mark | MASQUERADE_MARK);
    }
    let b = target.backend;
    rewrite(
        ctx,
        &pkt,
        IP_DST,
        pkt.l4 + 2,
        (pkt.dst, b.addr),
        (pkt.dport, b.port),
    )?;
    Some(Verdict::Pass)
}

fn egress(ctx: &TcContext) -> Option<()> {
    let pkt = Packet::parse(ctx)?;
    let reply = pkt.flow(false);
    // SAFETY: a map value pointer from a successful lookup; copied out at once.
    let frontend = unsafe { *NAT_REPLIES_V1.get_ptr(&reply)? };
    rewrite(
        ctx,
        &pkt,
        IP_SRC,
        pkt.l4,
        (pkt.src, frontend.addr),
        (pkt.sport, frontend.port),
    )
}
