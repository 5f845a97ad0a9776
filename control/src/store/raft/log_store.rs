//! The Raft log as a write-ahead log, kept the way etcd keeps its own: append-only segment files
//! (`raft-wal/<seq>.wal`, preallocated), every record framed with its length and a CRC, one
//! `fdatasync` for all the appends that wait for it.
//!
//! An append is written at once without fsync (so the entries can be read, and a leader sends them
//! to its followers while its own disk writes them, as etcd's does), then made durable by the
//! flusher thread's `fdatasync` before openraft is told the entries are flushed, so an acknowledged
//! write survives `kill -9`. A file that is only ever appended to, in space allocated beforehand,
//! needs one data flush per sync; a B-tree commit needed several (0.5 ms against 0.12 ms here).
//!
//! Records: `len: u32 LE, crc32: u32 LE` then `len` bytes, the first of them the record's kind.
//! The vote, the last purged id and the committed hint are records too, and every segment begins
//! with the current ones, so a segment can be deleted as soon as its entries are purged. Truncation
//! is a record (entries from an index on are gone); nothing is ever written over.
//!
//! Opening replays every segment in order. A record cut short by a crash can only be at the end of
//! the last segment (a segment is synced before the next is started); the file is cut there, and
//! appends go to a new segment, so bytes after the cut can never be read as records.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, Vote};

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig, decode, encode, io_err};

/// The log's directory under the store's data directory.
pub const DIR: &str = "raft-wal";
/// The redb log of earlier releases, moved into the WAL at the first start.
pub const LEGACY: &str = "raft-log.redb";

/// What every segment file starts with (format version 1).
const MAGIC: &[u8; 8] = b"SKWAL\0\0\x01";
/// Bytes preallocated per segment; a record larger than what is left starts a new one.
const SEGMENT_BYTES: u64 = 16 << 20;
/// Most bytes of entries in one append to a follower (at least one entry): a follower must
/// store it within a heartbeat interval (openraft's timeout for an append).
pub const APPEND_BYTES: u64 = 4 << 20;
/// A record's frame: its length and its CRC.
const FRAME: usize = 8;
/// The largest record a replay accepts: an entry is one batch of writes, far below this.
const MAX_RECORD: u32 = 1 << 30;

/// A record's kind, its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Entry = 1,
    /// Entries from this index on are gone.
    Truncate = 2,
    Committed = 3,
    Vote = 4,
    Purged = 5,
}

impl Kind {
    fn of(byte: u8) -> Option<Self> {
        [
            Self::Entry,
            Self::Truncate,
            Self::Committed,
            Self::Vote,
            Self::Purged,
        ]
        .into_iter()
        .find(|k| *k as u8 == byte)
    }
}

/// Appends one framed record to `buf`; returns the record's offset in `buf` and its length.
fn frame(buf: &mut Vec<u8>, kind: Kind, body: &[u8]) -> (usize, u32) {
    let len = u32::try_from(body.len() + 1).expect("a log record below 4 GiB");
    let start = buf.len();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind as u8]);
    hasher.update(body);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(body);
    (start, len)
}

/// The records that restate a log's state (its vote, last purged id and committed hint).
fn state_records(
    buf: &mut Vec<u8>,
    vote: Option<Vote<NodeId>>,
    purged: Option<LogId>,
    committed: Option<LogId>,
) {
    frame(buf, Kind::Vote, &encode(&vote));
    frame(buf, Kind::Purged, &encode(&purged));
    frame(buf, Kind::Committed, &encode(&committed));
}

/// Where an entry lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    log_id: LogId,
    segment: u64,
    /// Offset of the record's frame.
    offset: u64,
    /// The record's length after its frame (kind byte included).
    len: u32,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// The highest entry index written to it; it can go once that is purged.
    last_index: Option<u64>,
}

/// The log's state; one lock, held for in-memory work and unsynced writes only.
#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to, and where its next record goes.
    current: u64,
    end: u64,
    /// Where the current segment's head (magic and state records) ends.
    head_end: u64,
    /// The entries, by index, contiguous.
    entries: VecDeque<Loc>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
    /// The committed hint changed since it was last written.
    committed_dirty: bool,
    purged: Option<LogId>,
}

/// The Raft log store; cheap to clone (a handle on one log).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    /// Appends written without fsync, waiting for the flusher's, with the file they went to.
    unflushed: std::sync::mpsc::Sender<(LogFlushed<TypeConfig>, Arc<File>)>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn logs_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes appends durable: one `fdatasync` of each file written for every append waiting, then
/// tells openraft, in order. After a failed sync every later one fails too (the kernel may have
/// dropped the pages it could not write, so a later success would prove nothing). Stops when the
/// last handle on the store goes.
fn flusher(appends: std::sync::mpsc::Receiver<(LogFlushed<TypeConfig>, Arc<File>)>) {
    let mut broken: Option<String> = None;
    while let Ok(first) = appends.recv() {
        let mut waiting = vec![first];
        waiting.extend(appends.try_iter());
        let started = std::time::Instant::now();
        if broken.is_none() {
            let mut files: Vec<&Arc<File>> = Vec::new();
            for (_, file) in &waiting {
                if !files.iter().any(|f| Arc::ptr_eq(f, file)) {
                    files.push(file);
                }
            }
            if let Err(e) = files.iter().try_for_each(|f| f.sync_data()) {
                tracing::error!(error = %e, "the Raft log could not be made durable");
                broken = Some(e.to_string());
            }
        }
        crate::metrics::WAL_FSYNC.observe(&[], started.elapsed().as_secs_f64());
        for (callback, _) in waiting {
            callback.log_io_completed(match &broken {
                None => Ok(()),
                Some(e) => Err(std::io::Error::other(e.clone())),
            });
        }
    }
}

/// One record read back by a replay.
struct Record {
    kind: Kind,
    offset: u64,
    len: u32,
    body: Vec<u8>,
}

/// Reads a segment's records up to its end: the end of the file, the zeroes of preallocated space,
/// or a record cut short (length past the end, CRC mismatch). Returns them and where they end.
fn read_segment(file: &File) -> std::io::Result<(Vec<Record>, u64, bool)> {
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut magic = [0u8; MAGIC.len()];
    if size < MAGIC.len() as u64 || reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Ok((Vec::new(), 0, true));
    }
    let mut records = Vec::new();
    let mut offset = MAGIC.len() as u64;
    loop {
        let mut head = [0u8; FRAME];
        if offset + FRAME as u64 > size || reader.read_exact(&mut head).is_err() {
            return Ok((records, offset, false));
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len == 0 {
            // Preallocated space: zeroes from here on.
            return Ok((records, offset, false));
        }
        if len > MAX_RECORD || offset + (FRAME as u64) + u64::from(len) > size {
            return Ok((records, offset, true));
        }
        let mut data = vec![0u8; len as usize];
        reader.read_exact(&mut data)?;
        let kind = Kind::of(data[0]);
        if crc32fast::hash(&data) != crc || kind.is_none() {
            return Ok((records, offset, true));
        }
        data.remove(0);
        records.push(Record {
            kind: kind.expect("checked"),
            offset,
            len,
            body: data,
        });
        offset += FRAME as u64 + u64::from(len);
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the Raft log {} is damaged: {what}", path.display()),
    )
}

impl Inner {
    /// Replays the segments in `dir` (none: an empty log).
    fn replay(dir: &Path, segment_bytes: u64) -> std::io::Result<Self> {
        let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
            })
            .collect();
        seqs.sort_unstable();
        let mut inner = Self {
            dir: dir.to_owned(),
            segment_bytes,
            segments: BTreeMap::new(),
            current: 0,
            end: 0,
            head_end: 0,
            entries: VecDeque::new(),
            vote: None,
            committed: None,
            committed_dirty: false,
            purged: None,
        };
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let file = File::options().read(true).write(true).open(&path)?;
            let (records, end, cut) = read_segment(&file)?;
            let last = i + 1 == seqs.len();
            if cut && !last {
                return Err(corrupt(&path, format!("a damaged record at byte {end}")));
            }
            if end == 0 {
                // Created by a start or a rotation that did not get as far as its header.
                drop(file);
                std::fs::remove_file(&path)?;
                continue;
            }
            let mut last_index = None;
            for record in records {
                if let Some(index) = inner.apply(seq, &record, &path)? {
                    last_index = Some(index);
                }
            }
            if last && file.metadata()?.len() > end {
                // Cut the preallocated space and any torn record off: no later append lands in
                // this file, and nothing after `end` may ever be replayed.
                file.set_len(end)?;
                file.sync_all()?;
            }
            inner.segments.insert(
                seq,
                Segment {
                    file: Arc::new(file),
                    last_index,
                },
            );
        }
        if let (Some(first), Some(purged)) = (inner.entries.front(), inner.purged)
            && first.log_id.index != purged.index + 1
        {
            return Err(corrupt(
                dir,
                format!(
                    "entries start at {} after a purge up to {}",
                    first.log_id.index, purged.index
                ),
            ));
        }
        Ok(inner)
    }

    /// Replays one record; returns the index of an entry.
    fn apply(&mut self, segment: u64, record: &Record, path: &Path) -> std::io::Result<Option<u64>> {
        let bad = |e: postcard::Error| corrupt(path, format!("record at byte {}: {e}", record.offset));
        match record.kind {
            Kind::Entry => {
                let entry: Entry = decode(&record.body).map_err(bad)?;
                let index = entry.log_id.index;
                if let Some(last) = self.entries.back().map(|l| l.log_id.index)
                    && index != last + 1
                {
                    if index > last + 1 {
                        return Err(corrupt(path, format!("entry {index} follows entry {last}")));
                    }
                    self.truncate_from(index);
                }
                if self.purged.is_none_or(|p| index > p.index) {
                    self.entries.push_back(Loc {
                        log_id: entry.log_id,
                        segment,
                        offset: record.offset,
                        len: record.len,
                    });
                }
                return Ok(Some(index));
            }
            Kind::Truncate => {
                let index: u64 = decode(&record.body).map_err(bad)?;
                self.truncate_from(index);
            }
            Kind::Committed => self.committed = decode(&record.body).map_err(bad)?,
            Kind::Vote => self.vote = decode(&record.body).map_err(bad)?,
            Kind::Purged => {
                let purged: Option<LogId> = decode(&record.body).map_err(bad)?;
                if let Some(p) = purged {
                    self.purge_to(p);
                }
            }
        }
        Ok(None)
    }

    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|l| l.log_id.index >= index) {
            self.entries.pop_back();
        }
    }

    fn purge_to(&mut self, log_id: LogId) {
        while self
            .entries
            .front()
            .is_some_and(|l| l.log_id.index <= log_id.index)
        {
            self.entries.pop_front();
        }
        if self.purged.is_none_or(|p| p.index < log_id.index) {
            self.purged = Some(log_id);
        }
    }

    /// The records that restate the log's state at the head of a segment.
    fn state_records(&self, buf: &mut Vec<u8>) {
        state_records(buf, self.vote, self.purged, self.committed);
    }

    /// Starts the next segment: preallocated, headed by the state, the previous one synced first
    /// so that a record cut short can only be in the last segment.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(previous) = self.segments.get(&self.current) {
            previous.file.sync_data()?;
        }
        let seq = self.segments.keys().next_back().map_or(1, |s| s + 1);
        let path = segment_path(&self.dir, seq);
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Space allocated now needs no size update at each sync. A filesystem that cannot
        // preallocate (or a disk too full to) gets a file that grows instead.
        let _ = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.segment_bytes);
        let mut head = MAGIC.to_vec();
        self.state_records(&mut head);
        file.write_all_at(&head, 0)?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            seq,
            Segment {
                file: Arc::new(file),
                last_index: None,
            },
        );
        self.current = seq;
        self.end = head.len() as u64;
        self.head_end = self.end;
        self.committed_dirty = false;
        Ok(())
    }

    /// Writes records at the end of the log (unsynced); returns the file they went to and their
    /// offset in it.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<(Arc<File>, u64)> {
        if self.end + buf.len() as u64 > self.segment_bytes && self.end > self.head_end {
            self.rotate()?;
        }
        let segment = self
            .segments
            .get(&self.current)
            .expect("the current segment is open");
        segment.file.write_all_at(buf, self.end)?;
        let offset = self.end;
        self.end += buf.len() as u64;
        Ok((segment.file.clone(), offset))
    }

    fn sync_current(&self) -> std::io::Result<()> {
        self.segments
            .get(&self.current)
            .expect("the current segment is open")
            .file
            .sync_data()
    }
}

impl LogStore {
    /// Opens (or creates) the log in `data_dir/raft-wal`, first moving an earlier release's redb
    /// log (`raft-log.redb`) into it.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        Self::open_with(data_dir, SEGMENT_BYTES)
    }

    fn open_with(data_dir: &Path, segment_bytes: u64) -> std::io::Result<Self> {
        let dir = data_dir.join(DIR);
        let legacy = data_dir.join(LEGACY);
        if legacy.exists() {
            if !dir.exists() {
                legacy::migrate(&legacy, &dir)?;
            }
            std::fs::remove_file(&legacy)?;
            sync_dir(data_dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut inner = Inner::replay(&dir, segment_bytes)?;
        inner.rotate()?;
        inner.sync_current()?;
        let (unflushed, appends) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(appends))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            unflushed,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes entries at the end of the log, unsynced; returns the file to sync.
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> std::io::Result<Arc<File>> {
        let mut buf = Vec::new();
        let mut written = Vec::new();
        for entry in entries {
            let (at, len) = frame(&mut buf, Kind::Entry, &encode(&entry));
            written.push((entry.log_id, at, len));
        }
        let mut inner = self.lock();
        let mut shift = 0;
        if inner.committed_dirty {
            // The committed hint rides along.
            let mut all = Vec::with_capacity(buf.len() + 64);
            frame(&mut all, Kind::Committed, &encode(&inner.committed));
            shift = all.len();
            all.extend_from_slice(&buf);
            buf = all;
        }
        // Entries follow the last (openraft truncates conflicting ones first); a gap would break
        // the index, so it is refused before anything is written.
        let mut next = inner.entries.back().map(|l| l.log_id.index + 1);
        for (log_id, _, _) in &written {
            if let Some(n) = next.filter(|n| log_id.index > *n) {
                return Err(std::io::Error::other(format!(
                    "entry {} appended after entry {}",
                    log_id.index,
                    n - 1
                )));
            }
            next = Some(log_id.index + 1);
        }
        let (file, offset) = inner.write(&buf)?;
        inner.committed_dirty = false;
        let segment = inner.current;
        for (log_id, at, len) in written {
            if inner
                .entries
                .back()
                .is_some_and(|l| l.log_id.index + 1 != log_id.index)
            {
                inner.truncate_from(log_id.index);
            }
            inner.entries.push_back(Loc {
                log_id,
                segment,
                offset: offset + (shift + at) as u64,
                len,
            });
            if let Some(s) = inner.segments.get_mut(&segment) {
                s.last_index = Some(log_id.index);
            }
        }
        Ok(file)
    }

    /// Reads the entries at `locs` (contiguous ranges of one file in one read each).
    fn read(&self, locs: &[Loc], files: &BTreeMap<u64, Arc<File>>) -> std::io::Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(locs.len());
        let mut rest = locs;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .take_while(|l| l.segment == first.segment)
                .count()
                .max(1);
            let (group, tail) = rest.split_at(run);
            rest = tail;
            let last = group.last().expect("a run of one or more");
            let start = first.offset;
            let stop = last.offset + FRAME as u64 + u64::from(last.len);
            let mut buf = vec![0u8; usize::try_from(stop - start).map_err(std::io::Error::other)?];
            files
                .get(&first.segment)
                .ok_or_else(|| std::io::Error::other("a segment went while it was read"))?
                .read_exact_at(&mut buf, start)?;
            for loc in group {
                let at = usize::try_from(loc.offset - start).map_err(std::io::Error::other)? + FRAME;
                let record = &buf[at..at + loc.len as usize];
                if record[0] != Kind::Entry as u8 {
                    return Err(std::io::Error::other(format!("no entry at {}", loc.log_id.index)));
                }
                out.push(decode(&record[1..]).map_err(std::io::Error::other)?);
            }
        }
        Ok(out)
    }
}

impl LogStore {
    /// The entries in `from..to`, stopping before `max_bytes` of records (never at none).
    fn get(&self, from: u64, to: u64, max_bytes: u64) -> std::io::Result<Vec<Entry>> {
        let (locs, files) = {
            let inner = self.lock();
            let Some(first) = inner.entries.front().map(|l| l.log_id.index) else {
                return Ok(Vec::new());
            };
            let from = from.max(first);
            let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
            let take = usize::try_from(to.saturating_sub(from)).unwrap_or(usize::MAX);
            let mut bytes = 0;
            let locs: Vec<Loc> = inner
                .entries
                .iter()
                .skip(skip)
                .take(take)
                .take_while(|l| {
                    let fits = bytes == 0 || bytes + u64::from(l.len) <= max_bytes;
                    bytes += u64::from(l.len);
                    fits
                })
                .copied()
                .collect();
            let files = locs
                .iter()
                .map(|l| l.segment)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter_map(|s| Some((s, inner.segments.get(&s)?.file.clone())))
                .collect();
            (locs, files)
        };
        self.read(&locs, &files)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        self.get(from, to, u64::MAX)
            .map_err(|e| logs_err(ErrorVerb::Read, e))
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.get(start, end, APPEND_BYTES)
            .map_err(|e| logs_err(ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: inner.entries.back().map(|l| l.log_id).or(inner.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        frame(&mut buf, Kind::Vote, &encode(&Some(*vote)));
        let mut inner = self.lock();
        inner
            .write(&buf)
            .and_then(|_| inner.sync_current())
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint for faster restarts, not a safety requirement: it goes to disk with the next
        // append (and at the head of every segment). A stale value only means re-applying less.
        let mut inner = self.lock();
        inner.committed = committed;
        inner.committed_dirty = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let write = |e: &dyn std::fmt::Display| logs_err(ErrorVerb::Write, e);
        let file = self.write_entries(entries).map_err(|e| write(&e))?;
        // Durable once the flusher's next fsync is done (etcd's WAL fsync).
        self.unflushed
            .send((callback, file))
            .map_err(|_| write(&"the log's flusher has stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Durable with the next sync; until then a restart sees the uncommitted entries again,
        // as if the append that conflicted with them had not arrived.
        let mut buf = Vec::new();
        frame(&mut buf, Kind::Truncate, &encode(&log_id.index));
        let mut inner = self.lock();
        inner.write(&buf).map_err(|e| logs_err(ErrorVerb::Delete, e))?;
        inner.truncate_from(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let delete = |e: &dyn std::fmt::Display| logs_err(ErrorVerb::Delete, e);
        let mut buf = Vec::new();
        frame(&mut buf, Kind::Purged, &encode(&Some(log_id)));
        let mut inner = self.lock();
        // The purge is durable before any segment goes, so a restart never finds entries
        // missing in front of what it believes is the first.
        inner.write(&buf).map_err(|e| delete(&e))?;
        inner.sync_current().map_err(|e| delete(&e))?;
        inner.purge_to(log_id);
        let current = inner.current;
        let gone: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(seq, s)| **seq != current && s.last_index.is_none_or(|l| l <= log_id.index))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &gone {
            inner.segments.remove(seq);
            std::fs::remove_file(segment_path(&inner.dir, *seq)).map_err(|e| delete(&e))?;
        }
        if !gone.is_empty() {
            sync_dir(&inner.dir).map_err(|e| delete(&e))?;
        }
        Ok(())
    }
}

/// The redb log of earlier releases: read once, written into a new WAL, then removed.
mod legacy {
    use std::path::Path;

    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    use super::{Inner, Kind, MAGIC, frame, segment_path, sync_dir};
    use crate::store::raft::types::{Entry, LogId, NodeId, decode, encode};

    pub(super) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
    pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

    /// Writes the redb log at `path` as a WAL in `dir`, atomically (built beside it, then
    /// renamed into place).
    pub(super) fn migrate(path: &Path, dir: &Path) -> std::io::Result<()> {
        let bad = |e: &dyn std::fmt::Display| {
            std::io::Error::other(format!("reading the earlier Raft log {}: {e}", path.display()))
        };
        let db = redb::Database::open(path).map_err(|e| bad(&e))?;
        let tx = db.begin_read().map_err(|e| bad(&e))?;
        let meta = tx.open_table(META).map_err(|e| bad(&e))?;
        let get = |name: &str| -> std::io::Result<Option<Vec<u8>>> {
            Ok(meta.get(name).map_err(|e| bad(&e))?.map(|v| v.value().to_vec()))
        };
        let vote: Option<openraft::Vote<NodeId>> = get("vote")?
            .map(|v| decode(&v))
            .transpose()
            .map_err(|e| bad(&e))?;
        let committed: Option<LogId> = get("committed")?
            .map(|v| decode::<Option<LogId>>(&v))
            .transpose()
            .map_err(|e| bad(&e))?
            .flatten();
        let purged: Option<LogId> = get("last_purged")?
            .map(|v| decode(&v))
            .transpose()
            .map_err(|e| bad(&e))?;
        let mut buf = MAGIC.to_vec();
        super::state_records(&mut buf, vote, purged, committed);
        let logs = tx.open_table(LOGS).map_err(|e| bad(&e))?;
        for item in logs.iter().map_err(|e| bad(&e))? {
            let (_, v) = item.map_err(|e| bad(&e))?;
            let entry: Entry = decode(v.value()).map_err(|e| bad(&e))?;
            frame(&mut buf, Kind::Entry, &encode(&entry));
        }
        let building = dir.with_extension("migrating");
        if building.exists() {
            std::fs::remove_dir_all(&building)?;
        }
        std::fs::create_dir_all(&building)?;
        let file = std::fs::File::create(segment_path(&building, 1))?;
        std::io::Write::write_all(&mut &file, &buf)?;
        file.sync_all()?;
        sync_dir(&building)?;
        // Replayed before it is put in place: a log that does not read back is not used.
        Inner::replay(&building, super::SEGMENT_BYTES)?;
        std::fs::rename(&building, dir)?;
        sync_dir(dir.parent().unwrap_or(Path::new(".")))?;
        tracing::info!(from = %path.display(), to = %dir.display(), "moved the Raft log to its write-ahead log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::store::raft::state_machine::StateMachine;
    use crate::store::watch::WatchHub;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Appends and syncs, as the flusher does.
    async fn append(log: &mut LogStore, entries: Vec<Entry>) {
        log.write_entries(entries)
            .expect("append")
            .sync_data()
            .expect("sync");
    }

    async fn indexes(log: &mut LogStore) -> Vec<u64> {
        log.try_get_log_entries(..)
            .await
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = LogStore::open_with(dir.path(), 4096).expect("open");
            let db = StateMachine::open(&dir.path().join("state.redb")).expect("state");
            let hub = Arc::new(WatchHub::new(0, 100, Default::default()));
            let sm = StateMachine::new(db, hub, dir.path().join("snapshot.bin"));
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft's storage suite");
    }

    #[test]
    fn entries_vote_and_purge_survive_a_restart_across_segments() {
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut log = LogStore::open_with(dir.path(), 512).unwrap();
                for i in 0..40 {
                    append(&mut log, vec![entry(1, i)]).await;
                }
                log.save_vote(&Vote::new(3, 2)).await.unwrap();
                log.truncate(log_id(1, 30)).await.unwrap();
                append(&mut log, vec![entry(2, 30), entry(2, 31)]).await;
                log.purge(log_id(1, 20)).await.unwrap();
                log.save_committed(Some(log_id(2, 31))).await.unwrap();
                append(&mut log, vec![entry(2, 32)]).await;
                assert_eq!(indexes(&mut log).await, (21..=32).collect::<Vec<_>>());
            }
            let segments = std::fs::read_dir(dir.path().join(DIR)).unwrap().count();
            assert!(segments < 8, "purged segments stay: {segments}");
            let mut log = LogStore::open_with(dir.path(), 512).unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(log_id(1, 20)));
            assert_eq!(state.last_log_id, Some(log_id(2, 32)));
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 31)));
            let read = log.try_get_log_entries(29..32).await.unwrap();
            let ids: Vec<_> = read.iter().map(|e| e.log_id).collect();
            assert_eq!(ids, vec![log_id(1, 29), log_id(2, 30), log_id(2, 31)]);
        });
    }

    #[test]
    fn an_append_to_a_follower_is_capped_in_bytes() {
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut log = LogStore::open_with(dir.path(), SEGMENT_BYTES).unwrap();
            let big = |index| Entry {
                log_id: log_id(1, index),
                payload: EntryPayload::Normal(crate::store::raft::types::Request {
                    ops: vec![crate::store::WriteOp::Put {
                        key: "k".into(),
                        value: vec![7; 3 << 20],
                    }],
                }),
            };
            append(&mut log, (0..3).map(big).collect()).await;
            // Two entries are over the cap: one goes; one alone over it still goes.
            assert_eq!(log.limited_get_log_entries(0, 3).await.unwrap().len(), 1);
            assert_eq!(log.try_get_log_entries(0..3).await.unwrap().len(), 3);
            append(&mut log, vec![entry(1, 3), entry(1, 4)]).await;
            assert_eq!(log.limited_get_log_entries(3, 5).await.unwrap().len(), 2);
        });
    }

    #[test]
    fn a_torn_tail_is_cut_and_never_read_back() {
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let last_segment = || {
                let mut files: Vec<_> = std::fs::read_dir(dir.path().join(DIR))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                files.sort();
                files.pop().unwrap()
            };
            {
                let mut log = LogStore::open_with(dir.path(), 1 << 20).unwrap();
                append(&mut log, (0..5).map(|i| entry(1, i)).collect()).await;
            }
            // A crash in the middle of the last record: its frame is there, its bytes are not.
            let path = last_segment();
            let file = File::options().read(true).write(true).open(&path).unwrap();
            let (records, _, cut) = read_segment(&file).unwrap();
            assert!(!cut);
            let torn = records.last().unwrap().offset;
            file.write_all_at(&[0xff; 4], torn + 4).unwrap();
            let mut log = LogStore::open_with(dir.path(), 1 << 20).unwrap();
            assert_eq!(indexes(&mut log).await, vec![0, 1, 2, 3]);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), torn);
            append(&mut log, vec![entry(1, 4), entry(1, 5)]).await;
            let gap = log.write_entries(vec![entry(1, 9)]).unwrap_err();
            assert!(
                gap.to_string().contains("entry 9 appended after entry 5"),
                "{gap}"
            );
            drop(log);
            let mut log = LogStore::open_with(dir.path(), 1 << 20).unwrap();
            assert_eq!(indexes(&mut log).await, vec![0, 1, 2, 3, 4, 5]);
        });
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        block_on(async {
            let mut log = LogStore::open_with(dir.path(), 256).unwrap();
            for i in 0..20 {
                append(&mut log, vec![entry(1, i)]).await;
            }
        });
        let mut files: Vec<_> = std::fs::read_dir(dir.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let file = File::options().write(true).open(&files[0]).unwrap();
        file.write_all_at(&[0xee; 4], MAGIC.len() as u64 + 4).unwrap();
        let err = LogStore::open_with(dir.path(), 256).unwrap_err();
        assert!(err.to_string().contains("is damaged"), "{err}");
    }

    #[test]
    fn an_earlier_releases_redb_log_moves_into_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEGACY);
        {
            let db = redb::Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut logs = tx.open_table(legacy::LOGS).unwrap();
                for i in 11..15 {
                    logs.insert(i, encode(&entry(2, i)).as_slice()).unwrap();
                }
                let mut meta = tx.open_table(legacy::META).unwrap();
                meta.insert("vote", encode(&Vote::<NodeId>::new(2, 1)).as_slice())
                    .unwrap();
                meta.insert("last_purged", encode(&log_id(1, 10)).as_slice())
                    .unwrap();
                meta.insert("committed", encode(&Some(log_id(2, 13))).as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        block_on(async {
            let mut log = LogStore::open(dir.path()).unwrap();
            assert!(!path.exists());
            assert_eq!(indexes(&mut log).await, vec![11, 12, 13, 14]);
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(log_id(1, 10)));
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 13)));
        });
    }
}
