//! The control plane's metrics, served at `/metrics` in Prometheus' text format (0.0.4) under the
//! names upstream's components use, so dashboards and alerts written for kube-apiserver, etcd,
//! kube-scheduler and kube-controller-manager read them unchanged: `apiserver_request_total`,
//! `apiserver_request_duration_seconds`, `apiserver_current_inflight_requests`,
//! `apiserver_longrunning_requests`, etcd's `etcd_disk_wal_fsync_duration_seconds`,
//! `etcd_disk_backend_commit_duration_seconds`, `etcd_mvcc_db_total_size_in_bytes`,
//! `etcd_server_has_leader`/`is_leader`, `scheduler_schedule_attempts_total`,
//! `scheduler_scheduling_attempt_duration_seconds`, and client-go's `workqueue_*` per controller.
//!
//! One registry per process, as upstream's `legacyregistry`: families are statics, each a map
//! from label values to a value, behind a mutex held for one update. Values only the store knows
//! at scrape time (its size, its leader) come from collectors it registers.

use std::sync::Mutex;

pub use skiff_common::metrics::{CONTENT_TYPE, Held};
use skiff_common::metrics::{Family, Histogram, Vector};

/// Buckets of `apiserver_request_duration_seconds`, upstream's.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0,
    20.0, 30.0, 45.0, 60.0,
];

/// etcd's disk buckets: 1 ms doubling 14 times (to 8.192 s).
pub const DISK_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
];

/// kube-scheduler's attempt buckets: 1 ms doubling 15 times.
pub const SCHEDULING_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384,
];

/// client-go's workqueue buckets: 10 ns times ten, ten times.
pub const WORKQUEUE_BUCKETS: &[f64] = &[1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

const REQUEST_LABELS: &[&str] = &[
    "verb",
    "dry_run",
    "group",
    "version",
    "resource",
    "subresource",
    "scope",
    "component",
    "code",
];

/// `apiserver_request_total`.
pub static API_REQUESTS: Vector = Vector::counter(
    "apiserver_request_total",
    "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
    REQUEST_LABELS,
);

/// `apiserver_request_duration_seconds` (not for WATCH and CONNECT, as upstream).
pub static API_DURATION: Histogram = Histogram::new(
    "apiserver_request_duration_seconds",
    "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
    &[
        "verb",
        "dry_run",
        "group",
        "version",
        "resource",
        "subresource",
        "scope",
        "component",
    ],
    REQUEST_BUCKETS,
);

/// `apiserver_current_inflight_requests`.
pub static API_INFLIGHT: Vector = Vector::gauge(
    "apiserver_current_inflight_requests",
    "Maximal number of currently used inflight request limit of this apiserver per request kind in last second.",
    &["request_kind"],
);

/// `apiserver_longrunning_requests`: open watches (and other long-running requests).
pub static API_LONGRUNNING: Vector = Vector::gauge(
    "apiserver_longrunning_requests",
    "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component. Not all requests are tracked this way.",
    &[
        "verb",
        "group",
        "version",
        "resource",
        "subresource",
        "scope",
        "component",
    ],
);

/// `etcd_disk_wal_fsync_duration_seconds`: appends to the Raft log (committed with fsync).
pub static WAL_FSYNC: Histogram = Histogram::new(
    "etcd_disk_wal_fsync_duration_seconds",
    "The latency distributions of fsync called by WAL.",
    &[],
    DISK_BUCKETS,
);

/// `etcd_disk_backend_commit_duration_seconds`: applied batches committed to the state database.
pub static BACKEND_COMMIT: Histogram = Histogram::new(
    "etcd_disk_backend_commit_duration_seconds",
    "The latency distributions of commit called by backend.",
    &[],
    DISK_BUCKETS,
);

/// `scheduler_schedule_attempts_total`.
pub static SCHEDULE_ATTEMPTS: Vector = Vector::counter(
    "scheduler_schedule_attempts_total",
    "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
    &["profile", "result"],
);

/// `scheduler_scheduling_attempt_duration_seconds`.
pub static SCHEDULING_DURATION: Histogram = Histogram::new(
    "scheduler_scheduling_attempt_duration_seconds",
    "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
    &["profile", "result"],
    SCHEDULING_BUCKETS,
);

/// `workqueue_adds_total`.
pub static QUEUE_ADDS: Vector = Vector::counter(
    "workqueue_adds_total",
    "Total number of adds handled by workqueue",
    &["name"],
);

/// `workqueue_depth`.
pub static QUEUE_DEPTH: Vector = Vector::gauge("workqueue_depth", "Current depth of workqueue", &["name"]);

/// `workqueue_retries_total`.
pub static QUEUE_RETRIES: Vector = Vector::counter(
    "workqueue_retries_total",
    "Total number of retries handled by workqueue",
    &["name"],
);

/// `workqueue_queue_duration_seconds`.
pub static QUEUE_WAIT: Histogram = Histogram::new(
    "workqueue_queue_duration_seconds",
    "How long in seconds an item stays in workqueue before being requested.",
    &["name"],
    WORKQUEUE_BUCKETS,
);

/// `workqueue_work_duration_seconds`.
pub static QUEUE_WORK: Histogram = Histogram::new(
    "workqueue_work_duration_seconds",
    "How long in seconds processing an item from workqueue takes.",
    &["name"],
    WORKQUEUE_BUCKETS,
);

/// Gauges the store sets at scrape time (its size and leadership).
pub static DB_SIZE: Vector = Vector::gauge(
    "etcd_mvcc_db_total_size_in_bytes",
    "Total size of the underlying database physically allocated in bytes.",
    &[],
);
/// `etcd_server_has_leader`.
pub static HAS_LEADER: Vector = Vector::gauge(
    "etcd_server_has_leader",
    "Whether or not a leader exists. 1 is existence, 0 is not.",
    &[],
);
/// `etcd_server_is_leader`.
pub static IS_LEADER: Vector = Vector::gauge(
    "etcd_server_is_leader",
    "Whether or not this member is a leader. 1 if is, 0 otherwise.",
    &[],
);
/// `etcd_debugging_mvcc_watcher_total`: watch streams on the store (the API's and the
/// controllers' caches).
pub static STORE_WATCHERS: Vector = Vector::gauge(
    "etcd_debugging_mvcc_watcher_total",
    "Total number of watchers.",
    &[],
);
/// `etcd_debugging_mvcc_current_revision`.
pub static REVISION: Vector = Vector::gauge(
    "etcd_debugging_mvcc_current_revision",
    "The current revision of store.",
    &[],
);

static FAMILIES: &[&dyn Family] = &[
    &API_REQUESTS,
    &API_DURATION,
    &API_INFLIGHT,
    &API_LONGRUNNING,
    &WAL_FSYNC,
    &BACKEND_COMMIT,
    &DB_SIZE,
    &HAS_LEADER,
    &IS_LEADER,
    &STORE_WATCHERS,
    &REVISION,
    &SCHEDULE_ATTEMPTS,
    &SCHEDULING_DURATION,
    &QUEUE_ADDS,
    &QUEUE_DEPTH,
    &QUEUE_RETRIES,
    &QUEUE_WAIT,
    &QUEUE_WORK,
];

/// Something that sets gauges just before a scrape (the store: its size, its leader).
pub type Collector = Box<dyn Fn() + Send + Sync>;

static COLLECTORS: Mutex<Vec<Collector>> = Mutex::new(Vec::new());

/// Runs `collect` before every scrape (it should hold only weak references to what it reads).
pub fn register(collect: Collector) {
    COLLECTORS.lock().unwrap_or_else(|p| p.into_inner()).push(collect);
}

/// The whole registry in Prometheus' text format.
pub fn render() -> String {
    for collect in COLLECTORS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        collect();
    }
    skiff_common::metrics::render(FAMILIES)
}

/// The labels upstream gives one API request: its metric verb (`GET`, `LIST`, `WATCH`, `POST`,
/// `PUT`, `PATCH`, `APPLY`, `DELETE`, `DELETECOLLECTION`, `CONNECT`), and its scope (`resource`
/// for one object, `namespace`, `cluster`; empty for other URLs).
pub fn request_verb_and_scope(
    info: &crate::api::audit::RequestInfo,
    method: &str,
    apply: bool,
) -> (&'static str, &'static str) {
    if !info.resource_request {
        let verb = match method {
            "GET" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            "HEAD" => "HEAD",
            "OPTIONS" => "OPTIONS",
            _ => "other",
        };
        return (verb, "");
    }
    let connect = matches!(
        info.subresource.as_str(),
        "exec" | "attach" | "portforward" | "proxy"
    );
    let verb = match info.verb.as_str() {
        _ if connect => "CONNECT",
        "get" => "GET",
        "list" => "LIST",
        "watch" => "WATCH",
        "create" => "POST",
        "update" => "PUT",
        "patch" if apply => "APPLY",
        "patch" => "PATCH",
        "delete" => "DELETE",
        "deletecollection" => "DELETECOLLECTION",
        _ => "other",
    };
    let scope = if !info.name.is_empty() {
        "resource"
    } else if !info.namespace.is_empty() {
        "namespace"
    } else {
        "cluster"
    };
    (verb, scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_COUNTER: Vector = Vector::counter("test_total", "A test counter.", &["a"]);
    static TEST_HISTOGRAM: Histogram =
        Histogram::new("test_seconds", "A test histogram.", &["a"], &[0.1, 1.0]);

    #[test]
    fn families_render_in_prometheus_text_format() {
        TEST_COUNTER.inc(&["x\"y"]);
        TEST_COUNTER.add(&["x\"y"], 2.0);
        let mut out = String::new();
        TEST_COUNTER.render(&mut out);
        assert_eq!(
            out,
            "# HELP test_total A test counter.\n# TYPE test_total counter\ntest_total{a=\"x\\\"y\"} 3\n"
        );
        for v in [0.05, 0.5, 5.0] {
            TEST_HISTOGRAM.observe(&["h"], v);
        }
        let mut out = String::new();
        TEST_HISTOGRAM.render(&mut out);
        assert_eq!(
            out,
            "# HELP test_seconds A test histogram.\n# TYPE test_seconds histogram\n\
             test_seconds_bucket{a=\"h\",le=\"0.1\"} 1\ntest_seconds_bucket{a=\"h\",le=\"1\"} 2\n\
             test_seconds_bucket{a=\"h\",le=\"+Inf\"} 3\ntest_seconds_sum{a=\"h\"} 5.55\n\
             test_seconds_count{a=\"h\"} 3\n"
        );
        static HELD: Vector = Vector::gauge("test_open", "Open things.", &["k"]);
        {
            let _one = Held::new(&HELD, &["w"]);
            let _two = Held::new(&HELD, &["w"]);
            let mut out = String::new();
            HELD.render(&mut out);
            assert!(out.ends_with("test_open{k=\"w\"} 2\n"), "{out}");
        }
        let mut out = String::new();
        HELD.render(&mut out);
        assert!(out.ends_with("test_open{k=\"w\"} 0\n"), "{out}");
    }

    #[test]
    fn requests_get_upstreams_verbs_and_scopes() {
        use crate::api::audit::request_info;
        use axum::http::Method;
        let case = |method: Method, path: &str, query: Option<&str>, apply: bool| {
            let info = request_info(&method, path, query);
            request_verb_and_scope(&info, method.as_str(), apply)
        };
        assert_eq!(
            case(Method::GET, "/api/v1/namespaces/a/pods", None, false),
            ("LIST", "namespace")
        );
        assert_eq!(
            case(Method::GET, "/api/v1/pods", Some("watch=true"), false),
            ("WATCH", "cluster")
        );
        assert_eq!(
            case(
                Method::PATCH,
                "/apis/apps/v1/namespaces/a/deployments/d",
                None,
                true
            ),
            ("APPLY", "resource")
        );
        assert_eq!(
            case(Method::POST, "/api/v1/namespaces/a/pods", None, false),
            ("POST", "namespace")
        );
        assert_eq!(
            case(Method::POST, "/api/v1/namespaces/a/pods/p/exec", None, false),
            ("CONNECT", "resource")
        );
        assert_eq!(case(Method::GET, "/healthz", None, false), ("GET", ""));
    }
}
