//! Debian's stock `etcdctl` (3.4) against the store's etcd API (`--etcd-listen`), with the admin
//! kubeconfig's certificate: keys in upstream's layout, get/put/del/txn/watch, compaction, defrag,
//! member list, endpoint health and status, snapshot save and `skiff-control snapshot restore`; a
//! client without a certificate is refused.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use skiff_tests::{BoundedOutput, Control, free_port, output_with_stdin};

struct Etcdctl {
    endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcdctl {
    /// etcdctl for `control`'s etcd API, with the credentials of its admin kubeconfig.
    fn new(control: &Control, port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = std::fs::read_to_string(control.kubeconfig()).unwrap();
        let field = |name: &str| {
            let line = kubeconfig
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .unwrap();
            base64::engine::general_purpose::STANDARD
                .decode(line.trim())
                .unwrap()
        };
        std::fs::write(dir.path().join("ca.crt"), field("certificate-authority-data:")).unwrap();
        std::fs::write(dir.path().join("admin.crt"), field("client-certificate-data:")).unwrap();
        std::fs::write(dir.path().join("admin.key"), field("client-key-data:")).unwrap();
        Self {
            endpoint: format!("https://127.0.0.1:{port}"),
            dir,
        }
    }

    fn cmd(&self, args: &[&str], with_cert: bool) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoint)
            .arg("--cacert")
            .arg(self.dir.path().join("ca.crt"))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=10s");
        if with_cert {
            cmd.arg("--cert")
                .arg(self.dir.path().join("admin.crt"))
                .arg("--key")
                .arg(self.dir.path().join("admin.key"));
        }
        cmd.args(args);
        cmd
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args, true).bounded_output().unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn etcdctl_reads_and_writes_the_store_as_upstream_lays_it_out() {
    let port = free_port();
    let c = Control::start_with(&["--etcd-listen", &format!("127.0.0.1:{port}")]);
    let e = Etcdctl::new(&c, port);
    c.ok(&["create", "configmap", "settings", "--from-literal=color=blue"]);

    let health = e.cmd(&["endpoint", "health"], true).bounded_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(health.status.success() && said.contains("is healthy"), "{said}");
    let status: serde_json::Value =
        serde_json::from_str(&e.ok(&["endpoint", "status", "-w", "json"])).unwrap();
    assert_eq!(
        status[0]["Status"]["leader"], status[0]["Status"]["header"]["member_id"],
        "{status}"
    );
    assert!(e.ok(&["member", "list"]).contains("started"));

    // Keys as a Kubernetes tutorial names them.
    let keys = e.ok(&["get", "/registry", "--prefix", "--keys-only"]);
    for key in [
        "/registry/configmaps/default/settings",
        "/registry/namespaces/default",
        "/registry/services/specs/default/kubernetes",
        "/registry/services/endpoints/default/kubernetes",
    ] {
        assert!(keys.lines().any(|l| l == key), "{key} missing from:\n{keys}");
    }
    let listed: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "keys come in order");
    let value = e.ok(&[
        "get",
        "/registry/configmaps/default/settings",
        "--print-value-only",
    ]);
    let object: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    assert_eq!(object["data"]["color"], "blue");
    let counted: serde_json::Value = serde_json::from_str(&e.ok(&[
        "get",
        "/registry/configmaps/",
        "--prefix",
        "--keys-only",
        "-w",
        "json",
    ]))
    .unwrap();
    assert!(counted["count"].as_u64().unwrap() >= 2, "{counted}");

    // Writes, and a transaction's two branches.
    assert_eq!(e.ok(&["put", "/demo/a", "1"]).trim(), "OK");
    assert_eq!(e.ok(&["get", "/demo/a", "--print-value-only"]).trim(), "1");
    let txn = |input: &str| {
        let out = output_with_stdin(e.cmd(&["txn"], true), input);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        txn("value(\"/demo/a\") = \"1\"\n\nput /demo/b yes\n\nput /demo/c no\n\n").starts_with("SUCCESS")
    );
    assert!(
        txn("value(\"/demo/a\") = \"2\"\n\nput /demo/b again\n\nput /demo/c no\n\n").starts_with("FAILURE")
    );
    assert_eq!(
        e.ok(&["get", "/demo/", "--prefix", "--keys-only"])
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["/demo/a", "/demo/b", "/demo/c"]
    );
    assert_eq!(e.ok(&["get", "/demo/b", "--print-value-only"]).trim(), "yes");
    assert_eq!(e.ok(&["del", "/demo/", "--prefix"]).trim(), "3");

    // A watch sees what kubectl does.
    let mut watch = e.cmd(&["watch", "/registry/configmaps/", "--prefix"], true);
    let watcher = watch
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    c.ok(&["create", "configmap", "watched"]);
    c.ok(&["delete", "configmap", "watched"]);
    std::thread::sleep(Duration::from_secs(1));
    let mut watcher = watcher;
    let _ = watcher.kill();
    let seen = String::from_utf8_lossy(&watcher.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        seen.contains("PUT\n/registry/configmaps/default/watched"),
        "{seen}"
    );
    assert!(
        seen.contains("DELETE\n/registry/configmaps/default/watched"),
        "{seen}"
    );

    // A past revision reads as it was (a value put over, a key deleted since) until compacted,
    // then is refused as etcd refuses it.
    assert_eq!(e.ok(&["put", "/demo/past", "then"]).trim(), "OK");
    let then: serde_json::Value = serde_json::from_str(&e.ok(&["get", "/demo/past", "-w", "json"])).unwrap();
    let then = then["header"]["revision"].as_u64().unwrap().to_string();
    e.ok(&["put", "/demo/past", "now"]);
    e.ok(&["del", "/demo/past"]);
    assert_eq!(
        e.ok(&["get", "/demo/past", "--rev", &then, "--print-value-only"])
            .trim(),
        "then"
    );
    assert_eq!(e.ok(&["get", "/demo/past", "--print-value-only"]).trim(), "");
    let revision: serde_json::Value =
        serde_json::from_str(&e.ok(&["get", "/demo/past", "-w", "json"])).unwrap();
    let revision = revision["header"]["revision"].as_u64().unwrap();
    assert!(
        e.ok(&["compaction", &revision.to_string()])
            .contains("compacted revision")
    );
    e.ok(&["defrag"]);
    let past = e
        .cmd(&["get", "/demo/past", "--rev", &then], true)
        .bounded_output()
        .unwrap();
    assert!(!past.status.success());
    assert!(
        String::from_utf8_lossy(&past.stderr).contains("required revision has been compacted"),
        "{}",
        String::from_utf8_lossy(&past.stderr)
    );

    // No client certificate: no access.
    let anonymous = e
        .cmd(&["get", "/registry/namespaces/default"], false)
        .bounded_output()
        .unwrap();
    assert!(!anonymous.status.success());

    // A backup with `etcdctl snapshot save`, restored with `skiff-control snapshot restore` into
    // the data directory (its CA and tokens kept): the objects are back, the kubeconfig works.
    let backup = e.dir.path().join("backup.db");
    e.ok(&["snapshot", "save", backup.to_str().unwrap()]);
    let mut c = c;
    c.ok(&["create", "configmap", "after-backup"]);
    c.kill9();
    std::fs::remove_dir_all(c.data_dir().join("store")).unwrap();
    let restore = |file: &std::path::Path| {
        Command::new(skiff_tests::control_bin())
            .args(["snapshot", "restore"])
            .arg(file)
            .arg("--data-dir")
            .arg(c.data_dir())
            .bounded_output()
            .unwrap()
    };
    let mut damaged = std::fs::read(&backup).unwrap();
    damaged[100] ^= 0xff;
    let damaged_file = e.dir.path().join("damaged.db");
    std::fs::write(&damaged_file, damaged).unwrap();
    let refused = restore(&damaged_file);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("damaged"));
    let restored = restore(&backup);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    c.restart();
    assert_eq!(
        c.ok(&["get", "configmap", "settings", "-o", "jsonpath={.data.color}"]),
        "blue"
    );
    assert!(!c.kubectl(&["get", "configmap", "after-backup"]).status.success());
    c.ok(&["create", "configmap", "after-restore"]);
}

/// The lease ID in `etcdctl lease grant`'s "lease 694d7b0bd7d1b312 granted with TTL(5s)".
fn granted(said: &str) -> String {
    said.split_whitespace().nth(1).unwrap_or_default().to_owned()
}

#[test]
fn etcdctl_leases_expire_their_keys_unless_kept_alive() {
    let port = free_port();
    let c = Control::start_with(&["--etcd-listen", &format!("127.0.0.1:{port}")]);
    let e = Etcdctl::new(&c, port);

    // A revoked lease takes its keys; a plain put of a held key frees it from the lease.
    let held = e.ok(&["lease", "grant", "60"]);
    assert!(held.contains("granted with TTL(60s)"), "{held}");
    let id = granted(&held);
    e.ok(&["put", "--lease", &id, "/demo/held", "1"]);
    e.ok(&["put", "--lease", &id, "/demo/freed", "1"]);
    e.ok(&["put", "/demo/freed", "2"]);
    let json: serde_json::Value = serde_json::from_str(&e.ok(&["get", "/demo/held", "-w", "json"])).unwrap();
    // etcdctl writes lease IDs as 16 hex digits, leading zeros kept.
    assert_eq!(
        format!("{:016x}", json["kvs"][0]["lease"].as_i64().unwrap()),
        id,
        "{json}"
    );
    let ttl = e.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("/demo/held"),
        "{ttl}"
    );
    assert!(!ttl.contains("/demo/freed"), "{ttl}");
    assert!(e.ok(&["lease", "list"]).contains(&id));
    assert!(e.ok(&["lease", "revoke", &id]).contains("revoked"));
    assert_eq!(e.ok(&["get", "/demo/held"]), "");
    assert_eq!(e.ok(&["get", "/demo/freed", "--print-value-only"]).trim(), "2");
    let gone = e.cmd(&["lease", "revoke", &id], true).bounded_output().unwrap();
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("requested lease not found"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    let missing = e
        .cmd(&["put", "--lease", "1234abcd", "/demo/x", "1"], true)
        .bounded_output()
        .unwrap();
    assert!(!missing.status.success());
    assert_eq!(e.ok(&["get", "/demo/x"]), "");

    // Left alone, a lease expires and its keys go; kept alive, it stays.
    let short = granted(&e.ok(&["lease", "grant", "3"]));
    let kept = granted(&e.ok(&["lease", "grant", "3"]));
    e.ok(&["put", "--lease", &short, "/demo/short", "1"]);
    e.ok(&["put", "--lease", &kept, "/demo/kept", "1"]);
    let mut watch = e.cmd(&["watch", "/demo/short"], true);
    let watcher = watch
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut keeper = e.cmd(&["lease", "keep-alive", &kept], true);
    let mut keeper = keeper
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        e.ok(&["get", "/demo/short"]),
        "",
        "the expired lease's key stayed"
    );
    assert_eq!(e.ok(&["get", "/demo/kept", "--print-value-only"]).trim(), "1");
    assert!(e.ok(&["lease", "timetolive", &short]).contains("already expired"));
    let _ = keeper.kill();
    let kept_said = String::from_utf8_lossy(&keeper.wait_with_output().unwrap().stdout).into_owned();
    assert!(kept_said.contains("keepalived with TTL(3)"), "{kept_said}");
    let mut watcher = watcher;
    let _ = watcher.kill();
    let seen = String::from_utf8_lossy(&watcher.wait_with_output().unwrap().stdout).into_owned();
    assert!(seen.contains("DELETE\n/demo/short"), "{seen}");

    // Leases outlive a restart (they are in the store) and expire after it.
    let lasting = granted(&e.ok(&["lease", "grant", "600"]));
    e.ok(&["put", "--lease", &lasting, "/demo/lasting", "1"]);
    let mut c = c;
    c.restart();
    let ttl = e.ok(&["lease", "timetolive", &lasting, "--keys"]);
    assert!(ttl.contains("/demo/lasting"), "{ttl}");
}
