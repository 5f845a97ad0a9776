//! Raft snapshots: the whole key space at one log id, built from a consistent read of the state
//! machine (after making every applied entry durable, since openraft may then purge the log),
//! written atomically to `snapshot.bin`, and sent to members that are too far behind.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::Snapshot;
use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::state_machine::{APPLIED, KV, MEMBERSHIP, REVISION, Record, SM_META, sm_err};
use super::types::{LogId, NodeId, StorageError, TypeConfig, decode, encode, io_err};

/// The whole key space at one log id, as sent to a lagging member.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotData {
    pub(super) revision: u64,
    pub(super) kvs: Vec<(String, Record)>,
}

/// The latest snapshot written, if any.
pub(super) fn read_snapshot_file(path: &Path) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(sm_err(ErrorVerb::Read, e)),
    };
    let (meta, data): (SnapshotMeta<NodeId, openraft::BasicNode>, serde_bytes::ByteBuf) =
        decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
    let data = data.into_vec();
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    }))
}

/// Writes a snapshot file atomically (temp file, fsync, rename).
pub(super) fn write_snapshot_file(
    path: &Path,
    meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
    data: &[u8],
) -> Result<(), StorageError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let write = |e: std::io::Error| {
        io_err(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
            e,
        )
    };
    let bytes = encode(&(meta, serde_bytes::Bytes::new(data)));
    let mut f = std::fs::File::create(&tmp).map_err(write)?;
    f.write_all(&bytes).map_err(write)?;
    f.sync_all().map_err(write)?;
    std::fs::rename(&tmp, path).map_err(write)
}

/// Builds a snapshot from a consistent read of the state machine.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    snapshot_path: PathBuf,
}

impl SnapshotBuilder {
    pub(super) fn new(db: Arc<Database>, snapshot_path: PathBuf) -> Self {
        Self { db, snapshot_path }
    }
}

impl std::fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBuilder").finish_non_exhaustive()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let read = |e: &dyn std::fmt::Display| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
        // Make every applied entry durable before openraft may purge the log behind the snapshot.
        let flush = self.db.begin_write().map_err(|e| read(&e))?;
        {
            let mut meta = flush.open_table(SM_META).map_err(|e| read(&e))?;
            let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
            meta.insert("flushed_at", encode(&stamp).as_slice())
                .map_err(|e| read(&e))?;
        }
        flush.commit().map_err(|e| read(&e))?;
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let meta_table = tx.open_table(SM_META).map_err(|e| read(&e))?;
        let get = |name: &str| -> Result<Option<Vec<u8>>, StorageError> {
            Ok(meta_table
                .get(name)
                .map_err(|e| read(&e))?
                .map(|v| v.value().to_vec()))
        };
        let applied: Option<LogId> = match get(APPLIED)? {
            Some(b) => decode(&b).map_err(|e| read(&e))?,
            None => None,
        };
        let membership: StoredMembership<NodeId, openraft::BasicNode> = match get(MEMBERSHIP)? {
            Some(b) => decode(&b).map_err(|e| read(&e))?,
            None => StoredMembership::default(),
        };
        let revision: u64 = match get(REVISION)? {
            Some(b) => decode(&b).map_err(|e| read(&e))?,
            None => 0,
        };
        let table = tx.open_table(KV).map_err(|e| read(&e))?;
        let mut kvs = Vec::new();
        for item in table.iter().map_err(|e| read(&e))? {
            let (k, v) = item.map_err(|e| read(&e))?;
            kvs.push((k.value().to_owned(), decode(v.value()).map_err(|e| read(&e))?));
        }
        let data = encode(&SnapshotData { revision, kvs });
        let snapshot_id = format!(
            "{}-{}",
            applied.map(|l| l.index).unwrap_or(0),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        write_snapshot_file(&self.snapshot_path, &meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// What a backup file starts with.
const BACKUP_MAGIC: &[u8] = b"skiff-store-backup-v1\n";

/// Every key of the state machine at one revision, as a backup file: a header, the length of
/// what follows, the keys and their revisions (as Raft snapshots carry them), zeros to a multiple
/// of 512 bytes, and a SHA-256 of everything before it (the shape etcdctl checks: a database of
/// whole pages, then its checksum).
pub(super) fn backup(db: &Database) -> Result<Vec<u8>, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let meta = tx.open_table(SM_META).map_err(|e| e.to_string())?;
    let revision: u64 = match meta.get(REVISION).map_err(|e| e.to_string())? {
        Some(v) => decode(v.value()).map_err(|e| e.to_string())?,
        None => 0,
    };
    let table = tx.open_table(KV).map_err(|e| e.to_string())?;
    let mut kvs = Vec::new();
    for item in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = item.map_err(|e| e.to_string())?;
        kvs.push((
            k.value().to_owned(),
            decode::<Record>(v.value()).map_err(|e| e.to_string())?,
        ));
    }
    let data = encode(&SnapshotData { revision, kvs });
    let mut out = BACKUP_MAGIC.to_vec();
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    let digest = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(digest.as_ref());
    Ok(out)
}

/// Restores a [`backup`] into `store_dir` (which must not hold a store yet): the keys at their
/// revisions, no Raft log and no members, so the next start there founds a new one-member
/// cluster with this state. Returns the revision and the number of keys.
pub(super) fn restore(bytes: &[u8], store_dir: &Path) -> Result<(u64, usize), String> {
    if bytes.len() < BACKUP_MAGIC.len() + 32 || !bytes.starts_with(BACKUP_MAGIC) {
        return Err("not a Skiff store backup (etcdctl snapshot save of a Skiff store writes one)".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != sum {
        return Err("the backup is damaged: its SHA-256 does not match its content".into());
    }
    let damaged = |e: &dyn std::fmt::Display| format!("the backup is damaged: {e}");
    let rest = &body[BACKUP_MAGIC.len()..];
    let len = rest
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| damaged(&"no length"))?;
    let payload = usize::try_from(len)
        .ok()
        .and_then(|len| rest.get(8..8 + len))
        .ok_or_else(|| damaged(&"shorter than it says"))?;
    let data: SnapshotData = decode(payload).map_err(|e| damaged(&e))?;
    let held = ["state.redb", super::log_store::DIR, super::log_store::LEGACY];
    if held.iter().any(|name| store_dir.join(name).exists()) {
        return Err(format!(
            "{} already holds a store; restore into a data directory without one",
            store_dir.display()
        ));
    }
    std::fs::create_dir_all(store_dir).map_err(|e| format!("{}: {e}", store_dir.display()))?;
    let db =
        super::state_machine::StateMachine::open(&store_dir.join("state.redb")).map_err(|e| e.to_string())?;
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut kv = tx.open_table(KV).map_err(|e| e.to_string())?;
        for (key, record) in &data.kvs {
            kv.insert(key.as_str(), encode(record).as_slice())
                .map_err(|e| e.to_string())?;
        }
        let mut meta = tx.open_table(SM_META).map_err(|e| e.to_string())?;
        meta.insert(REVISION, encode(&data.revision).as_slice())
            .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok((data.revision, data.kvs.len()))
}
