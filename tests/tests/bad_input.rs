//! Bad input gets a Kubernetes Status with the right reason and code, and stores nothing.

use serde_json::Value;
use skiff_tests::BoundedOutput;
use skiff_tests::Control;

fn raw_post(c: &Control, path: &str, body: &str) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    c.fails(&["create", "--raw", path, "-f", file.path().to_str().unwrap()])
}

#[test]
fn malformed_and_mismatched_bodies() {
    let c = Control::start();
    let err = raw_post(&c, "/api/v1/namespaces/default/configmaps", "{not json");
    assert!(
        err.contains("BadRequest") || err.contains("unknown format"),
        "{err}"
    );
    let err = raw_post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"other"}}"#,
    );
    assert!(err.contains("does not match the namespace"), "{err}");
    let err = raw_post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
    );
    assert!(err.contains("does not match the expected kind"), "{err}");
    let err = raw_post(
        &c,
        "/api/v1/namespaces/default/widgets",
        r#"{"metadata":{"name":"x"}}"#,
    );
    assert!(
        err.contains("NotFound") || err.contains("could not find the requested resource"),
        "{err}"
    );
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let err = raw_post(&c, "/api/v1/namespaces/default/configmaps", &big);
    assert!(err.contains("too large"), "{err}");
    assert!(c.fails(&["get", "cm", "x", "big"]).contains("not found"));
}

#[test]
fn invalid_names_labels_and_missing_fields() {
    let c = Control::start();
    let err = c.fails_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name, namespace: default}\n",
    );
    assert!(err.contains("is invalid") && err.contains("RFC 1123"), "{err}");
    let err = c.fails_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: has.dot}\n",
    );
    assert!(err.contains("RFC 1123 label"), "{err}");
    // Most names are RFC 1123 subdomains: up to 253 characters, with no 63-character cap on a part
    // (the conformance suite names ConfigMaps with 73); namespace and service names are labels.
    let long = "a".repeat(73);
    c.ok(&["create", "configmap", &long, "--from-literal=k=v"]);
    c.ok(&["delete", "configmap", &long]);
    let err = c.fails(&["create", "namespace", &"n".repeat(64)]);
    assert!(err.contains("RFC 1123 label"), "{err}");
    let err = c.fails(&["create", "configmap", &"b".repeat(254)]);
    assert!(err.contains("RFC 1123 subdomain"), "{err}");
    let err = c.fails_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok, namespace: default, labels: {a: 'not valid!'}}\n");
    assert!(err.contains("metadata.labels"), "{err}");
    let err = c.fails_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default}\nspec: {containers: []}\n",
    );
    assert!(err.contains("spec.containers: Required value"), "{err}");
    let err = c.fails_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: default}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: c}}\n    spec: {containers: [{name: c, image: i}]}\n",
    );
    assert!(
        err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    let err = c.fails_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: strict, namespace: default}\nbogus: 1\n",
    );
    assert!(err.contains("unknown field") && err.contains("bogus"), "{err}");
    let err = c.fails_stdin(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v9\nkind: Nothing\nmetadata: {name: x}\n",
    );
    assert!(
        err.contains(r#"no matches for kind "Nothing" in version "example.com/v9""#),
        "{err}"
    );
    // Nothing was stored but the cluster CA that every namespace holds.
    assert_eq!(
        c.ok(&["get", "cm", "-o", "name"]).trim(),
        "configmap/kube-root-ca.crt"
    );
}

#[test]
fn allocations_conflict_and_node_ports_are_in_range() {
    let c = Control::start();
    let svc = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        )
    };
    c.ok_stdin(&["apply", "-f", "-"], &svc("a", "10.96.0.50"));
    let err = c.fails_stdin(&["apply", "-f", "-"], &svc("b", "10.96.0.50"));
    assert!(err.contains("already allocated"), "{err}");
    let err = c.fails_stdin(&["apply", "-f", "-"], &svc("c", "192.168.0.1"));
    assert!(err.contains("not in the valid range"), "{err}");
    c.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata: {name: np, namespace: default}\nspec: {type: NodePort, ports: [{port: 80}]}\n");
    let port: i64 = c
        .ok(&["get", "svc", "np", "-o", "jsonpath={.spec.ports[0].nodePort}"])
        .parse()
        .unwrap();
    assert!((30000..=32767).contains(&port), "{port}");
}

#[test]
fn stale_resource_version_conflicts() {
    let c = Control::start();
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cas, namespace: default}\ndata: {v: '1'}\n",
    );
    let obj: Value = serde_json::from_str(&c.ok(&["get", "cm", "cas", "-o", "json"])).unwrap();
    c.ok(&[
        "patch",
        "cm",
        "cas",
        "--type=merge",
        "-p",
        r#"{"data":{"v":"2"}}"#,
    ]);
    let err = c.fails_stdin(&["replace", "-f", "-"], &obj.to_string());
    assert!(
        err.contains("Conflict") || err.contains("has been modified"),
        "{err}"
    );
    let pinned = format!(
        r#"{{"metadata":{{"resourceVersion":"{}"}},"data":{{"v":"3"}}}}"#,
        obj["metadata"]["resourceVersion"].as_str().unwrap()
    );
    let err = c.fails(&["patch", "cm", "cas", "--type=merge", "-p", &pinned]);
    assert!(err.contains("has been modified"), "{err}");
    assert_eq!(c.ok(&["get", "cm", "cas", "-o", "jsonpath={.data.v}"]), "2");
}

#[test]
fn watch_from_a_compacted_revision_is_gone() {
    let c = Control::start_with(&["--watch-history", "5"]);
    for i in 0..10 {
        c.ok_stdin(
            &["apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}, namespace: default}}\n"),
        );
    }
    let out = c.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=2&timeoutSeconds=1",
    ]);
    assert!(
        out.contains(r#""type":"ERROR""#) && out.contains(r#""code":410"#) && out.contains("Expired"),
        "{out}"
    );
}

/// Lists read at a past revision from the store's history: a continued list at its first
/// page's revision whatever changed since, `resourceVersionMatch=Exact` at the revision asked
/// for; a revision from the future waits, then times out as upstream.
#[test]
fn lists_read_past_revisions_and_time_out_on_future_ones() {
    let c = Control::start();
    let apply = |name: &str, data: &str| {
        c.ok_stdin(
            &["apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata: {{k: {data}}}\n"),
        );
    };
    for i in 0..3 {
        apply(&format!("r{i}"), "old");
    }
    let ours = |list: &serde_json::Value| -> Vec<(String, String)> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|cm| cm["metadata"]["name"].as_str().unwrap().starts_with('r'))
            .map(|cm| {
                (
                    cm["metadata"]["name"].as_str().unwrap().to_owned(),
                    cm["data"]["k"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let get =
        |path: &str| -> serde_json::Value { serde_json::from_str(&c.ok(&["get", "--raw", path])).unwrap() };
    let base = "/api/v1/namespaces/default/configmaps";
    // kube-root-ca.crt sorts first: the first page holds it and r0.
    let first = get(&format!("{base}?limit=2"));
    let rv = first["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_owned();
    assert_eq!(ours(&first), [("r0".to_owned(), "old".to_owned())]);
    c.ok(&["delete", "configmap", "r1"]);
    apply("r2", "new");
    apply("r3", "new");
    let rest = get(&format!("{base}?limit=10&continue={token}"));
    assert_eq!(rest["metadata"]["resourceVersion"].as_str(), Some(rv.as_str()));
    assert_eq!(
        ours(&rest),
        [
            ("r1".to_owned(), "old".to_owned()),
            ("r2".to_owned(), "old".to_owned())
        ],
        "the rest of the list as it was at its first page: {rest}"
    );
    let exact = get(&format!("{base}?resourceVersion={rv}&resourceVersionMatch=Exact"));
    assert_eq!(exact["metadata"]["resourceVersion"].as_str(), Some(rv.as_str()));
    assert_eq!(
        ours(&exact),
        [
            ("r0".to_owned(), "old".to_owned()),
            ("r1".to_owned(), "old".to_owned()),
            ("r2".to_owned(), "old".to_owned())
        ]
    );
    let latest = get(&format!(
        "{base}?resourceVersion={rv}&resourceVersionMatch=NotOlderThan"
    ));
    assert_eq!(
        ours(&latest),
        [
            ("r0".to_owned(), "old".to_owned()),
            ("r2".to_owned(), "new".to_owned()),
            ("r3".to_owned(), "new".to_owned())
        ]
    );
    for query in [
        "resourceVersion=999999",
        "resourceVersion=999999&resourceVersionMatch=Exact",
    ] {
        let err = c.fails(&["get", "--raw", &format!("{base}?{query}")]);
        assert!(err.contains("Too large resource version"), "{query}: {err}");
    }
}

#[test]
fn unauthenticated_requests_get_401() {
    let c = Control::start();
    let out = std::process::Command::new("kubectl")
        .args([
            "--server",
            &c.url(),
            "--insecure-skip-tls-verify",
            "--token",
            "not-a-real-token",
            "get",
            "--raw",
            "/api/v1/namespaces",
        ])
        .env("KUBECONFIG", "/dev/null")
        .bounded_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && (err.contains("Unauthorized") || err.contains("401")),
        "{err}"
    );
}
