//! The agent's own metrics at `/metrics` (Prometheus' text format), under the names the kubelet
//! and kube-proxy use, so their dashboards and alerts read them: `kubelet_pod_start_duration_seconds`,
//! `kubelet_running_pods`, `kubelet_running_containers`, `kubeproxy_sync_proxy_rules_duration_seconds`,
//! `kubeproxy_sync_proxy_rules_last_timestamp_seconds`, `kubeproxy_network_programming_duration_seconds`,
//! `kubeproxy_sync_proxy_rules_{service,endpoint}_changes_total`, and Skiff's own
//! `skiff_proxy_map_entries` (what the data plane holds: the eBPF maps' entries, or the nftables
//! plane's service ports and backends). Per-container CPU and memory are at `/metrics/cadvisor`.

use skiff_common::metrics::{Family, Histogram, Vector};

/// The kubelet's pod start buckets.
const POD_START_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0,
    480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// kube-proxy's sync buckets: 1 ms doubling 15 times.
const SYNC_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384,
];

/// kube-proxy's network programming buckets: 0.25 s, 0.5 s, each second to 59 s, 5 s steps to
/// 115 s, 30 s steps to 300 s.
const PROGRAMMING_BUCKETS: &[f64] = &[
    0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0,
    18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0, 28.0, 29.0, 30.0, 31.0, 32.0, 33.0, 34.0,
    35.0, 36.0, 37.0, 38.0, 39.0, 40.0, 41.0, 42.0, 43.0, 44.0, 45.0, 46.0, 47.0, 48.0, 49.0, 50.0, 51.0,
    52.0, 53.0, 54.0, 55.0, 56.0, 57.0, 58.0, 59.0, 60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 100.0,
    105.0, 110.0, 115.0, 120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0,
];

/// `kubelet_pod_start_duration_seconds`.
pub static POD_START: Histogram = Histogram::new(
    "kubelet_pod_start_duration_seconds",
    "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
    &[],
    POD_START_BUCKETS,
);

/// `kubelet_running_pods`.
pub static RUNNING_PODS: Vector = Vector::gauge(
    "kubelet_running_pods",
    "Number of pods that have a running pod sandbox",
    &[],
);

/// `kubelet_running_containers`.
pub static RUNNING_CONTAINERS: Vector = Vector::gauge(
    "kubelet_running_containers",
    "Number of containers currently running",
    &["container_state"],
);

/// `kubeproxy_sync_proxy_rules_duration_seconds`.
pub static SYNC_DURATION: Histogram = Histogram::new(
    "kubeproxy_sync_proxy_rules_duration_seconds",
    "SyncProxyRules latency in seconds",
    &[],
    SYNC_BUCKETS,
);

/// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`.
pub static LAST_SYNC: Vector = Vector::gauge(
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "The last time proxy rules were successfully synced",
    &[],
);

/// `kubeproxy_network_programming_duration_seconds`.
pub static NETWORK_PROGRAMMING: Histogram = Histogram::new(
    "kubeproxy_network_programming_duration_seconds",
    "In Cluster Network Programming Latency in seconds",
    &[],
    PROGRAMMING_BUCKETS,
);

/// `kubeproxy_sync_proxy_rules_service_changes_total`.
pub static SERVICE_CHANGES: Vector = Vector::counter(
    "kubeproxy_sync_proxy_rules_service_changes_total",
    "Cumulative proxy rules Service changes",
    &[],
);

/// `kubeproxy_sync_proxy_rules_endpoint_changes_total`.
pub static ENDPOINT_CHANGES: Vector = Vector::counter(
    "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    "Cumulative proxy rules Endpoint changes",
    &[],
);

/// `skiff_proxy_map_entries`.
pub static MAP_ENTRIES: Vector = Vector::gauge(
    "skiff_proxy_map_entries",
    "Entries the service data plane holds, by map (eBPF: services, backends, members; nftables: services, backends)",
    &["mode", "map"],
);

static FAMILIES: &[&dyn Family] = &[
    &POD_START,
    &RUNNING_PODS,
    &RUNNING_CONTAINERS,
    &SYNC_DURATION,
    &LAST_SYNC,
    &NETWORK_PROGRAMMING,
    &SERVICE_CHANGES,
    &ENDPOINT_CHANGES,
    &MAP_ENTRIES,
];

/// The agent's metrics in Prometheus' text format.
pub fn render() -> String {
    let (pods, containers) = crate::runtime::stats::running();
    RUNNING_PODS.set(&[], pods as f64);
    RUNNING_CONTAINERS.set(&["running"], containers as f64);
    skiff_common::metrics::render(FAMILIES)
}
