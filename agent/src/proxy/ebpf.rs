//! The eBPF data plane: loads agent-ebpf's socket hooks and tc programs, pins their maps and links
//! under the pin directory, attaches the hooks to the pods' cgroup2 directory and the tc programs to
//! the node's interfaces (NodePorts, external IPs), and writes service entries.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use aya::maps::{HashMap as BpfHash, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcHandle};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use skiff_abi::{
    AFFINITY_MAP, BACKENDS_MAP, Backend, BackendKey, FLAG_EXTERNAL, FLAG_MASQUERADE, MEMBERS_MAP, MemberKey,
    NAT_FLOWS_MAP, NAT_REPLIES_MAP, PROGRAMS, RETIRED_MAPS, SERVICES_MAP, SOCKETS_MAP, Service, ServiceKey,
    TC_PROGRAMS,
};

use super::model::Entry;

/// The object built by `cargo xtask build-ebpf`, embedded by the build script (empty when the agent
/// was built without it).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/skiff-ebpf.o"));

/// `statfs` magic of a BPF filesystem.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether this agent carries its eBPF programs.
pub fn available() -> bool {
    !OBJECT.is_empty()
}

/// The loaded programs and the maps the agent writes.
#[derive(Debug)]
pub struct Ebpf {
    bpf: aya::Ebpf,
    services: BpfHash<MapData, ServiceKey, Service>,
    backends: BpfHash<MapData, BackendKey, Backend>,
    members: BpfHash<MapData, MemberKey, u32>,
    /// What each service port is programmed with now.
    programmed: BTreeMap<ServiceKey, Service>,
    next_id: u32,
    pin_dir: PathBuf,
    cgroup: PathBuf,
    /// The node's interfaces whose packets the tc programs translate.
    interfaces: Vec<String>,
    attached: bool,
}

/// Makes sure `dir` is on a BPF filesystem; mounts one at `/sys/fs/bpf` when that is where it goes
/// and nothing is mounted there yet (as Cilium does on a fresh node).
fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let on_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    let mut existing = dir;
    while !existing.exists() {
        existing = existing
            .parent()
            .context("the pin directory has no existing parent")?;
    }
    if on_bpffs(existing) {
        return Ok(());
    }
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && sys.is_dir() {
        nix::mount::mount(
            Some("bpf"),
            sys,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting the BPF filesystem at /sys/fs/bpf")?;
        return Ok(());
    }
    bail!(
        "{} is not on a BPF filesystem (mount -t bpf bpf DIR, or use a directory under /sys/fs/bpf)",
        dir.display()
    )
}

/// Replaces whatever is pinned at `path` (an earlier agent's map or link).
fn unpin(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing the pin {}", path.display()))
        }
        _ => Ok(()),
    }
}

impl Ebpf {
    /// Loads the programs (verified by the kernel now) and creates fresh maps; nothing is attached
    /// until [`Ebpf::attach`], which puts the socket hooks on `cgroup` and the tc programs on
    /// `interfaces`.
    pub fn load(pin_dir: &Path, cgroup: &Path, interfaces: &[String]) -> anyhow::Result<Self> {
        if !available() {
            bail!(
                "this agent was built without its eBPF programs (run `cargo xtask build-ebpf`, then rebuild)"
            );
        }
        ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir.join("links"))
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let mut bpf = aya::EbpfLoader::new()
            .load(OBJECT)
            .context("loading the eBPF object")?;
        for (name, _) in PROGRAMS {
            let program: &mut CgroupSockAddr = bpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?
                .try_into()
                .with_context(|| format!("{name} is not a cgroup sock_addr program"))?;
            program
                .load()
                .with_context(|| format!("the kernel rejected the {name} program"))?;
        }
        for (name, _) in TC_PROGRAMS {
            let program: &mut SchedClassifier = bpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?
                .try_into()
                .with_context(|| format!("{name} is not a tc program"))?;
            program
                .load()
                .with_context(|| format!("the kernel rejected the {name} program"))?;
        }
        let mut take = |name: &str| {
            bpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        let services = BpfHash::try_from(take(SERVICES_MAP)?)?;
        let backends = BpfHash::try_from(take(BACKENDS_MAP)?)?;
        let members = BpfHash::try_from(take(MEMBERS_MAP)?)?;
        Ok(Self {
            bpf,
            services,
            backends,
            members,
            programmed: BTreeMap::new(),
            next_id: 1,
            pin_dir: pin_dir.to_owned(),
            cgroup: cgroup.to_owned(),
            interfaces: interfaces.to_vec(),
            attached: false,
        })
    }

    /// Pins the maps and attaches the hooks to the cgroup, replacing an earlier agent's: their
    /// links are pinned too, so they kept serving while no agent ran; they go only once the new
    /// hooks, with maps already filled, are attached.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        if self.attached {
            return Ok(());
        }
        use aya::maps::IterableMap;
        for (name, map) in [
            (SERVICES_MAP, IterableMap::map(&self.services)),
            (BACKENDS_MAP, IterableMap::map(&self.backends)),
            (MEMBERS_MAP, IterableMap::map(&self.members)),
        ] {
            let path = self.pin_dir.join(name);
            unpin(&path)?;
            map.pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        // Maps of earlier layouts, which only an earlier agent's programs used.
        for name in RETIRED_MAPS {
            unpin(&self.pin_dir.join(name))?;
        }
        for name in [SOCKETS_MAP, AFFINITY_MAP, NAT_FLOWS_MAP, NAT_REPLIES_MAP] {
            let path = self.pin_dir.join(name);
            unpin(&path)?;
            self.bpf
                .map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))?
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        let cgroup = std::fs::File::open(&self.cgroup)
            .with_context(|| format!("opening the cgroup {}", self.cgroup.display()))?;
        for (name, _) in PROGRAMS {
            let program: &mut CgroupSockAddr = self
                .bpf
                .program_mut(name)
                .context("program vanished")?
                .try_into()?;
            // Through a BPF link (the only way aya attaches on 5.7+), which takes no flags and
            // always coexists with other programs, the earlier agent's among them.
            let id = program
                .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", self.cgroup.display()))?;
            let link = FdLink::try_from(program.take_link(id)?)
                .context("the kernel attached without a BPF link (needs Linux 5.7 or later)")?;
            let path = self.pin_dir.join("links").join(name);
            let old = PinnedLink::from_pin(&path).ok();
            if let Some(old) = old {
                // Dropping the unpinned link detaches the earlier agent's program.
                drop(old.unpin().context("unpinning the earlier agent's link")?);
            }
            link.pin(&path)
                .with_context(|| format!("pinning the {name} link at {}", path.display()))?;
        }
        self.attach_interfaces()?;
        self.attached = true;
        tracing::info!(cgroup = %self.cgroup.display(), interfaces = ?self.interfaces, pins = %self.pin_dir.display(), "eBPF service hooks attached");
        Ok(())
    }

    /// Attaches the tc programs to the node's interfaces (in the node's network namespace) through
    /// pinned TCX links: an earlier agent's link gets the new program atomically.
    fn attach_interfaces(&mut self) -> anyhow::Result<()> {
        let (bpf, interfaces, links) = (&mut self.bpf, &self.interfaces, self.pin_dir.join("links"));
        crate::network::pod_net::in_node_netns(move || -> anyhow::Result<()> {
            for iface in interfaces {
                for (name, direction) in TC_PROGRAMS {
                    let program: &mut SchedClassifier =
                        bpf.program_mut(name).context("program vanished")?.try_into()?;
                    let path = links.join(format!("{name}-{iface}"));
                    let replaced = PinnedLink::from_pin(&path).ok().and_then(|old| {
                        let old = SchedClassifierLink::try_from(FdLink::from(old)).ok()?;
                        program.attach_to_link(old).ok()
                    });
                    if replaced.is_some() {
                        continue;
                    }
                    unpin(&path)?;
                    let kind = tc_kind(direction);
                    if !has_tcx() {
                        attach_netlink(program, iface, kind)
                            .with_context(|| format!("attaching {name} to {iface} ({direction})"))?;
                        continue;
                    }
                    let id = program
                        .attach(iface, kind)
                        .with_context(|| format!("attaching {name} to {iface} ({direction})"))?;
                    let link = FdLink::try_from(program.take_link(id)?)
                        .context("the kernel attached without a TCX link (needs Linux 6.6 or later)")?;
                    link.pin(&path)
                        .with_context(|| format!("pinning the {name} link at {}", path.display()))?;
                }
            }
            Ok(())
        })?
    }

    fn allocate_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// The maps' entries: service ports, backend slots, backend set members (one per slot).
    pub fn entries(&self) -> Vec<(&'static str, usize)> {
        let backends: usize = self.programmed.values().map(|s| s.count as usize).sum();
        vec![
            ("services", self.programmed.len()),
            ("backends", backends),
            ("members", backends),
        ]
    }

    /// Programs one service port (`None`: removes it). A changed backend set is written under a new
    /// id before the service entry switches to it, then the old set is deleted: a connecting socket
    /// sees either the old set or the new one, never a mix.
    pub fn apply(&mut self, key: ServiceKey, entry: Option<&Entry>) -> anyhow::Result<()> {
        let old = self.programmed.get(&key).copied();
        match entry {
            Some(entry) => {
                let id = self.allocate_id();
                for (slot, backend) in entry.backends.iter().enumerate() {
                    let slot = slot as u32;
                    self.backends
                        .insert(BackendKey { id, slot }, backend, 0)
                        .context("writing a backend")?;
                    self.members
                        .insert(
                            MemberKey {
                                id,
                                backend: *backend,
                            },
                            slot,
                            0,
                        )
                        .context("writing a backend set member")?;
                }
                let service = Service {
                    id,
                    count: entry.backends.len() as u32,
                    affinity_timeout: entry.affinity_timeout,
                    flags: if entry.external { FLAG_EXTERNAL } else { 0 }
                        | if entry.masquerade { FLAG_MASQUERADE } else { 0 },
                };
                self.services
                    .insert(key, service, 0)
                    .context("writing a service")?;
                self.programmed.insert(key, service);
            }
            None => {
                match self.services.remove(&key) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(e).context("removing a service"),
                }
                self.programmed.remove(&key);
            }
        }
        if let Some(old) = old {
            for slot in 0..old.count {
                let key = BackendKey { id: old.id, slot };
                if let Ok(backend) = self.backends.get(&key, 0) {
                    let _ = self.members.remove(&MemberKey { id: old.id, backend });
                }
                let _ = self.backends.remove(&key);
            }
        }
        Ok(())
    }
}

/// Detaches the tc programs that [`attach_netlink`] left on the interfaces of the current network
/// namespace (kernels without TCX; with TCX, unpinning their links detaches them).
pub fn detach_tc_filters() {
    let Ok(interfaces) = nix::net::if_::if_nameindex() else {
        return;
    };
    for iface in interfaces.iter() {
        let iface = iface.name().to_string_lossy();
        for (name, direction) in TC_PROGRAMS {
            let kind = tc_kind(direction);
            // NotFound (none there) is the common case.
            let _ = aya::programs::tc::qdisc_detach_program(&iface, kind, name);
        }
    }
}

/// The attach type for a direction of `TC_PROGRAMS`.
fn tc_kind(direction: &str) -> TcAttachType {
    if direction == "ingress" {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    }
}

/// Whether the kernel attaches tc programs through TCX links (Linux 6.6+), as aya then does.
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Where the tc programs sit on kernels before TCX (Linux 6.6): a filter of the `clsact` qdisc at a
/// fixed priority and handle of ours, so a restarted agent replaces its predecessor's program in
/// place (and `skiff-agent uninstall` finds it by name).
const TC_PRIORITY: u16 = 0x5c1f;
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Attaches a tc program through netlink (kernels without TCX): adds the interface's `clsact`
/// qdisc if it has none, then replaces our filter if one is there, or creates it. The filter stays
/// when the agent exits, as a pinned TCX link does.
fn attach_netlink(program: &mut SchedClassifier, iface: &str, kind: TcAttachType) -> anyhow::Result<()> {
    if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
        // EEXIST: the interface has its clsact qdisc already.
        let exists = matches!(&e, aya::programs::tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(nix::libc::EEXIST));
        if !exists {
            return Err(e).context("adding the clsact qdisc");
        }
    }
    // Replace ours, or create it; when another agent on the same interface created it between the
    // two (test nodes sharing `lo`), the creation fails with EEXIST and the replacement is retried.
    let mut attempt = 0;
    let id = loop {
        let ours = SchedClassifierLink::attached(iface, kind, TC_PRIORITY, TC_HANDLE, None)?;
        if let Ok(id) = program.attach_to_link(ours) {
            break id;
        }
        match program.attach_with_options(
            iface,
            kind,
            aya::programs::tc::TcAttachOptions::Netlink(NlOptions {
                priority: TC_PRIORITY,
                handle: TC_HANDLE,
                ..NlOptions::default()
            }),
        ) {
            Ok(id) => break id,
            Err(_) if attempt < 3 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    // Taken out of the program, the link is not detached when the agent's programs are dropped.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}
