//! kill -9 during a stream of writes loses no acknowledged write and corrupts nothing.

use skiff_tests::BoundedOutput;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use skiff_tests::Control;

#[test]
fn kill9_during_writes_keeps_every_acknowledged_write() {
    let mut c = Control::start();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (acked, stop) = (acked.clone(), stop.clone());
            let kubeconfig = c.kubeconfig();
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 400 {
                    let name = format!("w{w}-{i:04}");
                    let body = format!(
                        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"default"}},"data":{{"n":"{i}"}}}}"#
                    );
                    let file = tempfile::NamedTempFile::new().unwrap();
                    std::fs::write(file.path(), body).unwrap();
                    let out = std::process::Command::new("kubectl")
                        .env("KUBECONFIG", &kubeconfig)
                        .args(["create", "--raw", "/api/v1/namespaces/default/configmaps", "-f"])
                        .arg(file.path())
                        .bounded_output()
                        .unwrap();
                    if out.status.success() {
                        acked.lock().unwrap().push(name);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Let a stream of writes build up, then kill the server mid-stream.
    while acked.lock().unwrap().len() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    c.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    c.restart();
    let stored = c.ok(&["get", "cm", "-o", "name"]);
    let acked = acked.lock().unwrap();
    assert!(acked.len() >= 60);
    for name in acked.iter() {
        assert!(
            stored.contains(&format!("configmap/{name}\n")),
            "acknowledged write {name} lost after kill -9"
        );
    }
    // The store still takes writes and revisions move on.
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after, namespace: default}\n",
    );
}
