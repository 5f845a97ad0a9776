//! Controllers inside skiff-control, driven with real kubectl; the test acts as the kubelet by
//! writing pod status through the API.

use std::time::Duration;

use serde_json::Value;
use skiff_tests::Control;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Polls `check` until it holds (bounded; no timing is asserted).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never happened: {what}");
}

fn pods(c: &Control, selector: &str) -> Vec<Value> {
    let list = json(&c.ok(&["get", "pods", "-l", selector, "-o", "json"]));
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Marks every pod matching `selector` Running and Ready, as a kubelet would.
fn make_ready(c: &Control, selector: &str) {
    for pod in pods(c, selector) {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let status = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
        c.ok(&[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ]);
    }
}

const RS: &str = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web, namespace: default}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: registry.local/busybox:1.36}]}\n";

#[test]
fn replicaset_keeps_its_replicas_and_reports_readiness() {
    let c = Control::start();
    c.ok_stdin(&["apply", "-f", "-"], RS);
    eventually("3 pods", || pods(&c, "app=web").len() == 3);
    let pod = &pods(&c, "app=web")[0];
    assert!(pod["metadata"]["name"].as_str().unwrap().starts_with("web-"));
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    // A deleted pod is replaced.
    let victim = pod["metadata"]["name"].as_str().unwrap().to_owned();
    c.ok(&["delete", "pod", &victim]);
    eventually("replacement", || {
        let p = pods(&c, "app=web");
        p.len() == 3 && p.iter().all(|p| p["metadata"]["name"] != victim.as_str())
    });
    make_ready(&c, "app=web");
    eventually("ready replicas reported", || {
        let rs = json(&c.ok(&["get", "rs", "web", "-o", "json"]));
        rs["status"]["readyReplicas"] == 3 && rs["status"]["observedGeneration"] == 1
    });
    c.ok(&["scale", "rs", "web", "--replicas=1"]);
    eventually("scaled down", || pods(&c, "app=web").len() == 1);
    let described = c.ok(&["describe", "rs", "web"]);
    assert!(
        described.contains("SuccessfulCreate") && described.contains("SuccessfulDelete"),
        "{described}"
    );
    // Deleting the ReplicaSet deletes its pods (garbage collection).
    c.ok(&["delete", "rs", "web"]);
    eventually("pods collected", || pods(&c, "app=web").is_empty());
}
