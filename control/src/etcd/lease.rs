//! etcd's leases (`etcdctl lease grant|keep-alive|revoke|timetolive|list`, `put --lease`) on the
//! store's own key space, so they are replicated, snapshotted and restored with everything else:
//!
//! - `/skiff/leases/<id>`: the lease (its TTL, and when it was last kept alive, for members that
//!   do not lead);
//! - `/skiff/lease-keys/<id>/<key>` and `/skiff/key-leases/<key>`: which keys it holds, both ways.
//!
//! As in etcd, only the leader expires leases, on its own clock: it counts a lease's TTL from the
//! last keep-alive it saw applied (or from when it began to lead, so a new leader gives every lease
//! its whole TTL again), and revokes it in one transaction that deletes the keys it holds.
//! Keep-alives are writes (each takes a revision, which etcd's do not), so they work through any
//! member.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::{Compare, CompareOp, CompareTarget, Store, StoreError, WriteOp, WriteResult};

/// The shortest TTL granted (etcd's for its default election timeout is 2 s as well).
pub const MIN_TTL: i64 = 2;
/// The longest (etcd's `MaxLeaseTTL`).
pub const MAX_TTL: i64 = 9_000_000_000;
/// How often the leader looks for expired leases.
const TICK: Duration = Duration::from_millis(250);

/// A lease's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The TTL granted, in seconds.
    ttl: i64,
    /// When it was granted or last kept alive, in Unix milliseconds of the member that wrote it
    /// (what members that do not lead report; the leader uses its own clock).
    #[serde(rename = "refreshedAt")]
    refreshed_at: u64,
}

/// Why a lease call failed, as etcd says it.
#[derive(Debug)]
pub enum LeaseError {
    /// No such lease (etcd's `ErrLeaseNotFound`).
    NotFound,
    /// A lease with the requested ID exists.
    Exists,
    /// The TTL is over [`MAX_TTL`].
    TooLarge,
    /// The store refused.
    Store(StoreError),
}

impl From<StoreError> for LeaseError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

fn lease_key(id: i64) -> String {
    format!("/skiff/leases/{:016x}", id as u64)
}

fn holding_prefix(id: i64) -> String {
    format!("/skiff/lease-keys/{:016x}/", id as u64)
}

fn holder_key(key: &str) -> String {
    format!("/skiff/key-leases/{key}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn parse_id(key: &str) -> Option<i64> {
    let hex = key.strip_prefix("/skiff/leases/")?;
    u64::from_str_radix(hex, 16).ok().map(|id| id as i64)
}

/// When the leader last saw each lease refreshed: the record's mod revision, and the deadline.
type Deadlines = HashMap<i64, (u64, Instant)>;

/// The leases of one member: grants, keep-alives and revocations go through the store; the
/// leader's deadlines live here.
#[derive(Debug)]
pub struct Lessor {
    store: Store,
    deadlines: Mutex<Deadlines>,
}

impl Lessor {
    /// Starts the expiry loop (which acts only while this member leads).
    pub fn start(store: Store) -> Arc<Self> {
        let lessor = Arc::new(Self {
            store,
            deadlines: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&lessor);
        tokio::spawn(async move {
            let mut leading = false;
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                let Some(lessor) = weak.upgrade() else { return };
                let leads = lessor.store.is_leader().await;
                if !leads {
                    if leading {
                        lessor.deadlines.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    }
                    leading = false;
                    continue;
                }
                leading = true;
                for id in lessor.expired() {
                    match lessor.revoke(id).await {
                        Ok(()) | Err(LeaseError::NotFound) => {
                            tracing::info!(lease = format!("{:x}", id as u64), "lease expired: revoked");
                        }
                        Err(e) => {
                            tracing::warn!(lease = format!("{:x}", id as u64), error = ?e, "revoking an expired lease")
                        }
                    }
                }
            }
        });
        lessor
    }

    /// The leases whose TTL has run out since they were last refreshed, on this member's clock
    /// (it leads); deadlines of leases refreshed since the last look move on.
    fn expired(&self) -> Vec<i64> {
        let Ok(list) = self.store.list_local("/skiff/leases/") else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = HashMap::with_capacity(list.items.len());
        let mut expired = Vec::new();
        for kv in list.items {
            let (Some(id), Ok(record)) = (parse_id(&kv.key), serde_json::from_slice::<Record>(&kv.value))
            else {
                continue;
            };
            let ttl = Duration::from_secs(record.ttl.max(MIN_TTL) as u64);
            let entry = match deadlines.get(&id) {
                Some((seen, deadline)) if *seen == kv.mod_revision => (*seen, *deadline),
                _ => (kv.mod_revision, now + ttl),
            };
            if entry.1 <= now {
                expired.push(id);
            }
            live.insert(id, entry);
        }
        *deadlines = live;
        expired
    }

    /// Grants a lease of `ttl` seconds (at least [`MIN_TTL`]) with `id`, or a new ID when 0.
    pub async fn grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), LeaseError> {
        if ttl > MAX_TTL {
            return Err(LeaseError::TooLarge);
        }
        let ttl = ttl.max(MIN_TTL);
        let id = if id > 0 { id } else { new_id() };
        let record = Record {
            ttl,
            refreshed_at: now_ms(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        match self.store.create(&lease_key(id), value).await {
            Ok(_) => Ok((id, ttl)),
            Err(StoreError::AlreadyExists { .. }) => Err(LeaseError::Exists),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps lease `id` alive; returns its TTL.
    pub async fn keep_alive(&self, id: i64) -> Result<i64, LeaseError> {
        let key = lease_key(id);
        let current = self.store.get(&key).await?.ok_or(LeaseError::NotFound)?;
        let mut record: Record = serde_json::from_slice(&current.value).map_err(|_| LeaseError::NotFound)?;
        record.refreshed_at = now_ms();
        let value = serde_json::to_vec(&record).unwrap_or_default();
        match self.store.update(&key, value, None).await {
            Ok(_) => Ok(record.ttl),
            Err(StoreError::NotFound { .. }) => Err(LeaseError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// Revokes lease `id`, deleting the keys it holds, in one transaction.
    pub async fn revoke(&self, id: i64) -> Result<(), LeaseError> {
        let key = lease_key(id);
        if self.store.get(&key).await?.is_none() {
            return Err(LeaseError::NotFound);
        }
        let held = self.store.list_local(&holding_prefix(id))?;
        let mut ops = Vec::with_capacity(held.items.len() * 3 + 1);
        for h in &held.items {
            let target = &h.key[holding_prefix(id).len()..];
            ops.push(WriteOp::Delete {
                key: h.key.clone(),
                expected: None,
            });
            // The key goes if this lease still holds it (a later put may have taken it away).
            if self.holder_of(target)? == id {
                ops.push(WriteOp::Delete {
                    key: holder_key(target),
                    expected: None,
                });
                ops.push(WriteOp::Delete {
                    key: target.to_owned(),
                    expected: None,
                });
            }
        }
        ops.push(WriteOp::Delete { key, expected: None });
        self.store.write_raw(ops).await?;
        self.deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(())
    }

    /// Lease `id`: its remaining TTL, the TTL granted, and the keys it holds (stored names).
    pub async fn time_to_live(&self, id: i64) -> Result<(i64, i64, Vec<String>), LeaseError> {
        let kv = self
            .store
            .get(&lease_key(id))
            .await?
            .ok_or(LeaseError::NotFound)?;
        let record: Record = serde_json::from_slice(&kv.value).map_err(|_| LeaseError::NotFound)?;
        let remaining = match self.deadlines.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            Some((_, deadline)) => deadline.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => {
                let left = (record.refreshed_at + record.ttl as u64 * 1000).saturating_sub(now_ms());
                (left / 1000) as i64
            }
        };
        let prefix = holding_prefix(id);
        let keys = self
            .store
            .list_local(&prefix)?
            .items
            .into_iter()
            .map(|kv| kv.key[prefix.len()..].to_owned())
            .collect();
        Ok((remaining, record.ttl, keys))
    }

    /// Every lease's ID.
    pub async fn leases(&self) -> Result<Vec<i64>, LeaseError> {
        Ok(self
            .store
            .list("/skiff/leases/", None, 0)
            .await?
            .items
            .iter()
            .filter_map(|kv| parse_id(&kv.key))
            .collect())
    }

    /// The writes of a put of `key` (a stored name) with lease `lease` (0: none): the key, and
    /// the lease's hold on it, moved from another lease's. With a lease, the first write is
    /// guarded by the lease's existence: a [`WriteOp::Txn`] whose failure means no such lease.
    pub fn put(&self, key: String, value: Vec<u8>, lease: i64) -> Result<Vec<WriteOp>, StoreError> {
        let old_id = self.holder_of(&key)?;
        if old_id == lease {
            return Ok(vec![WriteOp::Put { key, value }]);
        }
        let mut ops = Vec::new();
        if old_id != 0 {
            ops.push(WriteOp::Delete {
                key: format!("{}{key}", holding_prefix(old_id)),
                expected: None,
            });
            if lease == 0 {
                ops.push(WriteOp::Delete {
                    key: holder_key(&key),
                    expected: None,
                });
            }
        }
        if lease == 0 {
            ops.insert(0, WriteOp::Put { key, value });
            return Ok(ops);
        }
        ops.push(WriteOp::Put {
            key: holder_key(&key),
            value: lease.to_string().into_bytes(),
        });
        ops.push(WriteOp::Put {
            key: format!("{}{key}", holding_prefix(lease)),
            value: Vec::new(),
        });
        ops.insert(0, WriteOp::Put { key, value });
        Ok(vec![WriteOp::Txn {
            compares: vec![Compare {
                key: lease_key(lease),
                target: CompareTarget::Version(0),
                op: CompareOp::Greater,
            }],
            success: ops,
            failure: Vec::new(),
        }])
    }

    /// The writes that drop a lease's hold on `key` (a stored name) when it is deleted.
    pub fn forget(&self, key: &str) -> Vec<WriteOp> {
        match self.holder(key) {
            0 => Vec::new(),
            id => vec![
                WriteOp::Delete {
                    key: holder_key(key),
                    expected: None,
                },
                WriteOp::Delete {
                    key: format!("{}{key}", holding_prefix(id)),
                    expected: None,
                },
            ],
        }
    }

    /// Whether lease `id` exists on this member.
    pub fn exists(&self, id: i64) -> bool {
        self.store.get_local(&lease_key(id)).ok().flatten().is_some()
    }

    /// The lease holding `key` (a stored name), 0 for none.
    pub fn holder(&self, key: &str) -> i64 {
        self.holder_of(key).unwrap_or_default()
    }

    fn holder_of(&self, key: &str) -> Result<i64, StoreError> {
        Ok(self
            .store
            .get_local(&holder_key(key))?
            .and_then(|kv| String::from_utf8_lossy(&kv.value).parse().ok())
            .unwrap_or_default())
    }
}

/// Whether the results of [`Lessor::put`]'s writes say the lease was missing.
pub fn lease_missing(results: &[WriteResult]) -> bool {
    matches!(results.first(), Some(WriteResult::Txn { succeeded: false, .. }))
}

/// A new lease ID: random and positive, as etcd's.
fn new_id() -> i64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    (i64::from_be_bytes(bytes) & i64::MAX).max(1)
}
