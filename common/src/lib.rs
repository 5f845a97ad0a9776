//! Helpers that both `skiff-control` and `skiff-agent` need, kept in one place: URL escaping for
//! query strings, files replaced whole that only their owner may read, mount points,
//! timestamps as Kubernetes writes them, Skiff's version and the skew it allows between control plane and agents, Prometheus metric families, logging (text or JSON, its filter changeable at run time), the Pod Security Standards' checks, and a TLS verifier for the connections upstream makes
//! without checking the server.

#![forbid(unsafe_code)]

pub mod fs;
pub mod logging;
pub mod metrics;
pub mod pod_security;
pub mod time;
pub mod tls;
pub mod url;
pub mod version;
