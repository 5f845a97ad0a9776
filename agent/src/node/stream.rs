//! The node's one stream from the control plane (`NodeService.Watch`, `proto/proto/node.proto`):
//! the pods bound to this node and the Services, EndpointSlices and Nodes it programs, fanned out
//! to the agent's parts through [`Feeds`]. After a disconnect the stream resumes after the last
//! revision seen; the control plane answers with a fresh snapshot when that revision has left its
//! event history.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use skiff_proto::node::v1 as pb;
use skiff_proto::node::v1::node_service_client::NodeServiceClient;

use super::client::ApiClient;
use super::watch::{Event, Shared};

/// The largest message accepted from the control plane.
const MAX_MESSAGE: usize = 16 << 20;

/// The objects the stream brings, one [`Shared`] per kind.
#[derive(Debug, Clone)]
pub struct Feeds {
    /// Pods bound to this node.
    pub pods: Shared,
    /// All Services.
    pub services: Shared,
    /// All EndpointSlices.
    pub slices: Shared,
    /// All Nodes.
    pub nodes: Shared,
}

impl Default for Feeds {
    fn default() -> Self {
        Self {
            pods: Shared::new("pods"),
            services: Shared::new("services"),
            slices: Shared::new("endpointslices"),
            nodes: Shared::new("nodes"),
        }
    }
}

impl Feeds {
    fn of(&self, kind: i32) -> Option<&Shared> {
        match pb::Kind::try_from(kind).ok()? {
            pb::Kind::Pod => Some(&self.pods),
            pb::Kind::Service => Some(&self.services),
            pb::Kind::EndpointSlice => Some(&self.slices),
            pb::Kind::Node => Some(&self.nodes),
            pb::Kind::Unspecified => None,
        }
    }
}

/// Keeps the stream of `node` flowing into `feeds` until the process ends.
/// A stream that fails moves to the next API server the node knows (an HA control plane's other
/// members) and resumes there from its revision: every member has the same revisions.
pub async fn run(api: ApiClient, node: String, feeds: Feeds) {
    let connect = |api: &ApiClient| match api.grpc_channel() {
        Ok(c) => Some((
            api.server(),
            NodeServiceClient::new(c).max_decoding_message_size(MAX_MESSAGE),
        )),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot set up the node stream");
            None
        }
    };
    let Some((mut server, mut client)) = connect(&api) else {
        return;
    };
    let mut follower = Follower {
        node,
        feeds,
        revision: 0,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let before = follower.revision;
        // A stream that ended normally or got somewhere reconnects soon; one that keeps failing
        // backs off.
        backoff = match follower.follow(&mut client).await {
            Ok(()) => {
                tracing::debug!(
                    revision = follower.revision,
                    "the control plane ended the node stream"
                );
                Duration::from_millis(200)
            }
            Err(e) => {
                tracing::warn!(revision = follower.revision, error = %format!("{e:#}"), "node stream interrupted");
                api.fail_over(&server);
                if api.server() != server
                    && let Some((next, c)) = connect(&api)
                {
                    (server, client) = (next, c);
                }
                if follower.revision != before {
                    Duration::from_millis(200)
                } else {
                    (backoff * 2).min(Duration::from_secs(5))
                }
            }
        };
        tokio::time::sleep(backoff).await;
    }
}

/// One node's position in its stream.
struct Follower {
    node: String,
    feeds: Feeds,
    /// Everything up to here has been delivered to the feeds (0: nothing to resume from).
    revision: u64,
}

impl Follower {
    async fn follow(
        &mut self,
        client: &mut NodeServiceClient<tonic::transport::Channel>,
    ) -> anyhow::Result<()> {
        let request = pb::WatchRequest {
            node_name: self.node.clone(),
            resume_revision: self.revision,
            kinds: Vec::new(),
        };
        let mut stream = client
            .watch(request)
            .await
            .context("opening the node stream")?
            .into_inner();
        let mut parts: HashMap<i32, Vec<Value>> = HashMap::new();
        while let Some(msg) = stream.message().await.context("reading the node stream")? {
            let Some(event) = msg.event else { continue };
            match event {
                pb::watch_event::Event::Start(s) => {
                    if s.resumed {
                        tracing::info!(revision = self.revision, "node stream resumed");
                    } else {
                        tracing::info!(revision = s.revision, "node stream started with a snapshot");
                        // Until the snapshot is complete there is nothing to resume from.
                        self.revision = 0;
                    }
                }
                pb::watch_event::Event::Snapshot(s) => {
                    let objects = parts.entry(s.kind).or_default();
                    for o in &s.objects {
                        objects.push(serde_json::from_slice(o).context("an undecodable object")?);
                    }
                    if s.last {
                        let objects = parts.remove(&s.kind).unwrap_or_default();
                        if let Some(feed) = self.feeds.of(s.kind) {
                            feed.publish(Event::Listed(objects)).await;
                        }
                    }
                }
                pb::watch_event::Event::Change(c) => {
                    let obj: Value = serde_json::from_slice(&c.object).context("an undecodable object")?;
                    let event = match pb::ChangeType::try_from(c.r#type) {
                        Ok(pb::ChangeType::Applied) => Some(Event::Applied(obj)),
                        Ok(pb::ChangeType::Deleted) => Some(Event::Deleted(obj)),
                        _ => None,
                    };
                    if let (Some(feed), Some(event)) = (self.feeds.of(c.kind), event) {
                        feed.publish(event).await;
                    }
                    self.revision = c.revision;
                }
                pb::watch_event::Event::Progress(p) => self.revision = p.revision,
            }
        }
        Ok(())
    }
}

/// The API servers of the `default/kubernetes` Service's EndpointSlices (`https://IP:PORT` of
/// each ready endpoint).
fn api_servers(slices: &std::collections::BTreeMap<String, serde_json::Value>) -> Vec<String> {
    let mut urls = Vec::new();
    for slice in slices.values() {
        if crate::node::watch::service_of_slice(slice).as_deref() != Some("default/kubernetes") {
            continue;
        }
        let Some(port) = slice["ports"]
            .as_array()
            .and_then(|p| p.first())
            .and_then(|p| p["port"].as_u64())
        else {
            continue;
        };
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            if endpoint["conditions"]["ready"] == false {
                continue;
            }
            for ip in endpoint["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
            {
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_owned()
                };
                urls.push(format!("https://{host}:{port}"));
            }
        }
    }
    urls.sort();
    urls
}

/// Keeps the API client's list of servers to the control plane's members, from the node stream's
/// EndpointSlices (checked every 5 s).
pub async fn follow_api_servers(api: ApiClient, slices: crate::node::watch::Shared) {
    loop {
        let urls = slices.read(api_servers);
        if !urls.is_empty() {
            api.learn_servers(&urls);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
