//! skiff-agent's library: the node agent's parts, used by its binary (`main.rs`) and by the
//! benchmarks (`skiff-bench proxy` drives the service data planes directly).
//!
//! - `node/`: joining, the Node and its Lease, the control plane's stream and its API client.
//! - `pods/`: the per-pod worker (a state machine behind the `Runtime` seam; `host/` is the real
//!   runtime), volumes, env, probes, the pod spec.
//! - `runtime/`: the container shim, consoles, attach sockets, cgroups.
//! - `image/`: pulls, imports, the layer store.
//! - `network/`: the bridge and pod sandboxes, IPAM, routes between nodes, cluster DNS.
//! - `proxy/`: Services in the kernel (eBPF and nftables).
//! - `server/`: the HTTPS endpoint the API server proxies to (logs, exec, attach, port-forward),
//!   and the tunnel it is reached through.
//!
//! Folders import one way: `pods → {network, image, runtime, node}`, `proxy → {network, node}`,
//! `server → {network, runtime, node}`, `network → node`, `image → node`; `node` and `runtime`
//! import no other folder.

pub mod image;
pub mod inspect;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod node;
pub mod pods;
pub mod preflight;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod uninstall;
pub mod upgrade;
