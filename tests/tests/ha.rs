//! A control plane of three members on loopback: members join with the server token (and not
//! with the node token), every member serves the API with the same objects, writes through a
//! follower, the leader's loss (writes go on through the others), a restarted member catching
//! up, and `skiff-control member list|remove`.

use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::{BoundedOutput, Control, control_bin, free_port};

/// `skiff-control member ARGS --kubeconfig` of `via`: stdout, or the failure with stderr.
fn member(via: &Control, args: &[&str]) -> Result<String, String> {
    let out = Command::new(control_bin())
        .arg("member")
        .args(args)
        .arg("--kubeconfig")
        .arg(via.kubeconfig())
        .bounded_output()
        .expect("running skiff-control member");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The member list's rows: (id, name, role, health).
fn rows(list: &str) -> Vec<(String, String, String, String)> {
    list.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_owned(),
                f[1].to_owned(),
                f[2].to_owned(),
                f[6..].join(" "),
            )
        })
        .collect()
}

/// A member on its own loopback address (as on a host of its own), on the first one's port.
fn join(first: &Control, ip: &str, port: u16, name: &str, token: &str) -> Control {
    let url = first.url();
    Control::start_at(ip, port, &["--join", &url, "--token", token, "--name", name])
}

/// The addresses of the `kubernetes` Service's EndpointSlice, sorted.
fn api_endpoints(via: &Control) -> Vec<String> {
    let out = via.ok(&[
        "get",
        "endpointslice",
        "kubernetes",
        "-o",
        "jsonpath={.endpoints[*].addresses[0]}",
    ]);
    let mut ips: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
    ips.sort();
    ips
}

/// Waits (up to 40 s) until the `kubernetes` Service lists exactly `want`.
fn wait_for_api_endpoints(via: &Control, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got = api_endpoints(via);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the kubernetes Service lists {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn three_members_serve_one_store_and_outlive_the_leader() {
    let port = free_port();
    let first = Control::start_at("127.0.0.1", port, &["--name", "one"]);
    let token = std::fs::read_to_string(first.data_dir().join("server-token")).unwrap();
    let node_token = std::fs::read_to_string(first.data_dir().join("node-token")).unwrap();
    assert!(token.contains("::server:"), "{token}");

    // The node token does not add a store member: one line, non-zero exit.
    let out = Command::new(control_bin())
        .args(["--data-dir"])
        .arg(first.data_dir().parent().unwrap().join("refused"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
            "--join",
            &first.url(),
            "--token",
            node_token.trim(),
        ])
        .bounded_output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a server token"), "{err}");

    first.ok(&["create", "configmap", "before", "--from-literal=k=1"]);
    let second = join(&first, "127.0.0.2", port, "two", &token);
    let third = join(&second, "127.0.0.3", port, "three", &token);

    let list = member(&third, &["list"]).unwrap();
    let members = rows(&list);
    assert_eq!(members.len(), 3, "{list}");
    assert_eq!(members.iter().filter(|m| m.2 == "leader").count(), 1, "{list}");
    assert!(members.iter().all(|m| m.3 == "healthy"), "{list}");
    let names: Vec<&str> = members.iter().map(|m| m.1.as_str()).collect();
    for name in ["one", "two", "three"] {
        assert!(names.contains(&name), "{list}");
    }
    // One CA: every member's admin kubeconfig works on every member's API.
    assert!(
        list.contains(&second.url()) && list.contains(&third.url()),
        "{list}"
    );

    // Pods reach the API through every member.
    wait_for_api_endpoints(&first, &["127.0.0.1", "127.0.0.2", "127.0.0.3"]);

    // Written through one member, read at once through each (linearizable reads).
    assert_eq!(
        third.ok(&["get", "configmap", "before", "-o", "jsonpath={.data.k}"]),
        "1"
    );
    second.ok(&["create", "configmap", "through-second", "--from-literal=k=2"]);
    for m in [&first, &second, &third] {
        assert_eq!(
            m.ok(&["get", "configmap", "through-second", "-o", "jsonpath={.data.k}"]),
            "2"
        );
    }
    // Watches on one member see writes made through another.
    let mut watch = third.kubectl_cmd(&["get", "configmaps", "--watch-only", "-o", "name"]);
    let watcher = watch.stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    first.ok(&["create", "configmap", "watched", "--from-literal=k=3"]);

    // The leader goes: writes go on through the others once they elect one.
    let leader = members.iter().find(|m| m.2 == "leader").unwrap().1.clone();
    let mut all = [first, second, third];
    let li = ["one", "two", "three"].iter().position(|n| *n == leader).unwrap();
    all[li].kill9();
    let other = &all[(li + 1) % 3];
    let start = Instant::now();
    let mut created = false;
    while start.elapsed() < Duration::from_secs(30) {
        if other
            .kubectl(&["create", "configmap", "after-leader", "--from-literal=k=4"])
            .status
            .success()
        {
            created = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(created, "no write accepted after the leader was killed");
    eprintln!("writes resumed {:?} after the leader was killed", start.elapsed());
    let list = member(other, &["list"]).unwrap();
    let after = rows(&list);
    assert!(
        after
            .iter()
            .any(|m| m.1 == leader && m.3.starts_with("unreachable")),
        "{list}"
    );
    assert_eq!(after.iter().filter(|m| m.2 == "leader").count(), 1, "{list}");
    // The dead member's API server leaves the kubernetes Service.
    let alive: Vec<&str> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, ip)| ip)
        .collect();
    wait_for_api_endpoints(other, &alive);

    // Restarted, the old leader catches up and serves what was written while it was down.
    all[li].restart();
    assert_eq!(
        all[li].ok(&["get", "configmap", "after-leader", "-o", "jsonpath={.data.k}"]),
        "4"
    );

    let mut watcher = watcher;
    let _ = watcher.kill();
    let out = watcher.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configmap/watched"),
        "the watch missed a write made through another member"
    );

    // Removing a member (through one that stays): the list shrinks, the rest go on.
    let gone = rows(&member(&all[0], &["list"]).unwrap())
        .into_iter()
        .find(|m| m.2 != "leader")
        .unwrap();
    let stay = ["one", "two", "three"].iter().position(|n| *n != gone.1).unwrap();
    let list = member(&all[stay], &["remove", &gone.0]).unwrap();
    assert_eq!(rows(&list).len(), 2, "{list}");
    let list = member(&all[stay], &["list"]).unwrap();
    assert_eq!(rows(&list).len(), 2, "{list}");
    assert!(
        rows(&list).iter().all(|m| m.1 != gone.1 && m.3 == "healthy"),
        "{list}"
    );
    all[stay].ok(&["create", "configmap", "after-removal"]);
    // The removed member stops for good (status 3, which the service unit does not restart) and
    // says why if started again.
    let gi = ["one", "two", "three"].iter().position(|n| *n == gone.1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all[gi].exited() {
        assert!(
            Instant::now() < deadline,
            "the removed member did not stop: {}",
            skiff_tests::tail(&all[gi].log(), 30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        all[gi]
            .log()
            .contains("this member has been removed from the cluster"),
        "{}",
        all[gi].log()
    );
    let again = Command::new(control_bin())
        .arg("--data-dir")
        .arg(all[gi].data_dir())
        .bounded_output()
        .unwrap();
    assert_eq!(again.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("this member was removed from the cluster"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // An unknown member: a clear error.
    let err = member(&all[stay], &["remove", "00000000000000ff"]).unwrap_err();
    assert!(err.contains("not found"), "{err}");
}

/// Polls `check` every 500 ms for up to `limit`, failing with `what`.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn agents_move_to_another_member_when_theirs_dies() {
    use skiff_tests::node::{Node, cluster_cidr, unique_prefix};
    let prefix = unique_prefix();
    let cidr = cluster_cidr(&prefix);
    let port = free_port();
    let mut first = Control::start_at("127.0.0.1", port, &["--name", "one", "--cluster-cidr", &cidr]);
    let token = std::fs::read_to_string(first.data_dir().join("server-token")).unwrap();
    let second = Control::start_at(
        "127.0.0.2",
        port,
        &[
            "--join",
            &first.url(),
            "--token",
            &token,
            "--name",
            "two",
            "--cluster-cidr",
            &cidr,
        ],
    );
    // The token from a file, as install.sh passes it.
    let token_file = first.data_dir().join("server-token");
    let _third = Control::start_at(
        "127.0.0.3",
        port,
        &[
            "--join",
            &first.url(),
            "--token-file",
            token_file.to_str().unwrap(),
            "--name",
            "three",
            "--cluster-cidr",
            &cidr,
        ],
    );
    let registry = skiff_tests::image::Registry::start_with_busybox();
    // The agent is given the first member only; it learns the others from the control plane.
    let node = Node::start(&first, &prefix);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node.log().contains("127.0.0.3") {
        let slice = second.kubectl(&["get", "endpointslice", "kubernetes", "-o", "json"]);
        assert!(
            Instant::now() < deadline,
            "the agent did not learn every member: {}\n{}",
            skiff_tests::tail(&node.log(), 30),
            String::from_utf8_lossy(&slice.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    first.kill9();
    second.ok(&[
        "run",
        "after",
        "--image",
        &registry.busybox(),
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ]);
    wait_until(
        "the pod to run on the agent of a dead member",
        Duration::from_secs(120),
        || {
            second
                .kubectl(&["get", "pod", "after", "-o", "jsonpath={.status.phase}"])
                .stdout
                == b"Running"
        },
    );
    assert!(
        node.log().contains("moving to another"),
        "{}",
        skiff_tests::tail(&node.log(), 40)
    );
    // Its heartbeats reach the others.
    let ready = second.ok(&[
        "get",
        "node",
        &node.name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready, "True");
    second.ok(&[
        "delete",
        "pod",
        "after",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
}
