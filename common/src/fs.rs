//! Files replaced whole, readable by their owner only, and mount points.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `contents` to `path` readable by its owner only (0600), through a temporary file beside
/// it that is fsynced and renamed over `path`, so a crash leaves the old file or the new one and
/// a reader never sees half of it. Concurrent writers of one path each use their own temporary
/// file; the last rename wins.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    let tmp = temporary(path);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents.as_ref())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A name beside `path` that no other write of this process uses.
fn temporary(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// Whether `dir` is a mount point of this process's mount namespace.
pub fn is_mountpoint(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let t = dir.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(t.as_ref()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_replace_what_was_there() {
        let dir = std::env::temp_dir().join(format!("skiff-common-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        super::write_private(&path, "one").unwrap();
        super::write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Nothing is left beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_root_is_a_mount_point() {
        assert!(super::is_mountpoint(std::path::Path::new("/")));
        assert!(!super::is_mountpoint(
            &std::env::temp_dir().join("skiff-not-a-mount")
        ));
    }
}
