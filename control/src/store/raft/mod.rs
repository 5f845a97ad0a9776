//! The store handle: openraft wired to the redb log and state machine, the tonic transport, and the
//! read/write/watch API the rest of the control plane uses.

// openraft's StorageError and RPCError are large by design and are its API.
mod disk;
mod log_store;
#[expect(clippy::result_large_err, reason = "openraft's error types")]
mod network;
#[expect(clippy::result_large_err, reason = "openraft's error types")]
mod snapshot;
pub(crate) mod state_file;
mod state_machine;
mod types;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use redb::{Database, ReadableDatabase};
use skiff_proto::raft::v1::raft_service_server::RaftServiceServer;
use tokio::sync::oneshot;

use self::log_store::LogStore;
use self::network::{Channels, Network, Peers, RaftGrpc};
pub use self::network::{MEMBER_NAME, MEMBER_ORG, PeerTls, tls_incoming};
use self::state_machine::{
    COMPACTED, Change, HISTORY, KV, REVISION, Record, SM_META, StateMachine, read_revision,
};
pub use self::types::{MemberStatus, MembershipOp};
use self::types::{NodeId, Raft, Request, TypeConfig, decode};
use super::encryption::Encryption;
use super::watch::WatchHub;
use super::{KeyValue, ListResult, StoreError, WatchStream, WriteOp, WriteResult};

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding the Raft log, the state machine and snapshots.
    pub data_dir: PathBuf,
    /// This member's id.
    pub node_id: u64,
    /// Address the Raft gRPC service listens on.
    pub raft_listen: SocketAddr,
    /// The address peers dial, when it is not `raft_listen` (a wildcard listening address, a
    /// proxy): what a founding member records for itself.
    pub advertise: Option<SocketAddr>,
    /// Events retained for watches that start in the past.
    pub watch_history: usize,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// Free bytes kept on the data directory's filesystem: below this, writes are refused.
    pub min_free_disk: u64,
    /// How values are protected at rest (default: stored as written).
    pub encryption: Arc<Encryption>,
    /// Mutual TLS between members (none: plain gRPC, for a member alone on loopback in tests).
    pub tls: Option<Arc<PeerTls>>,
    /// A member joining an existing cluster: it does not found a cluster of its own and waits for
    /// the leader to add it ([`Store::wait_until_serving`]).
    pub join: bool,
}

impl StoreConfig {
    /// A single-member store in `data_dir`.
    pub fn single(data_dir: PathBuf, raft_listen: SocketAddr) -> Self {
        Self {
            data_dir,
            node_id: 1,
            raft_listen,
            advertise: None,
            watch_history: 10_000,
            snapshot_every: 10_000,
            min_free_disk: 64 << 20,
            encryption: Arc::default(),
            tls: None,
            join: false,
        }
    }
}

/// Writes waiting to be proposed together (group commit).
struct Pending {
    ops: Vec<WriteOp>,
    /// The keys' and values' bytes.
    bytes: usize,
    /// Made by work that acts only on the leader (controllers, the scheduler): never forwarded.
    leader_only: bool,
    reply: oneshot::Sender<Result<Vec<WriteResult>, StoreError>>,
}

tokio::task_local! {
    /// Set while a controller or the scheduler acts (see [`Store::as_leader`]).
    static LEADER_ONLY: ();
}

/// Most writes proposed in one log entry.
const MAX_BATCH: usize = 512;
/// Most bytes of keys and values in one log entry (one write may exceed it alone): a follower
/// catching up must take each append within a heartbeat interval (openraft's timeout for it).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Log entries in one append to a follower (openraft's `max_payload_entries`); the log store
/// also caps an append's bytes ([`log_store::APPEND_BYTES`]). openraft keeps one append in flight
/// per follower, so under load each carries the entries proposed during the previous one.
const MAX_APPEND_ENTRIES: u64 = 64;

/// The bytes of keys and values a write carries.
fn op_bytes(op: &WriteOp) -> usize {
    match op {
        WriteOp::Create { key, value } | WriteOp::Update { key, value, .. } | WriteOp::Put { key, value } => {
            key.len() + value.len()
        }
        WriteOp::Delete { key, .. } => key.len(),
        WriteOp::Compact { .. } => 0,
        WriteOp::Txn { success, failure, .. } => success.iter().chain(failure).map(op_bytes).sum(),
    }
}
/// Log entries proposed concurrently (openraft pipelines them).
const IN_FLIGHT: usize = 4;

/// Proposes queued writes in batches: while batches are in flight, new writes queue up and go
/// together in the next log entry, so concurrent writers share one fsync.
async fn group_commit(raft: Raft, peers: Arc<Peers>, mut rx: tokio::sync::mpsc::Receiver<Pending>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let (mut count, mut bytes) = (batch[0].ops.len(), batch[0].bytes);
        while count < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.ops.len();
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (raft, peers) = (raft.clone(), peers.clone());
        tokio::spawn(async move {
            propose(&raft, &peers, batch).await;
            drop(permit);
        });
    }
}

/// How long a leader goes without hearing from a quorum before it stops taking writes and
/// reads (etcd's CheckQuorum): by then the majority's election (700-900 ms) has made another
/// leader, and clients are better told at once than left waiting for the partition to heal.
const QUORUM_LOST_AFTER_MS: u64 = 1000;

/// Why this member, leading more than itself, cannot act as leader now: no quorum heard from in
/// [`QUORUM_LOST_AFTER_MS`].
fn lost_quorum(raft: &Raft) -> Option<String> {
    let m = raft.metrics().borrow().clone();
    if m.state != openraft::ServerState::Leader || m.membership_config.membership().voter_ids().count() < 2 {
        return None;
    }
    m.millis_since_quorum_ack
        .filter(|ms| *ms > QUORUM_LOST_AFTER_MS)
        .map(|ms| {
            format!("this member leads but has heard from no quorum of members for {ms} ms (partitioned?)")
        })
}

/// openraft's refusal of a write (not leading: where the leader is).
type WriteError = openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, BasicNode>>;

/// Proposes `request` on this member as leader. `Err` when it leads without a quorum, before
/// proposing or while the write is in flight (then it may yet be applied).
async fn leader_write(
    raft: &Raft,
    request: Request,
) -> Result<Result<openraft::raft::ClientWriteResponse<TypeConfig>, WriteError>, String> {
    if let Some(why) = lost_quorum(raft) {
        return Err(why);
    }
    let write = raft.client_write(request);
    tokio::pin!(write);
    loop {
        tokio::select! {
            w = &mut write => return Ok(w),
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(why) = lost_quorum(raft) {
                    return Err(format!("{why}; the write may yet be applied"));
                }
            }
        }
    }
}

/// Proposes one batch and answers each of its writers.
async fn propose(raft: &Raft, peers: &Peers, mut batch: Vec<Pending>) {
    let request = |batch: &[Pending]| Request {
        ops: batch.iter().flat_map(|p| p.ops.iter().cloned()).collect(),
    };
    let mut result = Err(String::new());
    let mut forwarding = false;
    // While an election runs there is nobody to propose to, or the leader this member knows is
    // gone: wait for the next (up to ~3 s). Nothing was sent then, so trying again cannot apply
    // a write twice.
    for _ in 0..60 {
        let leader = if forwarding {
            peers.leader_addr().map(Some).unwrap_or(None)
        } else {
            // A leader cut off from its quorum answers once it notices.
            let written = match leader_write(raft, request(&batch)).await {
                Ok(w) => w,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            match written {
                Ok(reply) => {
                    result = Ok(reply.data);
                    break;
                }
                Err(e) => match e.forward_to_leader::<BasicNode>() {
                    Some(to) => to.leader_node.as_ref().map(|n| n.addr.clone()),
                    None => {
                        result = Err(e.to_string());
                        break;
                    }
                },
            }
        };
        if !forwarding {
            // This member does not lead: what only a leader may write is refused, not handed
            // over (a controller of a deposed leader must not act through the new one).
            forwarding = true;
            let (fenced, rest): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.leader_only);
            for p in fenced {
                let _ = p.reply.send(Err(StoreError::Unavailable(
                    "this member no longer leads the store; leader-only work is not forwarded".into(),
                )));
            }
            batch = rest;
            if batch.is_empty() {
                return;
            }
        }
        match leader {
            Some(addr) => match peers.forward(&addr, &request(&batch)).await {
                Err(e) if e.starts_with(network::NOT_SENT) => result = Err(e),
                other => {
                    result = other;
                    break;
                }
            },
            None => result = Err("the store has no Raft leader".to_owned()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match result {
        Ok(reply) => {
            let mut results = reply.results.into_iter();
            for p in batch {
                let _ = p.reply.send(Ok(results.by_ref().take(p.ops.len()).collect()));
            }
        }
        Err(e) => {
            let err = StoreError::Unavailable(e);
            for p in batch {
                let _ = p.reply.send(Err(err.clone()));
            }
        }
    }
}

/// Handle on the embedded store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    raft: Raft,
    writes: tokio::sync::mpsc::Sender<Pending>,
    db: Arc<Database>,
    hub: Arc<WatchHub>,
    node_id: NodeId,
    disk: Arc<disk::DiskGuard>,
    /// Set once another member said this one was removed from the cluster.
    told_removed: Arc<std::sync::atomic::AtomicBool>,
    encryption: Arc<Encryption>,
    peers: Arc<Peers>,
    raft_addr: SocketAddr,
    _server: Arc<ServerGuard>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Stops the Raft gRPC server when the last store handle goes.
struct ServerGuard {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Opens a redb database whose own page cache holds at most `cache_bytes`, waiting a little if a
/// previous store in this process is still releasing it (openraft drops its storage
/// asynchronously after shutdown).
///
/// redb's default cache is 1 GiB, and every page it writes stays there: the process grew by the
/// size of both databases (about 30 MiB for 20,000 ConfigMaps). Pages beyond the cache are read
/// through the kernel's page cache, which the kernel can reclaim.
pub(crate) fn open_db(
    path: &std::path::Path,
    cache_bytes: usize,
) -> Result<redb::Database, redb::DatabaseError> {
    let mut tries = 0;
    loop {
        let backend = state_file::StateFile::open(path).map_err(redb::StorageError::from)?;
        match redb::Database::builder()
            .set_cache_size(cache_bytes)
            .create_with_backend(backend)
        {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl ListResult {
    /// The items with their values as written (decrypted where the configuration says).
    fn opened(mut self, store: &Store) -> Result<Self, StoreError> {
        if !store.encryption.is_empty() {
            self.items = self
                .items
                .into_iter()
                .map(|kv| store.opened(kv))
                .collect::<Result<_, _>>()?;
        }
        Ok(self)
    }
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).unwrap_or_default();
        }
    }
    "\u{7f}".repeat(8)
}

/// Restores a [`Store::backup`] into `store_dir` (empty): the next start there founds a new
/// one-member cluster holding that state. Returns the revision and the number of keys.
pub fn restore(backup: &[u8], store_dir: &std::path::Path) -> Result<(u64, usize), String> {
    snapshot::restore(backup, store_dir)
}

/// Sets the store's gauges before each scrape (`crate::metrics`): the state database's size,
/// leadership, watchers and revision. It holds the hub weakly, so a closed store is left out.
fn register_metrics(raft: &Raft, hub: &Arc<WatchHub>, node_id: u64, db_path: std::path::PathBuf) {
    use crate::metrics;
    let (raft_metrics, hub) = (raft.metrics(), Arc::downgrade(hub));
    metrics::register(Box::new(move || {
        let Some(hub) = hub.upgrade() else { return };
        let leader = raft_metrics.borrow().current_leader;
        metrics::HAS_LEADER.set(&[], f64::from(u8::from(leader.is_some())));
        metrics::IS_LEADER.set(&[], f64::from(u8::from(leader == Some(node_id))));
        if let Ok(len) = state_file::length(&db_path) {
            metrics::DB_SIZE.set(&[], len as f64);
        }
        metrics::STORE_WATCHERS.set(&[], hub.watchers() as f64);
        metrics::REVISION.set(&[], hub.revision() as f64);
    }));
}

impl Store {
    /// Opens the store, starts its Raft member and transport, and waits until it can serve.
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(io)?;
        let log = LogStore::open(&config.data_dir).map_err(io)?;
        let db = StateMachine::open(&config.data_dir.join("state.redb")).map_err(io)?;
        let revision = read_revision(&db).map_err(io)?;
        let hub = Arc::new(WatchHub::new(
            revision,
            config.watch_history,
            config.encryption.clone(),
        ));
        let (events, oldest) = state_machine::history_events(&db, config.watch_history).map_err(io)?;
        hub.seed(events, oldest);
        let sm = StateMachine::new(db.clone(), hub.clone(), config.data_dir.join("snapshot.bin"));

        let raft_config = openraft::Config {
            cluster_name: "skiff".into(),
            // A leadership confirmation (each linearizable read) waits one heartbeat interval for
            // the voters' answers: room for a loaded machine.
            heartbeat_interval: 150,
            // A follower that knew a leader waits out the leader's lease (openraft: the maximum
            // election timeout) and then its own election timeout: 650-800 ms without a
            // heartbeat (4-5 heartbeats missed) before it stands, so writes resume within a
            // second of a leader's death, an election and a loaded machine included (etcd's
            // defaults take 1-2 s).
            election_timeout_min: 250,
            election_timeout_max: 400,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every / 10,
            purge_batch_size: 1,
            max_payload_entries: MAX_APPEND_ENTRIES,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(io)?);
        let source = Some(config.raft_listen.ip()).filter(|ip| !ip.is_unspecified());
        let channels = Channels::new(config.tls.clone(), source);
        let disk = disk::DiskGuard::start(&config.data_dir, config.min_free_disk);
        let told_removed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let network = Network {
            channels: channels.clone(),
            disk: disk.clone(),
            removed: told_removed.clone(),
        };
        let raft = Raft::new(config.node_id, raft_config, network, log, sm)
            .await
            .map_err(io)?;

        let listener = tokio::net::TcpListener::bind(config.raft_listen)
            .await
            .map_err(io)?;
        let local = listener.local_addr().map_err(io)?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let service = RaftServiceServer::new(RaftGrpc {
            raft: raft.clone(),
            hub: hub.clone(),
            disk: disk.clone(),
            db: db.clone(),
        });
        let tls = config
            .tls
            .as_ref()
            .map(|t| t.raft_server())
            .transpose()
            .map_err(io)?;
        let (stream_raft, stream_disk) = (raft.clone(), disk.clone());
        let (streams_stop, streams_stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let router = tonic::transport::Server::builder().add_service(service);
            let stop = async {
                let _ = stop_rx.await;
            };
            let served = match tls {
                Some(tls) => {
                    router
                        .serve_with_incoming_shutdown(
                            network::raft_incoming(listener, tls, stream_raft, stream_disk, streams_stopped),
                            stop,
                        )
                        .await
                }
                None => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
            };
            let _ = streams_stop.send(true);
            if let Err(e) = served {
                tracing::error!(error = %e, "raft transport stopped");
            }
        });

        if !config.join && !raft.is_initialized().await.map_err(io)? {
            let members = BTreeMap::from([(
                config.node_id,
                BasicNode {
                    addr: config.advertise.unwrap_or(local).to_string(),
                },
            )]);
            raft.initialize(members).await.map_err(io)?;
        }
        register_metrics(&raft, &hub, config.node_id, config.data_dir.join("state.redb"));
        let (writes, queue) = tokio::sync::mpsc::channel(4 * MAX_BATCH);
        let peers = Arc::new(Peers::new(raft.clone(), channels));
        tokio::spawn(group_commit(raft.clone(), peers.clone(), queue));
        let store = Self {
            raft,
            writes,
            db,
            hub,
            node_id: config.node_id,
            disk,
            told_removed,
            encryption: config.encryption,
            peers,
            raft_addr: local,
            _server: Arc::new(ServerGuard { stop: Some(stop_tx) }),
        };
        if !config.join {
            store.wait_until_serving(Duration::from_secs(30)).await?;
        }
        Ok(store)
    }

    /// Waits until this member knows a leader and has applied everything committed before (a
    /// member that joins: until the leader has added it and it has caught up).
    pub async fn wait_until_serving(&self, timeout: Duration) -> Result<(), StoreError> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // Entries committed before a crash are re-applied before the store serves.
        self.linearize().await
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.node_id
    }

    /// The Raft term this member is in.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Whether this member holds a membership (it founded a cluster or was added to one), as its
    /// log says: at start, before the metrics show it.
    pub async fn is_initialized(&self) -> Result<bool, StoreError> {
        self.raft.is_initialized().await.map_err(io)
    }

    /// The address the Raft transport listens on.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// The members: (id, Raft address, voter) in id order, and the leader's id if known.
    pub fn members(&self) -> (Vec<(u64, String, bool)>, Option<u64>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone(), voters.contains(id)))
            .collect();
        (members, m.current_leader)
    }

    /// What the member at Raft address `addr` reports of itself (this one answers directly).
    pub async fn member_status(&self, id: u64, addr: &str) -> Result<MemberStatus, StoreError> {
        if id == self.node_id {
            return Ok(network::local_status(&self.raft, &self.hub));
        }
        self.peers.status(addr).await.map_err(StoreError::Unavailable)
    }

    /// Makes a membership change through the leader. Adding a learner waits until it has caught
    /// up (up to `timeout`).
    pub async fn change_membership(&self, op: MembershipOp, timeout: Duration) -> Result<(), StoreError> {
        if let MembershipOp::Remove { id } = &op {
            match self
                .create(&network::removed_key(*id), b"removed\n".to_vec())
                .await
            {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if self.is_leader().await {
            return tokio::time::timeout(timeout, network::change_membership(&self.raft, &op))
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "the membership change took over {} s",
                        timeout.as_secs()
                    ))
                })?
                .map_err(StoreError::Unavailable);
        }
        self.peers
            .change_membership(&op, timeout)
            .await
            .map_err(StoreError::Unavailable)
    }

    /// Stops the Raft member.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// What keeps this member from serving writes now (`/readyz`): a full disk, no leader, or
    /// a stopped Raft core.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(why) = self.not_live() {
            return Some(why);
        }
        if let Some(why) = self.disk.refusal() {
            return Some(why);
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader
            .is_none()
            .then(|| "the store has no Raft leader".to_owned())
    }

    /// Whether the latest membership this member knows has it, as a voter or a learner. A member
    /// that was in it and is no longer has been removed; one catching up after joining reads the
    /// cluster's earlier memberships (without it) first.
    pub fn in_membership(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voter = membership
            .get_joint_config()
            .last()
            .is_some_and(|c| c.contains(&self.node_id));
        voter || membership.learner_ids().any(|l| l == self.node_id)
    }

    /// Whether another member has refused this one's traffic because it was removed from the
    /// cluster (see [`network::REMOVED`]).
    pub fn told_removed(&self) -> bool {
        self.told_removed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What keeps this member from ever serving again without a restart (`/livez`): its Raft
    /// core stopped on a fatal error.
    pub fn not_live(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.running_state
            .as_ref()
            .err()
            .map(|e| format!("the store's Raft core stopped: {e}"))
    }

    /// Runs `work` as leader-only work: its writes (made in this task) are refused, not forwarded,
    /// once this member no longer leads. Controllers and the scheduler check [`Store::is_leader`]
    /// before they act and act through this, so a deposed leader's cannot write through the new.
    pub async fn as_leader<F: std::future::Future>(&self, work: F) -> F::Output {
        LEADER_ONLY.scope((), work).await
    }

    /// Whether this member leads the Raft group (controllers act only there).
    pub async fn is_leader(&self) -> bool {
        self.raft.current_leader().await == Some(self.node_id)
    }

    /// The latest applied revision.
    pub fn revision(&self) -> u64 {
        self.hub.revision()
    }

    /// The oldest revision from which a watch can still start.
    pub fn oldest_watchable(&self) -> u64 {
        self.hub.oldest()
    }

    /// Waits until this member has applied everything committed before the call (read-index).
    /// On a follower, the leader gives the index (after confirming its leadership with a quorum)
    /// and the follower waits until it has applied that far.
    async fn linearize(&self) -> Result<(), StoreError> {
        use openraft::error::{CheckIsLeaderError, RaftError};
        if let Some(why) = lost_quorum(&self.raft) {
            return Err(StoreError::Unavailable(why));
        }
        let mut last = String::new();
        // Leadership moves (a restarted member that led before learns the new leader from the
        // refusal) and a voter may be slow to answer one confirmation: a few tries over ~5 s.
        for _ in 0..50 {
            match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(e) => match e.forward_to_leader::<BasicNode>() {
                    Some(to) => match to
                        .leader_node
                        .as_ref()
                        .filter(|_| to.leader_id != Some(self.node_id))
                    {
                        Some(leader) => match self.peers.read_index(&leader.addr).await {
                            Ok(index) => {
                                return self
                                    .raft
                                    .wait(Some(Duration::from_secs(10)))
                                    .applied_index_at_least(Some(index), "the leader's read index is applied")
                                    .await
                                    .map(|_| ())
                                    .map_err(|e| StoreError::Unavailable(e.to_string()));
                            }
                            Err(e) => last = e,
                        },
                        None => last = "the store has no Raft leader".to_owned(),
                    },
                    None if matches!(e, RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                        last = e.to_string();
                    }
                    None => return Err(StoreError::Unavailable(e.to_string())),
                },
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StoreError::Unavailable(last))
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.linearize().await?;
        self.get_local(key)
    }

    /// Reads one key from this member's state without a read-index round.
    pub fn get_local(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(KV).map_err(io)?;
        match table.get(key).map_err(io)? {
            Some(v) => Ok(Some(
                self.opened(decode::<Record>(v.value()).map_err(io)?.into_kv(key))?,
            )),
            None => Ok(None),
        }
    }

    /// `kv` with its value as written (decrypted where the encryption configuration says).
    fn opened(&self, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
        if !self.encryption.is_empty() {
            kv.value = self.encryption.open(&kv.key, kv.value).map_err(io)?.0;
        }
        Ok(kv)
    }

    /// Lists keys under `prefix` in key order, after `start_after` if given, at most `limit`
    /// (0 = no limit).
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult, StoreError> {
        self.linearize().await?;
        self.list_range(prefix, start_after, limit)?.opened(self)
    }

    /// Lists keys under `prefix` as they were at revision `at` (list pages pinned to their first
    /// page's revision, `resourceVersionMatch=Exact`): from the history kept since the last
    /// compaction, without a read-index round when `at` is applied here already (the past does
    /// not change). [`StoreError::Compacted`] below the compacted revision;
    /// [`StoreError::FutureRevision`] above the latest one.
    pub async fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: u64,
    ) -> Result<ListResult, StoreError> {
        if at > self.revision() {
            self.linearize().await?;
        }
        let end = prefix_end(prefix);
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.scan_at(start, Bound::Excluded(end.as_str()), limit, Some(at))?
            .opened(self)
    }

    /// Every key under `prefix` as this member has applied it, without a read-index round (for
    /// checks that may lag a moment, as upstream's informer caches do).
    pub fn list_local(&self, prefix: &str) -> Result<ListResult, StoreError> {
        self.list_range(prefix, None, 0)?.opened(self)
    }

    /// Rewrites every value stored otherwise than the encryption configuration now writes it
    /// (an older key, another provider, unencrypted): what completes a key rotation. A value
    /// changed meanwhile is left alone (its writer stored it the current way). Returns how many
    /// were rewritten.
    pub async fn reencrypt(&self) -> Result<usize, StoreError> {
        self.linearize().await?;
        let mut rewritten = 0;
        let prefixes: Vec<String> = self.encryption.prefixes().map(str::to_owned).collect();
        for prefix in prefixes {
            for kv in self.list_range(&prefix, None, 0)?.items {
                let (value, stale) = self.encryption.open(&kv.key, kv.value).map_err(io)?;
                if !stale {
                    continue;
                }
                match self.update(&kv.key, value, Some(kv.mod_revision)).await {
                    Ok(_) => rewritten += 1,
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(rewritten)
    }

    fn list_range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult, StoreError> {
        let end = prefix_end(prefix);
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.scan_at(start, Bound::Excluded(end.as_str()), limit, None)
    }

    /// The keys between `lower` and `upper` as stored, at most `limit` (0: all), at revision
    /// `at` (`None`: the latest), with the revision the read reflects. A past revision is the
    /// current keys with every later write undone from the history: the keys written since keep
    /// the value they held then (or are left out if they did not exist).
    fn scan_at(
        &self,
        lower: Bound<&str>,
        upper: Bound<&str>,
        limit: usize,
        at: Option<u64>,
    ) -> Result<ListResult, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let meta = tx.open_table(SM_META).map_err(io)?;
        let meta_u64 = |name: &str| -> Result<u64, StoreError> {
            match meta.get(name).map_err(io)? {
                Some(v) => decode(v.value()).map_err(io),
                None => Ok(0),
            }
        };
        let revision = meta_u64(REVISION)?;
        let at = at.unwrap_or(revision);
        if at > revision {
            return Err(StoreError::FutureRevision {
                requested: at,
                current: revision,
            });
        }
        // The value each key written after `at` held at `at` (the oldest later write's `prev`).
        let mut then: BTreeMap<String, Option<Record>> = BTreeMap::new();
        if at < revision {
            let oldest = meta_u64(COMPACTED)?;
            if at < oldest {
                return Err(StoreError::Compacted {
                    requested: at,
                    oldest,
                });
            }
            let history = tx.open_table(HISTORY).map_err(io)?;
            for item in history.range(at + 1..=revision).map_err(io)?.rev() {
                let (_, v) = item.map_err(io)?;
                let change: Change = decode(v.value()).map_err(io)?;
                if RangeBounds::<str>::contains(&(lower, upper), change.key.as_str()) {
                    then.insert(change.key, change.prev);
                }
            }
        }
        let table = tx.open_table(KV).map_err(io)?;
        let mut items = Vec::new();
        let full = |items: &Vec<KeyValue>| limit > 0 && items.len() == limit;
        let mut earlier = then
            .iter()
            .filter_map(|(k, r)| Some((k.as_str(), r.as_ref()?)))
            .peekable();
        let mut more = false;
        'keys: for item in table.range::<&str>((lower, upper)).map_err(io)? {
            let (k, v) = item.map_err(io)?;
            let key = k.value();
            while let Some((old_key, record)) = earlier.next_if(|(old_key, _)| *old_key < key) {
                if full(&items) {
                    more = true;
                    break 'keys;
                }
                items.push(record.clone().into_kv(old_key));
            }
            if then.contains_key(key) {
                continue;
            }
            if full(&items) {
                more = true;
                break;
            }
            items.push(decode::<Record>(v.value()).map_err(io)?.into_kv(key));
        }
        if !more {
            for (old_key, record) in earlier {
                if full(&items) {
                    more = true;
                    break;
                }
                items.push(record.clone().into_kv(old_key));
            }
        }
        Ok(ListResult {
            items,
            revision: at,
            more,
        })
    }

    /// Proposes writes as one log entry; returns each write's result once durable and applied.
    /// Refused while the disk is full (compactions, which free space, are not). Values are
    /// sealed and opened as the encryption configuration says.
    pub async fn write(&self, mut ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, StoreError> {
        if !self.encryption.is_empty() {
            for op in &mut ops {
                self.seal(op);
            }
        }
        let results = self.write_raw(ops).await?;
        if self.encryption.is_empty() {
            return Ok(results);
        }
        results.into_iter().map(|r| self.open_result(r)).collect()
    }

    fn seal(&self, op: &mut WriteOp) {
        match op {
            WriteOp::Create { key, value }
            | WriteOp::Update { key, value, .. }
            | WriteOp::Put { key, value } => {
                *value = self.encryption.seal(key, std::mem::take(value));
            }
            WriteOp::Txn { success, failure, .. } => {
                for op in success.iter_mut().chain(failure.iter_mut()) {
                    self.seal(op);
                }
            }
            WriteOp::Delete { .. } | WriteOp::Compact { .. } => {}
        }
    }

    fn open_result(&self, r: WriteResult) -> Result<WriteResult, StoreError> {
        Ok(match r {
            WriteResult::Done { revision, kv } => WriteResult::Done {
                revision,
                kv: kv.map(|kv| self.opened(kv)).transpose()?,
            },
            WriteResult::AlreadyExists { current } => WriteResult::AlreadyExists {
                current: self.opened(current)?,
            },
            WriteResult::Conflict { current } => WriteResult::Conflict {
                current: self.opened(current)?,
            },
            WriteResult::NotFound => WriteResult::NotFound,
            WriteResult::Txn { succeeded, results } => WriteResult::Txn {
                succeeded,
                results: results
                    .into_iter()
                    .map(|r| self.open_result(r))
                    .collect::<Result<_, _>>()?,
            },
        })
    }

    /// [`Store::write`] with values as given and answered as stored (no encryption either way):
    /// etcd's API, which shows what is on disk as etcd shows what kube-apiserver wrote.
    pub async fn write_raw(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, StoreError> {
        let bytes = ops.iter().map(op_bytes).sum::<usize>();
        if !ops.iter().all(|op| matches!(op, WriteOp::Compact { .. })) {
            self.disk.admit(bytes as u64).map_err(StoreError::NoSpace)?;
        }
        let (reply, rx) = oneshot::channel();
        let closed = || StoreError::Unavailable("store is shutting down".into());
        let leader_only = LEADER_ONLY.try_with(|_| ()).is_ok();
        self.writes
            .send(Pending {
                ops,
                bytes,
                leader_only,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Every key in `[start, end)` (end `None`: to the end of the key space) as stored, at most
    /// `limit` (0: all), at revision `at` (`None`: the latest, after a linearizable read index);
    /// and the revision read.
    pub async fn range_raw(
        &self,
        start: &str,
        end: Option<&str>,
        limit: usize,
        at: Option<u64>,
    ) -> Result<ListResult, StoreError> {
        if at.is_none_or(|at| at > self.revision()) {
            self.linearize().await?;
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        self.scan_at(Bound::Included(start), upper, limit, at)
    }

    async fn write_one(&self, op: WriteOp) -> Result<KeyValue, StoreError> {
        let (key, expected) = match &op {
            WriteOp::Create { key, .. } => (key.clone(), None),
            WriteOp::Update { key, expected, .. } | WriteOp::Delete { key, expected } => {
                (key.clone(), *expected)
            }
            WriteOp::Put { key, .. } => (key.clone(), None),
            WriteOp::Compact { .. } | WriteOp::Txn { .. } => (String::new(), None),
        };
        let result = self.write(vec![op]).await?.into_iter().next();
        match result {
            Some(WriteResult::Done {
                kv: Some(kv),
                revision,
            }) => Ok(KeyValue {
                mod_revision: revision,
                ..kv
            }),
            Some(WriteResult::Done { kv: None, .. } | WriteResult::Txn { .. }) | None => {
                Err(StoreError::Io("empty write result".into()))
            }
            Some(WriteResult::AlreadyExists { current }) => Err(StoreError::AlreadyExists {
                key,
                current: Box::new(current),
            }),
            Some(WriteResult::NotFound) => Err(StoreError::NotFound { key }),
            Some(WriteResult::Conflict { current }) => Err(StoreError::Conflict {
                key,
                expected: expected.unwrap_or_default(),
                found: current.mod_revision,
                current: Box::new(current),
            }),
        }
    }

    /// Creates `key`.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        self.write_one(WriteOp::Create {
            key: key.to_owned(),
            value,
        })
        .await
    }

    /// Replaces `key`, if its mod revision is still `expected` (when given).
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<KeyValue, StoreError> {
        self.write_one(WriteOp::Update {
            key: key.to_owned(),
            value,
            expected,
        })
        .await
    }

    /// Deletes `key`, if its mod revision is still `expected` (when given). Returns the deleted
    /// value with `mod_revision` set to the revision of the deletion.
    pub async fn delete(&self, key: &str, expected: Option<u64>) -> Result<KeyValue, StoreError> {
        self.write_one(WriteOp::Delete {
            key: key.to_owned(),
            expected,
        })
        .await
    }

    /// Builds a snapshot now (the log behind it may then be purged) and waits for it.
    pub async fn snapshot(&self) -> Result<(), StoreError> {
        let applied = self.raft.metrics().borrow().last_applied;
        // A trigger that arrives while another snapshot is being built is dropped: retry.
        for _ in 0..30 {
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let built = self
                .raft
                .wait(Some(Duration::from_secs(1)))
                .metrics(
                    |m| m.snapshot.is_some() && m.snapshot >= applied,
                    "the snapshot is built",
                )
                .await;
            if built.is_ok() {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable("snapshot was not built".into()))
    }

    /// A backup of every key at the current revision (after a read index): what
    /// `etcdctl snapshot save` receives, and [`restore`] reads.
    pub async fn backup(&self) -> Result<Vec<u8>, StoreError> {
        self.linearize().await?;
        snapshot::backup(&self.db).map_err(StoreError::Io)
    }

    /// Forgets watch history up to `revision` on every member.
    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.write(vec![WriteOp::Compact { revision }]).await.map(|_| ())
    }

    /// Watches keys under `prefix` for changes after revision `from`.
    pub fn watch(&self, prefix: &str, from: u64) -> Result<WatchStream, StoreError> {
        self.hub.subscribe(prefix, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventKind;

    async fn open(dir: &std::path::Path) -> Store {
        Store::open(StoreConfig::single(
            dir.to_path_buf(),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_single_member_passes_the_store_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        crate::store::conformance::run(&store).await;
        store.shutdown().await;
    }

    fn encrypted(dir: &std::path::Path, keys: &[(&str, &str)]) -> StoreConfig {
        let keys: String = keys
            .iter()
            .map(|(n, s)| format!("      - {{name: {n}, secret: {s}}}\n"))
            .collect();
        let config = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n{keys}  - identity: {{}}\n"
        );
        StoreConfig {
            encryption: Arc::new(Encryption::parse(&config).unwrap()),
            ..StoreConfig::single(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap())
        }
    }

    const K1: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=";
    const K2: &str = "YWJjZGVmZ2hpamtsbW5vcGFiY2RlZmdoaWprbG1ub3A=";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_encrypting_store_passes_the_store_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = encrypted(dir.path(), &[("k1", K1)]);
        let encryption = Arc::into_inner(config.encryption).unwrap();
        config.encryption = Arc::new(encryption.moved_to("/"));
        let store = Store::open(config).await.unwrap();
        crate::store::conformance::run(&store).await;
        store.shutdown().await;
    }

    /// Every byte under `dir`.
    fn files(dir: &std::path::Path) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                all.extend(files(&path));
            } else {
                all.extend(std::fs::read(&path).unwrap());
            }
        }
        all
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_never_reach_the_disk_in_the_clear_and_a_rotation_rewrites_them() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "/registry/core/secrets/default/s";
        let marker = b"plaintext-marker-4242";
        {
            let store = Store::open(encrypted(dir.path(), &[("k1", K1)])).await.unwrap();
            let mut watch = store.watch("/registry/", 0).unwrap();
            let written = store.create(secret, marker.to_vec()).await.unwrap();
            assert_eq!(written.value, marker);
            store
                .create("/registry/core/configmaps/default/c", b"open".to_vec())
                .await
                .unwrap();
            assert_eq!(watch.next().await.unwrap().unwrap().kv.value, marker);
            assert_eq!(store.get(secret).await.unwrap().unwrap().value, marker);
            assert_eq!(
                store
                    .list("/registry/core/secrets/", None, 0)
                    .await
                    .unwrap()
                    .items[0]
                    .value,
                marker
            );
            assert_eq!(store.reencrypt().await.unwrap(), 0);
            store.snapshot().await.unwrap();
            store.shutdown().await;
        }
        let disk = files(dir.path());
        assert!(
            !disk.windows(marker.len()).any(|w| w == marker),
            "a secret's value is on disk in the clear"
        );
        assert!(disk.windows(4).any(|w| w == b"open"));
        // Rotation: the new key first, the old one still read; the start-up rewrite moves values over.
        {
            let store = Store::open(encrypted(dir.path(), &[("k2", K2), ("k1", K1)]))
                .await
                .unwrap();
            assert_eq!(store.get(secret).await.unwrap().unwrap().value, marker);
            assert_eq!(store.reencrypt().await.unwrap(), 1);
            assert_eq!(store.reencrypt().await.unwrap(), 0);
            store.shutdown().await;
        }
        {
            let store = Store::open(encrypted(dir.path(), &[("k2", K2)])).await.unwrap();
            assert_eq!(store.get(secret).await.unwrap().unwrap().value, marker);
            store.shutdown().await;
        }
        // Without the key the value cannot be read at all.
        let store = Store::open(encrypted(dir.path(), &[("k1", K1)])).await.unwrap();
        assert!(store.get(secret).await.is_err());
        store.shutdown().await;
    }

    async fn member(dir: &std::path::Path, id: u64, join: bool) -> Store {
        Store::open(StoreConfig {
            node_id: id,
            join,
            ..StoreConfig::single(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap())
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_members_replicate_forward_and_survive_the_leaders_loss() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let first = member(dirs[0].path(), 1, false).await;
        first.create("/h/before", b"1".to_vec()).await.unwrap();
        let mut others = Vec::new();
        for (i, dir) in dirs.iter().enumerate().skip(1) {
            let id = i as u64 + 1;
            let m = member(dir.path(), id, true).await;
            let addr = m.raft_addr().to_string();
            // Added through a member that is not the leader, once there is one.
            let via = others.last().unwrap_or(&first);
            via.change_membership(MembershipOp::AddLearner { id, addr }, Duration::from_secs(30))
                .await
                .unwrap();
            via.change_membership(MembershipOp::Promote { id }, Duration::from_secs(30))
                .await
                .unwrap();
            m.wait_until_serving(Duration::from_secs(30)).await.unwrap();
            others.push(m);
        }
        let (members, leader) = others[1].members();
        assert_eq!(members.iter().filter(|m| m.2).count(), 3, "{members:?}");
        assert_eq!(leader, Some(1));
        // A follower reads what the leader wrote before it joined, writes through the leader,
        // and every member reads the write at once (read index).
        assert_eq!(others[0].get("/h/before").await.unwrap().unwrap().value, b"1");
        let written = others[1].create("/h/from-follower", b"2".to_vec()).await.unwrap();
        for m in [&first, &others[0], &others[1]] {
            let kv = m.get("/h/from-follower").await.unwrap().unwrap();
            assert_eq!(kv.mod_revision, written.mod_revision);
        }
        let status = others[0]
            .member_status(3, &others[1].raft_addr().to_string())
            .await
            .unwrap();
        assert_eq!((status.id, status.leader), (3, Some(1)));
        // Leader-only work on a follower (a deposed leader's controller) is refused, not forwarded.
        let fenced = others[0]
            .as_leader(others[0].create("/h/fenced", b"x".to_vec()))
            .await;
        assert!(
            matches!(&fenced, Err(StoreError::Unavailable(m)) if m.contains("no longer leads")),
            "{fenced:?}"
        );
        assert!(first.get("/h/fenced").await.unwrap().is_none());
        first
            .as_leader(first.create("/h/leader-only", b"y".to_vec()))
            .await
            .unwrap();
        // The store's own conformance suite through a follower.
        crate::store::conformance::run(&others[0]).await;
        // The leader goes; the two left elect one and take writes.
        first.shutdown().await;
        drop(first);
        let mut done = None;
        for _ in 0..100 {
            match others[0].create("/h/after", b"3".to_vec()).await {
                Ok(kv) => {
                    done = Some(kv);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let after = done.expect("no write accepted after the leader stopped");
        assert!(after.mod_revision > written.mod_revision);
        assert_eq!(others[1].get("/h/after").await.unwrap().unwrap().value, b"3");
        for m in others {
            m.shutdown().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_talk_mutual_tls_and_refuse_other_certificates_of_the_ca() {
        let pki_dir = tempfile::tempdir().unwrap();
        let pki =
            crate::pki::Pki::load_or_create(pki_dir.path(), "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
        let tls = |cert: crate::pki::CertAndKey| {
            Some(Arc::new(PeerTls {
                ca_pem: pki.ca_pem.clone(),
                cert_pem: cert.cert_pem,
                key_pem: cert.key_pem,
            }))
        };
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let open = |i: usize, id: u64, join: bool, tls| {
            Store::open(StoreConfig {
                node_id: id,
                join,
                tls,
                ..StoreConfig::single(dirs[i].path().to_path_buf(), "127.0.0.1:0".parse().unwrap())
            })
        };
        let first = open(0, 1, false, tls(pki.issue_member(1).unwrap()))
            .await
            .unwrap();
        let second = open(1, 2, true, tls(pki.issue_member(2).unwrap())).await.unwrap();
        let addr = second.raft_addr().to_string();
        first
            .change_membership(MembershipOp::AddLearner { id: 2, addr }, Duration::from_secs(20))
            .await
            .unwrap();
        first.create("/t/a", b"1".to_vec()).await.unwrap();
        second.wait_until_serving(Duration::from_secs(10)).await.unwrap();
        assert_eq!(second.get("/t/a").await.unwrap().unwrap().value, b"1");
        // An administrator's certificate from the same CA is not a member's: refused.
        let admin = pki.issue_client("skiff-admin", &["system:masters"]).unwrap();
        let intruder = open(2, 3, true, tls(admin)).await.unwrap();
        let addr = intruder.raft_addr().to_string();
        let added = first
            .change_membership(MembershipOp::AddLearner { id: 3, addr }, Duration::from_secs(3))
            .await;
        assert!(added.is_err(), "a member with an admin certificate was added");
        assert!(
            intruder
                .member_status(1, &first.raft_addr().to_string())
                .await
                .is_err()
        );
        for s in [first, second, intruder] {
            s.shutdown().await;
        }
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/registry/pods/"), "/registry/pods0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_data_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let rev = {
            let store = open(dir.path()).await;
            for i in 0..50 {
                store.create(&format!("/k/{i:03}"), vec![i as u8]).await.unwrap();
            }
            let rev = store.revision();
            store.shutdown().await;
            rev
        };
        let store = open(dir.path()).await;
        assert_eq!(store.revision(), rev);
        assert_eq!(store.list("/k/", None, 0).await.unwrap().items.len(), 50);
        let next = store.create("/k/new", vec![]).await.unwrap();
        assert_eq!(next.mod_revision, rev + 1);
        store.shutdown().await;
    }

    /// History lives in the state database: after a restart a watch replays from before it with
    /// each write's value, deletes included, and lists read at revisions before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_history_and_past_revisions_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (start, first) = {
            let store = open(dir.path()).await;
            let start = store.revision();
            store.create("/h/a", b"1".to_vec()).await.unwrap();
            store.create("/h/b", b"1".to_vec()).await.unwrap();
            let first = store.revision();
            store.update("/h/a", b"2".to_vec(), None).await.unwrap();
            store.delete("/h/b", None).await.unwrap();
            store.shutdown().await;
            (start, first)
        };
        let store = open(dir.path()).await;
        let mut watch = store.watch("/h/", start).unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            let e = watch.next().await.unwrap().unwrap();
            seen.push((
                e.kind,
                e.kv.key.clone(),
                e.kv.value.clone(),
                e.prev.as_ref().map(|p| p.value.clone()),
            ));
        }
        assert_eq!(
            seen,
            [
                (EventKind::Put, "/h/a".into(), b"1".to_vec(), None),
                (EventKind::Put, "/h/b".into(), b"1".to_vec(), None),
                (EventKind::Put, "/h/a".into(), b"2".to_vec(), Some(b"1".to_vec())),
                (
                    EventKind::Delete,
                    "/h/b".into(),
                    b"1".to_vec(),
                    Some(b"1".to_vec())
                ),
            ]
        );
        let past = store.list_at("/h/", None, 0, first).await.unwrap();
        let values: Vec<(&str, &[u8])> = past
            .items
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
            .collect();
        assert_eq!(values, [("/h/a", b"1".as_slice()), ("/h/b", b"1".as_slice())]);
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_compact_the_log_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = || StoreConfig {
            snapshot_every: 50,
            ..StoreConfig::single(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())
        };
        let rev = {
            let store = Store::open(config()).await.unwrap();
            for i in 0..300 {
                store.create(&format!("/s/{i:04}"), vec![7; 32]).await.unwrap();
            }
            store.snapshot().await.unwrap();
            let m = store.raft.metrics().borrow().clone();
            assert!(m.purged.is_some(), "log not purged after snapshots: {m:?}");
            let rev = store.revision();
            store.shutdown().await;
            rev
        };
        assert!(dir.path().join("snapshot.bin").exists());
        let store = Store::open(config()).await.unwrap();
        assert_eq!(store.revision(), rev);
        assert_eq!(store.list("/s/", None, 0).await.unwrap().items.len(), 300);
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_sees_writes_after_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let first = store.create("/w/a", vec![1]).await.unwrap();
        let mut watch = store.watch("/w/", first.mod_revision).unwrap();
        store.update("/w/a", vec![2], None).await.unwrap();
        store.delete("/w/a", None).await.unwrap();
        let e1 = watch.next().await.unwrap().unwrap();
        let e2 = watch.next().await.unwrap().unwrap();
        assert_eq!(e1.kind, crate::store::EventKind::Put);
        assert_eq!(e2.kind, crate::store::EventKind::Delete);
        assert_eq!(e2.revision, e1.revision + 1);
        store.shutdown().await;
    }
}
