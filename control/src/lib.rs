//! Skiff's control plane as a library: the embedded store and the Kubernetes API server.
//! The `skiff-control` binary wires them together.

pub mod store;
