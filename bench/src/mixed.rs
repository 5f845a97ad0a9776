//! The mixed API load of `peers-api`: gets, lists with a label selector and updates from 64
//! clients over 1,000 ConfigMaps of a namespace of their own, while 100 watchers follow that
//! namespace. Per kind of request: latency percentiles; overall: requests/s; for the watchers:
//! how many of the update events reached them and how long after its update was sent each one
//! arrived (every watcher sees every update).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::{HttpsClient, create, drive, https_client};

/// ConfigMaps in the namespace, and the label groups they fall in (a selector matches one).
const OBJECTS: usize = 1_000;
const GROUPS: usize = 10;
const WATCHERS: usize = 100;
const CLIENTS: usize = 64;
/// Requests in the load: 60% gets, 20% lists with a selector, 20% updates.
const REQUESTS: usize = 20_000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Get,
    List,
    Update,
}

fn kind(i: usize) -> Kind {
    match i % 10 {
        0..=5 => Kind::Get,
        6 | 7 => Kind::List,
        _ => Kind::Update,
    }
}

/// The request's answer, read to its end; fails unless it is `expect`.
async fn send(
    client: &HttpsClient,
    req: hyper::Request<http_body_util::Full<bytes::Bytes>>,
    expect: u16,
) -> anyhow::Result<()> {
    let what = format!("{} {}", req.method(), req.uri());
    let resp = client.request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    if status != expect {
        bail!("{what} returned {status}");
    }
    Ok(())
}

/// The `seq` an update wrote, from one watch event's line (no full parse: 100 watchers see
/// every update).
fn seq_of(line: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"seq\":\"";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits]).ok()?.parse().ok()
}

/// Follows `url` (a watch) until `updates` update events came; for each, the time from its
/// update's send (`sent`, ns since `base`) to its arrival, into `delays`.
async fn watcher(
    client: HttpsClient,
    url: String,
    base: Instant,
    sent: Arc<Vec<AtomicU64>>,
    updates: usize,
    delays: Arc<std::sync::Mutex<Vec<Duration>>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let resp = client
        .request(hyper::Request::get(&url).body(Default::default())?)
        .await?;
    if !resp.status().is_success() {
        bail!("the watch {url} returned {}", resp.status());
    }
    Ok(tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        let mut seen = 0;
        while seen < updates
            && let Some(Ok(frame)) = body.frame().await
        {
            let Ok(data) = frame.into_data() else { continue };
            let at = base.elapsed().as_nanos() as u64;
            buf.extend_from_slice(&data);
            let mut start = 0;
            while let Some(end) = buf[start..].iter().position(|b| *b == b'\n') {
                if let Some(seq) = seq_of(&buf[start..start + end])
                    && let Some(sent) = sent.get(seq).map(|s| s.load(Ordering::Relaxed))
                    && sent > 0
                    && let Ok(mut delays) = delays.lock()
                {
                    delays.push(Duration::from_nanos(at.saturating_sub(sent)));
                    seen += 1;
                }
                start += end + 1;
            }
            buf.drain(..start);
        }
    }))
}

fn percentiles(mut v: Vec<Duration>) -> Value {
    v.sort();
    let pct = |p: f64| {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        (v[i].as_secs_f64() * 1e6).round() / 1e3
    };
    json!({"samples": v.len(), "p50_ms": pct(0.5), "p99_ms": pct(0.99)})
}

/// The mixed load against the API server of `kubeconfig`, in namespace `namespace` (made here).
pub async fn mixed(kubeconfig: &std::path::Path, namespace: &str) -> anyhow::Result<Value> {
    let (client, server) = https_client(kubeconfig)?;
    create(
        &client,
        &format!("{server}/api/v1/namespaces"),
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
    )
    .await?;
    let base_url = Arc::new(format!("{server}/api/v1/namespaces/{namespace}/configmaps"));
    let clients: Arc<Vec<HttpsClient>> = Arc::new(
        (0..CLIENTS)
            .map(|_| https_client(kubeconfig).map(|c| c.0))
            .collect::<Result<_, _>>()?,
    );
    let (c, u) = (clients.clone(), base_url.clone());
    drive(OBJECTS, 32, move |w, i| {
        let (c, u) = (c.clone(), u.clone());
        async move {
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("m-{i:04}"), "labels": {"group": format!("g{}", i % GROUPS)}},
                "data": {"payload": "x".repeat(super::VALUE_SIZE), "seq": "0"}});
            create(&c[w], &u, &body).await
        }
    })
    .await?;
    // The watches start at the list's resourceVersion: update events only.
    let resp = client
        .request(hyper::Request::get(format!("{base_url}?limit=1")).body(Default::default())?)
        .await?;
    let list: Value = serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("the list has no resourceVersion")?
        .to_owned();
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..REQUESTS).map(|_| AtomicU64::new(0)).collect());
    let updates = (0..REQUESTS).filter(|i| kind(*i) == Kind::Update).count();
    let delays: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
    let mut watchers = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        // A connection of its own per watcher, as separate clients would have.
        let (c, _) = https_client(kubeconfig)?;
        watchers.push(
            watcher(
                c,
                format!("{base_url}?watch=1&resourceVersion={rv}"),
                base,
                sent.clone(),
                updates,
                delays.clone(),
            )
            .await?,
        );
    }

    let kinds: Arc<Vec<std::sync::Mutex<Vec<Duration>>>> =
        Arc::new((0..3).map(|_| Default::default()).collect());
    let (c, u, s, k) = (clients.clone(), base_url.clone(), sent.clone(), kinds.clone());
    let (elapsed, _) = drive(REQUESTS, CLIENTS, move |w, i| {
        let (c, u, s, k) = (c.clone(), u.clone(), s.clone(), k.clone());
        async move {
            let object = format!("m-{:04}", (i * 7919) % OBJECTS);
            let t = Instant::now();
            let slot = match kind(i) {
                Kind::Get => {
                    send(
                        &c[w],
                        hyper::Request::get(format!("{u}/{object}")).body(Default::default())?,
                        200,
                    )
                    .await?;
                    0
                }
                Kind::List => {
                    let url = format!("{u}?labelSelector=group%3Dg{}", i % GROUPS);
                    send(&c[w], hyper::Request::get(url).body(Default::default())?, 200).await?;
                    1
                }
                Kind::Update => {
                    s[i].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let patch = json!({"data": {"seq": i.to_string()}}).to_string();
                    let req = hyper::Request::patch(format!("{u}/{object}"))
                        .header("content-type", "application/merge-patch+json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(patch)))?;
                    send(&c[w], req, 200).await?;
                    2
                }
            };
            let d = t.elapsed();
            k[slot].lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(d);
            Ok(())
        }
    })
    .await?;
    let expected = updates * WATCHERS;
    // Every watcher sees every update; a watcher still short after a minute is given up on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut watchers = watchers.into_iter();
    for w in watchers.by_ref() {
        let abort = w.abort_handle();
        if tokio::time::timeout_at(deadline, w).await.is_err() {
            abort.abort();
            break;
        }
    }
    watchers.for_each(|w| w.abort());
    let delays = std::mem::take(&mut *delays.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let delivered = delays.len();
    let take = |slot: usize| -> anyhow::Result<Vec<Duration>> {
        Ok(std::mem::take(
            &mut *kinds[slot].lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        ))
    };
    Ok(json!({
        "clients": CLIENTS, "watchers": WATCHERS, "objects": OBJECTS, "requests": REQUESTS,
        "requests_per_sec": (REQUESTS as f64 / elapsed.as_secs_f64()).round(),
        "get": percentiles(take(0)?), "list": percentiles(take(1)?), "update": percentiles(take(2)?),
        "watch_events_expected": expected, "watch_events_delivered": delivered,
        "watch_delay": percentiles(delays),
    }))
}
