//! Skiff's eBPF programs: socket-level load balancing of ClusterIP services.
//!
//! `connect4` (TCP, connected UDP) and `sendmsg4` (unconnected UDP) rewrite a service address to one
//! of its backends before the socket ever sends a packet, so ClusterIP traffic needs no per-packet
//! NAT. `getpeername4` and `recvmsg4` show the application the service address it asked for.
//! Connections from outside the node (NodePorts, external IPs) are translated per packet by the tc
//! programs `nodeport_in` and `nodeport_out` on the node's interfaces. Maps are described in
//! `skiff_abi` and in `docs/ebpf-maps.md`.
#![no_std]
#![no_main]

mod maps;
mod reject;
mod sock_addr;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
