//! Hostile input, bounded and on loopback: the control plane stays up, answers with the right
//! `Status`, keeps `/readyz` truthful and leaves stored data unchanged.

use skiff_tests::BoundedOutput;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skiff_tests::Control;
use skiff_tests::raw::{Answer, RawClient};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field(tag: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(tag) << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// A protobuf CustomResourceDefinition whose schema's `not` nests `depth` levels.
fn nested_crd(depth: usize) -> Vec<u8> {
    let mut schema = Vec::new();
    for _ in 0..depth {
        let mut outer = Vec::new();
        field(28, &schema, &mut outer);
        schema = outer;
    }
    let mut validation = Vec::new();
    field(1, &schema, &mut validation);
    let mut version = Vec::new();
    field(1, b"v1", &mut version);
    field(4, &validation, &mut version);
    let mut names = Vec::new();
    field(1, b"deeps", &mut names);
    field(4, b"Deep", &mut names);
    let mut spec = Vec::new();
    field(1, b"example.com", &mut spec);
    field(3, &names, &mut spec);
    field(4, b"Namespaced", &mut spec);
    field(7, &version, &mut spec);
    let mut meta = Vec::new();
    field(1, b"deeps.example.com", &mut meta);
    let mut crd = Vec::new();
    field(1, &meta, &mut crd);
    field(2, &spec, &mut crd);
    let mut type_meta = Vec::new();
    field(1, b"apiextensions.k8s.io/v1", &mut type_meta);
    field(2, b"CustomResourceDefinition", &mut type_meta);
    let mut body = b"k8s\0".to_vec();
    field(1, &type_meta, &mut body);
    field(2, &crd, &mut body);
    body
}

fn nested_json(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn configmap_with(extra: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"hostile"}},"data":{{"a":"b"}},"x":{extra}}}"#
    )
}

#[track_caller]
fn expect(a: &Answer, code: u16, reason: &str) {
    assert_eq!(a.code, code, "{}", a.body);
    assert_eq!(a.json()["kind"], "Status", "{}", a.body);
    assert_eq!(a.json()["reason"], reason, "{}", a.body);
}

#[track_caller]
fn still_ready(c: &Control, raw: &RawClient) {
    let a = raw.send("GET", "/readyz", None, b"", 10);
    assert_eq!(
        (a.code, a.body.as_str()),
        (200, "ok"),
        "the server went away: {}",
        c.log()
    );
}

#[test]
fn deep_and_expanding_bodies_are_refused_without_a_crash() {
    let c = Control::start();
    let raw = RawClient::new(&c);
    // 2,000 levels of protobuf in a few kilobytes once aborted the process.
    let body = nested_crd(2000);
    assert!(body.len() < 8 * 1024);
    let a = raw.send(
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        Some("application/vnd.kubernetes.protobuf"),
        &body,
        30,
    );
    expect(&a, 400, "BadRequest");
    assert!(
        a.json()["message"].as_str().unwrap().contains("nesting depth"),
        "{}",
        a.body
    );
    still_ready(&c, &raw);
    // JSON: beyond the decoder's own limit, and within it but beyond the object limit.
    for depth in [2000, 110] {
        let a = raw.send(
            "POST",
            CMS,
            Some("application/json"),
            configmap_with(&nested_json(depth)).as_bytes(),
            30,
        );
        expect(&a, 400, "BadRequest");
    }
    // YAML: deep flow sequences (the parser's cost is quadratic in their depth) and aliases
    // that expand exponentially.
    let deep_yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: hostile}}\nx: {}",
        nested_json(64 * 1024)
    );
    let start = Instant::now();
    let a = raw.send("POST", CMS, Some("application/yaml"), deep_yaml.as_bytes(), 30);
    expect(&a, 400, "BadRequest");
    let deep_yaml_secs = start.elapsed().as_secs_f64();
    let mut laughs = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hostile}\na0: &a0 [\"lol lol lol lol lol lol lol lol\"]\n",
    );
    for i in 1..14 {
        laughs.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*a{}", i - 1); 10].join(", ")
        ));
    }
    let a = raw.send("POST", CMS, Some("application/yaml"), laughs.as_bytes(), 30);
    expect(&a, 400, "BadRequest");
    assert!(a.body.contains("excessive aliasing"), "{}", a.body);
    still_ready(&c, &raw);
    // A patch may not deepen a stored object past the limit either.
    c.ok(&["create", "configmap", "hostile", "--from-literal=a=b"]);
    let before = c.ok(&["get", "cm", "hostile", "-o", "json"]);
    let patch = format!(r#"{{"data":null,"x":{}}}"#, nested_json(110));
    let a = raw.send(
        "PATCH",
        &format!("{CMS}/hostile"),
        Some("application/merge-patch+json"),
        patch.as_bytes(),
        30,
    );
    expect(&a, 400, "BadRequest");
    assert_eq!(c.ok(&["get", "cm", "hostile", "-o", "json"]), before);
    still_ready(&c, &raw);
    assert!(
        c.fails(&["get", "crd", "deeps.example.com"])
            .contains("not found")
    );
    eprintln!("figures: 64 Ki-deep YAML refused in {deep_yaml_secs:.3} s");
}

#[test]
fn unknown_parameter_values_are_errors_and_write_nothing() {
    let c = Control::start();
    let raw = RawClient::new(&c);
    let cm = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"typo"}}"#;
    // A typo in dryRun must not create.
    let a = raw.send(
        "POST",
        &format!("{CMS}?dryRun=Garbage"),
        Some("application/json"),
        cm,
        10,
    );
    expect(&a, 422, "Invalid");
    assert!(c.fails(&["get", "cm", "typo"]).contains("not found"));
    let a = raw.send(
        "POST",
        &format!("{CMS}?dryRun=All"),
        Some("application/json"),
        cm,
        10,
    );
    assert_eq!(a.code, 201, "{}", a.body);
    assert!(c.fails(&["get", "cm", "typo"]).contains("not found"));
    // Nor delete.
    c.ok(&["create", "configmap", "typo"]);
    for q in [
        "dryRun=Garbage",
        "propagationPolicy=Garbage",
        "gracePeriodSeconds=abc",
    ] {
        let a = raw.send("DELETE", &format!("{CMS}/typo?{q}"), None, b"", 10);
        assert!(matches!(a.code, 400 | 422), "{q}: {}", a.body);
        assert_eq!(a.json()["kind"], "Status", "{q}: {}", a.body);
    }
    c.ok(&["get", "cm", "typo"]);
    // Lists and watches.
    for q in ["limit=-1", "limit=abc", "timeoutSeconds=-5", "watch=maybe"] {
        expect(
            &raw.send("GET", &format!("{CMS}?{q}"), None, b"", 10),
            400,
            "BadRequest",
        );
    }
    expect(
        &raw.send(
            "GET",
            &format!("{CMS}?resourceVersionMatch=Garbage"),
            None,
            b"",
            10,
        ),
        422,
        "Invalid",
    );
    for q in ["fieldSelector=data.a%3Db", "watch=true&fieldSelector=spec.x%3Dy"] {
        let a = raw.send("GET", &format!("{CMS}?{q}"), None, b"", 10);
        expect(&a, 400, "BadRequest");
        assert!(
            a.json()["message"]
                .as_str()
                .unwrap()
                .contains("field label not supported"),
            "{}",
            a.body
        );
    }
    let a = raw.send(
        "GET",
        &format!("{CMS}?fieldSelector=metadata.name%3Dtypo"),
        None,
        b"",
        10,
    );
    assert_eq!(a.json()["items"].as_array().map(Vec::len), Some(1), "{}", a.body);
    // Go's booleans: the Python client sends `watch=True`.
    let a = raw.send(
        "GET",
        &format!("{CMS}?watch=True&timeoutSeconds=1"),
        None,
        b"",
        10,
    );
    assert_eq!(a.code, 200, "{}", a.body);
    let first: Value = serde_json::from_str(a.body.lines().next().unwrap_or_default()).unwrap_or_default();
    assert_eq!(first["type"], "ADDED", "{}", a.body);
    // Media types that are not Kubernetes encodings.
    for ct in [
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
    ] {
        let a = raw.send("POST", CMS, Some(ct), cm, 10);
        expect(&a, 415, "UnsupportedMediaType");
    }
    assert!(c.fails(&["get", "cm", "typo2"]).contains("not found"));
}

#[test]
fn objects_and_data_are_held_to_the_store_limits() {
    let c = Control::start();
    let raw = RawClient::new(&c);
    // ConfigMap and Secret data: 1 MiB at most, as upstream.
    let big = "x".repeat(1024 * 1024 + 10);
    let cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"a": big}});
    let a = raw.post_json(CMS, &cm, 30);
    expect(&a, 422, "Invalid");
    assert!(
        a.body.contains("Too long: must have at most 1048576 bytes"),
        "{}",
        a.body
    );
    let secret =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "big"}, "stringData": {"a": big}});
    let a = raw.post_json("/api/v1/namespaces/default/secrets", &secret, 30);
    expect(&a, 422, "Invalid");
    // Any object: the store's 1.5 MiB value limit, below the 3 MiB request limit.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "extra": "y".repeat(1600 * 1024)});
    let a = raw.post_json(CMS, &cm, 30);
    expect(&a, 413, "RequestEntityTooLarge");
    assert!(c.fails(&["get", "cm", "big"]).contains("not found"));
    assert!(c.fails(&["get", "secret", "big"]).contains("not found"));
    // Just under the limits is fine.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"a": "x".repeat(1000 * 1024)}});
    let a = raw.post_json(CMS, &cm, 30);
    assert_eq!(a.code, 201, "{}", a.body);
    still_ready(&c, &raw);
}

/// Opens a TCP connection that never speaks.
fn idle(c: &Control) -> TcpStream {
    let addr = c.url().trim_start_matches("https://").to_owned();
    let s = TcpStream::connect(addr).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Whether the server closed the connection: a read ends (EOF or reset) instead of timing out.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn idle_and_excess_connections_do_not_lock_out_the_admin() {
    let c = Control::start_with(&["--max-connections", "20"]);
    let raw = RawClient::new(&c);
    // Fill the normal connections and most of the reserve with clients that never handshake.
    let mut held: Vec<TcpStream> = (0..60).map(|_| idle(&c)).collect();
    std::thread::sleep(Duration::from_millis(300));
    // Health checks and the admin still get through the reserve.
    still_ready(&c, &raw);
    let a = raw.send("GET", "/api/v1/namespaces", None, b"", 10);
    assert_eq!(a.code, 200, "{}", a.body);
    // Past the reserve, new connections are closed at once instead of piling up.
    held.extend((0..40).map(|_| idle(&c)));
    let mut excess = idle(&c);
    excess.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        closed_by_server(&mut excess),
        "a connection past the cap stayed open"
    );
    // Clients that never complete the TLS handshake are dropped after its timeout (32 s, as upstream's header timeout, which covers the handshake).
    let start = Instant::now();
    assert!(
        closed_by_server(&mut held[0]),
        "an idle connection was never closed"
    );
    let closed_after = start.elapsed();
    drop(held);
    still_ready(&c, &raw);
    assert!(c.ok(&["get", "ns"]).contains("default"));
    // A slow body is cut off rather than held forever (60 s), so it is not waited for here;
    // a slow header is the HTTP/1 header timeout's (32 s).
    eprintln!("figures: an idle pre-handshake connection closed after {closed_after:?}");
}

/// Free bytes on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .bounded_output()
        .expect("running df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's answer")
}

#[test]
fn a_full_disk_stops_writes_until_space_returns() {
    // The store keeps 16 MiB free on a 96 MiB filesystem of the test's own.
    let c = Control::start_on_tmpfs(96, &["--min-free-disk-mb", "16"]);
    let raw = RawClient::new(&c);
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let name = format!("before-{i}");
        c.ok(&["create", "configmap", &name, "--from-literal=k=v"]);
        acknowledged.push(name);
    }
    // Fill the filesystem to within 4 MiB of full.
    let filler = c.data_dir().join("filler");
    let size = free_bytes(&c.data_dir()).saturating_sub(4 << 20);
    let out = std::process::Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&filler)
        .bounded_output()
        .expect("running fallocate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Within a few polls writes are refused with a Status that says why, and /readyz says so.
    let mut refused = None;
    for i in 0..100 {
        let cm = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"during-{i}"}}}}"#);
        let a = raw.send("POST", CMS, Some("application/json"), cm.as_bytes(), 10);
        if a.code == 201 {
            acknowledged.push(format!("during-{i}"));
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        refused = Some(a);
        break;
    }
    let refused = refused.expect("writes were still accepted on a full disk");
    expect(&refused, 503, "ServiceUnavailable");
    assert!(refused.body.contains("disk is full"), "{}", refused.body);
    let ready = raw.send("GET", "/readyz", None, b"", 10);
    assert_eq!(ready.code, 500, "{}", ready.body);
    assert!(ready.body.contains("disk is full"), "{}", ready.body);
    // The process is alive and reads go on.
    assert_eq!(raw.send("GET", "/livez", None, b"", 10).code, 200);
    for name in &acknowledged {
        c.ok(&["get", "configmap", name]);
    }
    // Space returns: writes resume without a restart, and nothing acknowledged is lost.
    std::fs::remove_file(&filler).unwrap();
    let mut resumed = false;
    for _ in 0..100 {
        if raw
            .send(
                "POST",
                CMS,
                Some("application/json"),
                br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"after"}}"#,
                10,
            )
            .code
            == 201
        {
            resumed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(resumed, "writes did not resume: {}", c.log());
    still_ready(&c, &raw);
    for name in acknowledged.iter().map(String::as_str).chain(["after"]) {
        c.ok(&["get", "configmap", name]);
    }
}

/// With no reserve, a disk that fills up fails the store's own writes (the Raft log's append):
/// the member exits rather than serve without a store, and started again once space is back it
/// has every write it acknowledged.
#[test]
fn a_storage_error_stops_the_member_and_a_restart_loses_nothing() {
    let mut c = Control::start_on_tmpfs(64, &["--min-free-disk-mb", "0"]);
    let raw = RawClient::new(&c);
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let name = format!("before-{i}");
        c.ok(&["create", "configmap", &name, "--from-literal=k=v"]);
        acknowledged.push(name);
    }
    let filler = c.data_dir().join("filler");
    let size = free_bytes(&c.data_dir());
    let _ = std::process::Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&filler)
        .bounded_output()
        .expect("running fallocate");
    // Writes go on until one needs the disk; then the member stops.
    let value = "x".repeat(200_000);
    let mut exited = false;
    for i in 0..200 {
        let cm = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"during-{i}"}},"data":{{"v":"{value}"}}}}"#
        );
        let a = raw.send("POST", CMS, Some("application/json"), cm.as_bytes(), 10);
        if a.code == 201 {
            acknowledged.push(format!("during-{i}"));
        }
        if c.exited() {
            exited = true;
            break;
        }
        if a.code != 201 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(exited, "the member went on without its store: {}", c.log());
    assert!(c.log().contains("the store's Raft core stopped"), "{}", c.log());
    std::fs::remove_file(&filler).unwrap();
    c.restart();
    for name in &acknowledged {
        c.ok(&["get", "configmap", name]);
    }
}

#[test]
fn patches_of_objects_with_thousands_of_list_items_cost_linear_time() {
    let c = Control::start();
    let raw = RawClient::new(&c);
    let containers = |image: &str| -> Vec<Value> {
        (0..3000)
            .map(|i| json!({"name": format!("c{i}"), "image": image, "env": [{"name": "A", "value": "1"}]}))
            .collect()
    };
    // Without the service account's volume, which would add a mount to each of the 3000.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wide"},
                     "spec": {"automountServiceAccountToken": false, "containers": containers("x:1")}});
    let start = Instant::now();
    let a = raw.post_json("/api/v1/namespaces/default/pods", &pod, 300);
    assert_eq!(a.code, 201, "{}", a.body);
    let created = start.elapsed();
    let patch = json!({"spec": {"containers": containers("x:2")}});
    let start = Instant::now();
    let a = raw.send(
        "PATCH",
        "/api/v1/namespaces/default/pods/wide",
        Some("application/strategic-merge-patch+json"),
        patch.to_string().as_bytes(),
        300,
    );
    let patched = start.elapsed();
    assert_eq!(a.code, 200, "{}", a.body);
    let images = c.ok(&["get", "pod", "wide", "-o", "jsonpath={.spec.containers[*].image}"]);
    assert_eq!(images.split(' ').filter(|i| *i == "x:2").count(), 3000);
    still_ready(&c, &raw);
    eprintln!(
        "figures: a 3,000-container pod created in {created:?}, strategic-merge-patched in {patched:?}"
    );
}
