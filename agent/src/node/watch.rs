//! What the node's stream from the control plane reports about one kind of object, as [`Event`]s,
//! and [`Shared`], which keeps the objects of one kind and fans their events out to several
//! consumers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

/// What the stream reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A fresh list: these are all the objects now (anything not in it is gone).
    Listed(Vec<Value>),
    /// An object was added or changed.
    Applied(Value),
    /// An object was deleted (its last state).
    Deleted(Value),
}

/// The objects of one kind, shared by several consumers (the service proxy and DNS use the same
/// Services): each subscriber first gets a [`Event::Listed`] of everything known so far, then every
/// event after it.
#[derive(Clone)]
pub struct Shared {
    kind: &'static str,
    state: Arc<Mutex<SharedState>>,
}

#[derive(Default)]
struct SharedState {
    /// `namespace/name` → object, once the first list is in.
    objects: Option<BTreeMap<String, Value>>,
    subscribers: Vec<mpsc::Sender<Event>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// `namespace/name` of a Service, or of the Service an EndpointSlice belongs to.
pub fn service_of_slice(slice: &Value) -> Option<String> {
    let ns = slice["metadata"]["namespace"].as_str()?;
    let name = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str()?;
    Some(format!("{ns}/{name}"))
}

/// `namespace/name` of an object.
pub fn key_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

impl Shared {
    /// No objects of `kind` known yet.
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `ev` to the objects and passes it to every subscriber.
    pub async fn publish(&self, ev: Event) {
        // The cache and the subscriber list change together, so that a new subscriber's snapshot
        // and the events it is sent afterwards neither miss nor repeat one.
        let subscribers = {
            let mut st = self.lock();
            match &ev {
                Event::Listed(items) => {
                    st.objects = Some(items.iter().map(|o| (key_of(o), o.clone())).collect());
                }
                Event::Applied(o) => {
                    st.objects.get_or_insert_default().insert(key_of(o), o.clone());
                }
                Event::Deleted(o) => {
                    st.objects.get_or_insert_default().remove(&key_of(o));
                }
            }
            st.subscribers.retain(|s| !s.is_closed());
            st.subscribers.clone()
        };
        for s in subscribers {
            let _ = s.send(ev.clone()).await;
        }
    }

    /// Runs `f` on the objects known now, by `namespace/name` (empty before the first list).
    pub fn read<R>(&self, f: impl FnOnce(&BTreeMap<String, Value>) -> R) -> R {
        let st = self.lock();
        match &st.objects {
            Some(objects) => f(objects),
            None => f(&BTreeMap::new()),
        }
    }

    /// A receiver of the collection's events, starting with what is known now.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(1024);
        let mut st = self.lock();
        if let Some(objects) = &st.objects {
            // A fresh channel has room for this first message.
            let _ = tx.try_send(Event::Listed(objects.values().cloned().collect()));
        }
        st.subscribers.push(tx);
        rx
    }
}
