//! Map keys and values shared by Skiff's eBPF programs (`agent-ebpf`) and the agent.
//!
//! One `#[repr(C)]` definition per map so that the kernel and userspace can never disagree. Addresses
//! are stored as their four octets and ports in host byte order, so that `bpftool map dump` prints
//! `"addr": [10,43,0,10]` and `"port": 80`. Every struct has explicit padding and a compile-time size
//! check; a layout change bumps the map's `_vN` suffix.
#![no_std]

/// Maximum number of service ports (VIP, port, protocol) the node can program.
pub const MAX_SERVICES: u32 = 65_536;
/// Maximum number of backends over all service ports (each revision of a service's backend set
/// occupies its own entries until the switch-over is done, so this leaves headroom).
pub const MAX_BACKENDS: u32 = 1_048_576;

/// `services_v1`: hash, [`ServiceKey`] → [`Service`]. Written by the agent, read by every hook.
pub const SERVICES_MAP: &str = "services_v1";
/// `backends_v1`: hash, [`BackendKey`] → [`Backend`]. Written by the agent before the service entry
/// that points at them.
pub const BACKENDS_MAP: &str = "backends_v1";
/// `sockets_v2`: socket storage (`BPF_MAP_TYPE_SK_STORAGE`), socket → [`Origin`], kept by the
/// kernel with the socket and freed with it. Written by `connect4`/`sendmsg4`, read by
/// `getpeername4`/`recvmsg4` to show the application the service address it asked for. (`_v1` was
/// an LRU hash keyed by socket cookie: an insert, and once full an eviction, on every connect.)
pub const SOCKETS_MAP: &str = "sockets_v2";
/// Pins of maps an earlier agent used and this one no longer does; the agent removes them.
pub const RETIRED_MAPS: [&str; 1] = ["sockets_v1"];

/// `members_v1`: hash, [`MemberKey`] → slot (`u32`). Which backends belong to a backend set; written
/// with `backends_v1`. Lets a remembered session-affinity backend be checked in O(1).
pub const MEMBERS_MAP: &str = "members_v1";
/// `affinity_v1`: LRU hash, [`AffinityKey`] → [`Affinity`]. `sessionAffinity: ClientIP`: the backend
/// each client (network namespace) last used per service port. Written by `connect4`/`sendmsg4`.
pub const AFFINITY_MAP: &str = "affinity_v1";
/// Remembered session-affinity clients (LRU).
pub const MAX_AFFINITY: u32 = 65_536;

/// `nat_flows_v1`: LRU hash, [`FlowKey`] (peer: the address the client sent to) → [`NatTarget`].
/// Written by `nodeport_in` for each new connection from outside, so its later packets go to the
/// same backend.
pub const NAT_FLOWS_MAP: &str = "nat_flows_v1";
/// `nat_replies_v1`: LRU hash, [`FlowKey`] (peer: the backend) → [`Frontend`]. Written with
/// `nat_flows_v1`; `nodeport_out` gives the backend's answers the address the client sent to.
pub const NAT_REPLIES_MAP: &str = "nat_replies_v1";
/// Connections from outside remembered for translation (LRU).
pub const MAX_FLOWS: u32 = 262_144;

/// The tc programs on the node's interfaces: `(program, direction)`.
pub const TC_PROGRAMS: [(&str, &str); 2] = [("nodeport_in", "ingress"), ("nodeport_out", "egress")];

/// Program (and section) names of the socket-level hooks, as attached by the agent.
pub const PROGRAMS: [(&str, &str); 4] = [
    ("connect4", "cgroup/connect4"),
    ("sendmsg4", "cgroup/sendmsg4"),
    ("recvmsg4", "cgroup/recvmsg4"),
    ("getpeername4", "cgroup/getpeername4"),
];

/// IP protocol numbers as stored in [`ServiceKey::protocol`].
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// SCTP.
pub const PROTO_SCTP: u8 = 132;

/// A service port as a client addresses it: the cluster IP, the service port and the protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Cluster IP octets.
    pub addr: [u8; 4],
    /// Service port, host byte order.
    pub port: u16,
    /// [`PROTO_TCP`], [`PROTO_UDP`] or [`PROTO_SCTP`].
    pub protocol: u8,
    /// Always zero.
    pub pad: u8,
}

/// The backend set currently in force for a [`ServiceKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Identifies this revision of the backend set: its backends are `(id, 0..count)` in
    /// `backends_v1`. A new revision gets a new id, so a reader never sees a half-written set.
    pub id: u32,
    /// Number of backends; 0 means the service has no usable endpoint and connections are refused.
    pub count: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 when the service has no affinity.
    pub affinity_timeout: u32,
    /// [`FLAG_EXTERNAL`], [`FLAG_MASQUERADE`].
    pub flags: u32,
}

/// [`Service::flags`]: the address is reached from outside the node too (a NodePort on a node
/// address, an external IP): the `nodeport_in` tc program translates packets arriving for it.
pub const FLAG_EXTERNAL: u32 = 1;
/// [`Service::flags`]: connections from outside are masqueraded to the node's address
/// (`externalTrafficPolicy: Cluster`), so the answer comes back through this node.
pub const FLAG_MASQUERADE: u32 = 2;
/// The packet mark that asks the node's masquerade rule to masquerade a connection (upstream's).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// One backend slot of a service revision.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// [`Service::id`].
    pub id: u32,
    /// `0..Service::count`.
    pub slot: u32,
}

/// An endpoint address and target port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Endpoint (pod) IP octets.
    pub addr: [u8; 4],
    /// Target port, host byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
}

/// The service address a socket was connected or sent to before it was rewritten to a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// Cluster IP octets.
    pub addr: [u8; 4],
    /// Service port, host byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
    /// The backend the socket was sent to (replies from it are shown as coming from `addr`).
    pub backend: Backend,
}

/// A backend of one backend set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    /// [`Service::id`].
    pub id: u32,
    /// The backend.
    pub backend: Backend,
}

/// A client of a service port with session affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The client's network namespace cookie (one per pod; the node's for host processes), standing
    /// for upstream's client IP.
    pub client: u64,
    /// The service port.
    pub service: ServiceKey,
}

/// Where a client's last connection to a service port went.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    /// The backend.
    pub backend: Backend,
    /// `bpf_ktime_get_ns()` of that connection.
    pub last_used: u64,
}

/// A connection from outside the node, as the client addresses it (its packets arriving) or as the
/// backend answers it (with the backend as `peer`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address octets.
    pub client: [u8; 4],
    /// The node address or external IP the client sent to, or the backend's address.
    pub peer: [u8; 4],
    /// Client port, host byte order.
    pub client_port: u16,
    /// The peer's port, host byte order.
    pub peer_port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Where a connection from outside goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatTarget {
    /// The backend.
    pub backend: Backend,
    /// The service's [`Service::flags`] when the connection began.
    pub flags: u32,
    /// Always zero.
    pub pad: u32,
}

/// The address a client sent to (a node address and NodePort, or an external IP and port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// Address octets.
    pub addr: [u8; 4],
    /// Port, host byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
}

const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<NatTarget>() == 16);
const _: () = assert!(size_of::<Frontend>() == 8);
const _: () = assert!(size_of::<MemberKey>() == 12);
const _: () = assert!(size_of::<AffinityKey>() == 16);
const _: () = assert!(size_of::<Affinity>() == 16);
const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<Service>() == 16);
const _: () = assert!(size_of::<BackendKey>() == 8);
const _: () = assert!(size_of::<Backend>() == 8);
const _: () = assert!(size_of::<Origin>() == 16);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding: every bit pattern is
    // a valid value and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::MemberKey {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::Affinity {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::NatTarget {}
    unsafe impl aya::Pod for super::Frontend {}
}
