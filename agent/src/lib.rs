//! skiff-agent's library: the node agent's parts, used by its binary (`main.rs`) and by the
//! benchmarks (`skiff-bench proxy` drives the service data planes directly).

mod attach;
pub mod cgroups;
mod channels;
mod console;
pub mod dns;
pub mod image;
mod ipam;
pub mod net;
pub mod node;
pub mod pods;
mod portforward;
pub mod proxy;
mod routes;
pub mod server;
pub mod shim;
mod spdy;
mod stream;
pub mod uninstall;
