//! The maps, declared with `#[btf_map]` so that their BTF carries the key and value field names. They
//! carry no pinning attribute: the agent pins them under `/sys/fs/bpf/skiff/`.

use aya_ebpf::btf_maps::{HashMap, LruHashMap};
use aya_ebpf::macros::btf_map;
use skiff_abi::{Backend, BackendKey, MAX_BACKENDS, MAX_SERVICES, MAX_SOCKETS, Origin, Service, ServiceKey};

/// `services_v1`: service port → current backend set (see [`skiff_abi::SERVICES_MAP`]).
#[btf_map(name = "services_v1")]
pub static SERVICES_V1: HashMap<ServiceKey, Service, { MAX_SERVICES as usize }> = HashMap::new();

/// `backends_v1`: (backend set, slot) → backend (see [`skiff_abi::BACKENDS_MAP`]).
#[btf_map(name = "backends_v1")]
pub static BACKENDS_V1: HashMap<BackendKey, Backend, { MAX_BACKENDS as usize }> = HashMap::new();

/// `sockets_v1`: socket cookie → the service address it was rewritten from (see
/// [`skiff_abi::SOCKETS_MAP`]).
#[btf_map(name = "sockets_v1")]
pub static SOCKETS_V1: LruHashMap<u64, Origin, { MAX_SOCKETS as usize }> = LruHashMap::new();
