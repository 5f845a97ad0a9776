//! The Raft log on redb: entries by index, plus the vote and the committed id.
//!
//! Every append is one redb transaction committed at once without fsync (so the entries can be
//! read, and a leader sends them to its followers while its own disk writes them, as etcd's does),
//! then made durable by a flusher thread's fsync before openraft is told the entries are flushed,
//! so an acknowledged write survives `kill -9`. Appends that arrive during one fsync share the next.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig, decode, encode, io_err};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The log's own page cache: the entries it serves are the ones just appended (replication and
/// apply), and the log is purged behind snapshots.
const CACHE_BYTES: usize = 1024 * 1024;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// The Raft log store; cheap to clone (a handle on one database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Appends committed without fsync, waiting for the flusher's.
    unflushed: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

/// Makes appends durable: one fsync (an empty transaction committed durably, which makes every
/// earlier commit durable) for every append waiting, then tells openraft, in order. Stops when
/// the last handle on the store goes.
fn flusher(db: Arc<Database>, appends: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = appends.recv() {
        let mut waiting = vec![first];
        waiting.extend(appends.try_iter());
        let started = std::time::Instant::now();
        let result = db
            .begin_write()
            .map_err(std::io::Error::other)
            .and_then(|tx| tx.commit().map_err(std::io::Error::other));
        crate::metrics::WAL_FSYNC.observe(&[], started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(error = %e, "the Raft log could not be made durable");
        }
        for callback in waiting {
            callback.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
            );
        }
    }
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn logs_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    /// Opens (or creates) the log database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, redb::Error> {
        let db = super::open_db(path, CACHE_BYTES)?;
        let tx = db.begin_write().map_err(redb::Error::from)?;
        tx.open_table(LOGS).map_err(redb::Error::from)?;
        tx.open_table(META).map_err(redb::Error::from)?;
        tx.commit().map_err(redb::Error::from)?;
        let db = Arc::new(db);
        let (unflushed, appends) = std::sync::mpsc::channel();
        let flushed = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(flushed, appends))
            .map_err(redb::Error::Io)?;
        Ok(Self { db, unflushed })
    }

    fn get_meta<T: for<'de> serde::Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, StorageError> {
        let read = |e: &dyn std::fmt::Display| logs_err(ErrorVerb::Read, e);
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let table = tx.open_table(META).map_err(|e| read(&e))?;
        match table.get(name).map_err(|e| read(&e))? {
            Some(v) => Ok(Some(decode(v.value()).map_err(|e| read(&e))?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), StorageError> {
        self.put_meta_with(name, value, redb::Durability::Immediate)
    }

    fn put_meta_with<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
        durability: redb::Durability,
    ) -> Result<(), StorageError> {
        let write = |e: &dyn std::fmt::Display| logs_err(ErrorVerb::Write, e);
        let mut tx = self.db.begin_write().map_err(|e| write(&e))?;
        tx.set_durability(durability).map_err(|e| write(&e))?;
        {
            let mut table = tx.open_table(META).map_err(|e| write(&e))?;
            table
                .insert(name, encode(value).as_slice())
                .map_err(|e| write(&e))?;
        }
        tx.commit().map_err(|e| write(&e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let read = |e: &dyn std::fmt::Display| logs_err(ErrorVerb::Read, e);
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let table = tx.open_table(LOGS).map_err(|e| read(&e))?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(|e| read(&e))? {
            let (_, v) = item.map_err(|e| read(&e))?;
            out.push(decode(v.value()).map_err(|e| read(&e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = |e: &dyn std::fmt::Display| logs_err(ErrorVerb::Read, e);
        let last_purged: Option<LogId> = self.get_meta(PURGED)?;
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let table = tx.open_table(LOGS).map_err(|e| read(&e))?;
        let last = match table.last().map_err(|e| read(&e))? {
            Some((_, v)) => Some(decode::<Entry>(v.value()).map_err(|e| read(&e))?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint for faster restarts, not a safety requirement: it is written without fsync and
        // becomes durable with the next append. A stale value only means re-applying less.
        self.put_meta_with(COMMITTED, &committed, redb::Durability::None)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let write = |e: &dyn std::fmt::Display| logs_err(ErrorVerb::Write, e);
        let mut tx = self.db.begin_write().map_err(|e| write(&e))?;
        tx.set_durability(redb::Durability::None).map_err(|e| write(&e))?;
        {
            let mut table = tx.open_table(LOGS).map_err(|e| write(&e))?;
            for entry in entries {
                table
                    .insert(entry.log_id.index, encode(&entry).as_slice())
                    .map_err(|e| write(&e))?;
            }
        }
        tx.commit().map_err(|e| write(&e))?;
        // Durable once the flusher's next fsync is done (etcd's WAL fsync).
        self.unflushed
            .send(callback)
            .map_err(|_| write(&"the log's flusher has stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let write = |e: &dyn std::fmt::Display| logs_err(ErrorVerb::Delete, e);
        let tx = self.db.begin_write().map_err(|e| write(&e))?;
        {
            let mut table = tx.open_table(LOGS).map_err(|e| write(&e))?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(|e| write(&e))?;
        }
        tx.commit().map_err(|e| write(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let write = |e: &dyn std::fmt::Display| logs_err(ErrorVerb::Delete, e);
        let tx = self.db.begin_write().map_err(|e| write(&e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| write(&e))?;
            meta.insert(PURGED, encode(&log_id).as_slice())
                .map_err(|e| write(&e))?;
            let mut table = tx.open_table(LOGS).map_err(|e| write(&e))?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| write(&e))?;
        }
        tx.commit().map_err(|e| write(&e))
    }
}
