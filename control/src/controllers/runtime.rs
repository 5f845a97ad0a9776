//! The controller runtime: shared caches kept current from the store's watch (one per resource,
//! shared by every controller that reads it), and work queues with de-duplication and
//! rate-limited retries, as client-go's informers and work queues.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, broadcast};

use super::error::Error;
use crate::objects::Objects;
use crate::objects::meta::from_kv;
use crate::store::EventKind;
use tracing::Instrument;

/// One change seen by a cache.
#[derive(Debug, Clone)]
pub struct Change {
    /// The store key.
    pub key: String,
    /// The object before the change.
    pub old: Option<Arc<Value>>,
    /// The object after the change (None when deleted).
    pub new: Option<Arc<Value>>,
}

/// A read-only, eventually consistent view of every object under one key prefix.
#[derive(Debug)]
pub struct Cache {
    prefix: String,
    objects: Arc<RwLock<BTreeMap<String, Arc<Value>>>>,
    /// The store revision the cache reflects.
    revision: RwLock<u64>,
    changes: broadcast::Sender<Change>,
    updated: Notify,
}

impl Cache {
    /// Starts a cache of the objects under `prefix`.
    pub fn start(app: Arc<Objects>, prefix: &str) -> Arc<Self> {
        let (changes, _) = broadcast::channel(backlog(prefix));
        let cache = Arc::new(Self {
            prefix: prefix.to_owned(),
            objects: Arc::default(),
            revision: RwLock::new(0),
            changes,
            updated: Notify::new(),
        });
        tokio::spawn(cache.clone().run(app));
        cache
    }

    async fn run(self: Arc<Self>, app: Arc<Objects>) {
        loop {
            let list = match app.store.list(&self.prefix, None, 0).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(prefix = %self.prefix, error = %e, "cache list failed");
                    tokio::time::sleep(super::RESYNC).await;
                    continue;
                }
            };
            let fresh: BTreeMap<String, Arc<Value>> = list
                .items
                .iter()
                .map(|kv| (kv.key.clone(), Arc::new(from_kv(kv))))
                .collect();
            let previous = std::mem::replace(
                &mut *self.objects.write().unwrap_or_else(|p| p.into_inner()),
                fresh.clone(),
            );
            // Tell subscribers about everything that differs from what they saw before a relist.
            for (key, obj) in &fresh {
                if previous.get(key) != Some(obj) {
                    let _ = self.changes.send(Change {
                        key: key.clone(),
                        old: previous.get(key).cloned(),
                        new: Some(obj.clone()),
                    });
                }
            }
            for (key, obj) in previous.iter().filter(|(k, _)| !fresh.contains_key(*k)) {
                let _ = self.changes.send(Change {
                    key: key.clone(),
                    old: Some(obj.clone()),
                    new: None,
                });
            }
            self.set_revision(list.revision);
            // Watch everything so the cache's revision follows the store's even when other
            // resources change; only this prefix's events change the cache.
            let Ok(mut watch) = app.store.watch("/", list.revision) else {
                continue;
            };
            loop {
                match watch.next().await {
                    Ok(Some(event)) if !event.kv.key.starts_with(&self.prefix) => {
                        self.set_revision(event.revision)
                    }
                    Ok(Some(event)) => {
                        let key = event.kv.key.clone();
                        let (old, new) = {
                            let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
                            match event.kind {
                                EventKind::Put => {
                                    let new = Arc::new(from_kv(&event.kv));
                                    (objects.insert(key.clone(), new.clone()), Some(new))
                                }
                                EventKind::Delete => (objects.remove(&key), None),
                            }
                        };
                        self.set_revision(event.revision);
                        let _ = self.changes.send(Change { key, old, new });
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
        }
    }

    fn set_revision(&self, rev: u64) {
        *self.revision.write().unwrap_or_else(|p| p.into_inner()) = rev;
        self.updated.notify_waiters();
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> u64 {
        *self.revision.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (bounded) until the cache reflects revision `rev`, e.g. a controller's own writes.
    pub async fn wait_for(&self, rev: u64) {
        for _ in 0..100 {
            let notified = self.updated.notified();
            if self.revision() >= rev {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    /// One object.
    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Every object whose key starts with `key_prefix` (a cache of a whole group holds several
    /// resources).
    pub fn under(&self, key_prefix: &str) -> Vec<Arc<Value>> {
        let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
        objects
            .range::<str, _>((Bound::Included(key_prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(key_prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every object in namespace `ns` (or all of them).
    pub fn list(&self, ns: Option<&str>) -> Vec<Arc<Value>> {
        let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
        match ns {
            None => objects.values().cloned().collect(),
            Some(ns) => {
                let start = format!("{}{ns}/", self.prefix);
                objects
                    .range::<String, _>((Bound::Included(&start), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(&start))
                    .map(|(_, v)| v.clone())
                    .collect()
            }
        }
    }

    /// The object at `key` with its namespace and name, unless it is gone or being deleted
    /// (a controller has nothing to do for it then).
    pub fn live(&self, key: &str) -> Option<(Arc<Value>, String, String)> {
        let obj = self
            .get(key)
            .filter(|o| !o["metadata"]["deletionTimestamp"].is_string())?;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        Some((obj, ns, name))
    }

    /// Objects in `ns` whose controller is the `kind` named `name`.
    pub fn owned_by(&self, ns: &str, kind: &str, name: &str) -> Vec<Arc<Value>> {
        self.list(Some(ns))
            .into_iter()
            .filter(|o| crate::objects::meta::controller_of(o, kind) == Some(name))
            .collect()
    }

    /// Like [`owned_by`](Self::owned_by), only pods that still count (not terminating or finished).
    pub fn active_owned_by(&self, ns: &str, kind: &str, name: &str) -> Vec<Arc<Value>> {
        self.owned_by(ns, kind, name)
            .into_iter()
            .filter(|p| crate::objects::meta::active(p))
            .collect()
    }

    /// Changes from now on, as the channel has them: a receiver more than [`backlog`] changes
    /// behind is told it lagged, and deals with that itself.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Changes from now on, none lost: see [`Changes`].
    pub fn changes(&self) -> Changes {
        Changes {
            rx: self.changes.subscribe(),
            objects: self.objects.clone(),
            relisted: VecDeque::new(),
        }
    }
}

/// How many changes a cache holds for subscribers that have not read them yet. Every slot is
/// allocated when the cache starts (about 64 bytes each), so only pods and nodes, which change
/// by the thousand in bursts (a scheduling backlog, nodes registering), keep many; a subscriber
/// that falls further behind is made whole by [`Changes`] (or relists, as the scheduler does).
fn backlog(prefix: &str) -> usize {
    if prefix == crate::objects::keys::PODS || prefix == crate::objects::keys::NODES {
        16_384
    } else {
        1_024
    }
}

/// A subscriber's changes of one cache. One that falls more than the cache's backlog behind
/// gets every object the cache holds as a change (an informer's relist), then the changes that
/// follow, instead of losing those it missed. Deletions missed that way are not replayed.
#[derive(Debug)]
pub struct Changes {
    rx: broadcast::Receiver<Change>,
    objects: Arc<RwLock<BTreeMap<String, Arc<Value>>>>,
    relisted: VecDeque<Change>,
}

impl Changes {
    /// The next change; `None` once the cache has stopped.
    pub async fn recv(&mut self) -> Option<Change> {
        loop {
            if let Some(change) = self.relisted.pop_front() {
                return Some(change);
            }
            match self.rx.recv().await {
                Ok(change) => return Some(change),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
                    self.relisted = objects
                        .iter()
                        .map(|(key, obj)| Change {
                            key: key.clone(),
                            old: None,
                            new: Some(obj.clone()),
                        })
                        .collect();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The caches controllers share, one per resource prefix.
#[derive(Debug, Default)]
pub struct Caches {
    caches: Mutex<HashMap<String, Arc<Cache>>>,
}

impl Caches {
    /// The cache of objects under `prefix`, started on first use.
    pub fn get(&self, app: &Arc<Objects>, prefix: &str) -> Arc<Cache> {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches
            .entry(prefix.to_owned())
            .or_insert_with(|| Cache::start(app.clone(), prefix))
            .clone()
    }
}

#[derive(Debug, Default)]
struct QueueState {
    /// The controller's name once its workers run (what the `workqueue_*` metrics are named by).
    name: Option<&'static str>,
    /// When each queued key was added.
    added: HashMap<String, std::time::Instant>,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    /// Added while being processed: queued again when done.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
}

/// A work queue of keys: each key is queued at most once and processed by one worker at a time.
#[derive(Debug, Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` (no-op if it is already queued).
    pub fn add(&self, key: &str) {
        let mut s = self.lock();
        if s.processing.contains(key) {
            s.dirty.insert(key.to_owned());
            return;
        }
        if s.queued.insert(key.to_owned()) {
            s.queue.push_back(key.to_owned());
            if let Some(name) = s.name {
                s.added.insert(key.to_owned(), std::time::Instant::now());
                crate::metrics::QUEUE_ADDS.inc(&[name]);
                crate::metrics::QUEUE_DEPTH.add(&[name], 1.0);
            }
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Names the queue in the `workqueue_*` metrics.
    pub fn name(&self, name: &'static str) {
        let mut s = self.lock();
        if s.name.is_none() {
            crate::metrics::QUEUE_DEPTH.set(&[name], s.queue.len() as f64);
            crate::metrics::QUEUE_ADDS.add(&[name], 0.0);
            s.name = Some(name);
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: &str, delay: Duration) {
        let (queue, key) = (self.clone(), key.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(&key);
        });
    }

    /// Queues `key` again after an exponential back-off (5 ms doubling, at most 60 s).
    pub fn retry(self: &Arc<Self>, key: &str) {
        let n = {
            let mut s = self.lock();
            let n = s.failures.entry(key.to_owned()).or_default();
            *n += 1;
            *n
        };
        let delay = Duration::from_millis(5u64.saturating_mul(1 << n.min(14))).min(Duration::from_secs(60));
        if let Some(name) = self.lock().name {
            crate::metrics::QUEUE_RETRIES.inc(&[name]);
        }
        self.add_after(key, delay);
    }

    /// Clears `key`'s failure count.
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// The next key to process.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    if let Some(name) = s.name {
                        crate::metrics::QUEUE_DEPTH.add(&[name], -1.0);
                        if let Some(at) = s.added.remove(&key) {
                            crate::metrics::QUEUE_WAIT.observe(&[name], at.elapsed().as_secs_f64());
                        }
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed.
    pub fn done(&self, key: &str) {
        let again = {
            let mut s = self.lock();
            s.processing.remove(key);
            s.dirty.remove(key)
        };
        if again {
            self.add(key);
        }
    }
}

/// Queues the key of every object of `cache` that changes.
pub fn queue_changes(queue: &Arc<Queue>, cache: &Cache) {
    let (queue, mut changes) = (queue.clone(), cache.changes());
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            queue.add(&change.key);
        }
    });
}

/// Queues the controller of every changed object of `cache`: the owner of kind `kind` named in
/// its controller reference, stored under `owner_prefix` in the same namespace.
pub fn queue_owners(queue: &Arc<Queue>, cache: &Cache, kind: &'static str, owner_prefix: &'static str) {
    let (queue, mut changes) = (queue.clone(), cache.changes());
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            for obj in [&change.old, &change.new].into_iter().flatten() {
                if let Some(owner) = crate::objects::meta::controller_of(obj, kind) {
                    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
                    queue.add(&format!("{owner_prefix}{ns}/{owner}"));
                }
            }
        }
    });
}

/// What a reconcile asks for next.
#[derive(Debug)]
pub enum Next {
    /// Nothing until something changes.
    Done,
    /// Look again after this long.
    After(Duration),
}

/// Runs `sync` whenever `cache` changes, and at least every 5 s, while this member leads (for
/// controllers that recompute one result from a whole collection).
pub fn sync_on_changes<F, Fut>(app: Arc<Objects>, cache: &Cache, sync: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut changes = cache.subscribe();
    tokio::spawn(async move {
        loop {
            if app.store.is_leader().await {
                app.store.as_leader(sync()).await;
            }
            tokio::select! {
                r = changes.recv() => if let Err(broadcast::error::RecvError::Closed) = r { return },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            // One sync covers every change so far: a burst (5,000 nodes registering) costs one
            // pass, not one per change.
            loop {
                match changes.try_recv() {
                    Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(broadcast::error::TryRecvError::Closed) => return,
                    Err(broadcast::error::TryRecvError::Empty) => break,
                }
            }
        }
    });
}

/// Runs `workers` workers that reconcile keys from `queue`, only while this member leads.
pub fn run_workers<F, Fut>(
    app: Arc<Objects>,
    name: &'static str,
    queue: Arc<Queue>,
    workers: usize,
    reconcile: F,
) where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Next, Error>> + Send,
{
    let reconcile = Arc::new(reconcile);
    queue.name(name);
    for _ in 0..workers {
        let (app, queue, reconcile) = (app.clone(), queue.clone(), reconcile.clone());
        tokio::spawn(async move {
            loop {
                let key = queue.next().await;
                if !app.store.is_leader().await {
                    queue.done(&key);
                    queue.add_after(&key, super::RESYNC);
                    continue;
                }
                let span = tracing::debug_span!("reconcile", controller = name, key = %key);
                let started = std::time::Instant::now();
                let outcome = app.store.as_leader(reconcile(key.clone()).instrument(span)).await;
                crate::metrics::QUEUE_WORK.observe(&[name], started.elapsed().as_secs_f64());
                match outcome {
                    Ok(Next::Done) => queue.forget(&key),
                    Ok(Next::After(d)) => {
                        queue.forget(&key);
                        queue.add_after(&key, d);
                    }
                    Err(e) => {
                        tracing::debug!(controller = name, %key, error = %e, "reconcile failed; retrying");
                        queue.retry(&key);
                    }
                }
                queue.done(&key);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_every_object_then_what_follows() {
        let (tx, _) = broadcast::channel(2);
        let cache = Cache {
            prefix: "/registry/things/".into(),
            objects: Arc::default(),
            revision: RwLock::new(0),
            changes: tx,
            updated: Notify::new(),
        };
        let mut changes = cache.changes();
        let change = |key: &str| {
            let obj = Arc::new(serde_json::json!({"metadata": {"name": key}}));
            cache.objects.write().unwrap().insert(key.to_owned(), obj.clone());
            cache
                .changes
                .send(Change {
                    key: key.to_owned(),
                    old: None,
                    new: Some(obj),
                })
                .unwrap();
        };
        for key in ["a", "b", "c", "d"] {
            change(key);
        }
        // Two of the four changes were dropped: the subscriber gets all four objects instead, then
        // the two changes still held, then new ones.
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(changes.recv().await.unwrap().key);
        }
        assert_eq!(seen, ["a", "b", "c", "d", "c", "d"]);
        change("e");
        assert_eq!(changes.recv().await.unwrap().key, "e");
        drop(cache);
        assert!(changes.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_key_is_queued_once_and_requeued_if_added_while_processing() {
        let q = Arc::new(Queue::default());
        q.add("a");
        q.add("a");
        q.add("b");
        let first = q.next().await;
        assert_eq!(first, "a");
        q.add("a");
        assert_eq!(q.next().await, "b");
        q.done("b");
        q.done("a");
        assert_eq!(q.next().await, "a");
    }
}
