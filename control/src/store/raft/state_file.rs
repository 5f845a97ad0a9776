//! The state machine's file under redb, lengthened ahead of redb in large sparse steps, with the
//! length redb sees kept in an 8-byte file beside it (`state.redb.len`).
//!
//! redb makes its file durable each time it lengthens it (it doubles the file while small), so
//! that a header naming the longer layout never outlives a crash that lost the lengthening. The
//! state machine commits without fsync (the fsynced Raft log is the durability point), so that
//! fsync wrote back every page since the one before, and every write waited behind it: stalls of
//! 40-80 ms at each doubling under load. Here the file on disk is longer than redb's view of it
//! (up to 1 GiB more, sparse: holes take no space), made so with a real fsync only when redb
//! outgrows it; a lengthening within it makes just the length file durable, which serves the same
//! purpose: before redb can write a header with the new layout, the length it needs is on disk.
//!
//! Opening reads the length file (a file redb wrote itself has none: its own length is redb's
//! length). After a crash it may name a length longer than the last durable header's layout, the
//! case redb repairs when it finds its file longer than its header says.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// The least the file on disk runs ahead of redb's length.
const MIN_LEAD: u64 = 64 << 20;
/// The most it runs ahead.
const MAX_LEAD: u64 = 1 << 30;

/// How far the file on disk runs ahead of a length `len`: three times it, within the bounds.
fn lead(len: u64) -> u64 {
    len.saturating_mul(3).clamp(MIN_LEAD, MAX_LEAD)
}

/// The length file of the database file at `path`.
pub(crate) fn length_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".len");
    PathBuf::from(name)
}

/// The database's length as redb sees it (what its file's size was before this backend): the
/// length file's, or the file's own size without one.
pub(crate) fn length(path: &Path) -> io::Result<u64> {
    Ok(logical_length(path, std::fs::metadata(path)?.len()))
}

/// redb's length for the file at `path` of size `physical`: the length file's, never past it.
fn logical_length(path: &Path, physical: u64) -> u64 {
    read_length(&length_path(path)).map_or(physical, |len| len.min(physical))
}

fn read_length(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

#[derive(Debug)]
struct Lengths {
    /// redb's length (`StateFile::logical` is what reads look at).
    logical: u64,
    /// The file's size on disk (durable).
    physical: u64,
    /// What the length file holds durably.
    durable: u64,
    /// redb lengthened the database and wrote nothing since: its next sync is for the length.
    lengthened: bool,
}

/// A redb storage backend: redb's own file backend, with the length kept as above.
#[derive(Debug)]
pub(crate) struct StateFile {
    file: FileBackend,
    /// The same file, for punching holes.
    raw: File,
    length_file: File,
    lengths: Mutex<Lengths>,
    /// redb's length, for reads without the lock.
    logical: AtomicU64,
    /// A write since the last lengthening.
    written: AtomicBool,
    /// How many times the file's data was synced.
    #[cfg(test)]
    data_syncs: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl StateFile {
    /// Opens (or creates) the database file at `path` and its length file.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let physical = file.metadata()?.len();
        let logical = logical_length(path, physical);
        let length_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(length_path(path))?;
        let raw = file.try_clone()?;
        let file = FileBackend::new(file).map_err(io::Error::other)?;
        let state = Self {
            file,
            raw,
            length_file,
            lengths: Mutex::new(Lengths {
                logical,
                physical,
                durable: u64::MAX,
                lengthened: false,
            }),
            logical: AtomicU64::new(logical),
            written: AtomicBool::new(false),
            #[cfg(test)]
            data_syncs: Default::default(),
        };
        // Past redb's length the file reads as zeros, as a file redb lengthens would (a crash
        // after a shrink may have left pages there).
        state.zero(logical, physical)?;
        Ok(state)
    }

    /// Zeros `from..to` of the file: a hole where the file system punches them.
    fn zero(&self, from: u64, to: u64) -> io::Result<()> {
        use rustix::fs::{FallocateFlags, fallocate};
        if to <= from {
            return Ok(());
        }
        match fallocate(
            &self.raw,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            from,
            to - from,
        ) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => {
                let zeros = vec![0u8; 1 << 20];
                let mut at = from;
                while at < to {
                    let n = (to - at).min(zeros.len() as u64) as usize;
                    self.raw.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Syncs the file's data (and its size).
    fn sync_file(&self) -> io::Result<()> {
        #[cfg(test)]
        self.data_syncs.fetch_add(1, Ordering::Relaxed);
        self.file.sync_data()
    }

    fn lengths(&self) -> std::sync::MutexGuard<'_, Lengths> {
        self.lengths.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the length file say redb's length, durably.
    fn persist_length(&self, lengths: &mut Lengths) -> io::Result<()> {
        if lengths.durable != lengths.logical {
            self.length_file.write_all_at(&lengths.logical.to_le_bytes(), 0)?;
            self.length_file.sync_data()?;
            lengths.durable = lengths.logical;
        }
        Ok(())
    }
}

impl StorageBackend for StateFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.logical.load(Ordering::Acquire))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let end = offset.saturating_add(out.len() as u64);
        if end > self.logical.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read to {end} past the database's end"),
            ));
        }
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut lengths = self.lengths();
        if len > lengths.physical {
            // Outgrown: lengthen the file on disk well ahead, durably (this fsync writes back
            // what the state machine wrote since the last one; it comes once per lead).
            let physical = len.saturating_add(lead(len));
            self.file.set_len(physical)?;
            self.sync_file()?;
            lengths.physical = physical;
        } else if len < lengths.logical {
            // redb shrinks once the shorter layout is durable: what it cut off is free. Zeros
            // (holes) for a later lengthening to find; and when far below the file on disk, the
            // space back, keeping a lead.
            self.zero(len, lengths.logical)?;
            if lengths.physical > len.saturating_add(2 * lead(len)) {
                let physical = len.saturating_add(lead(len));
                self.file.set_len(physical)?;
                lengths.physical = physical;
            }
        }
        if len > lengths.logical {
            lengths.lengthened = true;
            self.written.store(false, Ordering::Release);
        }
        // Past the old length the file reads as zeros (holes), as a lengthened file would.
        lengths.logical = len;
        self.logical.store(len, Ordering::Release);
        Ok(())
    }

    /// redb syncs for two reasons: a durable commit (after writing it), and right after
    /// lengthening its file (with no write between), so that the length is durable before a
    /// header can name it. The second needs only the length file (the file on disk is already
    /// longer, durably); the first needs both.
    fn sync_data(&self) -> Result<(), io::Error> {
        let length_only = {
            let mut lengths = self.lengths();
            std::mem::take(&mut lengths.lengthened) && !self.written.load(Ordering::Acquire)
        };
        if !length_only {
            // Without the lock: reads and writes go on while the disk syncs.
            self.sync_file()?;
        }
        self.persist_length(&mut self.lengths())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.written.store(true, Ordering::Release);
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        let mut lengths = self.lengths();
        let persisted = self.persist_length(&mut lengths);
        self.file.close()?;
        persisted
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn put(db: &Database, from: u64, n: u64, size: usize) {
        for i in from..from + n {
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(Durability::None).unwrap();
            tx.open_table(T)
                .unwrap()
                .insert(i, vec![i as u8; size].as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
    }

    fn count(db: &Database) -> u64 {
        let tx = db.begin_read().unwrap();
        tx.open_table(T).unwrap().len().unwrap()
    }

    #[test]
    fn redb_lengthening_its_file_syncs_the_length_file_not_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let file = StateFile::open(&path).unwrap();
        let syncs = file.data_syncs.clone();
        let db = Database::builder().create_with_backend(file).unwrap();
        put(&db, 0, 1, 4096);
        let (before, len_before) = (syncs.load(Ordering::Relaxed), length(&path).unwrap());
        // About 12 MiB of 4 KiB values, committed without durability as the state machine does:
        // redb doubles its length several times.
        put(&db, 1, 3000, 4096);
        let len_after = length(&path).unwrap();
        assert!(len_after >= 8 * len_before, "{len_before} -> {len_after}");
        assert_eq!(
            syncs.load(Ordering::Relaxed),
            before,
            "no data sync for lengthening within the lead"
        );
        assert_eq!(
            read_length(&length_path(&path)),
            Some(len_after),
            "the length file says redb's length"
        );
        assert!(
            std::fs::metadata(&path).unwrap().len() > len_after,
            "the file runs ahead"
        );
        drop(db);

        // Reopened, redb finds its layout and everything committed.
        let db = Database::builder()
            .create_with_backend(StateFile::open(&path).unwrap())
            .unwrap();
        assert_eq!(count(&db), 3001);
        put(&db, 3001, 10, 4096);
        assert_eq!(count(&db), 3011);
    }

    #[test]
    fn a_file_redb_wrote_itself_opens_with_its_own_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let db = Database::create(&path).unwrap();
        put(&db, 0, 100, 1000);
        drop(db);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(length(&path).unwrap(), size);
        let db = Database::builder()
            .create_with_backend(StateFile::open(&path).unwrap())
            .unwrap();
        assert_eq!(count(&db), 100);
        put(&db, 100, 100, 1000);
        assert_eq!(count(&db), 200);
    }

    #[test]
    fn what_a_shrink_cut_off_reads_as_zeros_when_lengthened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = StateFile::open(&path).unwrap();
        f.set_len(8192).unwrap();
        f.write(4096, &[7u8; 4096]).unwrap();
        f.sync_data().unwrap();
        f.set_len(4096).unwrap();
        let mut out = [1u8; 4096];
        assert!(f.read(4096, &mut out).is_err(), "past the end");
        f.set_len(8192).unwrap();
        f.read(4096, &mut out).unwrap();
        assert_eq!(out, [0u8; 4096]);
        f.close().unwrap();
        assert_eq!(length(&path).unwrap(), 8192);
        // Junk past the length (a crash after a shrink) is zeroed on open.
        std::fs::write(length_path(&path), 4096u64.to_le_bytes()).unwrap();
        let raw = OpenOptions::new().write(true).open(&path).unwrap();
        raw.write_all_at(&[9u8; 4096], 4096).unwrap();
        let f = StateFile::open(&path).unwrap();
        f.set_len(8192).unwrap();
        f.read(4096, &mut out).unwrap();
        assert_eq!(out, [0u8; 4096]);
    }
}
