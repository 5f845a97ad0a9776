//! Skiff's gRPC contracts, generated from the `.proto` files in `proto/proto`.
//!
//! Each contract is versioned in its package name (`skiff.raft.v1`, `skiff.node.v1`); changes are additive only.

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
