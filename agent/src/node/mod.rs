//! The node's identity and presence in the cluster: joining, registration, heartbeats.

pub mod capacity;
pub mod client;
pub mod heartbeat;
pub mod join;
pub mod tunnel;
pub mod watch;
