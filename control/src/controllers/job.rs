//! The Job controller: runs pods until `completions` succeed (or, without completions, until one
//! does), `parallelism` at a time; fails the Job past `backoffLimit` failures (re-creating failed
//! pods after upstream's exponential back-off) or `activeDeadlineSeconds`; Indexed jobs give each
//! pod its completion index; suspended jobs run nothing; finished jobs go after
//! `ttlSecondsAfterFinished`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::error::Error;
use super::events;
use super::runtime::{Cache, Caches, Next, Queue, queue_changes, queue_owners, run_workers};
use super::write::{call, put_status};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{active, pod_from_template, pod_ready};
use crate::objects::meta::{meta_str, now, parse_time};
use crate::objects::selector::LabelSelector;
use crate::objects::write::{DeleteOptions, Propagation};

/// Store prefix of Jobs.
pub const JOB_PREFIX: &str = keys::JOBS;
const MANAGER: &str = "job-controller";
const INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// `Complete` or `Failed`, once the Job has finished.
fn finished(job: &Value) -> Option<&'static str> {
    let conds = job["status"]["conditions"].as_array()?;
    ["Complete", "Failed"]
        .into_iter()
        .find(|kind| conds.iter().any(|c| c["type"] == *kind && c["status"] == "True"))
}

fn seconds_since(ts: &Value) -> Option<i64> {
    parse_time(ts.as_str()?).map(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds())
}

/// Compresses indexes into upstream's `completedIndexes` form ("0-2,5").
fn index_ranges(indexes: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().peekable();
    while let Some(&start) = iter.next() {
        let mut end = start;
        while iter.peek().is_some_and(|n| **n == end + 1) {
            end = *iter.next().unwrap_or(&end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

fn pod_index(pod: &Value) -> Option<i64> {
    pod["metadata"]["annotations"][INDEX]
        .as_str()
        .and_then(|i| i.parse().ok())
}

/// A Job's pod selector (set by defaulting from the job's uid).
fn selector(job: &Value) -> Option<LabelSelector> {
    LabelSelector::from_object(&job["spec"]["selector"])
        .ok()
        .filter(|s| !s.is_empty())
}

async fn reconcile(app: &Objects, jobs: &Cache, pods: &Cache, key: &str) -> Result<Next, Error> {
    let Some((job, ns, name)) = jobs.live(key) else {
        return Ok(Next::Done);
    };
    let spec = &job["spec"];
    if finished(&job).is_some() {
        if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
            let since = seconds_since(&job["status"]["completionTime"])
                .or_else(|| seconds_since(&job["status"]["conditions"][0]["lastTransitionTime"]))
                .unwrap_or(0);
            if since >= ttl {
                let c = call(app, "batch", "jobs", &ns, None, None, MANAGER);
                let _ = app.delete(&c, &name, &DeleteOptions::background()).await;
                return Ok(Next::Done);
            }
            return Ok(Next::After(Duration::from_secs((ttl - since).max(1) as u64)));
        }
        return Ok(Next::Done);
    }
    // Pods the selector matches that nobody controls are adopted; those it no longer matches are
    // released (upstream's controller ref manager).
    if let Some(selector) = selector(&job)
        && super::replicaset::claim_objects(app, &job, "Job", &selector, &pods.list(Some(&ns)), keys::PODS)
            .await?
    {
        pods.wait_for(app.store.revision()).await;
    }
    let owned: Vec<Arc<Value>> = pods.owned_by(&ns, "Job", &name);
    let running: Vec<&Arc<Value>> = owned.iter().filter(|p| active(p)).collect();
    let succeeded_pods: Vec<&Arc<Value>> = owned
        .iter()
        .filter(|p| p["status"]["phase"] == "Succeeded")
        .collect();
    let failed = owned.iter().filter(|p| p["status"]["phase"] == "Failed").count() as i64;
    let indexed = spec["completionMode"] == "Indexed";
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
    let suspended = spec["suspend"] == json!(true);
    let completed_indexes: BTreeSet<i64> = succeeded_pods.iter().filter_map(|p| pod_index(p)).collect();
    let succeeded = if indexed {
        completed_indexes.len() as i64
    } else {
        succeeded_pods.len() as i64
    };
    let start_time = job["status"]["startTime"].clone();
    let start_time = if start_time.is_string() || suspended {
        start_time
    } else {
        json!(now())
    };

    let mut condition: Option<Value> = None;
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && running.is_empty(),
    };
    if complete {
        condition = Some(
            json!({"type": "Complete", "status": "True", "lastProbeTime": now(), "lastTransitionTime": now()}),
        );
    } else if failed > backoff_limit {
        condition = Some(
            json!({"type": "Failed", "status": "True", "lastProbeTime": now(), "lastTransitionTime": now(), "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}),
        );
    } else if let Some(deadline) = spec["activeDeadlineSeconds"].as_i64()
        && seconds_since(&start_time).is_some_and(|s| s >= deadline)
    {
        condition = Some(
            json!({"type": "Failed", "status": "True", "lastProbeTime": now(), "lastTransitionTime": now(), "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}),
        );
    }

    let pod_call = call(app, "", "pods", &ns, None, None, MANAGER);
    let mut next = Next::Done;
    if condition.as_ref().is_some_and(|c| c["type"] == "Failed") || suspended {
        for p in &running {
            let _ = app
                .delete(
                    &pod_call,
                    meta_str(p, "name"),
                    &DeleteOptions {
                        propagation: Some(Propagation::Background),
                        grace_seconds: Some(0),
                        ..DeleteOptions::default()
                    },
                )
                .await;
        }
    } else if condition.is_none() {
        // Upstream's back-off after failures: 10 s doubling, at most 6 minutes.
        let last_failure = owned
            .iter()
            .filter(|p| p["status"]["phase"] == "Failed")
            .filter_map(|p| {
                p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
                    .as_str()
                    .or(p["metadata"]["creationTimestamp"].as_str())
            })
            .filter_map(parse_time)
            .max();
        let delay = if failed > 0 {
            (10i64 << (failed - 1).min(6)).min(360)
        } else {
            0
        };
        let waited = last_failure
            .map(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds())
            .unwrap_or(i64::MAX);
        if failed > 0 && waited < delay {
            next = Next::After(Duration::from_secs((delay - waited).max(1) as u64));
        } else {
            let remaining = completions.map(|c| c - succeeded).unwrap_or(parallelism);
            let want_active = parallelism.min(remaining.max(0));
            let mut to_create = (want_active - running.len() as i64).max(0);
            let busy: BTreeSet<i64> = running.iter().filter_map(|p| pod_index(p)).collect();
            let mut index = 0i64;
            while to_create > 0 {
                let template = &spec["template"];
                let mut pod = pod_from_template(template, &job, &name, None);
                if indexed {
                    while completed_indexes.contains(&index) || busy.contains(&index) {
                        index += 1;
                    }
                    if completions.is_some_and(|c| index >= c) {
                        break;
                    }
                    pod["metadata"]["generateName"] = json!(format!("{name}-{index}-"));
                    pod["metadata"]["annotations"][INDEX] = json!(index.to_string());
                    pod["metadata"]["labels"][INDEX] = json!(index.to_string());
                    pod["spec"]["hostname"] = json!(format!("{name}-{index}"));
                    for c in pod["spec"]["containers"].as_array_mut().into_iter().flatten() {
                        let env = c["env"].as_array().cloned().unwrap_or_default();
                        let mut env = env;
                        env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": index.to_string()}));
                        c["env"] = json!(env);
                    }
                    index += 1;
                }
                match app.create(&pod_call, pod).await {
                    Ok(created) => {
                        events::record(
                            app,
                            &job,
                            MANAGER,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {}", meta_str(&created, "name")),
                        )
                        .await;
                        pods.wait_for(meta_str(&created, "resourceVersion").parse().unwrap_or(0))
                            .await;
                    }
                    Err(e) => return Err(e.into()),
                }
                to_create -= 1;
            }
            if let Some(deadline) = spec["activeDeadlineSeconds"].as_i64() {
                let left = deadline - seconds_since(&start_time).unwrap_or(0);
                next = Next::After(Duration::from_secs(left.max(1) as u64));
            }
        }
    }

    let running_now = pods.active_owned_by(&ns, "Job", &name);
    let mut status = json!({
        "active": running_now.len(),
        "ready": running_now.iter().filter(|p| pod_ready(p)).count(),
        "succeeded": succeeded,
        "failed": failed,
        "uncountedTerminatedPods": {},
    });
    if start_time.is_string() {
        status["startTime"] = start_time;
    }
    if indexed && !completed_indexes.is_empty() {
        status["completedIndexes"] = json!(index_ranges(&completed_indexes));
    }
    let mut conditions: Vec<Value> = job["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if suspended
        && !conditions
            .iter()
            .any(|c| c["type"] == "Suspended" && c["status"] == "True")
    {
        conditions.push(json!({"type": "Suspended", "status": "True", "lastProbeTime": now(), "lastTransitionTime": now(), "reason": "JobSuspended", "message": "Job suspended"}));
    }
    if let Some(c) = condition {
        if c["type"] == "Complete" {
            status["completionTime"] = json!(now());
            conditions.push(json!({"type": "SuccessCriteriaMet", "status": "True", "lastProbeTime": now(), "lastTransitionTime": now(), "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"}));
            events::record(app, &job, MANAGER, "Normal", "Completed", "Job completed").await;
        } else {
            events::record(
                app,
                &job,
                MANAGER,
                "Warning",
                c["reason"].as_str().unwrap_or("Failed"),
                c["message"].as_str().unwrap_or_default(),
            )
            .await;
        }
        conditions.push(c);
        if spec["ttlSecondsAfterFinished"].is_i64() {
            next = Next::After(Duration::from_secs(
                spec["ttlSecondsAfterFinished"].as_i64().unwrap_or(0).max(1) as u64,
            ));
        }
    }
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
    }
    let mut previous = job["status"].clone();
    let comparable = |s: &mut Value| {
        if let Some(m) = s.as_object_mut() {
            m.remove("completionTime");
        }
    };
    let mut candidate = status.clone();
    comparable(&mut previous);
    comparable(&mut candidate);
    if previous != candidate {
        put_status(app, &job, "batch", "jobs", status, MANAGER).await?;
    }
    Ok(next)
}

/// Starts the controller.
pub fn start(app: Arc<Objects>, caches: &Caches) {
    let jobs = caches.get(&app, JOB_PREFIX);
    let pods = caches.get(&app, keys::PODS);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &jobs);
    queue_owners(&queue, &pods, "Job", JOB_PREFIX);
    super::replicaset::queue_selecting(&queue, &pods, &jobs, JOB_PREFIX, selector);
    run_workers(app.clone(), "job", queue, 2, move |key| {
        let (app, jobs, pods) = (app.clone(), jobs.clone(), pods.clone());
        async move { reconcile(&app, &jobs, &pods, &key).await }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_compress_to_ranges() {
        assert_eq!(index_ranges(&BTreeSet::from([0, 1, 2, 5, 7, 8])), "0-2,5,7-8");
    }
}
