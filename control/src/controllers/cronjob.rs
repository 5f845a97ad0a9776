//! The CronJob controller: creates a Job for the most recent missed schedule time (in the
//! CronJob's `timeZone`, UTC by default), honouring `suspend`, `startingDeadlineSeconds` and the
//! concurrency policy, and keeps `successfulJobsHistoryLimit`/`failedJobsHistoryLimit` finished
//! Jobs. Time comes from an injectable clock so tests need no sleeps.

use std::sync::Arc;
use std::time::Duration;

use jiff::{Timestamp, tz::TimeZone};
use serde_json::{Value, json};

use super::error::Error;
use super::events;
use super::job::JOB_PREFIX;
use super::runtime::{Cache, Caches, Next, Queue, queue_changes, queue_owners, run_workers};
use super::write::{call, write_status};
use crate::objects::Objects;
use crate::objects::cron::Schedule;
use crate::objects::keys;
use crate::objects::meta::meta_str;
use crate::objects::meta::{controller_of, owner_ref};
use crate::objects::write::DeleteOptions;

/// Store prefix of CronJobs.
pub const CJ_PREFIX: &str = keys::CRON_JOBS;
const MANAGER: &str = "cronjob-controller";
/// Minutes looked back for missed schedules (one year), as a bound on work.
const LOOKBACK_MINUTES: i64 = 366 * 24 * 60;

/// Where the controller gets the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

fn parse_ts(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}

fn format_ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn finished(job: &Value) -> Option<bool> {
    let conds = job["status"]["conditions"].as_array()?;
    if conds
        .iter()
        .any(|c| c["type"] == "Complete" && c["status"] == "True")
    {
        return Some(true);
    }
    conds
        .iter()
        .any(|c| c["type"] == "Failed" && c["status"] == "True")
        .then_some(false)
}

/// `t` rounded down to its minute.
fn minute_floor(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60)).unwrap_or(t)
}

/// Whether the schedule fires at `t` (a whole minute), on the wall clock of `tz`.
fn fires(schedule: &Schedule, tz: &TimeZone, t: Timestamp) -> bool {
    schedule.matches(t.to_zoned_datetime(tz.clone()).datetime())
}

/// The latest schedule time in (`after`, `now`] and how many were missed, in `tz`.
fn last_due(
    schedule: &Schedule,
    tz: &TimeZone,
    after: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, usize) {
    let (mut latest, mut missed) = (None, 0);
    let mut t = minute_floor(now).as_second();
    let stop = after.as_second().max(now.as_second() - LOOKBACK_MINUTES * 60);
    while t > stop {
        let ts = Timestamp::from_second(t).unwrap_or(now);
        if fires(schedule, tz, ts) {
            latest.get_or_insert(ts);
            missed += 1;
            if missed > 100 {
                break;
            }
        }
        t -= 60;
    }
    (latest, missed)
}

/// The next schedule time after `now`, in `tz`.
fn next_due(schedule: &Schedule, tz: &TimeZone, now: Timestamp) -> Option<Timestamp> {
    let start = minute_floor(now).as_second();
    (1..=LOOKBACK_MINUTES)
        .filter_map(|m| Timestamp::from_second(start + m * 60).ok())
        .find(|t| fires(schedule, tz, *t))
}

/// One pass over a CronJob at time `now`.
pub async fn reconcile(
    app: &Objects,
    cjs: &Cache,
    jobs: &Cache,
    key: &str,
    now: Timestamp,
) -> Result<Next, Error> {
    let Some((cj, ns, name)) = cjs.live(key) else {
        return Ok(Next::Done);
    };
    let spec = &cj["spec"];
    let schedule = Schedule::parse(spec["schedule"].as_str().unwrap_or_default())?;
    let tz = match spec["timeZone"].as_str() {
        Some(name) => TimeZone::get(name).map_err(|e| format!("unknown time zone {name}: {e}"))?,
        None => TimeZone::UTC,
    };
    let mut owned: Vec<Arc<Value>> = jobs
        .list(Some(&ns))
        .into_iter()
        .filter(|j| controller_of(j, "CronJob") == Some(name.as_str()))
        .collect();
    owned.sort_by_key(|j| meta_str(j, "creationTimestamp").to_owned());
    let job_call = call(app, "batch", "jobs", &ns, None, None, MANAGER);
    let mut active: Vec<Arc<Value>> = owned.iter().filter(|j| finished(j).is_none()).cloned().collect();
    let mut last_schedule = parse_ts(&cj["status"]["lastScheduleTime"]);
    let since = last_schedule
        .or_else(|| parse_ts(&cj["metadata"]["creationTimestamp"]))
        .unwrap_or(now);

    if spec["suspend"] != json!(true) {
        let (due, missed) = last_due(&schedule, &tz, since, now);
        if missed > 100 {
            events::record(app, &cj, MANAGER, "Warning", "TooManyMissedTimes", "too many missed start times: > 100. Set or decrease .spec.startingDeadlineSeconds or check clock skew").await;
        }
        let too_late = |t: Timestamp| {
            spec["startingDeadlineSeconds"]
                .as_i64()
                .is_some_and(|d| now.as_second() - t.as_second() > d)
        };
        if let Some(t) = due.filter(|t| !too_late(*t)) {
            let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
            let run = match policy {
                "Forbid" if !active.is_empty() => {
                    events::record(app, &cj, MANAGER, "Normal", "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid").await;
                    false
                }
                "Replace" => {
                    for j in active.drain(..) {
                        let _ = app
                            .delete(&job_call, meta_str(&j, "name"), &DeleteOptions::background())
                            .await;
                        events::record(
                            app,
                            &cj,
                            MANAGER,
                            "Normal",
                            "SuccessfulDelete",
                            &format!("Deleted job {}", meta_str(&j, "name")),
                        )
                        .await;
                    }
                    true
                }
                _ => true,
            };
            if run {
                let template = &spec["jobTemplate"];
                let mut meta = template["metadata"].as_object().cloned().unwrap_or_default();
                meta.insert("name".into(), json!(format!("{name}-{}", t.as_second() / 60)));
                meta.insert("namespace".into(), json!(ns));
                meta.insert("ownerReferences".into(), json!([owner_ref(&cj)]));
                let mut annotations = meta
                    .get("annotations")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                annotations.insert(
                    "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
                    json!(format_ts(t)),
                );
                meta.insert("annotations".into(), json!(annotations));
                let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": template["spec"]});
                match app.create(&job_call, job).await {
                    Ok(created) => {
                        events::record(
                            app,
                            &cj,
                            MANAGER,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created job {}", meta_str(&created, "name")),
                        )
                        .await;
                        jobs.wait_for(meta_str(&created, "resourceVersion").parse().unwrap_or(0))
                            .await;
                        active.push(Arc::new(created));
                    }
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            last_schedule = Some(t);
        }
    }

    // Finished jobs beyond the history limits go, oldest first.
    for (ok, limit) in [
        (true, spec["successfulJobsHistoryLimit"].as_i64().unwrap_or(3)),
        (false, spec["failedJobsHistoryLimit"].as_i64().unwrap_or(1)),
    ] {
        let done: Vec<&Arc<Value>> = owned.iter().filter(|j| finished(j) == Some(ok)).collect();
        for j in done.iter().take(done.len().saturating_sub(limit.max(0) as usize)) {
            let _ = app
                .delete(&job_call, meta_str(j, "name"), &DeleteOptions::background())
                .await;
        }
    }

    let last_success = owned
        .iter()
        .filter(|j| finished(j) == Some(true))
        .filter_map(|j| j["status"]["completionTime"].as_str().map(str::to_owned))
        .max();
    let mut status = json!({});
    if !active.is_empty() {
        status["active"] = json!(active
            .iter()
            .map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "name": meta_str(j, "name"), "namespace": ns, "uid": meta_str(j, "uid"), "resourceVersion": meta_str(j, "resourceVersion")}))
            .collect::<Vec<_>>());
    }
    if let Some(t) = last_schedule {
        status["lastScheduleTime"] = json!(format_ts(t));
    }
    if let Some(t) = last_success {
        status["lastSuccessfulTime"] = json!(t);
    }
    write_status(app, &cj, "batch", "cronjobs", status, MANAGER).await?;
    Ok(match next_due(&schedule, &tz, now) {
        Some(t) => Next::After(Duration::from_secs(
            (t.as_second() - now.as_second()).max(1) as u64
        )),
        None => Next::Done,
    })
}

/// Starts the controller with `clock`.
pub fn start(app: Arc<Objects>, caches: &Caches, clock: Arc<dyn Clock>) {
    let cjs = caches.get(&app, CJ_PREFIX);
    let jobs = caches.get(&app, JOB_PREFIX);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &cjs);
    queue_owners(&queue, &jobs, "CronJob", CJ_PREFIX);
    run_workers(app.clone(), "cronjob", queue, 1, move |key| {
        let (app, cjs, jobs, clock) = (app.clone(), cjs.clone(), jobs.clone(), clock.clone());
        async move { reconcile(&app, &cjs, &jobs, &key, clock.now()).await }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::runtime::Caches;
    use crate::objects::service::Cidr;
    use crate::store::{Store, StoreConfig};

    async fn fixture(dir: &std::path::Path) -> (Arc<Objects>, Arc<Cache>, Arc<Cache>) {
        let store = Store::open(StoreConfig::single(
            dir.to_path_buf(),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .await
        .unwrap();
        let app = Arc::new(crate::objects::Objects::new(
            store,
            Cidr::parse("10.96.0.0/12").unwrap(),
        ));
        crate::bootstrap::ensure_defaults(&app).await.unwrap();
        let caches = Caches::default();
        let cjs = caches.get(&app, CJ_PREFIX);
        let jobs = caches.get(&app, JOB_PREFIX);
        (app, cjs, jobs)
    }

    async fn create_cronjob(app: &Objects, cjs: &Cache, name: &str, schedule: &str, extra: Value) -> Value {
        let mut spec = json!({"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.local/busybox:1.36"}]}}}}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, "namespace": "default"}, "spec": spec});
        let created = app
            .create(&call(app, "batch", "cronjobs", "default", None, None, "test"), cj)
            .await
            .unwrap();
        cjs.wait_for(app.store.revision()).await;
        created
    }

    fn job_names(jobs: &Cache) -> Vec<String> {
        let mut n: Vec<String> = jobs
            .list(Some("default"))
            .iter()
            .map(|j| meta_str(j, "name").to_owned())
            .collect();
        n.sort();
        n
    }

    async fn run(app: &Objects, cjs: &Cache, jobs: &Cache, name: &str, now: Timestamp) {
        reconcile(app, cjs, jobs, &format!("{CJ_PREFIX}default/{name}"), now)
            .await
            .unwrap();
        cjs.wait_for(app.store.revision()).await;
        jobs.wait_for(app.store.revision()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fires_per_schedule_with_concurrency_and_history_limits() {
        let dir = tempfile::tempdir().unwrap();
        let (app, cjs, jobs) = fixture(dir.path()).await;
        let cj = create_cronjob(
            &app,
            &cjs,
            "tick",
            "*/5 * * * *",
            json!({"concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1}),
        )
        .await;
        let created: Timestamp = cj["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let first = next_due(&Schedule::parse("*/5 * * * *").unwrap(), &TimeZone::UTC, created).unwrap();
        // Before the first schedule time nothing runs; at it, one Job named after the minute.
        run(
            &app,
            &cjs,
            &jobs,
            "tick",
            Timestamp::from_second(first.as_second() - 30).unwrap(),
        )
        .await;
        assert!(job_names(&jobs).is_empty());
        run(
            &app,
            &cjs,
            &jobs,
            "tick",
            Timestamp::from_second(first.as_second() + 10).unwrap(),
        )
        .await;
        assert_eq!(job_names(&jobs), vec![format!("tick-{}", first.as_second() / 60)]);
        // Running again for the same time does nothing.
        run(
            &app,
            &cjs,
            &jobs,
            "tick",
            Timestamp::from_second(first.as_second() + 20).unwrap(),
        )
        .await;
        assert_eq!(job_names(&jobs).len(), 1);
        // Forbid: the next time is skipped while the first Job is still active.
        let second = Timestamp::from_second(first.as_second() + 300).unwrap();
        run(&app, &cjs, &jobs, "tick", second).await;
        assert_eq!(job_names(&jobs).len(), 1);
        // Once it completes, the following time runs, and history keeps one finished Job.
        let job_name = job_names(&jobs)[0].clone();
        let mut job = (*jobs.get(&format!("{JOB_PREFIX}default/{job_name}")).unwrap()).clone();
        job["status"] = json!({"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-11-26T00:00:00Z"});
        app.update(
            &call(
                &app,
                "batch",
                "jobs",
                "default",
                Some(&job_name),
                Some("status"),
                "test",
            ),
            job,
        )
        .await
        .unwrap();
        jobs.wait_for(app.store.revision()).await;
        run(
            &app,
            &cjs,
            &jobs,
            "tick",
            Timestamp::from_second(second.as_second() + 300).unwrap(),
        )
        .await;
        assert_eq!(job_names(&jobs).len(), 2);
        let status = cjs.get(&format!("{CJ_PREFIX}default/tick")).unwrap()["status"].clone();
        assert_eq!(status["active"].as_array().map(Vec::len), Some(1));
        assert_eq!(status["lastSuccessfulTime"], "2026-11-26T00:00:00Z");
        app.store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn schedules_follow_the_time_zone_and_suspend() {
        let dir = tempfile::tempdir().unwrap();
        let (app, cjs, jobs) = fixture(dir.path()).await;
        let cj = create_cronjob(
            &app,
            &cjs,
            "tokyo",
            "0 9 * * *",
            json!({"timeZone": "Asia/Tokyo"}),
        )
        .await;
        let created: Timestamp = cj["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // 09:00 in Tokyo is 00:00 UTC.
        let midnight_utc = Timestamp::from_second((created.as_second() / 86_400 + 1) * 86_400).unwrap();
        run(
            &app,
            &cjs,
            &jobs,
            "tokyo",
            Timestamp::from_second(midnight_utc.as_second() + 60).unwrap(),
        )
        .await;
        let job = jobs
            .list(Some("default"))
            .pop()
            .expect("a job at 09:00 Tokyo time");
        assert_eq!(
            job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"],
            format_ts(midnight_utc)
        );
        create_cronjob(&app, &cjs, "paused", "* * * * *", json!({"suspend": true})).await;
        run(
            &app,
            &cjs,
            &jobs,
            "paused",
            Timestamp::from_second(created.as_second() + 600).unwrap(),
        )
        .await;
        assert_eq!(jobs.list(Some("default")).len(), 1);
        app.store.shutdown().await;
    }
}
