//! Pod networking on a node: the bridge and each pod's sandbox namespaces with its veth
//! (`pod_net`), addresses from the node's pod CIDR (`ipam`), routes to other nodes' pods
//! (`routes`) and the node's cluster DNS server (`dns`).

pub mod api_relay;
pub mod dns;
pub mod host_ports;
pub mod ipam;
pub mod pod_net;
pub mod routes;
