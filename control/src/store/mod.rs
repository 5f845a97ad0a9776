//! The embedded store: an etcd-like revisioned key-value model on top of a Raft log.
//!
//! Keys follow `/registry/<group>/<resource>/<namespace>/<name>`. Every write bumps one global
//! revision, which the API server uses as `resourceVersion`. Writes go through openraft and are
//! acknowledged only once the log entry is durable and applied; the state machine and the log are
//! redb databases, committed with fsync.

#[cfg(test)]
pub(crate) mod conformance;
pub mod encryption;
mod raft;
mod watch;

pub use encryption::Encryption;
/// The state machine file's length as its database sees it (its file runs ahead, sparse).
pub(crate) use raft::state_file::length as state_file_length;
pub use raft::{
    MEMBER_NAME, MEMBER_ORG, MemberStatus, MembershipOp, PeerTls, Store, StoreConfig, prefix_end, restore,
    tls_incoming,
};
pub use watch::{Event, EventKind, WatchStream};

use serde::{Deserialize, Serialize};

/// One stored key with its revisions, as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The full key.
    pub key: String,
    /// The stored bytes (an object's JSON for the API server).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision at which the key was created (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write to the key; the object's `resourceVersion`.
    pub mod_revision: u64,
}

/// A conditional write, applied atomically by the state machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteOp {
    /// Create `key`; fails with [`StoreError::AlreadyExists`] if it exists.
    Create {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Replace `key`; fails if it is missing or, with `expected`, if its mod revision differs.
    Update {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expected: Option<u64>,
    },
    /// Delete `key`; fails if it is missing or, with `expected`, if its mod revision differs.
    Delete { key: String, expected: Option<u64> },
    /// Forget watch history up to `revision`.
    Compact { revision: u64 },
    /// Create or replace `key` (etcd's put).
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// If every comparison holds, `success`, else `failure`, all in one log entry (etcd's txn;
    /// each write of the branch takes a revision of its own).
    Txn {
        compares: Vec<Compare>,
        success: Vec<WriteOp>,
        failure: Vec<WriteOp>,
    },
}

/// A comparison on one key in a [`WriteOp::Txn`] (etcd's `Compare`). A missing key has version,
/// create and mod revision 0 and no value; an existing key's version is 1 (the store does not
/// count modifications).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    pub key: String,
    /// What is compared.
    pub target: CompareTarget,
    /// How.
    pub op: CompareOp,
}

/// The side of a [`Compare`] taken from the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version against this.
    Version(u64),
    /// Its create revision against this.
    Create(u64),
    /// Its mod revision against this.
    Mod(u64),
    /// Its value against these bytes.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum CompareOp {
    /// Equal.
    Equal,
    /// The key's side is greater.
    Greater,
    /// The key's side is less.
    Less,
    /// Not equal.
    NotEqual,
}

impl Compare {
    /// Whether the comparison holds for `current` (the key's value, if it exists).
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(v), kv) => u64::from(kv.is_some()).cmp(v),
            (CompareTarget::Create(v), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(v),
            (CompareTarget::Mod(v), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(v),
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
            CompareOp::NotEqual => ordering != Ordering::Equal,
        }
    }
}

/// What a write produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteResult {
    /// The write happened at this revision; `kv` is the new value (or the deleted one).
    Done { revision: u64, kv: Option<KeyValue> },
    /// The key exists already (create).
    AlreadyExists { current: KeyValue },
    /// The key does not exist (update, delete).
    NotFound,
    /// The key's mod revision is not the expected one.
    Conflict { current: KeyValue },
    /// A transaction: whether its comparisons held, and the results of the branch it ran.
    Txn {
        succeeded: bool,
        results: Vec<WriteResult>,
    },
}

/// Errors of store operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The key already exists.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
        /// What is stored there.
        current: Box<KeyValue>,
    },
    /// The key does not exist.
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A compare-and-swap lost: the key changed since it was read.
    #[error("key {key} was modified: expected revision {expected}, found {found}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: u64,
        /// The key's current value.
        current: Box<KeyValue>,
        /// The key's current mod revision.
        found: u64,
    },
    /// The requested revision has been compacted away.
    #[error("revision {requested} has been compacted (oldest available {oldest})")]
    Compacted {
        /// Revision asked for.
        requested: u64,
        /// Oldest revision the history still holds.
        oldest: u64,
    },
    /// The requested revision is newer than the store's.
    #[error("revision {requested} is a future revision (current {current})")]
    FutureRevision {
        /// Revision asked for.
        requested: u64,
        /// The latest revision.
        current: u64,
    },
    /// This member cannot serve the request now (no leader, shutting down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The disk is (nearly) full: writes are refused until space is freed.
    #[error("{0}")]
    NoSpace(String),
    /// A disk or encoding failure.
    #[error("storage failure: {0}")]
    Io(String),
}

/// The result of a list.
#[derive(Debug, Clone)]
pub struct ListResult {
    /// Matching keys in key order.
    pub items: Vec<KeyValue>,
    /// The store's revision when the list was read.
    pub revision: u64,
    /// Whether more keys follow the last returned one.
    pub more: bool,
}

/// The store as the control plane needs it, etcd's model: keys with a create and a mod revision,
/// one global revision that every write bumps, conditional writes, ordered prefix lists with
/// pages, reads at a past revision, and watches of a prefix from a past revision. [`Store`] (the Raft store) implements it;
/// `store/conformance.rs` is the suite that every implementation, and every membership of the
/// Raft store, must pass.
#[tonic::async_trait]
pub trait KeyValueStore: Send + Sync {
    /// The latest applied revision.
    fn revision(&self) -> u64;
    /// The value at `key` (a linearizable read).
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// The value at `key` as this member has applied it (no round trip to the leader).
    fn get_local(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Keys under `prefix` in key order, after `start_after`, at most `limit` (0: all).
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult, StoreError>;
    /// Keys under `prefix` as they were at revision `at` (after `start_after`, at most `limit`):
    /// [`StoreError::Compacted`] below the compacted revision, [`StoreError::FutureRevision`]
    /// above the latest.
    async fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: u64,
    ) -> Result<ListResult, StoreError>;
    /// Applies `ops` in order; each has its own result, and one that fails changes nothing.
    async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, StoreError>;
    /// Creates `key`.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;
    /// Replaces `key` if its mod revision is still `expected` (when given).
    async fn update(&self, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<KeyValue, StoreError>;
    /// Deletes `key` if its mod revision is still `expected` (when given); the deleted value comes
    /// back with the deletion's revision as its mod revision.
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<KeyValue, StoreError>;
    /// Forgets watch history up to `revision`.
    async fn compact(&self, revision: u64) -> Result<(), StoreError>;
    /// Changes under `prefix` after revision `from`: the retained ones, then live ones.
    fn watch(&self, prefix: &str, from: u64) -> Result<WatchStream, StoreError>;
}

#[tonic::async_trait]
impl KeyValueStore for Store {
    fn revision(&self) -> u64 {
        Store::revision(self)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Store::get(self, key).await
    }

    fn get_local(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Store::get_local(self, key)
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult, StoreError> {
        Store::list(self, prefix, start_after, limit).await
    }

    async fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: u64,
    ) -> Result<ListResult, StoreError> {
        Store::list_at(self, prefix, start_after, limit, at).await
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, StoreError> {
        Store::write(self, ops).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        Store::create(self, key, value).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<KeyValue, StoreError> {
        Store::update(self, key, value, expected).await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<KeyValue, StoreError> {
        Store::delete(self, key, expected).await
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        Store::compact(self, revision).await
    }

    fn watch(&self, prefix: &str, from: u64) -> Result<WatchStream, StoreError> {
        Store::watch(self, prefix, from)
    }
}
