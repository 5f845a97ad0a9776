//! The replicated state machine: the revisioned key space on redb.
//!
//! Each applied batch of log entries is one redb transaction, committed with fsync, so the state
//! machine itself is durable and a snapshot is only needed to catch up members or compact the log.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, SnapshotMeta, StoredMembership};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::snapshot::{SnapshotBuilder, SnapshotData, read_snapshot_file, write_snapshot_file};
use super::types::{Entry, LogId, NodeId, Response, StorageError, TypeConfig, decode, encode, io_err};
use crate::store::watch::{Event, EventKind, WatchHub};
use crate::store::{KeyValue, WriteOp, WriteResult};

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub(crate) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// Every write since the last compaction, by revision: the key and what it held before, from
/// which the key space at any revision since is read and watch history is rebuilt on start.
pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");

/// The key space's own page cache: the B-tree's inner pages and the hot leaves; lists of many
/// objects read the rest through the kernel's page cache.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

pub(crate) const APPLIED: &str = "applied";
pub(crate) const MEMBERSHIP: &str = "membership";
pub(crate) const REVISION: &str = "revision";
/// The revision up to which history is forgotten: reads at revisions below it fail.
pub(crate) const COMPACTED: &str = "compacted";

/// One write in [`HISTORY`]: the key, and its record before the write (`None`: it did not exist).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Change {
    pub key: String,
    pub prev: Option<Record>,
}

/// A stored value with its revisions (the key is the table key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
}

impl From<KeyValue> for Record {
    fn from(kv: KeyValue) -> Self {
        Record {
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        }
    }
}

impl Record {
    pub(crate) fn into_kv(self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
}

/// The state machine; the store handle shares its database for reads.
pub struct StateMachine {
    db: Arc<Database>,
    hub: Arc<WatchHub>,
    snapshot_path: PathBuf,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").finish_non_exhaustive()
    }
}

pub(super) fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::StateMachine, verb, e)
}

/// Reads the current revision from the state machine's database.
pub(crate) fn read_revision(db: &Database) -> Result<u64, redb::Error> {
    let tx = db.begin_read()?;
    let meta = tx.open_table(SM_META)?;
    Ok(meta
        .get(REVISION)?
        .map(|v| decode(v.value()).unwrap_or(0))
        .unwrap_or(0))
}

/// The last `capacity` writes of the history as watch events, oldest first, and the revision
/// after which they are complete: what watchers may start from after a restart. Each write's new
/// value is the key's value after it, found by undoing the later writes from the current keys.
pub(crate) fn history_events(db: &Database, capacity: usize) -> Result<(Vec<Event>, u64), redb::Error> {
    let tx = db.begin_read()?;
    let meta = tx.open_table(SM_META)?;
    let read = |name: &str| -> Result<u64, redb::Error> {
        Ok(meta
            .get(name)?
            .map(|v| decode(v.value()).unwrap_or(0))
            .unwrap_or(0))
    };
    let (revision, compacted) = (read(REVISION)?, read(COMPACTED)?);
    let kv = tx.open_table(KV)?;
    let history = tx.open_table(HISTORY)?;
    // Each key's value after the write being looked at (from the current keys, going back).
    let mut after: std::collections::HashMap<String, Option<Record>> = std::collections::HashMap::new();
    let mut events = Vec::new();
    for item in history.range(compacted + 1..=revision)?.rev().take(capacity) {
        let (rev, v) = item?;
        let Ok(change) = decode::<Change>(v.value()) else {
            break;
        };
        let now = match after.get(&change.key) {
            Some(now) => now.clone(),
            None => kv
                .get(change.key.as_str())?
                .and_then(|v| decode::<Record>(v.value()).ok()),
        };
        let prev = change.prev.clone().map(|r| r.into_kv(&change.key));
        let event = match now {
            Some(record) => Event {
                kind: EventKind::Put,
                kv: record.into_kv(&change.key),
                prev,
                revision: rev.value(),
            },
            None => Event {
                kind: EventKind::Delete,
                kv: prev.clone().unwrap_or(KeyValue {
                    key: change.key.clone(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: 0,
                }),
                prev,
                revision: rev.value(),
            },
        };
        after.insert(change.key, change.prev);
        events.push(event);
    }
    events.reverse();
    let oldest = events.first().map_or(revision, |e| e.revision - 1);
    Ok((events, oldest))
}

impl StateMachine {
    /// Opens (or creates) the state machine database.
    pub(crate) fn open(path: &std::path::Path) -> Result<Arc<Database>, redb::Error> {
        let db = super::open_db(path, CACHE_BYTES)?;
        let tx = db.begin_write()?;
        tx.open_table(KV)?;
        tx.open_table(HISTORY)?;
        {
            // A store written before history was kept has none before its current revision.
            let mut meta = tx.open_table(SM_META)?;
            if meta.get(COMPACTED)?.is_none() {
                let revision: u64 = match meta.get(REVISION)? {
                    Some(v) => decode(v.value()).unwrap_or(0),
                    None => 0,
                };
                meta.insert(COMPACTED, encode(&revision).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(Arc::new(db))
    }

    pub(crate) fn new(db: Arc<Database>, hub: Arc<WatchHub>, snapshot_path: PathBuf) -> Self {
        Self {
            db,
            hub,
            snapshot_path,
        }
    }

    #[expect(
        clippy::result_large_err,
        reason = "openraft's StorageError is what the state machine's trait methods return"
    )]
    fn meta_get<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, StorageError> {
        let read = |e: &dyn std::fmt::Display| sm_err(ErrorVerb::Read, e);
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let meta = tx.open_table(SM_META).map_err(|e| read(&e))?;
        match meta.get(name).map_err(|e| read(&e))? {
            Some(v) => Ok(Some(decode(v.value()).map_err(|e| read(&e))?)),
            None => Ok(None),
        }
    }
}

/// The tables a write changes: the keys and the history.
pub(crate) struct Tables<'a, 't> {
    kv: &'a mut redb::Table<'t, &'static str, &'static [u8]>,
    history: &'a mut redb::Table<'t, u64, &'static [u8]>,
}

impl Tables<'_, '_> {
    /// Records that `key`, which held `prev`, was written at `revision`.
    fn record(
        &mut self,
        revision: u64,
        key: &str,
        prev: Option<&KeyValue>,
    ) -> Result<(), redb::StorageError> {
        let change = Change {
            key: key.to_owned(),
            prev: prev.cloned().map(Record::from),
        };
        self.history.insert(revision, encode(&change).as_slice())?;
        Ok(())
    }
}

/// Stores `value` at `key` at the next revision, after `prev` (the value it replaces, if any).
fn put(
    t: &mut Tables<'_, '_>,
    revision: &mut u64,
    key: String,
    value: Vec<u8>,
    prev: Option<KeyValue>,
) -> Result<(WriteResult, Option<Event>), redb::StorageError> {
    *revision += 1;
    t.record(*revision, &key, prev.as_ref())?;
    let create_revision = prev.as_ref().map_or(*revision, |p| p.create_revision);
    let record = Record {
        value,
        create_revision,
        mod_revision: *revision,
    };
    t.kv.insert(key.as_str(), encode(&record).as_slice())?;
    let new = record.into_kv(&key);
    let event = Event {
        kind: EventKind::Put,
        kv: new.clone(),
        prev,
        revision: *revision,
    };
    Ok((
        WriteResult::Done {
            revision: *revision,
            kv: Some(new),
        },
        Some(event),
    ))
}

/// Applies one write to the key table, producing its result and the events of what it changed.
fn apply_op(
    t: &mut Tables<'_, '_>,
    revision: &mut u64,
    op: WriteOp,
    events: &mut Vec<Event>,
) -> Result<WriteResult, redb::StorageError> {
    let (result, event) = apply_one(t, revision, op, events)?;
    events.extend(event);
    Ok(result)
}

fn apply_one(
    t: &mut Tables<'_, '_>,
    revision: &mut u64,
    op: WriteOp,
    events: &mut Vec<Event>,
) -> Result<(WriteResult, Option<Event>), redb::StorageError> {
    let current =
        |kv: &redb::Table<&str, &[u8]>, key: &str| -> Result<Option<KeyValue>, redb::StorageError> {
            Ok(kv
                .get(key)?
                .and_then(|v| decode::<Record>(v.value()).ok())
                .map(|r| r.into_kv(key)))
        };
    match op {
        WriteOp::Create { key, value } => {
            if let Some(current) = current(t.kv, &key)? {
                return Ok((WriteResult::AlreadyExists { current }, None));
            }
            put(t, revision, key, value, None)
        }
        WriteOp::Update { key, value, expected } => {
            let Some(prev) = current(t.kv, &key)? else {
                return Ok((WriteResult::NotFound, None));
            };
            if expected.is_some_and(|rev| rev != prev.mod_revision) {
                return Ok((WriteResult::Conflict { current: prev }, None));
            }
            put(t, revision, key, value, Some(prev))
        }
        WriteOp::Delete { key, expected } => {
            let Some(prev) = current(t.kv, &key)? else {
                return Ok((WriteResult::NotFound, None));
            };
            if expected.is_some_and(|rev| rev != prev.mod_revision) {
                return Ok((WriteResult::Conflict { current: prev }, None));
            }
            *revision += 1;
            t.record(*revision, &key, Some(&prev))?;
            t.kv.remove(key.as_str())?;
            let event = Event {
                kind: EventKind::Delete,
                kv: prev.clone(),
                prev: Some(prev.clone()),
                revision: *revision,
            };
            Ok((
                WriteResult::Done {
                    revision: *revision,
                    kv: Some(prev),
                },
                Some(event),
            ))
        }
        WriteOp::Compact { revision: upto } => Ok((
            WriteResult::Done {
                revision: upto,
                kv: None,
            },
            None,
        )),
        WriteOp::Put { key, value } => {
            let prev = current(t.kv, &key)?;
            put(t, revision, key, value, prev)
        }
        WriteOp::Txn {
            compares,
            success,
            failure,
        } => {
            let mut succeeded = true;
            for c in &compares {
                if !c.holds(current(t.kv, &c.key)?.as_ref()) {
                    succeeded = false;
                    break;
                }
            }
            let branch = if succeeded { success } else { failure };
            let mut results = Vec::with_capacity(branch.len());
            for op in branch {
                results.push(apply_op(t, revision, op, events)?);
            }
            Ok((WriteResult::Txn { succeeded, results }, None))
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, openraft::BasicNode>), StorageError> {
        let applied = self.meta_get::<Option<LogId>>(APPLIED)?.flatten();
        let membership = self.meta_get(MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let write = |e: &dyn std::fmt::Display| sm_err(ErrorVerb::Write, e);
        let mut tx = self.db.begin_write().map_err(|e| write(&e))?;
        // The fsynced Raft log is the durability point: after a crash the state machine comes
        // back at its last durable commit (data and `applied` together) and openraft re-applies
        // the committed entries after it. Snapshots force durability before the log is purged.
        tx.set_durability(redb::Durability::None).map_err(|e| write(&e))?;
        let mut responses = Vec::new();
        let mut events = Vec::new();
        let mut compact_to = None;
        let revision;
        {
            let mut meta = tx.open_table(SM_META).map_err(|e| write(&e))?;
            let mut kv = tx.open_table(KV).map_err(|e| write(&e))?;
            let mut history = tx.open_table(HISTORY).map_err(|e| write(&e))?;
            let mut tables = Tables {
                kv: &mut kv,
                history: &mut history,
            };
            let mut rev: u64 = match meta.get(REVISION).map_err(|e| write(&e))? {
                Some(v) => decode(v.value()).map_err(|e| write(&e))?,
                None => 0,
            };
            let mut last = None;
            for entry in entries {
                last = Some(entry.log_id);
                let mut response = Response::default();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(request) => {
                        for op in request.ops {
                            if let WriteOp::Compact { revision } = op {
                                compact_to = Some(revision);
                            }
                            let result =
                                apply_op(&mut tables, &mut rev, op, &mut events).map_err(|e| write(&e))?;
                            response.results.push(result);
                        }
                    }
                    EntryPayload::Membership(m) => {
                        let stored = StoredMembership::new(Some(entry.log_id), m);
                        meta.insert(MEMBERSHIP, encode(&stored).as_slice())
                            .map_err(|e| write(&e))?;
                    }
                }
                responses.push(response);
            }
            meta.insert(APPLIED, encode(&last).as_slice())
                .map_err(|e| write(&e))?;
            meta.insert(REVISION, encode(&rev).as_slice())
                .map_err(|e| write(&e))?;
            if let Some(upto) = compact_to.map(|upto: u64| upto.min(rev)) {
                let floor: u64 = match meta.get(COMPACTED).map_err(|e| write(&e))? {
                    Some(v) => decode(v.value()).map_err(|e| write(&e))?,
                    None => 0,
                };
                if upto > floor {
                    history.retain_in(..=upto, |_, _| false).map_err(|e| write(&e))?;
                    meta.insert(COMPACTED, encode(&upto).as_slice())
                        .map_err(|e| write(&e))?;
                }
            }
            revision = rev;
        }
        let started = std::time::Instant::now();
        tx.commit().map_err(|e| write(&e))?;
        crate::metrics::BACKEND_COMMIT.observe(&[], started.elapsed().as_secs_f64());
        self.hub.publish(events, revision);
        if let Some(upto) = compact_to {
            self.hub.compact(upto);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder::new(self.db.clone(), self.snapshot_path.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data_bytes = snapshot.into_inner();
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data: SnapshotData = decode(&data_bytes).map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        let write = |e: &dyn std::fmt::Display| io_err(subject(), ErrorVerb::Write, e);
        let tx = self.db.begin_write().map_err(|e| write(&e))?;
        {
            let mut kv = tx.open_table(KV).map_err(|e| write(&e))?;
            kv.retain(|_, _| false).map_err(|e| write(&e))?;
            for (key, record) in &data.kvs {
                kv.insert(key.as_str(), encode(record).as_slice())
                    .map_err(|e| write(&e))?;
            }
            // The snapshot holds no history: reads before its revision are compacted here.
            let mut history = tx.open_table(HISTORY).map_err(|e| write(&e))?;
            history.retain(|_, _| false).map_err(|e| write(&e))?;
            let mut m = tx.open_table(SM_META).map_err(|e| write(&e))?;
            m.insert(COMPACTED, encode(&data.revision).as_slice())
                .map_err(|e| write(&e))?;
            m.insert(APPLIED, encode(&meta.last_log_id).as_slice())
                .map_err(|e| write(&e))?;
            m.insert(MEMBERSHIP, encode(&meta.last_membership).as_slice())
                .map_err(|e| write(&e))?;
            m.insert(REVISION, encode(&data.revision).as_slice())
                .map_err(|e| write(&e))?;
        }
        tx.commit().map_err(|e| write(&e))?;
        write_snapshot_file(&self.snapshot_path, meta, &data_bytes)?;
        self.hub.reset(data.revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        read_snapshot_file(&self.snapshot_path)
    }
}

#[cfg(test)]
mod tests {
    use super::Record;
    use crate::store::WriteOp;
    use crate::store::raft::types::{decode, encode};

    #[test]
    fn values_encode_as_the_byte_sequences_earlier_releases_wrote() {
        // Values are written as bytes (one copy) rather than as a sequence of u8 (one call per
        // byte); postcard lays both out alike, so what earlier releases stored reads back.
        let value = vec![0u8, 1, 127, 128, 255];
        let record = Record {
            value: value.clone(),
            create_revision: 300,
            mod_revision: 7,
        };
        assert_eq!(encode(&record), encode(&(value.clone(), 300u64, 7u64)));
        // Put is the enum's fifth variant (index 4), then its fields in order.
        let old = encode(&(4u32, "k".to_owned(), value.clone()));
        let put = WriteOp::Put {
            key: "k".into(),
            value: value.clone(),
        };
        let WriteOp::Put { value: read, .. } = decode::<WriteOp>(&old).unwrap() else {
            panic!("not a put");
        };
        assert_eq!(read, value);
        assert_eq!(encode(&put), old);
    }
}
