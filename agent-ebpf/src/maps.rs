//! The maps, declared with `#[btf_map]` so that their BTF carries the key and value field names. They
//! carry no pinning attribute: the agent pins them under `/sys/fs/bpf/skiff/`. The agent-written
//! hashes are not preallocated: kernel memory follows the services programmed, not the limits.

use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::btf_maps::{HashMap, LruHashMap, SkStorage};
use aya_ebpf::macros::btf_map;
use skiff_abi::{
    Affinity, AffinityKey, Backend, BackendKey, FlowKey, Frontend, MAX_AFFINITY, MAX_BACKENDS, MAX_FLOWS,
    MAX_SERVICES, MemberKey, NatTarget, Origin, Service, ServiceKey,
};

/// `services_v1`: service port → current backend set (see [`skiff_abi::SERVICES_MAP`]).
#[btf_map(name = "services_v1")]
pub static SERVICES_V1: HashMap<
    ServiceKey,
    Service,
    { MAX_SERVICES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// `backends_v1`: (backend set, slot) → backend (see [`skiff_abi::BACKENDS_MAP`]).
#[btf_map(name = "backends_v1")]
pub static BACKENDS_V1: HashMap<
    BackendKey,
    Backend,
    { MAX_BACKENDS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// `sockets_v2`: per-socket storage, the service address the socket was rewritten from (see
/// [`skiff_abi::SOCKETS_MAP`]).
#[btf_map(name = "sockets_v2")]
pub static SOCKETS_V2: SkStorage<Origin> = SkStorage::new();

/// `members_v1`: (backend set, backend) → slot (see [`skiff_abi::MEMBERS_MAP`]).
#[btf_map(name = "members_v1")]
pub static MEMBERS_V1: HashMap<MemberKey, u32, { MAX_BACKENDS as usize }, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

/// `affinity_v1`: (client, service port) → last backend (see [`skiff_abi::AFFINITY_MAP`]).
#[btf_map(name = "affinity_v1")]
pub static AFFINITY_V1: LruHashMap<AffinityKey, Affinity, { MAX_AFFINITY as usize }> = LruHashMap::new();

/// `nat_flows_v1`: connection from outside → its backend (see [`skiff_abi::NAT_FLOWS_MAP`]).
#[btf_map(name = "nat_flows_v1")]
pub static NAT_FLOWS_V1: LruHashMap<FlowKey, NatTarget, { MAX_FLOWS as usize }> = LruHashMap::new();

/// `nat_replies_v1`: the backend's side of a connection from outside → the address the client sent
/// to (see [`skiff_abi::NAT_REPLIES_MAP`]).
#[btf_map(name = "nat_replies_v1")]
pub static NAT_REPLIES_V1: LruHashMap<FlowKey, Frontend, { MAX_FLOWS as usize }> = LruHashMap::new();
