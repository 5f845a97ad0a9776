//! Faults under load on a three-member control plane. Concurrent clients write and read one
//! object through every member while, in turn, the leader is killed and restarted, a follower is
//! killed and restarted, and a fourth member is added and removed. From the recorded history a
//! checker verifies: every acknowledged write has a revision of its own, every read returns a
//! value some client wrote, the history is linearizable in the order of the writes' revisions
//! (no read sees an older write than one that finished before it started, no write is ordered
//! before one that finished before it started), and a watch on a member that stays up saw every
//! acknowledged write once, in order. How long writes were refused after each fault is printed.
//! A second run partitions the members' Raft transports instead: the leader from the majority,
//! then one member from the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skiff_tests::partition::{Link, partition};
use skiff_tests::raw::RawClient;
use skiff_tests::{BoundedOutput, Control, control_bin, free_port};

#[derive(Debug, Clone)]
enum Outcome {
    /// Answered: the object's revision and value.
    Done { revision: u64, value: String },
    /// Refused (a 4xx): not applied.
    Failed,
    /// No answer (a 5xx, a timeout, a refused connection): maybe applied.
    Unknown,
}

#[derive(Debug, Clone)]
struct Op {
    write: Option<String>,
    member: usize,
    invoke: Instant,
    complete: Instant,
    outcome: Outcome,
}

const PATH: &str = "/api/v1/namespaces/default/configmaps/reg";

fn object(value: &str) -> Vec<u8> {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "reg"}, "data": {"v": value}})
        .to_string()
        .into_bytes()
}

fn outcome(code: u16, body: &str) -> Outcome {
    match code {
        200 | 201 => {
            let v: Value = serde_json::from_str(body).unwrap_or_default();
            match (
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|r| r.parse().ok()),
                v["data"]["v"].as_str(),
            ) {
                (Some(revision), Some(value)) => Outcome::Done {
                    revision,
                    value: value.to_owned(),
                },
                _ => Outcome::Unknown,
            }
        }
        400..=499 => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// Checks the history; returns what is wrong, if anything.
fn check(history: &[Op], watched: &[u64], watch_from: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_revision: std::collections::BTreeMap<u64, &Op> = Default::default();
    for op in history.iter().filter(|o| o.write.is_some()) {
        if let Outcome::Done { revision, .. } = op.outcome
            && by_revision.insert(revision, op).is_some()
        {
            problems.push(format!("two acknowledged writes at revision {revision}"));
        }
    }
    let written: std::collections::HashSet<&str> = history
        .iter()
        .filter_map(|o| o.write.as_deref())
        .chain(["init"])
        .collect();
    // Every op with a known place in the order of writes, by the revision it wrote or saw.
    let mut placed: Vec<(&Op, u64)> = Vec::new();
    for op in history {
        if let Outcome::Done { revision, value } = &op.outcome {
            if !written.contains(value.as_str()) {
                problems.push(format!("a read returned {value:?}, which no client wrote"));
            }
            if op.write.is_none()
                && let Some(w) = by_revision.get(revision)
                && w.write.as_deref() != Some(value.as_str())
            {
                problems.push(format!(
                    "revision {revision} holds {:?} but a read saw {value:?}",
                    w.write
                ));
            }
            placed.push((op, *revision));
        }
    }
    // Real time: what finished before an op started is ordered before it.
    let mut by_complete = placed.clone();
    by_complete.sort_by_key(|(o, _)| o.complete);
    let mut by_invoke = placed.clone();
    by_invoke.sort_by_key(|(o, _)| o.invoke);
    let (mut i, mut max_before) = (0, 0u64);
    for (op, revision) in by_invoke {
        while i < by_complete.len() && by_complete[i].0.complete < op.invoke {
            max_before = max_before.max(by_complete[i].1);
            i += 1;
        }
        let stale = if op.write.is_some() {
            revision <= max_before
        } else {
            revision < max_before
        };
        if stale {
            problems.push(format!(
                "{} at member {} saw/wrote revision {revision} after an op that finished earlier had revision {max_before}",
                if op.write.is_some() { "a write" } else { "a read" },
                op.member
            ));
        }
    }
    // The watch: strictly increasing, and every acknowledged write after its start.
    for pair in watched.windows(2) {
        if pair[1] <= pair[0] {
            problems.push(format!("the watch went from revision {} to {}", pair[0], pair[1]));
        }
    }
    let seen: std::collections::HashSet<u64> = watched.iter().copied().collect();
    let last_seen = watched.last().copied().unwrap_or(0);
    for revision in by_revision
        .keys()
        .filter(|r| **r > watch_from && **r <= last_seen)
    {
        if !seen.contains(revision) {
            problems.push(format!(
                "the watch missed the acknowledged write at revision {revision}"
            ));
        }
    }
    problems
}

#[test]
fn the_checker_catches_a_stale_read_and_a_lost_write() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_millis(s);
    let op = |write: Option<&str>, invoke, complete, revision, value: &str| Op {
        write: write.map(str::to_owned),
        member: 0,
        invoke: at(invoke),
        complete: at(complete),
        outcome: Outcome::Done {
            revision,
            value: value.to_owned(),
        },
    };
    let good = vec![
        op(Some("a"), 0, 10, 5, "a"),
        op(None, 20, 30, 5, "a"),
        op(Some("b"), 40, 50, 6, "b"),
    ];
    assert!(check(&good, &[5, 6], 4).is_empty());
    let stale = vec![
        op(Some("a"), 0, 10, 5, "a"),
        op(Some("b"), 20, 30, 6, "b"),
        op(None, 40, 50, 5, "a"),
    ];
    assert!(!check(&stale, &[5, 6], 4).is_empty());
    assert!(
        !check(&good, &[6], 4).is_empty(),
        "a watch missing revision 5 passed"
    );
    assert!(!check(&[op(None, 0, 1, 9, "nobody")], &[], 0).is_empty());
}

fn leader(via: &Control) -> String {
    let out = std::process::Command::new(control_bin())
        .args(["member", "list", "--kubeconfig"])
        .arg(via.kubeconfig())
        .bounded_output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    list.lines()
        .find(|l| l.split_whitespace().nth(2) == Some("leader"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned()
}

/// Concurrent clients writing and reading the register through every member, and a watch on
/// one member, recording what they saw.
struct Workload {
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<()>>,
    history: Arc<Mutex<Vec<Op>>>,
    watcher: std::thread::JoinHandle<String>,
    watch_from: u64,
    faults: Vec<(&'static str, Instant)>,
}

/// Creates the register and starts the workload; the watch runs on `members[wi]`.
fn start_workload(members: &[Control], wi: usize) -> Workload {
    let init = RawClient::new(&members[0]).send(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/json"),
        &object("init"),
        10,
    );
    assert_eq!(init.code, 201, "{}", init.body);
    let watch_from: u64 = init.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let watch_client = RawClient::new(&members[wi]);
    let watcher = std::thread::spawn(move || {
        let path = format!(
            "/api/v1/namespaces/default/configmaps?watch=1&fieldSelector=metadata.name%3Dreg&resourceVersion={watch_from}&timeoutSeconds=120"
        );
        watch_client.send("GET", &path, None, &[], 150).body
    });
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::<Op>::new()));
    let mut clients = Vec::new();
    for t in 0..4 {
        let raws: Vec<RawClient> = members.iter().map(RawClient::new).collect();
        let (history, stop) = (history.clone(), stop.clone());
        clients.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let member = (i + t) % raws.len();
                let write = i.is_multiple_of(2).then(|| format!("t{t}-{i}"));
                let invoke = Instant::now();
                let answer = match &write {
                    Some(v) => raws[member].send("PUT", PATH, Some("application/json"), &object(v), 5),
                    None => raws[member].send("GET", PATH, None, &[], 5),
                };
                let op = Op {
                    write,
                    member,
                    invoke,
                    complete: Instant::now(),
                    outcome: outcome(answer.code, &answer.body),
                };
                history.lock().unwrap().push(op);
            }
        }));
    }
    Workload {
        stop,
        clients,
        history,
        watcher,
        watch_from,
        faults: Vec::new(),
    }
}

/// Stops the workload, then checks its history and the watch (read on `members[wi]`, which the
/// faults left alone); prints how long writes were unavailable after each fault.
fn finish(w: Workload, members: Vec<Control>, wi: usize) {
    w.stop.store(true, Ordering::Relaxed);
    for c in w.clients {
        c.join().unwrap();
    }
    let history = w.history.lock().unwrap().clone();
    let body = {
        std::thread::sleep(Duration::from_secs(1));
        // End the watch: its member's connection is closed when the test's curl times out or
        // here, by reading what it printed so far (the watch thread returns at its timeout).
        let _ = members[wi].kubectl(&["get", "configmap", "reg"]);
        drop(members);
        w.watcher.join().unwrap()
    };
    let watched: Vec<u64> = body
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse().ok())
        })
        .collect();
    let acknowledged = history
        .iter()
        .filter(|o| o.write.is_some() && matches!(o.outcome, Outcome::Done { .. }))
        .count();
    let unknown = history
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Unknown))
        .count();
    eprintln!(
        "{} operations, {acknowledged} acknowledged writes, {unknown} without an answer, the watch saw {}",
        history.len(),
        watched.len()
    );
    for (fault, at) in &w.faults {
        let next = history
            .iter()
            .filter(|o| o.write.is_some() && matches!(o.outcome, Outcome::Done { .. }) && o.invoke >= *at)
            .map(|o| o.complete)
            .min();
        match next {
            Some(t) => eprintln!("{fault}: the next acknowledged write {:?} later", t - *at),
            None => eprintln!("{fault}: no acknowledged write after it"),
        }
    }
    assert!(acknowledged > 50, "too few writes got through: {acknowledged}");
    let problems = check(&history, &watched, w.watch_from);
    assert!(
        problems.is_empty(),
        "the history is not linearizable:\n{}",
        problems.join("\n")
    );
}

const NAMES: [&str; 3] = ["one", "two", "three"];
/// The members' addresses in the member-fault test.
const IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
/// The members' addresses in the partition test (apart from the other test's, which runs at
/// the same time).
const PARTITIONED_IPS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

/// Three members on `ips`, each with `extra(i)` flags added (and its Raft transport on
/// `raft_ports[i]`, when given).
fn three_members(
    ips: [&str; 3],
    port: u16,
    raft_ports: Option<[u16; 3]>,
    extra: impl Fn(usize) -> Vec<String>,
) -> Vec<Control> {
    let start = |i: usize, flags: &[&str]| match raft_ports {
        Some(r) => Control::start_at_raft(ips[i], port, r[i], flags),
        None => Control::start_at(ips[i], port, flags),
    };
    let flags = |i: usize, mut base: Vec<String>| {
        base.extend(extra(i));
        base
    };
    let first_flags = flags(0, vec!["--name".into(), NAMES[0].into()]);
    let first_flags: Vec<&str> = first_flags.iter().map(String::as_str).collect();
    let first = start(0, &first_flags);
    let token = std::fs::read_to_string(first.data_dir().join("server-token")).unwrap();
    let url = first.url();
    let mut members = vec![first];
    for (i, name) in NAMES.iter().enumerate().skip(1) {
        let f = flags(
            i,
            vec![
                "--join".into(),
                url.clone(),
                "--token".into(),
                token.clone(),
                "--name".into(),
                (*name).into(),
            ],
        );
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        members.push(start(i, &f));
    }
    members
}

#[test]
fn writes_and_reads_stay_linearizable_through_member_faults() {
    let port = free_port();
    let mut members = three_members(IPS, port, None, |_| Vec::new());
    let url = members[0].url();
    let token = std::fs::read_to_string(members[0].data_dir().join("server-token")).unwrap();
    let lead = leader(&members[0]);
    let li = NAMES.iter().position(|n| *n == lead).unwrap();
    let fi = (li + 1) % 3;
    let wi = (li + 2) % 3;
    // The watch, on the member no fault touches.
    let mut w = start_workload(&members, wi);
    std::thread::sleep(Duration::from_secs(3));
    w.faults.push(("leader killed", Instant::now()));
    members[li].kill9();
    std::thread::sleep(Duration::from_secs(4));
    members[li].restart();
    std::thread::sleep(Duration::from_secs(2));
    w.faults.push(("follower killed", Instant::now()));
    members[fi].kill9();
    std::thread::sleep(Duration::from_secs(4));
    members[fi].restart();
    std::thread::sleep(Duration::from_secs(2));
    w.faults.push(("member added", Instant::now()));
    let fourth = Control::start_at(
        "127.0.0.4",
        port,
        &["--join", &url, "--token", &token, "--name", "four"],
    );
    std::thread::sleep(Duration::from_secs(2));
    w.faults.push(("member removed", Instant::now()));
    let list = std::process::Command::new(control_bin())
        .args(["member", "list", "--kubeconfig"])
        .arg(members[wi].kubeconfig())
        .bounded_output()
        .unwrap();
    let id = String::from_utf8_lossy(&list.stdout)
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("four"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let removed = std::process::Command::new(control_bin())
        .args(["member", "remove", &id, "--kubeconfig"])
        .arg(members[wi].kubeconfig())
        .bounded_output()
        .unwrap();
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    drop(fourth);
    std::thread::sleep(Duration::from_secs(3));
    finish(w, members, wi);
}

/// Partitions, through links between the members' Raft transports: the leader cut off from the
/// majority (which elects another; the old leader acknowledges nothing meanwhile), then a
/// follower isolated, each healed after a while; the history stays linearizable and the watch on
/// a member of the majority complete.
#[test]
fn writes_and_reads_stay_linearizable_through_partitions() {
    let port = free_port();
    const IPS: [&str; 3] = PARTITIONED_IPS;
    let links: Vec<Link> = IPS.iter().map(|ip| Link::listen(ip)).collect();
    let raft_ports = [free_port(), free_port(), free_port()];
    for (i, link) in links.iter().enumerate() {
        link.forward_to(&format!("{}:{}", IPS[i], raft_ports[i]));
    }
    let members = three_members(IPS, port, Some(raft_ports), |i| {
        vec!["--raft-advertise".into(), links[i].addr()]
    });
    let by_ip: Vec<(&str, &Link)> = IPS.iter().copied().zip(links.iter()).collect();
    let lead = leader(&members[0]);
    let li = NAMES.iter().position(|n| *n == lead).unwrap();
    let others: Vec<&str> = (0..3).filter(|i| *i != li).map(|i| IPS[i]).collect();
    let fi = (li + 1) % 3;
    let wi = (li + 2) % 3;
    let mut w = start_workload(&members, wi);
    std::thread::sleep(Duration::from_secs(3));
    w.faults
        .push(("leader partitioned from the majority", Instant::now()));
    partition(&by_ip, &[IPS[li]], &others, true);
    std::thread::sleep(Duration::from_secs(5));
    assert_ne!(leader(&members[wi]), lead, "the majority elected another leader");
    partition(&by_ip, &[IPS[li]], &others, false);
    std::thread::sleep(Duration::from_secs(3));
    // Whoever leads now, isolate the member that is neither the watch's nor the first leader.
    let rest: Vec<&str> = (0..3).filter(|i| *i != fi).map(|i| IPS[i]).collect();
    w.faults
        .push(("a follower or the leader isolated", Instant::now()));
    partition(&by_ip, &[IPS[fi]], &rest, true);
    std::thread::sleep(Duration::from_secs(5));
    partition(&by_ip, &[IPS[fi]], &rest, false);
    std::thread::sleep(Duration::from_secs(3));
    finish(w, members, wi);
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

/// The first member (the leader it founded) runs out of disk under load: it steps out of the
/// cluster (its writes refused, /readyz saying why), the other two elect a leader and go on;
/// when space returns it catches up and serves again. Nothing acknowledged is lost, the history
/// stays linearizable.
#[test]
fn a_full_disk_moves_leadership_and_loses_nothing() {
    const IPS: [&str; 3] = ["127.0.0.21", "127.0.0.22", "127.0.0.23"];
    let port = free_port();
    let first = Control::start_at_on_tmpfs(
        IPS[0],
        port,
        128,
        &["--name", NAMES[0], "--min-free-disk-mb", "24"],
    );
    let token = std::fs::read_to_string(first.data_dir().join("server-token")).unwrap();
    let url = first.url();
    let mut members = vec![first];
    for (i, name) in NAMES.iter().enumerate().skip(1) {
        members.push(Control::start_at(
            IPS[i],
            port,
            &["--join", &url, "--token", &token, "--name", name],
        ));
    }
    let wi = 1;
    let mut w = start_workload(&members, wi);
    std::thread::sleep(Duration::from_secs(3));
    w.faults.push(("the first member's disk filled", Instant::now()));
    let filler = members[0].data_dir().join("filler");
    let size = free_bytes(&members[0].data_dir()).saturating_sub(8 << 20);
    let out = std::process::Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&filler)
        .bounded_output()
        .expect("running fallocate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_secs(5));
    let lead = leader(&members[wi]);
    assert!(
        !lead.is_empty() && lead != NAMES[0],
        "leadership moved off the full member: {lead:?}"
    );
    let ready = RawClient::new(&members[0]).send("GET", "/readyz", None, &[], 10);
    assert_eq!(ready.code, 500, "{}", ready.body);
    assert!(ready.body.contains("disk is full"), "{}", ready.body);
    w.faults.push(("space returned", Instant::now()));
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let ready = RawClient::new(&members[0]).send("GET", "/readyz", None, &[], 10);
    assert_eq!(ready.code, 200, "{}", ready.body);
    finish(w, members, wi);
}
