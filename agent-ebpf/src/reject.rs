//! Answers for packets that reach a service port without ready endpoints from outside the socket
//! hooks (another host routing a cluster IP, a NodePort or an external IP to this node): as
//! kube-proxy rejects them, a TCP segment gets a reset and a UDP datagram an ICMP port unreachable,
//! written over the packet itself and sent back out of the interface it came in on.

use aya_ebpf::bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC;
use aya_ebpf::helpers::{bpf_redirect, bpf_skb_change_tail};
use aya_ebpf::programs::TcContext;
use skiff_abi::{PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 8;
const PROTO_ICMP: u8 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The one's complement sum of `bytes` (an even number of them), added to `sum`.
fn add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

fn fold(mut sum: u32) -> [u8; 2] {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// A fresh IPv4 header from `src` to `dst` carrying `len` bytes of `protocol`.
fn ip_header(src: [u8; 4], dst: [u8; 4], protocol: u8, len: usize) -> [u8; IP_HLEN] {
    let total = ((IP_HLEN + len) as u16).to_be_bytes();
    let mut h = [
        0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, protocol, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ];
    let csum = fold(add(0, &h));
    h[10] = csum[0];
    h[11] = csum[1];
    h
}

/// Cuts the packet to `len` bytes past the Ethernet header and swaps the Ethernet addresses.
fn trim_and_turn(ctx: &TcContext, len: usize) -> Option<()> {
    let mac: [u8; 12] = ctx.load(0).ok()?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&mac[6..]);
    swapped[6..].copy_from_slice(&mac[..6]);
    // SAFETY: a helper call with the program's own context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + len) as u32, 0) } != 0 {
        return None;
    }
    ctx.store(0, &swapped, 0).ok()
}

/// Sends the packet back out of the interface it arrived on.
fn send_back(ctx: &TcContext) -> i32 {
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper call with plain integers.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Turns a TCP segment (IPv4 without options) into the reset that answers it.
fn tcp_reset(ctx: &TcContext) -> Option<i32> {
    let ip: [u8; IP_HLEN] = ctx.load(ETH_HLEN).ok()?;
    let tcp: [u8; TCP_HLEN] = ctx.load(ETH_HLEN + IP_HLEN).ok()?;
    let flags = tcp[13];
    if flags & TCP_RST != 0 {
        return None;
    }
    let (src, dst) = ([ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]]);
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let offset = usize::from(tcp[12] >> 4) * 4;
    let payload = total.saturating_sub(IP_HLEN + offset) as u32;
    let (seq, ack, out_flags) = if flags & TCP_ACK != 0 {
        ([tcp[8], tcp[9], tcp[10], tcp[11]], [0; 4], TCP_RST)
    } else {
        let seq_in = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let span = payload + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        ([0; 4], seq_in.wrapping_add(span).to_be_bytes(), TCP_RST | TCP_ACK)
    };
    let mut reset = [
        tcp[2], tcp[3], tcp[0], tcp[1], seq[0], seq[1], seq[2], seq[3], ack[0], ack[1], ack[2], ack[3], 0x50,
        out_flags, 0, 0, 0, 0, 0, 0,
    ];
    // The pseudo header (from the service address back to the client), then the segment.
    let mut sum = add(0, &dst);
    sum = add(sum, &src);
    sum += u32::from(PROTO_TCP) + TCP_HLEN as u32;
    let csum = fold(add(sum, &reset));
    reset[16] = csum[0];
    reset[17] = csum[1];
    trim_and_turn(ctx, IP_HLEN + TCP_HLEN)?;
    ctx.store(ETH_HLEN, &ip_header(dst, src, PROTO_TCP, TCP_HLEN), 0)
        .ok()?;
    ctx.store(ETH_HLEN + IP_HLEN, &reset, 0).ok()?;
    Some(send_back(ctx))
}

/// Turns a UDP datagram (IPv4 without options) into the ICMP port unreachable that answers it: the
/// original IP header and first 8 bytes follow the ICMP header.
fn icmp_port_unreachable(ctx: &TcContext) -> Option<i32> {
    let quoted: [u8; IP_HLEN + UDP_HLEN] = ctx.load(ETH_HLEN).ok()?;
    let (src, dst) = (
        [quoted[12], quoted[13], quoted[14], quoted[15]],
        [quoted[16], quoted[17], quoted[18], quoted[19]],
    );
    // Room for the new IP and ICMP headers in front of the original IP header.
    ctx.adjust_room((IP_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .ok()?;
    let mut icmp = [3u8, 3, 0, 0, 0, 0, 0, 0];
    let csum = fold(add(add(0, &icmp), &quoted));
    icmp[2] = csum[0];
    icmp[3] = csum[1];
    let len = IP_HLEN + ICMP_HLEN + IP_HLEN + UDP_HLEN;
    trim_and_turn(ctx, len)?;
    ctx.store(ETH_HLEN, &ip_header(dst, src, PROTO_ICMP, len - IP_HLEN), 0)
        .ok()?;
    ctx.store(ETH_HLEN + IP_HLEN, &icmp, 0).ok()?;
    Some(send_back(ctx))
}

/// The answer to a packet of `protocol` (IPv4 with a header of `ihl` bytes) sent to a service port
/// without endpoints: the verdict to return, or `None` to leave the packet alone.
pub fn answer(ctx: &TcContext, protocol: u8, ihl: usize) -> Option<i32> {
    if ihl != IP_HLEN {
        return None;
    }
    match protocol {
        PROTO_TCP => tcp_reset(ctx),
        PROTO_UDP => icmp_port_unreachable(ctx),
        _ => None,
    }
}
