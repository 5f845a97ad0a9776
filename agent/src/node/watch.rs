//! A list+watch of one resource collection that keeps going: re-lists after an expired version or a
//! dropped connection and reports what it sees as [`Event`]s.

use std::time::Duration;

use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::client::{ApiClient, status_code};

/// What a reflector reports.
#[derive(Debug)]
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
