//! Free space on the store's disk, watched so that a full disk stops writes before the Raft log
//! fails on `ENOSPC` (which would stop the Raft core until a restart). While space is short,
//! writes are refused and reads keep working; when space returns, writes resume by themselves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often free space is measured.
const POLL: Duration = Duration::from_millis(500);

/// The store disk's last measured state; shared by the store handles.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    reserve: u64,
    free: AtomicU64,
    /// Bytes admitted since the last measurement, times the write amplification.
    spent: AtomicU64,
    full: AtomicBool,
}

/// What one byte of a write costs on disk at most: the Raft log entry, the state machine's
/// copy-on-write pages, and the snapshot that later holds it.
const AMPLIFICATION: u64 = 4;

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl DiskGuard {
    /// Watches the filesystem of `dir`; writes stop while less than `reserve` bytes are free.
    pub fn start(dir: &Path, reserve: u64) -> Arc<Self> {
        let guard = Arc::new(Self {
            dir: dir.to_owned(),
            reserve,
            free: AtomicU64::new(u64::MAX),
            spent: AtomicU64::new(0),
            full: AtomicBool::new(false),
        });
        guard.measure();
        let weak = Arc::downgrade(&guard);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let Some(guard) = weak.upgrade() else { return };
                guard.measure();
            }
        });
        guard
    }

    /// Measures free space now and updates the state, logging each change once.
    pub fn measure(&self) {
        let free = match free_bytes(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot measure the store's free disk space");
                return;
            }
        };
        self.free.store(free, Ordering::Relaxed);
        self.spent.store(0, Ordering::Relaxed);
        let full = free < self.reserve;
        if self.full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::error!(free, reserve = self.reserve, dir = %self.dir.display(), "the store's disk is full: refusing writes until space is freed");
            } else {
                tracing::warn!(
                    free,
                    reserve = self.reserve,
                    "the store's disk has space again: accepting writes"
                );
            }
        }
    }

    /// Admits a write of `bytes`, unless it would leave less than the reserve before the next
    /// measurement (so a burst cannot run the disk full between two polls).
    pub fn admit(&self, bytes: u64) -> Result<(), String> {
        if let Some(why) = self.refusal() {
            return Err(why);
        }
        let cost = bytes.saturating_mul(AMPLIFICATION);
        let spent = self.spent.fetch_add(cost, Ordering::Relaxed).saturating_add(cost);
        let free = self.free.load(Ordering::Relaxed);
        if free.saturating_sub(spent) < self.reserve {
            self.spent.fetch_sub(cost, Ordering::Relaxed);
            return Err(format!(
                "the store's disk is nearly full: a write of {bytes} bytes would leave less than the {} MiB reserve of {} MiB free; writes are refused until space is freed",
                self.reserve >> 20,
                free >> 20
            ));
        }
        Ok(())
    }

    /// Why writes are refused, if they are.
    pub fn refusal(&self) -> Option<String> {
        self.full.load(Ordering::Relaxed).then(|| {
            format!(
                "the store's disk is full: {} MiB free, below the {} MiB reserve; writes are refused until space is freed",
                self.free.load(Ordering::Relaxed) >> 20,
                self.reserve >> 20
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reserve_beyond_the_free_space_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DiskGuard::start(dir.path(), 0).refusal().is_none());
        let refusal = DiskGuard::start(dir.path(), u64::MAX).refusal().unwrap();
        assert!(refusal.contains("disk is full"), "{refusal}");
    }

    #[tokio::test]
    async fn a_burst_is_admitted_only_within_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let guard = DiskGuard::start(dir.path(), 1 << 20);
        let free = guard.free.load(Ordering::Relaxed);
        assert!(guard.admit(1024).is_ok());
        assert!(guard.admit(free / AMPLIFICATION).is_err());
        guard.measure();
        assert!(guard.admit(1024).is_ok());
    }
}
