//! User namespaces for pods with `hostUsers: false`, as the kubelet gives them: each such pod has
//! its own range of 65,536 host IDs (container ID `n` is host ID `base + n`), so its root is
//! nobody on the host. The sandbox helper makes the pod's user namespace with the range mapped,
//! and its network, IPC and UTS namespaces inside it (so the pod's root may mount `sysfs` and
//! `mqueue` there); containers join it. Their root filesystems stack the image's layers through
//! idmapped mounts (the same layers on disk, seen owned by the pod's IDs), so the pod's root owns
//! its image's files as it would without the namespace.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Host IDs each pod's namespace maps (container IDs 0..65535), as the kubelet.
pub const IDS_PER_POD: u32 = 65_536;

/// Ranges handed out: pod `n` (from 1) gets host IDs `n × 65536` and on (never 0..65535, the
/// host's own users).
const SLOTS: u32 = 4_096;

/// The file in a pod's directory that holds its range's first host ID.
const BASE_FILE: &str = "userns";

/// The first host ID of the range of the pod whose directory is `pod_dir`, if it has one.
pub fn base_of(pod_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(pod_dir.join(BASE_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Gives the pod whose directory is `pod_dir` a range no other pod under `pods_dir` holds (the
/// one it has, if any), and records it there. Callers hold one lock around it.
pub fn allocate(pods_dir: &Path, pod_dir: &Path) -> anyhow::Result<u32> {
    if let Some(base) = base_of(pod_dir) {
        return Ok(base);
    }
    let taken: std::collections::HashSet<u32> = std::fs::read_dir(pods_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| base_of(&e.path()))
        .collect();
    let base = (1..=SLOTS)
        .map(|slot| slot * IDS_PER_POD)
        .find(|b| !taken.contains(b))
        .context("every user namespace range is taken")?;
    std::fs::create_dir_all(pod_dir)?;
    std::fs::write(pod_dir.join(BASE_FILE), base.to_string())?;
    Ok(base)
}

/// The `uid_map`/`gid_map` line for a range.
pub fn id_map(base: u32) -> String {
    format!("0 {base} {IDS_PER_POD}\n")
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Mounts `src` at `dst` (an existing directory) with its IDs mapped through the user namespace
/// at `userns`: a file the host sees owned by ID `n` is seen owned by `base + n`.
pub fn mount_idmapped(src: &Path, dst: &Path, userns: &Path) -> anyhow::Result<()> {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};
    let tree = open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .with_context(|| format!("cloning the mount of {}", src.display()))?;
    let ns = std::fs::File::open(userns).with_context(|| format!("opening {}", userns.display()))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from `attr`, which lives across
    // the call; the path is an empty C string and both descriptors are open.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "idmapping the mount of {} (a user namespace needs idmapped mounts of the data \
             directory's filesystem: Linux 5.12+ for ext4, xfs and btrfs, 6.3+ for tmpfs): {e}",
            src.display()
        );
    }
    move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        dst,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .with_context(|| format!("mounting {} at {}", src.display(), dst.display()))?;
    Ok(())
}

/// Where a pod's idmapped view of image layer `layer` is mounted.
pub fn layer_view(pod_dir: &Path, layer: &str) -> PathBuf {
    let id = layer.rsplit(':').next().unwrap_or(layer);
    pod_dir.join("layers").join(id)
}

/// `skiff-agent userns-hold`: makes a user namespace with network, IPC and UTS namespaces owned
/// by it, says `ready` on stdout and holds them until stdin ends. Run by the sandbox helper,
/// which maps the IDs and bind-mounts the namespaces meanwhile. Must run before any thread starts.
pub fn hold_main() -> i32 {
    use nix::sched::CloneFlags;
    use std::io::{Read, Write};
    // One call: the user namespace is made first, and owns the others.
    if let Err(e) = nix::sched::unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    ) {
        eprintln!("skiff-agent userns-hold: unshare: {e}");
        return 1;
    }
    let mut out = std::io::stdout();
    if out.write_all(b"ready\n").and_then(|()| out.flush()).is_err() {
        return 1;
    }
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_distinct_ranges_that_they_keep() {
        let pods = tempfile::tempdir().unwrap();
        let a = pods.path().join("a");
        let b = pods.path().join("b");
        assert_eq!(allocate(pods.path(), &a).unwrap(), 65_536);
        assert_eq!(allocate(pods.path(), &b).unwrap(), 131_072);
        assert_eq!(allocate(pods.path(), &a).unwrap(), 65_536, "kept");
        std::fs::remove_dir_all(&a).unwrap();
        assert_eq!(
            allocate(pods.path(), &pods.path().join("c")).unwrap(),
            65_536,
            "reused"
        );
        assert_eq!(id_map(65_536), "0 65536 65536\n");
        assert_eq!(
            layer_view(Path::new("/p"), "sha256:abc"),
            Path::new("/p/layers/abc")
        );
    }
}
