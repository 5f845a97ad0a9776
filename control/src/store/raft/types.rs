//! openraft type configuration and the application request/response carried in the log.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::store::{WriteOp, WriteResult};

/// A batch of writes proposed as one log entry and applied in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The writes.
    pub ops: Vec<WriteOp>,
}

/// The result of each write of a [`Request`], in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// One result per op.
    pub results: Vec<WriteResult>,
}

openraft::declare_raft_types!(
    /// Type configuration of Skiff's store.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;

/// Encodes a value for disk or the wire.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encoding of in-memory values cannot fail")
}

/// Decodes a value written by [`encode`].
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Wraps a redb or codec error as an openraft storage error.
pub fn io_err(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

/// A membership change, made by the leader (a follower forwards it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipOp {
    /// Adds a learner at a Raft address and waits until it has caught up with the log.
    AddLearner { id: NodeId, addr: String },
    /// Makes a learner a voter.
    Promote { id: NodeId },
    /// Removes a member (voter or learner).
    Remove { id: NodeId },
}

/// What one member reports of itself (`Status` RPC).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's id.
    pub id: NodeId,
    /// The leader it follows, if it knows one.
    pub leader: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// The index of the last log entry it applied.
    pub applied_index: u64,
    /// The store revision it applied.
    pub revision: u64,
}
