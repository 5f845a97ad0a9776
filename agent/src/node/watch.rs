//! A list+watch of one resource collection that keeps going: re-lists after an expired version or a
//! dropped connection and reports what it sees as [`Event`]s; [`Shared`] lets several consumers
//! use one list+watch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::client::{ApiClient, status_code};

/// What a reflector reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A fresh list: these are all the objects now (anything not in it is gone).
    Listed(Vec<Value>),
    /// An object was added or changed.
    Applied(Value),
    /// An object was deleted (its last state).
    Deleted(Value),
}

/// Lists and watches `path` (a collection, e.g. `/api/v1/services`) until `tx` is closed.
pub async fn reflect(api: ApiClient, path: String, tx: mpsc::Sender<Event>) {
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let list = match api.json(hyper::Method::GET, &path, None).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%path, error = %e, "list failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if tx.send(Event::Listed(items)).await.is_err() {
            return;
        }
        let mut rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string();
        loop {
            let watch = format!(
                "{path}{sep}watch=1&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=300"
            );
            match watch_once(&api, &watch, &mut rv, &tx).await {
                Ok(Ended::Timeout) => continue,
                Ok(Ended::Closed) => return,
                Ok(Ended::Expired) => break,
                Err(e) if status_code(&e) == Some(410) => break,
                Err(e) => {
                    tracing::debug!(%path, error = %e, "watch ended");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

/// One list+watch shared by several consumers (the service proxy and DNS watch the same
/// collections): each subscriber first gets a [`Event::Listed`] of everything known so far, then
/// every event after it. The list+watch starts with the first consumer.
#[derive(Clone)]
pub struct Shared {
    path: String,
    api: ApiClient,
    started: Arc<std::sync::Once>,
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
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
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
    /// A shared list+watch of `path`, started by the first [`Shared::subscribe`] or
    /// [`Shared::read`].
    pub fn new(api: ApiClient, path: &str) -> Self {
        Self {
            path: path.to_owned(),
            api,
            started: Arc::new(std::sync::Once::new()),
            state: Arc::default(),
        }
    }

    fn start(&self) {
        self.started.call_once(|| self.spawn());
    }

    fn spawn(&self) {
        let (tx, mut rx) = mpsc::channel(1024);
        tokio::spawn(reflect(self.api.clone(), self.path.clone(), tx));
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                // The cache and the subscriber list change together, so that a new subscriber's
                // snapshot and the events it is sent afterwards neither miss nor repeat one.
                let subscribers = {
                    let mut st = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
        });
    }

    /// Runs `f` on the objects known now, by `namespace/name` (empty before the first list).
    pub fn read<R>(&self, f: impl FnOnce(&BTreeMap<String, Value>) -> R) -> R {
        self.start();
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &st.objects {
            Some(objects) => f(objects),
            None => f(&BTreeMap::new()),
        }
    }

    /// A receiver of the collection's events, starting with what is known now.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        self.start();
        let (tx, rx) = mpsc::channel(1024);
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(objects) = &st.objects {
            // A fresh channel has room for this first message.
            let _ = tx.try_send(Event::Listed(objects.values().cloned().collect()));
        }
        st.subscribers.push(tx);
        rx
    }
}

enum Ended {
    /// The server ended the watch (its timeout): resume from the last version.
    Timeout,
    /// The version is too old: list again.
    Expired,
    /// Nobody listens any more.
    Closed,
}

async fn watch_once(
    api: &ApiClient,
    path: &str,
    rv: &mut String,
    tx: &mpsc::Sender<Event>,
) -> anyhow::Result<Ended> {
    let mut frames = api.stream(path).await?.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = frames.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Ok(mut event) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let object = event["object"].take();
            if let Some(v) = object["metadata"]["resourceVersion"].as_str() {
                *rv = v.to_string();
            }
            let event = match event["type"].as_str().unwrap_or_default() {
                "ADDED" | "MODIFIED" => Event::Applied(object),
                "DELETED" => Event::Deleted(object),
                "ERROR" => return Ok(Ended::Expired),
                _ => continue,
            };
            if tx.send(event).await.is_err() {
                return Ok(Ended::Closed);
            }
        }
    }
    Ok(Ended::Timeout)
}
