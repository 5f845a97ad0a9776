//! `NodeService` (`proto/proto/node.proto`): one gRPC stream per node agent carrying the pods bound
//! to the node and the Services, EndpointSlices and Nodes it programs. A stream starts with a
//! snapshot of each kind, or, when the agent's last revision is still in the store's event history,
//! resumes with only the changes after it. Served on the API server's port, behind the same TLS and
//! client-certificate authentication.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use skiff_proto::node::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::App;
use super::server::Identity;
use crate::objects::keys;
use crate::objects::meta::{from_kv, set_resource_version};
use crate::store::{Event, EventKind, StoreError, WatchStream};

/// Snapshot parts are cut at about this many bytes of objects (agents accept up to 16 MiB).
const PART_BYTES: usize = 1 << 20;

/// How often a quiet stream reports progress, so that a resume starts from a recent revision.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The most a message may be: the largest object (3 MiB request body) with room to spare.
pub const MAX_MESSAGE: usize = 16 << 20;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct NodeStreams {
    app: Arc<App>,
}

impl NodeStreams {
    /// The service over the API server's state.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

/// One kind on the stream and where its objects are stored.
#[derive(Debug, Clone)]
struct Watched {
    kind: pb::Kind,
    prefix: String,
}

fn resource(kind: pb::Kind) -> Option<(&'static str, &'static str, &'static str)> {
    match kind {
        pb::Kind::Pod => Some(("", "v1", "pods")),
        pb::Kind::Service => Some(("", "v1", "services")),
        pb::Kind::EndpointSlice => Some(("discovery.k8s.io", "v1", "endpointslices")),
        pb::Kind::Node => Some(("", "v1", "nodes")),
        pb::Kind::Unspecified => None,
    }
}

/// Whether `who` may watch `node`'s stream: the node itself, or a cluster admin.
fn authorize(who: Option<&Identity>, node: &str) -> Result<(), Status> {
    let who = who.ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let is_node =
        who.user.strip_prefix("system:node:") == Some(node) && who.groups.iter().any(|g| g == "system:nodes");
    if is_node || who.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "User \"{}\" cannot watch the stream of node \"{node}\"",
        who.user
    )))
}

#[tonic::async_trait]
impl pb::node_service_server::NodeService for NodeStreams {
    type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        authorize(
            request.extensions().get::<Identity>(),
            &request.get_ref().node_name,
        )?;
        let user_agent = request.metadata().get("user-agent").and_then(|v| v.to_str().ok());
        if let Some(refusal) = super::tunnel::skew_refusal(user_agent) {
            return Err(Status::failed_precondition(refusal));
        }
        let req = request.into_inner();
        if req.node_name.is_empty() {
            return Err(Status::invalid_argument("node_name is required"));
        }
        let mut kinds = Vec::new();
        let asked: Vec<i32> = if req.kinds.is_empty() {
            vec![
                pb::Kind::Pod as i32,
                pb::Kind::Service as i32,
                pb::Kind::EndpointSlice as i32,
                pb::Kind::Node as i32,
            ]
        } else {
            req.kinds.clone()
        };
        for k in asked {
            let kind = pb::Kind::try_from(k).unwrap_or(pb::Kind::Unspecified);
            let info = resource(kind)
                .and_then(|(g, v, p)| self.app.registry.lookup(g, v, p))
                .ok_or_else(|| Status::invalid_argument(format!("unknown kind {k}")))?;
            if !kinds.iter().any(|w: &Watched| w.kind == kind) {
                kinds.push(Watched {
                    kind,
                    prefix: info.prefix(),
                });
            }
        }
        // The store watch starts before anything is listed, so no change falls between the two.
        let (watch, resumed, start) = match req.resume_revision {
            0 => self.fresh_watch()?,
            from => match self.app.store.watch(keys::ROOT, from) {
                Ok(w) => (w, true, from),
                Err(StoreError::Compacted { .. }) => self.fresh_watch()?,
                Err(e) => return Err(Status::unavailable(e.to_string())),
            },
        };
        let (tx, rx) = mpsc::channel(64);
        let feed = Feed {
            app: self.app.clone(),
            node: req.node_name,
            kinds,
            tx,
        };
        tokio::spawn(async move {
            if let Err(status) = feed.run(watch, resumed, start).await {
                let _ = feed.tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl NodeStreams {
    fn fresh_watch(&self) -> Result<(WatchStream, bool, u64), Status> {
        let from = self.app.store.revision();
        let watch = self
            .app
            .store
            .watch(keys::ROOT, from)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok((watch, false, from))
    }
}

/// One stream's sender and what it carries.
struct Feed {
    app: Arc<App>,
    node: String,
    kinds: Vec<Watched>,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
}

/// The receiver went away: the stream is over.
struct Gone;

impl From<Gone> for Status {
    fn from(_: Gone) -> Self {
        Status::cancelled("the agent closed the stream")
    }
}

impl Feed {
    async fn send(&self, event: pb::watch_event::Event) -> Result<(), Gone> {
        self.tx
            .send(Ok(pb::WatchEvent { event: Some(event) }))
            .await
            .map_err(|_| Gone)
    }

    /// Whether an object of `kind` belongs on this node's stream.
    fn wanted(&self, kind: pb::Kind, obj: &Value) -> bool {
        kind != pb::Kind::Pod || obj["spec"]["nodeName"].as_str() == Some(self.node.as_str())
    }

    async fn run(&self, mut watch: WatchStream, resumed: bool, start: u64) -> Result<(), Status> {
        self.send(pb::watch_event::Event::Start(pb::Start {
            resumed,
            revision: start,
        }))
        .await?;
        // Changes at or below a kind's list revision are already in its snapshot.
        let mut listed_at: HashMap<pb::Kind, u64> = HashMap::new();
        if !resumed {
            for w in &self.kinds {
                listed_at.insert(w.kind, self.snapshot(w).await?);
            }
            self.send(pb::watch_event::Event::Progress(pb::Progress { revision: start }))
                .await?;
        }
        let mut reported = start;
        let timeout = self.app.node_stream_timeout;
        let ends = tokio::time::sleep(timeout + timeout.mul_f64(rand::random::<f64>()));
        tokio::pin!(ends);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = watch.next() => match next {
                    Ok(Some(event)) => {
                        if let Some(change) = self.change(&event, &listed_at) {
                            reported = event.revision;
                            self.send(pb::watch_event::Event::Change(change)).await?;
                        }
                    }
                    Ok(None) => return Err(Status::unavailable("the control plane is shutting down")),
                    Err(StoreError::Compacted { .. }) => {
                        return Err(Status::aborted("the stream fell behind the event history; resume from the last revision"));
                    }
                    Err(e) => return Err(Status::unavailable(e.to_string())),
                },
                _ = tick.tick() => {
                    let at = watch.revision();
                    if at > reported {
                        reported = at;
                        self.send(pb::watch_event::Event::Progress(pb::Progress { revision: at })).await?;
                    }
                }
                () = self.tx.closed() => return Ok(()),
                () = &mut ends => {
                    // The agent resumes from here.
                    let at = watch.revision();
                    if at > reported {
                        self.send(pb::watch_event::Event::Progress(pb::Progress { revision: at })).await?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Sends the full list of one kind in parts; returns the revision it was read at.
    async fn snapshot(&self, w: &Watched) -> Result<u64, Status> {
        let list = self
            .app
            .store
            .list(&w.prefix, None, 0)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut part = Vec::new();
        let mut bytes = 0;
        for kv in &list.items {
            let obj = from_kv(kv);
            if !self.wanted(w.kind, &obj) {
                continue;
            }
            let json = serde_json::to_vec(&obj).map_err(|e| Status::internal(e.to_string()))?;
            bytes += json.len();
            part.push(json);
            if bytes >= PART_BYTES {
                bytes = 0;
                self.send(pb::watch_event::Event::Snapshot(pb::Snapshot {
                    kind: w.kind as i32,
                    objects: std::mem::take(&mut part),
                    last: false,
                }))
                .await?;
            }
        }
        self.send(pb::watch_event::Event::Snapshot(pb::Snapshot {
            kind: w.kind as i32,
            objects: part,
            last: true,
        }))
        .await?;
        Ok(list.revision)
    }

    /// What a store event means for this stream, if anything: as a field-selected watch, a pod that
    /// starts matching is applied and one that stops matching is deleted.
    fn change(&self, event: &Event, listed_at: &HashMap<pb::Kind, u64>) -> Option<pb::Change> {
        let w = self.kinds.iter().find(|w| event.kv.key.starts_with(&w.prefix))?;
        if event.revision <= listed_at.get(&w.kind).copied().unwrap_or(0) {
            return None;
        }
        let (kind, obj) = match event.kind {
            EventKind::Put => {
                let new = from_kv(&event.kv);
                let was = event
                    .prev
                    .as_ref()
                    .is_some_and(|p| self.wanted(w.kind, &from_kv(p)));
                match (self.wanted(w.kind, &new), was) {
                    (true, _) => (pb::ChangeType::Applied, new),
                    (false, true) => (pb::ChangeType::Deleted, new),
                    (false, false) => return None,
                }
            }
            EventKind::Delete => {
                let mut old = from_kv(&event.kv);
                set_resource_version(&mut old, event.revision);
                if !self.wanted(w.kind, &old) {
                    return None;
                }
                (pb::ChangeType::Deleted, old)
            }
        };
        Some(pb::Change {
            kind: w.kind as i32,
            r#type: kind as i32,
            object: serde_json::to_vec(&obj).unwrap_or_default(),
            revision: event.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use skiff_proto::node::v1::node_service_server::NodeService;
    use tokio_stream::StreamExt;

    use super::*;
    use crate::objects::service::Cidr;
    use crate::store::{Store, StoreConfig};

    async fn app(dir: &std::path::Path) -> Arc<App> {
        let store = Store::open(StoreConfig::single(
            dir.to_path_buf(),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .await
        .unwrap();
        Arc::new(App::new(Arc::new(crate::objects::Objects::new(
            store,
            Cidr::parse("10.96.0.0/12").unwrap(),
        ))))
    }

    fn pod(name: &str, node: &str) -> (String, Vec<u8>) {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}});
        (
            keys::object(keys::PODS, Some("default"), name),
            obj.to_string().into_bytes(),
        )
    }

    fn service(name: &str) -> (String, Vec<u8>) {
        let obj = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}});
        (
            keys::object(keys::SERVICES, Some("default"), name),
            obj.to_string().into_bytes(),
        )
    }

    async fn put(app: &App, (key, value): (String, Vec<u8>)) -> u64 {
        app.store.create(&key, value).await.unwrap().mod_revision
    }

    async fn watch(
        app: &Arc<App>,
        node: &str,
        resume: u64,
    ) -> ReceiverStream<Result<pb::WatchEvent, Status>> {
        let mut req = Request::new(pb::WatchRequest {
            node_name: node.into(),
            resume_revision: resume,
            kinds: Vec::new(),
        });
        req.extensions_mut()
            .insert(id(&format!("system:node:{node}"), &["system:nodes"]));
        NodeStreams::new(app.clone())
            .watch(req)
            .await
            .unwrap()
            .into_inner()
    }

    async fn next(s: &mut ReceiverStream<Result<pb::WatchEvent, Status>>) -> pb::watch_event::Event {
        tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("a message within 10 s")
            .expect("the stream goes on")
            .expect("no error")
            .event
            .expect("an event")
    }

    fn names(objects: &[Vec<u8>]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                serde_json::from_slice::<Value>(o).unwrap()["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// The next change, skipping progress reports.
    async fn change(
        s: &mut ReceiverStream<Result<pb::WatchEvent, Status>>,
    ) -> (pb::Kind, pb::ChangeType, String, u64) {
        loop {
            if let pb::watch_event::Event::Change(c) = next(s).await {
                let name = names(std::slice::from_ref(&c.object)).remove(0);
                return (c.kind(), c.r#type(), name, c.revision);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_snapshots_then_sends_the_nodes_changes_and_resumes_after_a_revision() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        put(&app, pod("mine", "a")).await;
        put(&app, pod("theirs", "b")).await;
        put(&app, service("web")).await;
        let mut s = watch(&app, "a", 0).await;
        let pb::watch_event::Event::Start(start) = next(&mut s).await else {
            panic!("the stream starts with Start")
        };
        assert!(!start.resumed);
        let mut snapshots = HashMap::new();
        for _ in 0..4 {
            let pb::watch_event::Event::Snapshot(part) = next(&mut s).await else {
                panic!("a snapshot of each kind follows")
            };
            assert!(part.last, "small lists come in one part");
            snapshots.insert(part.kind(), names(&part.objects));
        }
        assert_eq!(
            snapshots[&pb::Kind::Pod],
            vec!["mine"],
            "only the node's own pods"
        );
        assert_eq!(snapshots[&pb::Kind::Service], vec!["web"]);
        assert!(snapshots[&pb::Kind::Node].is_empty());
        assert_eq!(
            next(&mut s).await,
            pb::watch_event::Event::Progress(pb::Progress {
                revision: start.revision
            })
        );

        // Another node's pod and unrelated keys are not sent; a pod bound to the node is, and so is
        // its deletion.
        put(&app, pod("elsewhere", "b")).await;
        app.store
            .create(&keys::object(keys::NODE_LEASES, None, "a"), b"{}".to_vec())
            .await
            .unwrap();
        let (key, unbound) = pod("late", "");
        let created = app.store.create(&key, unbound).await.unwrap();
        let (_, bound) = pod("late", "a");
        app.store
            .update(&key, bound, Some(created.mod_revision))
            .await
            .unwrap();
        let (kind, ty, name, _) = change(&mut s).await;
        assert_eq!(
            (kind, ty, name.as_str()),
            (pb::Kind::Pod, pb::ChangeType::Applied, "late")
        );
        app.store.delete(&key, None).await.unwrap();
        let (kind, ty, name, last) = change(&mut s).await;
        assert_eq!(
            (kind, ty, name.as_str()),
            (pb::Kind::Pod, pb::ChangeType::Deleted, "late")
        );
        drop(s);

        // What happened while the agent was away arrives after a resume, without a snapshot.
        put(&app, service("api")).await;
        let mut s = watch(&app, "a", last).await;
        let pb::watch_event::Event::Start(start) = next(&mut s).await else {
            panic!("the stream starts with Start")
        };
        assert!(start.resumed);
        let (kind, ty, name, _) = change(&mut s).await;
        assert_eq!(
            (kind, ty, name.as_str()),
            (pb::Kind::Service, pb::ChangeType::Applied, "api")
        );
        drop(s);

        // A revision the history no longer holds gets a fresh snapshot instead.
        app.store.compact(app.store.revision()).await.unwrap();
        let mut s = watch(&app, "a", last).await;
        let pb::watch_event::Event::Start(start) = next(&mut s).await else {
            panic!("the stream starts with Start")
        };
        assert!(!start.resumed);
        assert!(matches!(next(&mut s).await, pb::watch_event::Event::Snapshot(_)));
        app.store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_snapshots_come_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        let padding = "x".repeat(100_000);
        for i in 0..25 {
            let obj = json!({"metadata": {"name": format!("s{i:02}"), "namespace": "default",
                "annotations": {"padding": padding}}, "spec": {}});
            put(
                &app,
                (
                    keys::object(keys::SERVICES, Some("default"), &format!("s{i:02}")),
                    obj.to_string().into_bytes(),
                ),
            )
            .await;
        }
        let mut s = watch(&app, "a", 0).await;
        let mut services = Vec::new();
        let mut parts = 0;
        loop {
            match next(&mut s).await {
                pb::watch_event::Event::Snapshot(p) if p.kind() == pb::Kind::Service => {
                    parts += 1;
                    services.extend(names(&p.objects));
                    if p.last {
                        break;
                    }
                }
                _ => {}
            }
        }
        assert!(parts >= 3, "2.5 MB of services in {parts} parts");
        assert_eq!(services.len(), 25);
        app.store.shutdown().await;
    }

    fn id(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[test]
    fn only_the_node_itself_or_an_admin_may_watch_a_node() {
        assert!(authorize(Some(&id("system:node:a", &["system:nodes"])), "a").is_ok());
        assert!(authorize(Some(&id("admin", &["system:masters"])), "a").is_ok());
        let other = authorize(Some(&id("system:node:b", &["system:nodes"])), "a").unwrap_err();
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        let not_a_node = authorize(Some(&id("system:node:a", &[])), "a").unwrap_err();
        assert_eq!(not_a_node.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            authorize(None, "a").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
