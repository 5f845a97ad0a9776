//! Skiff's gRPC contracts, generated from the `.proto` files in `proto/proto`.
//!
//! Each contract is versioned in its package name (`skiff.raft.v1`, `skiff.node.v1`); changes are additive only,
//! which a test holds them to against the last release's listing (`compat`).

#[cfg(test)]
mod compat;

/// Raft transport between control-plane store members.
pub mod raft {
    /// Version 1 of the Raft transport.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("skiff.raft.v1");
    }
}

/// The node agent's stream from the control plane.
pub mod node {
    /// Version 1 of the node contract.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("skiff.node.v1");
    }
}

/// The standard gRPC health-checking protocol (`grpc.health.v1`) that gRPC probes speak.
pub mod health {
    /// Version 1, as upstream defines it.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("grpc.health.v1");
    }
}

/// etcd's v3 API (vendored from etcd, Apache-2.0), which the control plane's store serves so that
/// `etcdctl` works against it. Package names as etcd's, so the generated code finds its siblings.
pub mod etcd {
    /// `etcdserverpb`: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    /// `mvccpb`: keys and events.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// `authpb`: users and roles.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
}
