//! etcd's v3 gRPC API over the store, for the parts operators use: `etcdctl get|put|del|txn|
//! watch|compaction|defrag|member list|endpoint health|endpoint status`. Keys in upstream's layout
//! ([`keys`]), values as stored (JSON; sealed values of encrypted resources as written, as etcd
//! shows what kube-apiserver wrote). Served on `--etcd-listen` over TLS with client certificates
//! from the cluster CA in `system:masters` (the admin kubeconfig's).
//!
//! What differs from etcd: every write of a transaction takes a revision of its own (etcd gives a
//! transaction one); a key's `version` is 1 while it exists (the store does not count changes);
//! a lease keep-alive is a write (it takes a revision; see [`lease`]); authentication and member
//! changes are not served here (members: `skiff-control member`). `snapshot save` writes Skiff's backup format (the keys at one
//! revision with a SHA-256), which `skiff-control snapshot restore` reads.

pub mod keys;
pub mod lease;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use futures::Stream;
use skiff_proto::etcd::etcdserverpb as pb;
use skiff_proto::etcd::mvccpb;
use tonic::{Request, Response, Status};

use crate::store::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, Store, StoreError, WriteOp, WriteResult,
};

/// The etcd server: the store, and how keys are named.
#[derive(Clone)]
pub struct Etcd {
    store: Store,
    layout: Arc<keys::Layout>,
    cluster_id: u64,
    db_path: std::path::PathBuf,
    client_url: String,
    lessor: Arc<lease::Lessor>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").finish_non_exhaustive()
    }
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::Compacted { requested, oldest } => Status::out_of_range(format!(
            "etcdserver: mvcc: required revision has been compacted ({requested} < {oldest})"
        )),
        StoreError::FutureRevision { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
        }
        StoreError::NoSpace(m) => {
            Status::resource_exhausted(format!("etcdserver: mvcc: database space exceeded: {m}"))
        }
        StoreError::Unavailable(m) => Status::unavailable(format!("etcdserver: {m}")),
        other => Status::internal(other.to_string()),
    }
}

fn lease_not_found() -> Status {
    Status::not_found("etcdserver: requested lease not found")
}

fn lease_status(e: lease::LeaseError) -> Status {
    match e {
        lease::LeaseError::NotFound => lease_not_found(),
        lease::LeaseError::Exists => Status::failed_precondition("etcdserver: lease already exists"),
        lease::LeaseError::TooLarge => Status::out_of_range("etcdserver: too large lease TTL"),
        lease::LeaseError::Store(e) => status(e),
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, Status> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Status::invalid_argument(format!("{what} is not UTF-8 (the store's keys are)")))
}

/// The first key after every key that starts with `prefix` (etcd's `--prefix` range end).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Etcd {
    /// An etcd API over `store`, with the built-in kinds of `registry` in upstream's layout.
    pub fn new(
        store: Store,
        registry: &crate::objects::registry::Registry,
        ca_pem: &str,
        data_dir: &std::path::Path,
        client_url: String,
        lessor: Arc<lease::Lessor>,
    ) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        Self {
            store,
            layout: Arc::new(keys::Layout::new(registry)),
            cluster_id: u64::from_be_bytes(id),
            db_path: data_dir.join("store").join("state.redb"),
            client_url,
            lessor,
        }
    }

    fn header(&self, revision: u64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.store.member_id(),
            revision: revision as i64,
            raft_term: self.store.term(),
        })
    }

    fn kv(&self, kv: &KeyValue, keys_only: bool) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: self.layout.upstream(&kv.key).into_bytes(),
            create_revision: kv.create_revision as i64,
            mod_revision: kv.mod_revision as i64,
            version: 1,
            value: if keys_only { Vec::new() } else { kv.value.clone() },
            lease: self.lessor.holder(&kv.key),
        }
    }

    /// The stored keys in upstream's `[key, range_end)` (etcd's conventions: an empty end is
    /// the key alone, `\0` everything from the key on), in upstream's key order.
    async fn range_keys(
        &self,
        key: &[u8],
        range_end: &[u8],
        at: Option<u64>,
    ) -> Result<(Vec<KeyValue>, u64), Status> {
        if range_end.is_empty() {
            let ours = self.layout.ours(&utf8(key, "the key")?);
            let mut end = ours.clone();
            end.push('\0');
            let found = self
                .store
                .range_raw(&ours, Some(&end), 1, at)
                .await
                .map_err(status)?;
            return Ok((found.items, found.revision));
        }
        let start = utf8(key, "the key")?;
        let end = if range_end == b"\0" {
            None
        } else {
            Some(utf8(range_end, "the range end")?)
        };
        // A prefix range of one resource (or below) reads that prefix only; any other reads all.
        let scan = match (&end, prefix_end(key)) {
            (Some(end), Some(pe)) if end.as_bytes() == pe.as_slice() => self.layout.ours_prefix(&start),
            _ => None,
        };
        let found = match scan {
            Some(prefix) => {
                let upper = crate::store::prefix_end(&prefix);
                self.store.range_raw(&prefix, Some(&upper), 0, at).await
            }
            None => self.store.range_raw("", None, 0, at).await,
        }
        .map_err(status)?;
        let revision = found.revision;
        let mut items: Vec<(String, KeyValue)> = found
            .items
            .into_iter()
            .map(|kv| (self.layout.upstream(&kv.key), kv))
            .filter(|(k, _)| k.as_str() >= start.as_str() && end.as_deref().is_none_or(|e| k.as_str() < e))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((items.into_iter().map(|(_, kv)| kv).collect(), revision))
    }

    async fn do_range(&self, r: &pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let at = u64::try_from(r.revision).ok().filter(|r| *r > 0);
        let (mut items, revision) = self.range_keys(&r.key, &r.range_end, at).await?;
        items.retain(|kv| {
            (r.min_mod_revision == 0 || kv.mod_revision as i64 >= r.min_mod_revision)
                && (r.max_mod_revision == 0 || kv.mod_revision as i64 <= r.max_mod_revision)
                && (r.min_create_revision == 0 || kv.create_revision as i64 >= r.min_create_revision)
                && (r.max_create_revision == 0 || kv.create_revision as i64 <= r.max_create_revision)
        });
        use pb::range_request::{SortOrder, SortTarget};
        let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
        let order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
        if order != SortOrder::None || target != SortTarget::Key {
            let key = |kv: &KeyValue| -> (Vec<u8>, u64) {
                match target {
                    SortTarget::Key => (self.layout.upstream(&kv.key).into_bytes(), 0),
                    SortTarget::Version => (Vec::new(), 1),
                    SortTarget::Create => (Vec::new(), kv.create_revision),
                    SortTarget::Mod => (Vec::new(), kv.mod_revision),
                    SortTarget::Value => (kv.value.clone(), 0),
                }
            };
            items.sort_by_key(|kv| key(kv));
            if order == SortOrder::Descend {
                items.reverse();
            }
        }
        let count = items.len() as i64;
        let limit = usize::try_from(r.limit).unwrap_or(0);
        let more = limit > 0 && items.len() > limit;
        if limit > 0 {
            items.truncate(limit);
        }
        Ok(pb::RangeResponse {
            header: self.header(revision),
            kvs: if r.count_only {
                Vec::new()
            } else {
                items.iter().map(|kv| self.kv(kv, r.keys_only)).collect()
            },
            more,
            count,
        })
    }

    /// The write for a put or a delete of `txn`/`put`/`del`, and what to read first for
    /// `prev_kv` and ranges of deletes.
    async fn write_op(&self, op: &pb::request_op::Request) -> Result<Vec<WriteOp>, Status> {
        use pb::request_op::Request as R;
        Ok(match op {
            R::RequestPut(p) => {
                if p.lease != 0 && !self.lessor.exists(p.lease) {
                    return Err(lease_not_found());
                }
                self.lessor
                    .put(
                        self.layout.ours(&utf8(&p.key, "the key")?),
                        p.value.clone(),
                        p.lease,
                    )
                    .map_err(status)?
            }
            R::RequestDeleteRange(d) => {
                let mut ops = Vec::new();
                for kv in self.range_keys(&d.key, &d.range_end, None).await?.0 {
                    let forget = self.lessor.forget(&kv.key);
                    ops.push(WriteOp::Delete {
                        key: kv.key,
                        expected: None,
                    });
                    ops.extend(forget);
                }
                ops
            }
            R::RequestRange(_) => Vec::new(),
            R::RequestTxn(_) => {
                return Err(Status::unimplemented(
                    "nested transactions are not served by this store",
                ));
            }
        })
    }

    fn compare(&self, c: &pb::Compare) -> Result<Compare, Status> {
        use pb::compare::{CompareResult, CompareTarget as T, TargetUnion};
        if !c.range_end.is_empty() {
            return Err(Status::unimplemented(
                "comparisons over a range are not served by this store",
            ));
        }
        let target = match (T::try_from(c.target).unwrap_or(T::Version), &c.target_union) {
            (T::Version, Some(TargetUnion::Version(v))) => CompareTarget::Version(*v as u64),
            (T::Create, Some(TargetUnion::CreateRevision(v))) => CompareTarget::Create(*v as u64),
            (T::Mod, Some(TargetUnion::ModRevision(v))) => CompareTarget::Mod(*v as u64),
            (T::Value, Some(TargetUnion::Value(v))) => CompareTarget::Value(v.clone()),
            (T::Version, None) => CompareTarget::Version(0),
            (T::Create, None) => CompareTarget::Create(0),
            (T::Mod, None) => CompareTarget::Mod(0),
            (T::Value, None) => CompareTarget::Value(Vec::new()),
            (T::Lease, _) => return Err(Status::unimplemented("leases are not served by this store")),
            _ => {
                return Err(Status::invalid_argument(
                    "a comparison's target and value disagree",
                ));
            }
        };
        let op = match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
            CompareResult::Equal => CompareOp::Equal,
            CompareResult::Greater => CompareOp::Greater,
            CompareResult::Less => CompareOp::Less,
            CompareResult::NotEqual => CompareOp::NotEqual,
        };
        Ok(Compare {
            key: self.layout.ours(&utf8(&c.key, "the key")?),
            target,
            op,
        })
    }

    /// Answers of `ops` whose writes produced `results` (in order), reads done after.
    async fn answers(
        &self,
        ops: &[pb::RequestOp],
        mut results: std::vec::IntoIter<WriteResult>,
        sizes: &[usize],
        revision: u64,
    ) -> Result<Vec<pb::ResponseOp>, Status> {
        use pb::request_op::Request as R;
        use pb::response_op::Response as A;
        let mut out = Vec::new();
        for (op, size) in ops.iter().zip(sizes) {
            let done: Vec<WriteResult> = results.by_ref().take(*size).collect();
            let answer = match &op.request {
                Some(R::RequestRange(r)) => A::ResponseRange(self.do_range(r).await?),
                Some(R::RequestPut(_)) => A::ResponsePut(pb::PutResponse {
                    header: self.header(revision),
                    prev_kv: None,
                }),
                Some(R::RequestDeleteRange(_)) => A::ResponseDeleteRange(pb::DeleteRangeResponse {
                    header: self.header(revision),
                    deleted: done
                        .iter()
                        .filter(|r| matches!(r, WriteResult::Done { .. }))
                        .count() as i64,
                    prev_kvs: Vec::new(),
                }),
                Some(R::RequestTxn(_)) | None => continue,
            };
            out.push(pb::ResponseOp {
                response: Some(answer),
            });
        }
        Ok(out)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::kv_server::Kv for Etcd {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        Ok(Response::new(self.do_range(request.get_ref()).await?))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let p = request.into_inner();
        let prev = if p.prev_kv {
            self.range_keys(&p.key, &[], None).await?.0.into_iter().next()
        } else {
            None
        };
        let ops = self.write_op(&pb::request_op::Request::RequestPut(p)).await?;
        let results = self.store.write_raw(ops).await.map_err(status)?;
        if lease::lease_missing(&results) {
            return Err(lease_not_found());
        }
        let revision = match results.first() {
            Some(WriteResult::Done { revision, .. }) => *revision,
            _ => self.store.revision(),
        };
        Ok(Response::new(pb::PutResponse {
            header: self.header(revision),
            prev_kv: prev.map(|kv| self.kv(&kv, false)),
        }))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let d = request.into_inner();
        let (found, _) = self.range_keys(&d.key, &d.range_end, None).await?;
        let mut ops = found
            .iter()
            .map(|kv| WriteOp::Delete {
                key: kv.key.clone(),
                expected: Some(kv.mod_revision),
            })
            .collect::<Vec<_>>();
        // Leases' holds on the deleted keys go after them (results are read by position).
        for kv in &found {
            ops.extend(self.lessor.forget(&kv.key));
        }
        let results = if ops.is_empty() {
            Vec::new()
        } else {
            self.store.write_raw(ops).await.map_err(status)?
        };
        let deleted: Vec<&KeyValue> = found
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, WriteResult::Done { .. }))
            .map(|(kv, _)| kv)
            .collect();
        Ok(Response::new(pb::DeleteRangeResponse {
            header: self.header(self.store.revision()),
            deleted: deleted.len() as i64,
            prev_kvs: if d.prev_kv {
                deleted.iter().map(|kv| self.kv(kv, false)).collect()
            } else {
                Vec::new()
            },
        }))
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let t = request.into_inner();
        let compares = t
            .compare
            .iter()
            .map(|c| self.compare(c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut branches = [Vec::new(), Vec::new()];
        let mut sizes = [Vec::new(), Vec::new()];
        for (i, ops) in [&t.success, &t.failure].into_iter().enumerate() {
            for op in ops {
                let writes = match &op.request {
                    Some(r) => self.write_op(r).await?,
                    None => Vec::new(),
                };
                sizes[i].push(writes.len());
                branches[i].extend(writes);
            }
        }
        let [success, failure] = branches;
        let results = self
            .store
            .write_raw(vec![WriteOp::Txn {
                compares,
                success,
                failure,
            }])
            .await
            .map_err(status)?;
        let (succeeded, results) = match results.into_iter().next() {
            Some(WriteResult::Txn { succeeded, results }) => (succeeded, results),
            _ => return Err(Status::internal("the transaction has no result")),
        };
        let revision = self.store.revision();
        let (ops, sizes) = if succeeded {
            (&t.success, &sizes[0])
        } else {
            (&t.failure, &sizes[1])
        };
        let responses = self.answers(ops, results.into_iter(), sizes, revision).await?;
        Ok(Response::new(pb::TxnResponse {
            header: self.header(revision),
            succeeded,
            responses,
        }))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let revision = request.get_ref().revision;
        let current = self.store.revision();
        if revision <= 0 || revision as u64 > current {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision is a future revision",
            ));
        }
        if (revision as u64) < self.store.oldest_watchable() {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision has been compacted",
            ));
        }
        self.store.compact(revision as u64).await.map_err(status)?;
        Ok(Response::new(pb::CompactionResponse {
            header: self.header(current),
        }))
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for Etcd {
    async fn watch(
        &self,
        request: Request<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<Response<BoxStream<pb::WatchResponse>>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::WatchResponse, Status>>(256);
        let this = self.clone();
        tokio::spawn(async move {
            let next_id = AtomicI64::new(0);
            let mut watches: std::collections::HashMap<i64, tokio::task::JoinHandle<()>> = Default::default();
            while let Ok(Some(req)) = requests.message().await {
                use pb::watch_request::RequestUnion as U;
                match req.request_union {
                    Some(U::CreateRequest(c)) => {
                        let id = if c.watch_id != 0 {
                            c.watch_id
                        } else {
                            next_id.fetch_add(1, Ordering::Relaxed)
                        };
                        let handle = this.start_watch(id, c, tx.clone()).await;
                        if let Some(h) = handle {
                            watches.insert(id, h);
                        }
                    }
                    Some(U::CancelRequest(c)) => {
                        if let Some(h) = watches.remove(&c.watch_id) {
                            h.abort();
                        }
                        let _ = tx
                            .send(Ok(pb::WatchResponse {
                                header: this.header(this.store.revision()),
                                watch_id: c.watch_id,
                                canceled: true,
                                ..Default::default()
                            }))
                            .await;
                    }
                    Some(U::ProgressRequest(_)) => {
                        let _ = tx
                            .send(Ok(pb::WatchResponse {
                                header: this.header(this.store.revision()),
                                watch_id: -1,
                                ..Default::default()
                            }))
                            .await;
                    }
                    None => {}
                }
            }
            for (_, h) in watches {
                h.abort();
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl Etcd {
    /// Starts watch `id`: its `created` answer, then its events (or its cancellation when its
    /// start revision is compacted).
    async fn start_watch(
        &self,
        id: i64,
        c: pb::WatchCreateRequest,
        tx: tokio::sync::mpsc::Sender<Result<pb::WatchResponse, Status>>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let current = self.store.revision();
        let from = if c.start_revision > 0 {
            (c.start_revision as u64).saturating_sub(1)
        } else {
            current
        };
        let (start, end) = match (utf8(&c.key, "the key"), c.range_end.as_slice()) {
            (Ok(k), []) => (k, None),
            (Ok(k), b"\0") => (k, Some(String::new())),
            (Ok(k), e) => (k, Some(String::from_utf8_lossy(e).into_owned())),
            (Err(e), _) => {
                let _ = tx.send(Err(e)).await;
                return None;
            }
        };
        let prefix = match &end {
            None => self.layout.ours(&start),
            Some(e) if prefix_end(start.as_bytes()).is_some_and(|pe| pe == e.as_bytes()) => {
                self.layout.ours_prefix(&start).unwrap_or_default()
            }
            Some(_) => String::new(),
        };
        let created = pb::WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        let mut stream = match self.store.watch(&prefix, from) {
            Ok(s) => s,
            Err(StoreError::Compacted { oldest, .. }) => {
                let _ = tx.send(Ok(created)).await;
                let _ = tx
                    .send(Ok(pb::WatchResponse {
                        header: self.header(current),
                        watch_id: id,
                        canceled: true,
                        compact_revision: oldest as i64,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                        ..Default::default()
                    }))
                    .await;
                return None;
            }
            Err(e) => {
                let _ = tx.send(Err(status(e))).await;
                return None;
            }
        };
        if tx.send(Ok(created)).await.is_err() {
            return None;
        }
        let this = self.clone();
        let no_put = c
            .filters
            .contains(&(pb::watch_create_request::FilterType::Noput as i32));
        let no_delete = c
            .filters
            .contains(&(pb::watch_create_request::FilterType::Nodelete as i32));
        Some(tokio::spawn(async move {
            while let Ok(Some(event)) = stream.next().await {
                let theirs = this.layout.upstream(&event.kv.key);
                let inside = match &end {
                    None => theirs == start,
                    Some(e) => {
                        theirs.as_str() >= start.as_str() && (e.is_empty() || theirs.as_str() < e.as_str())
                    }
                };
                let deleted = event.kind == EventKind::Delete;
                if !inside || (deleted && no_delete) || (!deleted && no_put) {
                    continue;
                }
                let mut kv = this.kv(&event.kv, false);
                if deleted {
                    kv = mvccpb::KeyValue {
                        key: kv.key,
                        mod_revision: event.revision as i64,
                        ..Default::default()
                    };
                }
                let out = mvccpb::Event {
                    r#type: if deleted {
                        mvccpb::event::EventType::Delete as i32
                    } else {
                        mvccpb::event::EventType::Put as i32
                    },
                    kv: Some(kv),
                    prev_kv: if c.prev_kv {
                        event.prev.as_ref().map(|p| this.kv(p, false))
                    } else {
                        None
                    },
                };
                let response = pb::WatchResponse {
                    header: this.header(event.revision),
                    watch_id: id,
                    events: vec![out],
                    ..Default::default()
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        }))
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for Etcd {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        let (id, ttl) = self.lessor.grant(r.id, r.ttl).await.map_err(lease_status)?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: self.header(self.store.revision()),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        self.lessor
            .revoke(request.get_ref().id)
            .await
            .map_err(lease_status)?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: self.header(self.store.revision()),
        }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<pb::LeaseKeepAliveResponse>>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = requests.message().await {
                // An expired or revoked lease answers TTL 0 (etcdctl: "lease ... expired or revoked").
                let answer = match this.lessor.keep_alive(req.id).await {
                    Ok(ttl) => Ok(ttl),
                    Err(lease::LeaseError::NotFound) => Ok(0),
                    Err(e) => Err(lease_status(e)),
                };
                let reply = answer.map(|ttl| pb::LeaseKeepAliveResponse {
                    header: this.header(this.store.revision()),
                    id: req.id,
                    ttl,
                });
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let header = self.header(self.store.revision());
        match self.lessor.time_to_live(r.id).await {
            Ok((ttl, granted, keys)) => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl,
                granted_ttl: granted,
                keys: if r.keys {
                    keys.iter()
                        .map(|k| self.layout.upstream(k).into_bytes())
                        .collect()
                } else {
                    Vec::new()
                },
            })),
            // etcd answers a missing lease with TTL -1.
            Err(lease::LeaseError::NotFound) => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            })),
            Err(e) => Err(lease_status(e)),
        }
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let leases = self.lessor.leases().await.map_err(lease_status)?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.header(self.store.revision()),
            leases: leases.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Etcd {
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let (members, _) = self.store.members();
        let records = self
            .store
            .range_raw("/skiff/members/", Some("/skiff/members0"), 0, None)
            .await
            .map_err(status)?;
        let members = members
            .into_iter()
            .map(|(id, addr, voter)| {
                let record = records
                    .items
                    .iter()
                    .find(|kv| kv.key == crate::api::members::record_key(id))
                    .and_then(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok())
                    .unwrap_or_default();
                pb::Member {
                    id,
                    name: record["name"].as_str().unwrap_or_default().to_owned(),
                    peer_ur_ls: vec![format!("https://{addr}")],
                    client_ur_ls: if id == self.store.member_id() {
                        vec![self.client_url.clone()]
                    } else {
                        Vec::new()
                    },
                    is_learner: !voter,
                }
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(self.store.revision()),
            members,
        }))
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for Etcd {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (_, leader) = self.store.members();
        let s = self
            .store
            .member_status(self.store.member_id(), "")
            .await
            .map_err(status)?;
        let db_size = crate::store::state_file_length(&self.db_path).map_or(0, |len| len as i64);
        let errors = self.store.not_ready().into_iter().collect();
        Ok(Response::new(pb::StatusResponse {
            header: self.header(s.revision),
            version: "3.5.0".into(),
            db_size,
            leader: leader.unwrap_or_default(),
            raft_index: s.applied_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors,
            db_size_in_use: db_size,
            is_learner: !self.store.members().0.iter().any(|m| m.0 == s.id && m.2),
            ..Default::default()
        }))
    }

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<BoxStream<pb::SnapshotResponse>>, Status> {
        let backup = self.store.backup().await.map_err(status)?;
        let header = self.header(self.store.revision());
        let total = backup.len();
        let chunks: Vec<Result<pb::SnapshotResponse, Status>> = backup
            .chunks(64 << 10)
            .enumerate()
            .map(|(i, chunk)| {
                let sent = (i * (64 << 10) + chunk.len()) as u64;
                Ok(pb::SnapshotResponse {
                    header,
                    remaining_bytes: total as u64 - sent,
                    blob: chunk.to_vec(),
                    version: "3.5.0".into(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // redb reuses freed pages itself: nothing to do, as etcdctl users expect an answer.
        Ok(Response::new(pb::DefragmentResponse {
            header: self.header(self.store.revision()),
        }))
    }

    async fn alarm(
        &self,
        _request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let mut alarms = Vec::new();
        if self.store.not_ready().is_some_and(|why| why.contains("disk")) {
            alarms.push(pb::AlarmMember {
                member_id: self.store.member_id(),
                alarm: pb::AlarmType::Nospace as i32,
            });
        }
        Ok(Response::new(pb::AlarmResponse {
            header: self.header(self.store.revision()),
            alarms,
        }))
    }
}

/// The etcd listener's TLS: the API server's certificate; clients present one of the CA.
pub fn server_tls(pki: &crate::pki::Pki) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let tls = crate::store::PeerTls {
        ca_pem: pki.ca_pem.clone(),
        cert_pem: pki.serving.cert_pem.clone(),
        key_pem: pki.serving.key_pem.clone(),
    };
    tls.server().map_err(anyhow::Error::msg)
}

/// Whether a DER client certificate is in `system:masters`.
fn is_master(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| {
        cert.subject()
            .iter_organization()
            .any(|o| o.as_str() == Ok("system:masters"))
    })
}

/// Serves etcd's API on `listener` with `tls` (the API server's certificate; clients must
/// present one of the cluster CA in `system:masters`).
pub fn serve(etcd: Etcd, listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>) {
    let incoming = crate::store::tls_incoming(listener, tls, is_master, "system:masters");
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(pb::kv_server::KvServer::new(etcd.clone()))
            .add_service(pb::watch_server::WatchServer::new(etcd.clone()))
            .add_service(pb::lease_server::LeaseServer::new(etcd.clone()))
            .add_service(pb::cluster_server::ClusterServer::new(etcd.clone()))
            .add_service(pb::maintenance_server::MaintenanceServer::new(etcd))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the etcd API stopped");
        }
    });
}
