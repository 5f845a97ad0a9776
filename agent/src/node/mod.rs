//! The node's identity and presence in the cluster: joining, registration, heartbeats, and its
//! stream of pods, Services, EndpointSlices and Nodes from the control plane.

pub mod capacity;
pub mod client;
pub mod heartbeat;
pub mod join;
pub mod stream;
pub mod watch;
