//! The cluster's pod range (`--cluster-cidr`) and each node's share of it (`--node-cidr-mask-size`),
//! from which the node IPAM controller gives every Node its `spec.podCIDR`.

use std::net::Ipv4Addr;

/// The cluster's pod range and the size of each node's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    base: u32,
    prefix: u8,
    node_prefix: u8,
}

impl ClusterCidr {
    /// Parses `a.b.c.d/n` with the per-node mask size.
    pub fn parse(cidr: &str, node_prefix: u8) -> Result<Self, String> {
        let (ip, len) = cidr
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR {cidr:?}"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("invalid CIDR {cidr:?}"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("invalid CIDR {cidr:?}"))?;
        if node_prefix < prefix || node_prefix > 30 {
            return Err(format!(
                "node CIDR mask size {node_prefix} does not fit in {cidr}"
            ));
        }
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Ok(ClusterCidr {
            base: u32::from(ip) & mask,
            prefix,
            node_prefix,
        })
    }

    /// The `i`th node subnet, if the range has one.
    pub fn subnet(&self, i: u32) -> Option<String> {
        let count = 1u64 << (self.node_prefix - self.prefix);
        if u64::from(i) >= count {
            return None;
        }
        let base = self.base + (i << (32 - self.node_prefix));
        Some(format!("{}/{}", Ipv4Addr::from(base), self.node_prefix))
    }
}
