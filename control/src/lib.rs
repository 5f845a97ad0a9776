//! Skiff's control plane as a library: the embedded store, the Kubernetes API server and the
//! controllers that keep served state consistent. The `skiff-control` binary wires them together.

pub mod api;
pub mod bootstrap;
pub mod controllers;
pub mod etcd;
pub mod membership;
pub mod metrics;
pub mod objects;
pub mod pki;
pub mod scheduler;
pub mod store;
