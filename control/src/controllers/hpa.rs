//! The horizontal pod autoscaler: every 15 s (upstream's sync period) each HorizontalPodAutoscaler
//! compares its target's pods' CPU and memory use (`metrics.k8s.io`, from the agents) with its
//! metrics' targets and writes the replica count that meets them to the target's `scale`, as
//! upstream's controller decides it: the 10 % tolerance, pods without metrics or not ready yet
//! counted against the move, the 5-minute scale-down stabilization (or the HPA's `behavior`:
//! stabilization windows and rate policies), `minReplicas`/`maxReplicas`, the `AbleToScale`,
//! `ScalingActive` and `ScalingLimited` conditions and the `SuccessfulRescale` event.
//!
//! Metrics other than the resource kinds (Pods, Object, External) need a custom or external
//! metrics API, which Skiff does not serve: they report `ScalingActive=False` as upstream does
//! when its metrics API is missing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::error::Error;
use super::events::record;
use super::runtime::{Cache, Caches, Next, Queue, run_workers};
use super::write::write_status;
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{meta_str, now, parse_time};
use crate::objects::quantity;
use crate::objects::selector::LabelSelector;
use crate::objects::write::{Request, to_scale};

/// Where the controller reads pods' resource use.
pub trait MetricsSource: Send + Sync {
    /// The `PodMetrics` (as `metrics.k8s.io/v1beta1` serves them) of the pods of `namespace`.
    fn pod_metrics<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<Value>, String>>;
}

impl std::fmt::Debug for dyn MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSource")
    }
}

/// Store prefix of HorizontalPodAutoscalers.
const PREFIX: &str = keys::HORIZONTAL_POD_AUTOSCALERS;
/// How often each HPA is looked at (`--horizontal-pod-autoscaler-sync-period`).
const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// The ratio band around 1.0 within which nothing changes (`--horizontal-pod-autoscaler-tolerance`).
const TOLERANCE: f64 = 0.1;
/// How long scale-down recommendations are remembered without a behavior
/// (`--horizontal-pod-autoscaler-downscale-stabilization`).
const DOWNSCALE_STABILIZATION: Duration = Duration::from_secs(300);
/// After a pod starts, CPU samples taken before it was ready for a whole window are not used
/// (`--horizontal-pod-autoscaler-cpu-initialization-period`).
const CPU_INITIALIZATION: time::Duration = time::Duration::minutes(5);
/// A pod not ready within this long of starting counts as never ready
/// (`--horizontal-pod-autoscaler-initial-readiness-delay`).
const INITIAL_READINESS_DELAY: time::Duration = time::Duration::seconds(30);
/// The field manager of the controller's writes.
const MANAGER: &str = "horizontal-pod-autoscaler";

/// `ScalingLimited`'s reason and message when the count is within bounds.
const WITHIN_RANGE: (&str, &str) = (
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);
/// `ScalingLimited`'s reason and message when the minimum holds the count up.
const TOO_FEW: (&str, &str) = (
    "TooFewReplicas",
    "the desired replica count is less than the minimum replica count",
);
/// `ScalingLimited`'s reason and message when the maximum holds the count down.
const TOO_MANY: (&str, &str) = (
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
);
/// `ScalingLimited`'s reason and message when the scale-up rate holds it.
const SCALE_UP_LIMIT: (&str, &str) = (
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
);
/// `ScalingLimited`'s reason and message when the scale-down rate holds it.
const SCALE_DOWN_LIMIT: (&str, &str) = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);

/// What the controller remembers between syncs of one HPA.
#[derive(Debug, Default)]
struct Memory {
    /// Recent unstabilized recommendations.
    recommendations: Vec<(Instant, i64)>,
    /// Recent scale-ups and scale-downs (replicas added or removed), for the behavior's rate policies.
    ups: Vec<(Instant, i64)>,
    downs: Vec<(Instant, i64)>,
}

type Memories = Arc<Mutex<HashMap<String, Memory>>>;

/// One pod's use of a resource, as read from the metrics API.
#[derive(Debug, Clone)]
struct Sample {
    /// Millicores or bytes.
    value: i64,
    timestamp: Option<OffsetDateTime>,
    window: time::Duration,
}

/// Upstream's `groupPods`: pods whose samples count, and those unready, missing a sample or ignored.
#[derive(Debug, Default)]
struct Groups {
    ready: usize,
    unready: HashSet<String>,
    missing: HashSet<String>,
    ignored: HashSet<String>,
}

fn condition_time(pod: &Value) -> Option<(bool, Option<OffsetDateTime>)> {
    let c = pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"] == "True",
        c["lastTransitionTime"].as_str().and_then(parse_time),
    ))
}

fn group_pods(
    pods: &[Arc<Value>],
    samples: &HashMap<String, Sample>,
    cpu: bool,
    at: OffsetDateTime,
) -> Groups {
    let mut g = Groups::default();
    for pod in pods {
        let name = meta_str(pod, "name").to_owned();
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if !pod["metadata"]["deletionTimestamp"].is_null() || phase == "Failed" {
            g.ignored.insert(name);
            continue;
        }
        if phase == "Pending" {
            g.unready.insert(name);
            continue;
        }
        let Some(sample) = samples.get(&name) else {
            g.missing.insert(name);
            continue;
        };
        if cpu {
            let started = pod["status"]["startTime"].as_str().and_then(parse_time);
            let unready = match (condition_time(pod), started) {
                (Some((ready, changed)), Some(started)) => {
                    let changed = changed.unwrap_or(started);
                    if started + CPU_INITIALIZATION > at {
                        !ready || sample.timestamp.is_none_or(|t| t < changed + sample.window)
                    } else {
                        !ready && started + INITIAL_READINESS_DELAY > changed
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(name);
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// How a metric's target is met: the average utilization of the pods' requests (percent), or an
/// average value per pod.
#[derive(Debug, Clone, Copy)]
enum Goal {
    Utilization(i64),
    Average(i64),
}

/// The usage ratio (use over target) of `samples`, with the utilization (percent) or average value.
fn usage_ratio(
    samples: &HashMap<String, i64>,
    requests: &HashMap<String, i64>,
    goal: Goal,
) -> Option<(f64, i64)> {
    match goal {
        Goal::Utilization(target) => {
            let (mut used, mut requested) = (0i64, 0i64);
            for (pod, v) in samples {
                if let Some(r) = requests.get(pod) {
                    used += v;
                    requested += r;
                }
            }
            if requested == 0 {
                return None;
            }
            let utilization = used * 100 / requested;
            Some((utilization as f64 / target as f64, utilization))
        }
        Goal::Average(target) => {
            if samples.is_empty() || target == 0 {
                return None;
            }
            let average = samples.values().sum::<i64>() / samples.len() as i64;
            Some((average as f64 / target as f64, average))
        }
    }
}

/// Upstream's `GetResourceReplicas`/`GetRawResourceReplicas`: the replica count that meets
/// `goal`, and the current utilization (percent) or average value.
fn replicas_for(
    current: i64,
    pods: &[Arc<Value>],
    samples: &HashMap<String, Sample>,
    requests: &HashMap<String, i64>,
    goal: Goal,
    cpu: bool,
    at: OffsetDateTime,
) -> Result<(i64, i64), String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let groups = group_pods(pods, samples, cpu, at);
    let mut used: HashMap<String, i64> = samples
        .iter()
        .filter(|(pod, _)| !groups.ignored.contains(*pod) && !groups.unready.contains(*pod))
        .filter(|(pod, _)| pods.iter().any(|p| meta_str(p, "name") == pod.as_str()))
        .map(|(pod, s)| (pod.clone(), s.value))
        .collect();
    if used.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let (ratio, measured) =
        usage_ratio(&used, requests, goal).ok_or("no metrics returned matched known pods")?;
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok((current, measured));
        }
        return Ok(((ratio * groups.ready as f64).ceil() as i64, measured));
    }
    // Count the pods without a sample against the move: as using all they asked for on the
    // way down, nothing on the way up; unready pods as using nothing on the way up.
    for pod in &groups.missing {
        let value = match goal {
            _ if ratio > 1.0 => 0,
            Goal::Utilization(target) => requests.get(pod).copied().unwrap_or(0) * target.max(100) / 100,
            Goal::Average(target) => target,
        };
        if ratio != 1.0 {
            used.insert(pod.clone(), value);
        }
    }
    if scale_up_with_unready {
        for pod in &groups.unready {
            used.insert(pod.clone(), 0);
        }
    }
    let (new_ratio, _) =
        usage_ratio(&used, requests, goal).ok_or("no metrics returned matched known pods")?;
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok((current, measured));
    }
    let replicas = (new_ratio * used.len() as f64).ceil() as i64;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok((current, measured));
    }
    Ok((replicas, measured))
}

/// A container's request of `resource` (`None` when it asks for none).
fn request_of(container: &Value, resource: &str) -> Option<i64> {
    let q = quantity::parse(container["resources"]["requests"][resource].as_str()?)?;
    Some(if resource == "cpu" {
        (q * 1000.0).round() as i64
    } else {
        q.round() as i64
    })
}

/// Each pod's request of `resource` (summed over its containers, or `container`'s alone).
fn requests_of(
    pods: &[Arc<Value>],
    resource: &str,
    container: Option<&str>,
) -> Result<HashMap<String, i64>, String> {
    let mut out = HashMap::new();
    for pod in pods {
        let mut total = 0;
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            if container.is_some_and(|want| want != name) {
                continue;
            }
            total += request_of(c, resource).ok_or_else(|| {
                format!(
                    "missing request for {resource} in container {name} of Pod {}",
                    meta_str(pod, "name")
                )
            })?;
        }
        out.insert(meta_str(pod, "name").to_owned(), total);
    }
    Ok(out)
}

/// Each pod's use of `resource` from its `PodMetrics` (summed over its containers, or
/// `container`'s alone).
fn samples_of(metrics: &[Value], resource: &str, container: Option<&str>) -> HashMap<String, Sample> {
    metrics
        .iter()
        .filter_map(|m| {
            let mut value = 0.0;
            let mut found = false;
            for c in m["containers"].as_array().into_iter().flatten() {
                if container.is_some_and(|want| c["name"] != want) {
                    continue;
                }
                value += quantity::parse(c["usage"][resource].as_str()?)?;
                found = true;
            }
            if !found {
                return None;
            }
            let value = if resource == "cpu" {
                (value * 1000.0).round() as i64
            } else {
                value.round() as i64
            };
            let window = m["window"]
                .as_str()
                .and_then(|w| w.strip_suffix('s')?.parse::<f64>().ok())
                .map_or(time::Duration::ZERO, time::Duration::seconds_f64);
            Some((
                meta_str(m, "name").to_owned(),
                Sample {
                    value,
                    timestamp: m["timestamp"].as_str().and_then(parse_time),
                    window,
                },
            ))
        })
        .collect()
}

/// A quantity as upstream writes one: CPU in millicores, memory in bytes.
fn format_quantity(value: i64, resource: &str) -> String {
    if resource == "cpu" {
        format!("{value}m")
    } else {
        value.to_string()
    }
}

/// One metric's proposal: replicas, the metric's name for messages, and its status.
struct Proposal {
    replicas: i64,
    name: String,
    status: Value,
}

/// Why a metric gave no proposal: the condition reason and the message.
type Failure = (&'static str, String);

fn propose(
    metric: &Value,
    current: i64,
    pods: &[Arc<Value>],
    metrics: &Result<Vec<Value>, String>,
    at: OffsetDateTime,
) -> Result<Proposal, Failure> {
    let kind = metric["type"].as_str().unwrap_or_default();
    let field = match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" | "Object" | "External" => {
            let reason = match kind {
                "Pods" => "FailedGetPodsMetric",
                "Object" => "FailedGetObjectMetric",
                _ => "FailedGetExternalMetric",
            };
            let api = if kind == "External" {
                "external.metrics.k8s.io"
            } else {
                "custom.metrics.k8s.io"
            };
            let name = metric[kind.to_lowercase()]["metric"]["name"]
                .as_str()
                .unwrap_or_default();
            return Err((
                reason,
                format!(
                    "the HPA was unable to compute the replica count: unable to get metric {name}: no {api} API is served"
                ),
            ));
        }
        other => {
            return Err((
                "InvalidMetricSourceType",
                format!(
                    "the HPA was unable to compute the replica count: unknown metric source type \"{other}\""
                ),
            ));
        }
    };
    let source = &metric[field];
    let resource = source["name"].as_str().unwrap_or_default();
    let container = source["container"]
        .as_str()
        .filter(|_| field == "containerResource");
    let failed_reason = if field == "resource" {
        "FailedGetResourceMetric"
    } else {
        "FailedGetContainerResourceMetric"
    };
    let failed = |e: String| {
        (
            failed_reason,
            format!("the HPA was unable to compute the replica count: {e}"),
        )
    };
    let metrics = metrics
        .as_ref()
        .map_err(|e| failed(format!("unable to get metrics for resource {resource}: {e}")))?;
    let samples = samples_of(metrics, resource, container);
    if samples.is_empty() {
        return Err(failed(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        )));
    }
    let target = &source["target"];
    let cpu = resource == "cpu";
    let (goal, name) = match target["averageUtilization"].as_i64() {
        Some(u) => (
            Goal::Utilization(u),
            format!("{resource} resource utilization (percentage of request)"),
        ),
        None => {
            let average = target["averageValue"]
                .as_str()
                .and_then(quantity::parse)
                .map(|q| {
                    if cpu {
                        (q * 1000.0).round() as i64
                    } else {
                        q.round() as i64
                    }
                })
                .ok_or_else(|| failed(format!("invalid target for resource {resource}")))?;
            (Goal::Average(average), format!("{resource} resource"))
        }
    };
    let requests = match goal {
        Goal::Utilization(_) => requests_of(pods, resource, container).map_err(failed)?,
        Goal::Average(_) => HashMap::new(),
    };
    let (replicas, measured) =
        replicas_for(current, pods, &samples, &requests, goal, cpu, at).map_err(failed)?;
    let mut current_value = json!({});
    match goal {
        Goal::Utilization(_) => {
            current_value["averageUtilization"] = json!(measured);
            let used: Vec<i64> = samples
                .iter()
                .filter(|(p, _)| requests.contains_key(*p))
                .map(|(_, s)| s.value)
                .collect();
            let raw = used.iter().sum::<i64>() / (used.len().max(1) as i64);
            current_value["averageValue"] = json!(format_quantity(raw, resource));
        }
        Goal::Average(_) => current_value["averageValue"] = json!(format_quantity(measured, resource)),
    }
    let mut status = json!({"name": resource, "current": current_value});
    if let Some(c) = container {
        status["container"] = json!(c);
    }
    Ok(Proposal {
        replicas,
        name,
        status: json!({"type": kind, field: status}),
    })
}

/// Whether condition `kind` already says `reason` (a warning is recorded once, when it starts).
fn says(conditions: &[Value], kind: &str, reason: &str) -> bool {
    conditions
        .iter()
        .any(|c| c["type"] == kind && c["reason"] == reason)
}

/// Sets condition `kind` of `status`, keeping its transition time when its status is unchanged.
fn set_condition(conditions: &mut Vec<Value>, kind: &str, status: bool, reason: &str, message: &str) {
    let status = if status { "True" } else { "False" };
    let at = match conditions.iter().find(|c| c["type"] == kind) {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now()),
    };
    let c = json!({"type": kind, "status": status, "lastTransitionTime": at, "reason": reason, "message": message});
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(old) => *old = c,
        None => conditions.push(c),
    }
}

/// Replicas added (or removed) within the last `period`.
fn changed_within(events: &[(Instant, i64)], period: Duration, at: Instant) -> i64 {
    events
        .iter()
        .filter(|(t, _)| at.duration_since(*t) < period)
        .map(|(_, n)| n)
        .sum()
}

/// Upstream's `calculateScaleUpLimitWithScalingRules` / `calculateScaleDownLimitWithBehaviors`.
fn rate_limit(current: i64, memory: &Memory, rules: &Value, up: bool, at: Instant) -> i64 {
    let select = rules["selectPolicy"].as_str().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    // Max picks the largest change: the highest limit up, the lowest down.
    let largest_change = select != "Min";
    let mut result: Option<i64> = None;
    for policy in rules["policies"].as_array().into_iter().flatten() {
        let period = Duration::from_secs(policy["periodSeconds"].as_u64().unwrap_or(15));
        let value = policy["value"].as_i64().unwrap_or(0);
        let start =
            current - changed_within(&memory.ups, period, at) + changed_within(&memory.downs, period, at);
        let proposed = match (policy["type"].as_str(), up) {
            (Some("Pods"), true) => start + value,
            (Some("Pods"), false) => start - value,
            (_, true) => (start as f64 * (1.0 + value as f64 / 100.0)).ceil() as i64,
            (_, false) => (start as f64 * (1.0 - value as f64 / 100.0)) as i64,
        };
        result = Some(match result {
            None => proposed,
            Some(r) if up == largest_change => r.max(proposed),
            Some(r) => r.min(proposed),
        });
    }
    result.unwrap_or(current)
}

/// The spec's numbers the decision needs.
struct Bounds {
    min: i64,
    max: i64,
}

/// Stabilizes and limits a recommendation as upstream does without a behavior; returns the
/// replica count and sets `AbleToScale` and `ScalingLimited`.
fn normalize(
    memory: &mut Memory,
    current: i64,
    proposed: i64,
    b: &Bounds,
    conditions: &mut Vec<Value>,
    at: Instant,
) -> i64 {
    memory
        .recommendations
        .retain(|(t, _)| at.duration_since(*t) <= DOWNSCALE_STABILIZATION);
    let stabilized = memory
        .recommendations
        .iter()
        .map(|(_, r)| *r)
        .fold(proposed, i64::max);
    memory.recommendations.push((at, proposed));
    if stabilized != proposed {
        set_condition(
            conditions,
            "AbleToScale",
            true,
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        );
    } else {
        set_condition(
            conditions,
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size",
        );
    }
    let scale_up_limit = (2 * current).max(4);
    let (ceiling, reason, message) = if b.max > scale_up_limit {
        (scale_up_limit, SCALE_UP_LIMIT.0, SCALE_UP_LIMIT.1)
    } else {
        (b.max, TOO_MANY.0, TOO_MANY.1)
    };
    let (desired, reason, message) = if stabilized < b.min {
        (b.min, TOO_FEW.0, TOO_FEW.1)
    } else if stabilized > ceiling {
        (ceiling, reason, message)
    } else {
        (stabilized, WITHIN_RANGE.0, WITHIN_RANGE.1)
    };
    set_condition(
        conditions,
        "ScalingLimited",
        desired != stabilized,
        reason,
        message,
    );
    desired
}

/// The same with the HPA's `behavior`: stabilization windows per direction and rate policies.
fn normalize_with_behavior(
    memory: &mut Memory,
    current: i64,
    proposed: i64,
    b: &Bounds,
    behavior: &Value,
    conditions: &mut Vec<Value>,
    at: Instant,
) -> i64 {
    let window =
        |rules: &Value| Duration::from_secs(rules["stabilizationWindowSeconds"].as_u64().unwrap_or(0));
    let (up_window, down_window) = (window(&behavior["scaleUp"]), window(&behavior["scaleDown"]));
    let (mut up, mut down) = (proposed, proposed);
    for (t, r) in &memory.recommendations {
        let age = at.duration_since(*t);
        if age < up_window {
            up = up.min(*r);
        }
        if age < down_window {
            down = down.max(*r);
        }
    }
    let keep = up_window.max(down_window);
    memory
        .recommendations
        .retain(|(t, _)| at.duration_since(*t) < keep);
    memory.recommendations.push((at, proposed));
    let stabilized = current.max(up).min(down);
    if stabilized != proposed {
        let (reason, message) = if proposed >= current {
            (
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            (
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        };
        set_condition(conditions, "AbleToScale", true, reason, message);
    } else {
        set_condition(
            conditions,
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size",
        );
    }
    let (desired, reason, message) = if stabilized > current {
        let limit = rate_limit(current, memory, &behavior["scaleUp"], true, at).max(current);
        let (ceiling, reason, message) = if b.max > limit {
            (limit, SCALE_UP_LIMIT.0, SCALE_UP_LIMIT.1)
        } else {
            (b.max, TOO_MANY.0, TOO_MANY.1)
        };
        if stabilized > ceiling {
            (ceiling, reason, message)
        } else {
            (stabilized, WITHIN_RANGE.0, WITHIN_RANGE.1)
        }
    } else if stabilized < current {
        let limit = rate_limit(current, memory, &behavior["scaleDown"], false, at).min(current);
        let (floor, reason, message) = if b.min < limit {
            (limit, SCALE_DOWN_LIMIT.0, SCALE_DOWN_LIMIT.1)
        } else {
            (b.min, TOO_FEW.0, TOO_FEW.1)
        };
        if stabilized < floor {
            (floor, reason, message)
        } else {
            (stabilized, WITHIN_RANGE.0, WITHIN_RANGE.1)
        }
    } else {
        (stabilized, WITHIN_RANGE.0, WITHIN_RANGE.1)
    };
    set_condition(
        conditions,
        "ScalingLimited",
        desired != stabilized,
        reason,
        message,
    );
    desired
}

/// The target's resource and stored object.
async fn target_of(
    app: &Objects,
    ns: &str,
    target: &Value,
) -> Result<
    (
        Arc<crate::objects::registry::ResourceInfo>,
        crate::store::KeyValue,
    ),
    String,
> {
    let kind = target["kind"].as_str().unwrap_or_default();
    let name = target["name"].as_str().unwrap_or_default();
    let api_version = target["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let info = app
        .registry
        .all()
        .into_iter()
        .filter(|r| r.kind == kind && r.has_subresource("scale"))
        .find(|r| api_version.is_empty() || (r.group == group && r.version == version))
        .ok_or_else(|| {
            format!("no matches for kind \"{kind}\" in group \"{group}\" with a scale subresource")
        })?;
    let kv = app
        .store
        .get(&info.key(Some(ns), name))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}.{} \"{name}\" not found", info.plural, info.group))?;
    Ok((info, kv))
}

/// Writes the HPA's status (unless it already has it).
async fn write_hpa_status(app: &Objects, hpa: &Value, status: Value) -> Result<(), Error> {
    write_status(
        app,
        hpa,
        "autoscaling",
        "horizontalpodautoscalers",
        status,
        MANAGER,
    )
    .await
}

async fn reconcile(
    app: &Objects,
    hpas: &Cache,
    pods: &Cache,
    source: &dyn MetricsSource,
    memories: &Memories,
    key: &str,
) -> Result<Next, Error> {
    let Some(hpa) = hpas.get(key) else {
        memories.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        return Ok(Next::Done);
    };
    if !hpa["metadata"]["deletionTimestamp"].is_null() {
        return Ok(Next::Done);
    }
    let ns = meta_str(&hpa, "namespace").to_owned();
    let spec = &hpa["spec"];
    let bounds = Bounds {
        min: spec["minReplicas"].as_i64().unwrap_or(1),
        max: spec["maxReplicas"].as_i64().unwrap_or(1),
    };
    let mut status = hpa["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let (info, kv) = match target_of(app, &ns, &spec["scaleTargetRef"]).await {
        Ok(t) => t,
        Err(e) => {
            if !says(&conditions, "AbleToScale", "FailedGetScale") {
                record(app, &hpa, MANAGER, "Warning", "FailedGetScale", &e).await;
            }
            set_condition(
                &mut conditions,
                "AbleToScale",
                false,
                "FailedGetScale",
                &format!("the HPA controller was unable to get the target's current scale: {e}"),
            );
            status["conditions"] = json!(conditions);
            write_hpa_status(app, &hpa, status).await?;
            return Ok(Next::Done);
        }
    };
    let target = info.decode(&kv);
    let scale = to_scale(&target);
    let current = scale["spec"]["replicas"].as_i64().unwrap_or(0);
    let at = Instant::now();
    let wall = OffsetDateTime::now_utc();
    let mut metric_statuses = Vec::new();
    let (desired, reason) = if current == 0 && bounds.min != 0 {
        set_condition(
            &mut conditions,
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        );
        (current, String::new())
    } else if current > bounds.max {
        (
            bounds.max,
            "Current number of replicas above Spec.MaxReplicas".to_owned(),
        )
    } else if current < bounds.min {
        (
            bounds.min,
            "Current number of replicas below Spec.MinReplicas".to_owned(),
        )
    } else {
        let selector = scale["status"]["selector"].as_str().unwrap_or_default();
        let selector = match LabelSelector::parse(selector) {
            Ok(s) if !s.is_empty() => s,
            _ => {
                set_condition(
                    &mut conditions,
                    "ScalingActive",
                    false,
                    "InvalidSelector",
                    "the HPA target's scale is missing a selector",
                );
                status["conditions"] = json!(conditions);
                write_hpa_status(app, &hpa, status).await?;
                return Ok(Next::Done);
            }
        };
        let selected: Vec<Arc<Value>> = pods
            .list(Some(&ns))
            .into_iter()
            .filter(|p| selector.matches(p["metadata"].get("labels")))
            .collect();
        let metrics = source.pod_metrics(&ns).await;
        let mut best: Option<Proposal> = None;
        let mut failures = Vec::new();
        let specs = spec["metrics"].as_array().cloned().unwrap_or_default();
        for metric in &specs {
            match propose(metric, current, &selected, &metrics, wall) {
                Ok(p) => {
                    metric_statuses.push(p.status.clone());
                    if best.as_ref().is_none_or(|b| p.replicas > b.replicas) {
                        best = Some(p);
                    }
                }
                Err(f) => failures.push(f),
            }
        }
        let Some(best) = best else {
            let (reason, message) = failures
                .first()
                .cloned()
                .unwrap_or(("FailedGetResourceMetric", "the HPA has no metrics".to_owned()));
            if !says(&conditions, "ScalingActive", reason) {
                let error = message.trim_start_matches("the HPA was unable to compute the replica count: ");
                record(app, &hpa, MANAGER, "Warning", reason, error).await;
                let summary = format!(
                    "invalid metrics ({} invalid out of {}), first error is: {error}",
                    failures.len(),
                    specs.len()
                );
                record(
                    app,
                    &hpa,
                    MANAGER,
                    "Warning",
                    "FailedComputeMetricsReplicas",
                    &summary,
                )
                .await;
            }
            set_condition(&mut conditions, "ScalingActive", false, reason, &message);
            status["currentReplicas"] = json!(current);
            status["conditions"] = json!(conditions);
            write_hpa_status(app, &hpa, status).await?;
            return Ok(Next::Done);
        };
        set_condition(
            &mut conditions,
            "ScalingActive",
            true,
            "ValidMetricFound",
            &format!(
                "the HPA was able to successfully calculate a replica count from {}",
                best.name
            ),
        );
        let reason = if best.replicas > current {
            format!("{} above target", best.name)
        } else {
            "All metrics below target".to_owned()
        };
        let mut memories = memories.lock().unwrap_or_else(|p| p.into_inner());
        let memory = memories.entry(key.to_owned()).or_default();
        let desired = if spec["behavior"].is_object() {
            normalize_with_behavior(
                memory,
                current,
                best.replicas,
                &bounds,
                &spec["behavior"],
                &mut conditions,
                at,
            )
        } else {
            normalize(memory, current, best.replicas, &bounds, &mut conditions, at)
        };
        (desired, reason)
    };
    let rescale = desired != current && !(current == 0 && bounds.min != 0);
    if rescale {
        let mut next = target.clone();
        next["spec"]["replicas"] = json!(desired);
        let req = Request::new(info.clone(), Some(&ns), Some(meta_str(&target, "name"))).by(MANAGER);
        if let Err(e) = app.commit_update(&req, &kv, next, true).await {
            let message = format!("New size: {desired}; reason: {reason}; error: {}", e.message);
            record(app, &hpa, MANAGER, "Warning", "FailedRescale", &message).await;
            set_condition(
                &mut conditions,
                "AbleToScale",
                false,
                "FailedUpdateScale",
                &format!(
                    "the HPA controller was unable to update the target scale: {}",
                    e.message
                ),
            );
            status["conditions"] = json!(conditions);
            write_hpa_status(app, &hpa, status).await?;
            return Ok(Next::Done);
        }
        set_condition(
            &mut conditions,
            "AbleToScale",
            true,
            "SucceededRescale",
            &format!("the HPA controller was able to update the target scale to {desired}"),
        );
        record(
            app,
            &hpa,
            MANAGER,
            "Normal",
            "SuccessfulRescale",
            &format!("New size: {desired}; reason: {reason}"),
        )
        .await;
        let mut memories = memories.lock().unwrap_or_else(|p| p.into_inner());
        let memory = memories.entry(key.to_owned()).or_default();
        if desired > current {
            memory.ups.push((at, desired - current));
        } else {
            memory.downs.push((at, current - desired));
        }
        // Rate policies look back 30 minutes at most.
        let horizon = Duration::from_secs(1800);
        memory.ups.retain(|(t, _)| at.duration_since(*t) < horizon);
        memory.downs.retain(|(t, _)| at.duration_since(*t) < horizon);
    }
    let mut next = json!({
        "currentReplicas": current,
        "desiredReplicas": if rescale { desired } else { current },
        "conditions": conditions,
    });
    if !metric_statuses.is_empty() {
        next["currentMetrics"] = json!(metric_statuses);
    }
    match (rescale, &status["lastScaleTime"]) {
        (true, _) => next["lastScaleTime"] = json!(now()),
        (false, Value::String(t)) => next["lastScaleTime"] = json!(t),
        _ => {}
    }
    write_hpa_status(app, &hpa, next).await?;
    Ok(Next::Done)
}

/// Starts the controller with the metrics from `source` (none: HPAs report that no metrics API
/// is served).
pub fn start(app: Arc<Objects>, caches: &Caches, source: Option<Arc<dyn MetricsSource>>) {
    let hpas = caches.get(&app, PREFIX);
    let pods = caches.get(&app, keys::PODS);
    let queue = Arc::new(Queue::default());
    let memories: Memories = Arc::default();
    let source: Arc<dyn MetricsSource> = source.unwrap_or_else(|| Arc::new(NoMetrics));
    {
        // A new or respecified HPA is looked at at once (not on its own status writes).
        let (queue, mut changes) = (queue.clone(), hpas.changes());
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let generation =
                    |o: &Option<Arc<Value>>| o.as_ref().map(|o| o["metadata"]["generation"].clone());
                if change.new.is_some() && generation(&change.old) != generation(&change.new) {
                    queue.add(&change.key);
                }
            }
        });
    }
    {
        // And every one every sync period.
        let (queue, hpas) = (queue.clone(), hpas.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for hpa in hpas.list(None) {
                    queue.add(&keys::object(
                        PREFIX,
                        Some(meta_str(&hpa, "namespace")),
                        meta_str(&hpa, "name"),
                    ));
                }
            }
        });
    }
    run_workers(app.clone(), "horizontalpodautoscaler", queue, 1, move |key| {
        let (app, hpas, pods, source, memories) = (
            app.clone(),
            hpas.clone(),
            pods.clone(),
            source.clone(),
            memories.clone(),
        );
        async move { reconcile(&app, &hpas, &pods, source.as_ref(), &memories, &key).await }
    });
}

/// The source when no metrics API is served.
struct NoMetrics;

impl MetricsSource for NoMetrics {
    fn pod_metrics<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<Value>, String>> {
        Box::pin(async {
            Err("the server could not find the requested resource (get pods.metrics.k8s.io)".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cpu_request: &str) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"cpu": cpu_request}}}]},
            "status": {"phase": "Running", "startTime": "2020-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:10Z"}]}}))
    }

    fn sample(value: i64) -> Sample {
        Sample {
            value,
            timestamp: parse_time("2026-01-01T00:00:00Z"),
            window: time::Duration::seconds(10),
        }
    }

    fn at() -> OffsetDateTime {
        parse_time("2026-01-01T00:00:05Z").unwrap()
    }

    #[test]
    fn replicas_follow_the_utilization_with_a_tolerance() {
        let pods = vec![pod("a", "100m"), pod("b", "100m")];
        let requests = requests_of(&pods, "cpu", None).unwrap();
        let samples: HashMap<String, Sample> = [("a".into(), sample(100)), ("b".into(), sample(100))].into();
        // 100 % used against a 50 % target: twice the pods.
        assert_eq!(
            replicas_for(2, &pods, &samples, &requests, Goal::Utilization(50), true, at()),
            Ok((4, 100))
        );
        // 105 % against 100 %: within the tolerance, no change.
        let samples: HashMap<String, Sample> = [("a".into(), sample(105)), ("b".into(), sample(105))].into();
        assert_eq!(
            replicas_for(2, &pods, &samples, &requests, Goal::Utilization(100), true, at()),
            Ok((2, 105))
        );
        // 10 % against 50 %: one pod.
        let samples: HashMap<String, Sample> = [("a".into(), sample(10)), ("b".into(), sample(10))].into();
        assert_eq!(
            replicas_for(2, &pods, &samples, &requests, Goal::Utilization(50), true, at()),
            Ok((1, 10))
        );
    }

    #[test]
    fn pods_without_samples_hold_back_a_scale_down() {
        let pods = vec![pod("a", "100m"), pod("b", "100m"), pod("c", "100m")];
        let requests = requests_of(&pods, "cpu", None).unwrap();
        // a uses 40 % of a 50 % target; b and c have no samples yet: counted as 100 %, the ratio
        // crosses 1 and nothing moves.
        let samples: HashMap<String, Sample> = [("a".into(), sample(40))].into();
        assert_eq!(
            replicas_for(3, &pods, &samples, &requests, Goal::Utilization(50), true, at()),
            Ok((3, 40))
        );
        // A request missing is an error, as upstream's.
        let bare = vec![Arc::new(
            json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}]}}),
        )];
        assert!(
            requests_of(&bare, "cpu", None)
                .unwrap_err()
                .contains("missing request for cpu")
        );
    }

    #[test]
    fn without_a_behavior_scale_down_waits_for_the_highest_recent_recommendation() {
        let mut memory = Memory::default();
        let mut conditions = Vec::new();
        let b = Bounds { min: 1, max: 10 };
        let t0 = Instant::now();
        assert_eq!(
            normalize(&mut memory, 2, 8, &b, &mut conditions, t0),
            4,
            "at most double, or 4"
        );
        assert_eq!(conditions[1]["reason"], "ScaleUpLimit");
        assert_eq!(
            normalize(
                &mut memory,
                4,
                1,
                &b,
                &mut conditions,
                t0 + Duration::from_secs(15)
            ),
            8
        );
        assert_eq!(conditions[0]["reason"], "ScaleDownStabilized");
    }

    #[test]
    fn behaviors_limit_the_rate_and_their_windows_stabilize() {
        let behavior = json!({
            "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
            "scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}});
        let mut memory = Memory::default();
        let mut conditions = Vec::new();
        let b = Bounds { min: 1, max: 10 };
        let t0 = Instant::now();
        assert_eq!(
            normalize_with_behavior(&mut memory, 2, 6, &b, &behavior, &mut conditions, t0),
            3
        );
        memory.ups.push((t0, 1));
        // Within the minute one pod was added already: no more.
        assert_eq!(
            normalize_with_behavior(
                &mut memory,
                3,
                6,
                &b,
                &behavior,
                &mut conditions,
                t0 + Duration::from_secs(15)
            ),
            3
        );
        // Down at once, with no window.
        assert_eq!(
            normalize_with_behavior(
                &mut memory,
                3,
                1,
                &b,
                &behavior,
                &mut conditions,
                t0 + Duration::from_secs(30)
            ),
            1
        );
    }
}
