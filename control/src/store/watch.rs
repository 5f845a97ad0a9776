//! Watch fan-out: a bounded, in-memory history of applied events plus a broadcast of new ones.
//!
//! A watcher starting at revision `R` first gets every retained event with a revision above `R`,
//! then live events. If `R` is older than the retained history, the watch fails with
//! [`StoreError::Compacted`], which the API server turns into `410 Gone`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::encryption::Encryption;
use super::{KeyValue, StoreError};

/// Whether a key was written or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted.
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new value (put) or the last value before deletion (delete).
    pub kv: KeyValue,
    /// The value before this change, if the key existed.
    pub prev: Option<KeyValue>,
    /// The revision of this change.
    pub revision: u64,
}

struct Inner {
    history: VecDeque<Arc<Event>>,
    /// Every event with a revision above `oldest` is retained.
    oldest: u64,
    current: u64,
}

/// Shared by the state machine (publisher) and the store handle (subscribers).
pub(crate) struct WatchHub {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Event>>,
    capacity: usize,
    /// Events carry values as written: opened once here, not by every watcher.
    encryption: Arc<Encryption>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl WatchHub {
    pub(crate) fn new(revision: u64, capacity: usize, encryption: Arc<Encryption>) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1024));
        Self {
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                oldest: revision,
                current: revision,
            }),
            tx,
            capacity,
            encryption,
        }
    }

    /// `kv` with its value as written; a value that cannot be opened is logged and left empty
    /// (its reader reports it undecodable).
    fn opened(&self, mut kv: KeyValue) -> KeyValue {
        match self.encryption.open(&kv.key, std::mem::take(&mut kv.value)) {
            Ok((value, _)) => kv.value = value,
            Err(e) => tracing::error!(error = %e, "watch event"),
        }
        kv
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watch streams open on the store.
    pub(crate) fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The latest revision published.
    pub(crate) fn revision(&self) -> u64 {
        self.lock().current
    }

    /// Records events applied up to `revision` and wakes watchers.
    pub(crate) fn publish(&self, events: Vec<Event>, revision: u64) {
        let mut inner = self.lock();
        for mut event in events {
            if !self.encryption.is_empty() {
                event.kv = self.opened(event.kv);
                event.prev = event.prev.map(|kv| self.opened(kv));
            }
            let event = Arc::new(event);
            inner.history.push_back(event.clone());
            // Nobody listening is fine; the history still serves later watchers.
            let _ = self.tx.send(event);
        }
        while inner.history.len() > self.capacity {
            if let Some(dropped) = inner.history.pop_front() {
                inner.oldest = dropped.revision;
            }
        }
        inner.current = inner.current.max(revision);
    }

    /// Fills the history with `events` (oldest first), complete after `oldest`: the history a
    /// restarted store kept on disk.
    pub(crate) fn seed(&self, events: Vec<Event>, oldest: u64) {
        let mut inner = self.lock();
        inner.history = events
            .into_iter()
            .map(|mut event| {
                if !self.encryption.is_empty() {
                    event.kv = self.opened(event.kv);
                    event.prev = event.prev.map(|kv| self.opened(kv));
                }
                Arc::new(event)
            })
            .collect();
        inner.oldest = oldest.min(inner.current);
    }

    /// Forgets events at or below `revision`.
    pub(crate) fn compact(&self, revision: u64) {
        let mut inner = self.lock();
        while inner.history.front().is_some_and(|e| e.revision <= revision) {
            inner.history.pop_front();
        }
        inner.oldest = inner.oldest.max(revision.min(inner.current));
    }

    /// Drops all history, e.g. after a snapshot replaced the state.
    pub(crate) fn reset(&self, revision: u64) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.oldest = revision;
        inner.current = revision;
    }

    /// The oldest revision a watch may start from.
    pub(crate) fn oldest(&self) -> u64 {
        self.lock().oldest
    }

    /// Starts a watch of keys under `prefix` for changes after `from`.
    pub(crate) fn subscribe(&self, prefix: &str, from: u64) -> Result<WatchStream, StoreError> {
        let inner = self.lock();
        if from < inner.oldest {
            return Err(StoreError::Compacted {
                requested: from,
                oldest: inner.oldest,
            });
        }
        let backlog = inner
            .history
            .iter()
            .filter(|e| e.revision > from && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        // Subscribing under the lock means no event falls between the backlog and the live feed.
        let rx = self.tx.subscribe();
        Ok(WatchStream {
            prefix: prefix.to_owned(),
            after: from,
            backlog,
            rx,
        })
    }
}

/// Events for one watcher, in revision order.
#[derive(Debug)]
pub struct WatchStream {
    prefix: String,
    after: u64,
    backlog: VecDeque<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
}

impl WatchStream {
    /// The revision this watcher has seen everything up to (of its prefix).
    pub fn revision(&self) -> u64 {
        self.after
    }

    /// The next event, or an error when the watcher fell too far behind (it must re-list).
    /// `Ok(None)` means the store shut down.
    pub async fn next(&mut self) -> Result<Option<Arc<Event>>, StoreError> {
        if let Some(event) = self.backlog.pop_front() {
            self.after = event.revision;
            return Ok(Some(event));
        }
        loop {
            match self.rx.recv().await {
                Ok(event) if event.revision > self.after && event.kv.key.starts_with(&self.prefix) => {
                    self.after = event.revision;
                    return Ok(Some(event));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Err(StoreError::Compacted {
                        requested: self.after,
                        oldest: self.after + 1,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, revision: u64) -> Event {
        let kv = KeyValue {
            key: key.into(),
            value: vec![],
            create_revision: revision,
            mod_revision: revision,
        };
        Event {
            kind: EventKind::Put,
            kv,
            prev: None,
            revision,
        }
    }

    #[tokio::test]
    async fn backlog_then_live_without_gaps_or_duplicates() {
        let hub = WatchHub::new(0, 100, Arc::default());
        hub.publish(vec![put("/a/1", 1), put("/b/1", 2), put("/a/2", 3)], 3);
        let mut w = hub.subscribe("/a/", 1).unwrap();
        hub.publish(vec![put("/a/3", 4)], 4);
        let revs: Vec<u64> = [w.next().await, w.next().await]
            .into_iter()
            .map(|e| e.unwrap().unwrap().revision)
            .collect();
        assert_eq!(revs, vec![3, 4]);
    }

    #[test]
    fn too_old_revision_is_compacted() {
        let hub = WatchHub::new(0, 2, Arc::default());
        hub.publish(vec![put("/a", 1), put("/a", 2), put("/a", 3)], 3);
        assert!(matches!(
            hub.subscribe("/", 0),
            Err(StoreError::Compacted { oldest: 1, .. })
        ));
        assert!(hub.subscribe("/", 1).is_ok());
        hub.compact(2);
        assert!(hub.subscribe("/", 1).is_err());
    }
}
