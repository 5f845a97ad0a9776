//! `metrics.k8s.io/v1beta1`, served by the API server itself (what metrics-server serves upstream,
//! through an APIService), so `kubectl top node|pod` works with nothing to install: NodeMetrics and
//! PodMetrics from the agents' Summary API (`/stats/summary`, read through their tunnels when
//! asked), CPU as the rate over the agents' last 10 s interval, memory as the working set. An
//! APIService for the group that answers (a metrics-server someone installed) takes precedence.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::App;
use super::handlers::json_response;
use super::rbac::Target;
use super::server::Identity;
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::selector::LabelSelector;
use crate::objects::status::ApiError;

/// The group and version.
pub const GROUP: &str = "metrics.k8s.io";
/// The version served.
pub const VERSION: &str = "v1beta1";

/// How long a node may take to answer.
const NODE_LIMIT: Duration = Duration::from_secs(5);

/// Whether the built-in group serves (no APIService for it answers).
pub fn served(app: &App) -> bool {
    app.aggregated
        .get(GROUP, VERSION)
        .is_none_or(|r| r.resources.is_none())
}

/// The group's `APIResourceList`.
pub fn resource_list() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
    "resources": [
        {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
        {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
    ]})
}

/// The group's entry in `/apis`.
pub fn group_entry() -> Value {
    let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [version.clone()], "preferredVersion": version})
}

/// The group in aggregated discovery.
pub fn discovery_item() -> Value {
    let resource = |name: &str, kind: &str, scope: &str| {
        json!({"resource": name, "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
            "scope": scope, "singularResource": "", "verbs": ["get", "list"]})
    };
    json!({"metadata": {"name": GROUP, "creationTimestamp": null},
    "versions": [{"version": VERSION, "freshness": "Current", "resources": [
        resource("nodes", "NodeMetrics", "Cluster"),
        resource("pods", "PodMetrics", "Namespaced"),
    ]}]})
}

/// CPU in nanocores, as metrics-server writes it.
fn cpu(nano_cores: u64) -> String {
    format!("{nano_cores}n")
}

/// Memory in KiB, as metrics-server writes it.
fn memory(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

/// The Summary of every node that answers (the others are left out, as metrics-server does).
async fn summaries(app: &App) -> Result<Summaries, ApiError> {
    let nodes = app.store.list_local(keys::NODES).map_err(ApiError::internal)?;
    let nodes: Vec<Value> = nodes.items.iter().map(crate::objects::meta::from_kv).collect();
    let fetches = nodes.into_iter().map(|node| async move {
        let name = meta_str(&node, "name").to_owned();
        let fetched = super::nodeproxy::fetch_from_node(app, &name, "/stats/summary", NODE_LIMIT).await;
        match fetched
            .ok()
            .and_then(|(_, body)| serde_json::from_slice::<Value>(&body).ok())
        {
            Some(summary) => Some((node, summary)),
            None => {
                tracing::debug!(node = %name, "no stats from the node");
                None
            }
        }
    });
    Ok(futures::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect())
}

fn object_meta(name: &str, namespace: Option<&str>, labels: &Value, now: &str) -> Value {
    let mut meta = json!({"name": name, "creationTimestamp": now});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    if labels.is_object() {
        meta["labels"] = labels.clone();
    }
    meta
}

/// A usage with a CPU rate (`None` until the node has two readings).
fn usage(stats: &Value) -> Option<Value> {
    let nano_cores = stats["cpu"]["usageNanoCores"].as_u64()?;
    let working_set = stats["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
    Some(json!({"cpu": cpu(nano_cores), "memory": memory(working_set)}))
}

fn node_metrics(node: &Value, summary: &Value, now: &str) -> Option<Value> {
    let stats = &summary["node"];
    Some(
        json!({"metadata": object_meta(meta_str(node, "name"), None, &node["metadata"]["labels"], now),
        "timestamp": stats["cpu"]["time"], "window": "10s", "usage": usage(stats)?}),
    )
}

fn pod_metrics_of(pod: &Value, stats: &Value, now: &str) -> Option<Value> {
    let containers: Vec<Value> = stats["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some(json!({"name": c["name"], "usage": usage(c)?})))
        .collect();
    if containers.is_empty() {
        return None;
    }
    Some(
        json!({"metadata": object_meta(meta_str(pod, "name"), Some(meta_str(pod, "namespace")), &pod["metadata"]["labels"], now),
        "timestamp": stats["cpu"]["time"], "window": "10s", "containers": containers}),
    )
}

/// The PodMetrics of the pods in scope that the agents have readings of (the store's pods give
/// their labels).
fn pod_metrics(
    app: &App,
    summaries: &[(Value, Value)],
    namespace: Option<&str>,
    name: Option<&str>,
    selector: &LabelSelector,
    now: &str,
) -> Result<Vec<Value>, ApiError> {
    let prefix = match namespace {
        Some(ns) => keys::in_namespace(keys::PODS, ns),
        None => keys::PODS.to_owned(),
    };
    let pods = app.store.list_local(&prefix).map_err(ApiError::internal)?;
    let pods: HashMap<String, Value> = pods
        .items
        .iter()
        .map(crate::objects::meta::from_kv)
        .map(|p| (meta_str(&p, "uid").to_owned(), p))
        .collect();
    Ok(summaries
        .iter()
        .flat_map(|(_, summary)| summary["pods"].as_array().cloned().unwrap_or_default())
        .filter_map(|stats| {
            let pod = pods.get(stats["podRef"]["uid"].as_str()?)?;
            let wanted = name.is_none_or(|n| meta_str(pod, "name") == n)
                && selector.matches(pod["metadata"].get("labels"));
            wanted.then(|| pod_metrics_of(pod, &stats, now)).flatten()
        })
        .collect())
}

/// Each answering node with its Summary.
type Summaries = Vec<(Value, Value)>;

/// The horizontal pod autoscaler's metrics: what `kubectl top pod` shows, read from the agents
/// the same way (an aggregated metrics-server, if one is installed, is not asked). The nodes'
/// summaries are read once for every HPA looked at within a few seconds (the agents sample every
/// 10 s).
pub struct AgentMetrics {
    app: std::sync::Arc<App>,
    last: tokio::sync::Mutex<Option<(std::time::Instant, Summaries)>>,
}

impl AgentMetrics {
    /// Metrics read through `app`'s node tunnels.
    pub fn new(app: std::sync::Arc<App>) -> Self {
        Self {
            app,
            last: tokio::sync::Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

/// How long the nodes' summaries are reused.
const SUMMARIES_REUSED: Duration = Duration::from_secs(5);

impl crate::controllers::hpa::MetricsSource for AgentMetrics {
    fn pod_metrics<'a>(
        &'a self,
        namespace: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Value>, String>> {
        Box::pin(async move {
            let mut last = self.last.lock().await;
            let fresh = last
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < SUMMARIES_REUSED);
            if !fresh {
                let read = summaries(&self.app).await.map_err(|e| e.message)?;
                *last = Some((std::time::Instant::now(), read));
            }
            let summaries = last.as_ref().map(|(_, s)| s.as_slice()).unwrap_or_default();
            let now = crate::objects::meta::now();
            pod_metrics(
                &self.app,
                summaries,
                Some(namespace),
                None,
                &LabelSelector::default(),
                &now,
            )
            .map_err(|e| e.message)
        })
    }
}

/// Serves `/apis/metrics.k8s.io[/v1beta1[/...]]` (`rest` after the group).
pub async fn serve(
    app: &App,
    who: &Identity,
    rest: &[&str],
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    let (namespace, resource, name) = match rest {
        [] => {
            let mut group = group_entry();
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            return ok(group);
        }
        [VERSION] => return ok(resource_list()),
        [VERSION, "nodes"] => (None, "nodes", None),
        [VERSION, "nodes", name] => (None, "nodes", Some(*name)),
        [VERSION, "pods"] => (None, "pods", None),
        [VERSION, "namespaces", ns, "pods"] => (Some(*ns), "pods", None),
        [VERSION, "namespaces", ns, "pods", name] => (Some(*ns), "pods", Some(*name)),
        _ => return Err(ApiError::no_route()),
    };
    let verb = if name.is_some() { "get" } else { "list" };
    super::authz::allow(
        app,
        who,
        verb,
        &Target::Resource {
            group: GROUP,
            resource,
            subresource: None,
            namespace,
            name,
        },
    )
    .await?;
    let selector = match query.get("labelSelector") {
        Some(s) => LabelSelector::parse(s).map_err(ApiError::bad_request)?,
        None => LabelSelector::default(),
    };
    let now = crate::objects::meta::now();
    let summaries = summaries(app).await?;
    let not_found = |kind: &str, name: &str| {
        ApiError::new(404, "NotFound", format!("{kind}.{GROUP} \"{name}\" not found"))
    };
    if resource == "nodes" {
        let mut items: Vec<Value> = summaries
            .iter()
            .filter(|(node, _)| name.is_none_or(|n| meta_str(node, "name") == n))
            .filter(|(node, _)| selector.matches(node["metadata"].get("labels")))
            .filter_map(|(node, summary)| node_metrics(node, summary, &now))
            .collect();
        if let Some(n) = name {
            let mut item = items.pop().ok_or_else(|| not_found("nodes", n))?;
            item["kind"] = json!("NodeMetrics");
            item["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
            return ok(item);
        }
        items.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        return ok(
            json!({"kind": "NodeMetricsList", "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": {}, "items": items}),
        );
    }
    let mut items = pod_metrics(app, &summaries, namespace, name, &selector, &now)?;
    if let Some(n) = name {
        let mut item = items.pop().ok_or_else(|| not_found("pods", n))?;
        item["kind"] = json!("PodMetrics");
        item["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
        return ok(item);
    }
    items.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v["metadata"]["namespace"].as_str().map(str::to_owned),
                v["metadata"]["name"].as_str().map(str::to_owned),
            )
        };
        key(a).cmp(&key(b))
    });
    ok(
        json!({"kind": "PodMetricsList", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {}, "items": items}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_written_as_metrics_server_writes_it() {
        let stats = json!({"cpu": {"time": "t", "usageNanoCores": 12_345_678u64}, "memory": {"workingSetBytes": 10_485_760u64}});
        assert_eq!(
            usage(&stats),
            Some(json!({"cpu": "12345678n", "memory": "10240Ki"}))
        );
        assert_eq!(
            usage(&json!({"cpu": {"usageCoreNanoSeconds": 5}})),
            None,
            "no rate yet"
        );
        let pod = json!({"metadata": {"name": "p", "namespace": "n", "labels": {"app": "a"}}});
        let stats = json!({"cpu": {"time": "t"}, "containers": [
            {"name": "c", "cpu": {"usageNanoCores": 1000}, "memory": {"workingSetBytes": 2048}},
            {"name": "new", "cpu": {}, "memory": {}}]});
        let m = pod_metrics_of(&pod, &stats, "now").unwrap();
        assert_eq!(
            m["containers"],
            json!([{"name": "c", "usage": {"cpu": "1000n", "memory": "2Ki"}}])
        );
        assert_eq!(m["metadata"]["labels"]["app"], "a");
    }
}
