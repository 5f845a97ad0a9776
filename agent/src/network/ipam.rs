//! Host-local IPAM: pod addresses from the node's pod CIDR, persisted so that an agent restart keeps
//! every running pod's address and never hands it out twice.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Allocations in one pod CIDR.
#[derive(Debug, Clone)]
pub struct Ipam {
    file: PathBuf,
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipam {
    /// The allocator for `cidr`, its state kept under `dir`.
    pub fn new(dir: &Path, cidr: &str) -> anyhow::Result<Ipam> {
        let (network, prefix) = crate::network::pod_net::parse_cidr(cidr)?;
        std::fs::create_dir_all(dir)?;
        Ok(Ipam {
            file: dir.join(format!("{}_{prefix}.json", network)),
            network,
            prefix,
        })
    }

    /// The gateway (the bridge's address): the first address of the range.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn load(&self) -> anyhow::Result<BTreeMap<Ipv4Addr, String>> {
        match std::fs::read(&self.file) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", self.file.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn locked<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<Ipv4Addr, String>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.file.with_extension("lock"))?;
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e)?;
        let mut map = self.load()?;
        let before = map.clone();
        let out = f(&mut map)?;
        if map != before {
            skiff_common::fs::write_private(&self.file, &serde_json::to_vec_pretty(&map)?)?;
        }
        Ok(out)
    }

    /// The address of `owner` (a pod uid), allocating one if it has none.
    pub fn allocate(&self, owner: &str) -> anyhow::Result<Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let last = u32::from(self.network) + (1u32 << (32 - self.prefix)) - 2;
        self.locked(|map| {
            if let Some((ip, _)) = map.iter().find(|(_, o)| o.as_str() == owner) {
                return Ok(*ip);
            }
            for n in first..=last {
                let ip = Ipv4Addr::from(n);
                if let std::collections::btree_map::Entry::Vacant(e) = map.entry(ip) {
                    e.insert(owner.to_string());
                    return Ok(ip);
                }
            }
            bail!("no free address left in {}/{}", self.network, self.prefix)
        })
    }

    /// Frees whatever `owner` holds.
    pub fn release(&self, owner: &str) -> anyhow::Result<()> {
        self.locked(|map| {
            map.retain(|_, o| o != owner);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_stably_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), "10.9.3.0/30").unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 9, 3, 1));
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 3, 2));
        assert_eq!(ipam.allocate("a").unwrap(), a);
        assert!(ipam.allocate("b").is_err(), "a /30 has one pod address");
        ipam.release("a").unwrap();
        let again = Ipam::new(dir.path(), "10.9.3.0/30").unwrap();
        assert_eq!(again.allocate("b").unwrap(), a);
    }
}
