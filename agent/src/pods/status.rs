//! A pod's status as the worker reports it: each container's state, last state, readiness and
//! restarts, the pod's phase and conditions (transition times kept while a condition holds), its
//! addresses and QoS class. Pure functions of what the worker knows, so every case is unit-tested.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::containers::{Attempt, Ctr, is_sidecar};
use crate::runtime::shim::Exited;

/// What the status is made of.
pub(super) struct PodView<'a> {
    /// The pod as last read (spec, and the status reported before).
    pub pod: &'a Value,
    /// Its containers, by name.
    pub ctrs: &'a HashMap<String, Ctr>,
    /// Whether its sandbox (network namespace, volumes) is ready.
    pub sandbox_ready: bool,
    /// The node's address.
    pub node_ip: &'a str,
    /// The pod's address (the node's with host networking), once it has one.
    pub ip: Option<&'a str>,
    /// When the worker first took the pod up.
    pub start_time: Option<&'a str>,
}

fn containers<'a>(pod: &'a Value, key: &str) -> Vec<&'a Value> {
    pod["spec"][key].as_array().into_iter().flatten().collect()
}

/// An RFC 3339 time to the second, as the API shows container and condition times.
pub(super) fn trim_ts(ts: &str) -> String {
    match ts.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => ts.to_string(),
    }
}

/// One container's status; `init`: it is an init container; `initializing`: the pod has init
/// containers, so a container not yet created waits as `PodInitializing` (the kubelet's default
/// state then) rather than `ContainerCreating`.
fn container_status(ctrs: &HashMap<String, Ctr>, c: &Value, init: bool, initializing: bool) -> Value {
    let name = c["name"].as_str().unwrap_or_default();
    let empty = Ctr::default();
    let s = ctrs.get(name).unwrap_or(&empty);
    let terminated = |a: &Attempt| -> Value {
        let e = a.exited.clone().unwrap_or_default();
        let reason = if e.oom_killed {
            "OOMKilled"
        } else if e.error.is_some() {
            "StartError"
        } else if e.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let mut t = json!({
            "exitCode": e.exit_code,
            "reason": reason,
            "startedAt": a.started.as_ref().map(|s| trim_ts(&s.started_at)),
            "finishedAt": trim_ts(&e.finished_at),
            "containerID": format!("skiff://{}", a.id),
        });
        if let Some(sig) = e.signal {
            t["signal"] = json!(sig);
        }
        if let Some(m) = e.error.or_else(|| a.message.clone().filter(|m| !m.is_empty())) {
            t["message"] = json!(m);
        }
        t
    };
    let running = s.running();
    let state = match (&s.current, &s.waiting) {
        (Some(a), _) if running => {
            json!({"running": {"startedAt": a.started.as_ref().map(|s| trim_ts(&s.started_at))}})
        }
        (_, Some((reason, message))) => json!({"waiting": {"reason": reason, "message": message}}),
        (Some(a), None) if a.exited.is_some() => json!({"terminated": terminated(a)}),
        _ => {
            json!({"waiting": {"reason": if initializing { "PodInitializing" } else { "ContainerCreating" }}})
        }
    };
    let last = match (&s.current, &s.previous) {
        (Some(a), _) if !running && s.waiting.is_some() && a.exited.is_some() => {
            json!({"terminated": terminated(a)})
        }
        (_, Some(p)) if p.exited.is_some() => json!({"terminated": terminated(p)}),
        _ => json!({}),
    };
    let probed = c.get("readinessProbe").is_some() || c.get("startupProbe").is_some();
    let verdict = s.verdict();
    // A completed init container is ready, as the kubelet reports it.
    let completed = init
        && !is_sidecar(c)
        && s.current
            .as_ref()
            .and_then(|a| a.exited.as_ref())
            .is_some_and(Exited::succeeded);
    let ready = completed || (running && (!init || is_sidecar(c)) && (!probed || verdict.ready));
    let started = running && (c.get("startupProbe").is_none() || verdict.started);
    let mut st = json!({
        "name": name,
        // The image the container runs, until it is replaced with the spec's.
        "image": s.started_image.as_deref().map_or_else(|| c["image"].clone(), |i| json!(i)),
        "imageID": s.image_id.clone().unwrap_or_default(),
        "restartCount": s.restart_count(),
        "ready": ready,
        "started": started,
        "state": state,
        "lastState": last,
    });
    if let Some(a) = &s.current {
        st["containerID"] = json!(format!("skiff://{}", a.id));
    }
    st
}

/// The pod's status at `now` (RFC 3339).
pub(super) fn pod_status(v: &PodView<'_>, now: &str) -> Value {
    let inits = containers(v.pod, "initContainers");
    let specs = containers(v.pod, "containers");
    let state = |c: &Value| v.ctrs.get(c["name"].as_str().unwrap_or_default());
    let initializing = !inits.is_empty();
    let init: Vec<Value> = inits
        .iter()
        .map(|c| container_status(v.ctrs, c, true, initializing))
        .collect();
    let app: Vec<Value> = specs
        .iter()
        .map(|c| container_status(v.ctrs, c, false, initializing))
        .collect();
    // Ephemeral containers are never ready and count for neither phase nor conditions.
    let ephemeral: Vec<Value> = containers(v.pod, "ephemeralContainers")
        .iter()
        .map(|c| {
            let mut st = container_status(v.ctrs, c, true, initializing);
            st["ready"] = json!(false);
            st
        })
        .collect();
    let policy = v.pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    let init_done = inits
        .iter()
        .all(|c| state(c).is_some_and(|s| s.init_done(is_sidecar(c))));
    let init_failed = policy == "Never"
        && inits
            .iter()
            .any(|c| !is_sidecar(c) && state(c).and_then(Ctr::exited).is_some_and(|e| !e.succeeded()));
    let apps: Vec<&Ctr> = specs.iter().filter_map(|c| state(c)).collect();
    let all_created = apps.len() == specs.len() && apps.iter().all(|c| c.current.is_some());
    let any_running = apps.iter().any(|c| c.running());
    let all_exited = all_created && apps.iter().all(|c| c.exited().is_some());
    let all_ok = all_exited && apps.iter().all(|c| c.exited().is_some_and(Exited::succeeded));
    let phase = if init_failed {
        "Failed"
    } else if !init_done || !all_created {
        "Pending"
    } else if all_exited && policy != "Always" && !apps.iter().any(|c| c.waiting.is_some()) {
        if all_ok {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else if any_running || all_exited {
        "Running"
    } else {
        "Pending"
    };
    let ready = phase == "Running" && app.iter().all(|s| s["ready"] == json!(true));
    let old = &v.pod["status"];
    let old_cond = |t: &str| {
        old["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == json!(t))
            .cloned()
    };
    let cond = |t: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let since = old_cond(t)
            .filter(|c| c["status"] == json!(status))
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(|| trim_ts(now));
        let mut c = json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
        if let Some(r) = reason.filter(|_| !ok) {
            c["reason"] = json!(r);
        }
        c
    };
    let done = matches!(phase, "Succeeded" | "Failed");
    let mut conditions = vec![
        cond("PodReadyToStartContainers", v.sandbox_ready, None),
        cond("Initialized", init_done, Some("ContainersNotInitialized")),
        cond(
            "Ready",
            ready,
            Some(if done {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        cond(
            "ContainersReady",
            ready,
            Some(if done {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
    ];
    // The kubelet's messages: which containers keep a condition false.
    let incomplete: Vec<&str> = inits
        .iter()
        .filter(|c| !state(c).is_some_and(|s| s.init_done(is_sidecar(c))))
        .filter_map(|c| c["name"].as_str())
        .collect();
    if !init_done && !incomplete.is_empty() {
        conditions[1]["message"] = json!(format!(
            "containers with incomplete status: [{}]",
            incomplete.join(" ")
        ));
    }
    let unready: Vec<&str> = app
        .iter()
        .filter(|s| s["ready"] != json!(true))
        .filter_map(|s| s["name"].as_str())
        .collect();
    if !ready && !done && !unready.is_empty() {
        let message = json!(format!("containers with unready status: [{}]", unready.join(" ")));
        conditions[2]["message"] = message.clone();
        conditions[3]["message"] = message;
    }
    if let Some(s) = old_cond("PodScheduled") {
        conditions.push(s);
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": v.node_ip,
        "hostIPs": [{"ip": v.node_ip}],
        "startTime": v.start_time.map(trim_ts),
        "qosClass": super::spec::qos_class(v.pod),
        "containerStatuses": app,
    });
    if let Some(ip) = v.ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    if !ephemeral.is_empty() {
        status["ephemeralContainerStatuses"] = json!(ephemeral);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::shim::Started;

    const NOW: &str = "2026-12-02T10:05:00.700Z";

    fn attempt(number: u32, exit: Option<i32>) -> Attempt {
        Attempt {
            number,
            id: format!("c-{number}"),
            started: Some(Started {
                pid: 100,
                shim_pid: 99,
                started_at: "2026-12-02T10:00:00.123Z".into(),
            }),
            exited: exit.map(|exit_code| Exited {
                exit_code,
                finished_at: "2026-12-02T10:01:00.500Z".into(),
                ..Exited::default()
            }),
            message: None,
        }
    }

    fn ctr(current: Option<Attempt>) -> Ctr {
        Ctr {
            current,
            ..Ctr::default()
        }
    }

    fn pod(policy: &str, init: &[&str], apps: &[&str]) -> Value {
        let list = |names: &[&str]| -> Vec<Value> {
            names
                .iter()
                .map(|n| json!({"name": n, "image": "busybox:1"}))
                .collect()
        };
        json!({"spec": {"restartPolicy": policy, "initContainers": list(init), "containers": list(apps)}})
    }

    fn status(pod: &Value, ctrs: Vec<(&str, Ctr)>) -> Value {
        let ctrs: HashMap<String, Ctr> = ctrs.into_iter().map(|(n, c)| (n.to_owned(), c)).collect();
        pod_status(
            &PodView {
                pod,
                ctrs: &ctrs,
                sandbox_ready: true,
                node_ip: "10.0.0.1",
                ip: Some("10.42.0.5"),
                start_time: Some("2026-12-02T09:59:59.900Z"),
            },
            NOW,
        )
    }

    fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap()
    }

    #[test]
    fn a_running_container_makes_a_running_ready_pod() {
        let s = status(
            &pod("Always", &[], &["app"]),
            vec![("app", ctr(Some(attempt(0, None))))],
        );
        assert_eq!(s["phase"], "Running");
        assert_eq!(condition(&s, "Ready")["status"], "True");
        assert_eq!(
            condition(&s, "Ready")["lastTransitionTime"],
            "2026-12-02T10:05:00Z"
        );
        let app = &s["containerStatuses"][0];
        assert_eq!(
            app["state"],
            json!({"running": {"startedAt": "2026-12-02T10:00:00Z"}})
        );
        assert_eq!(
            (app["ready"].clone(), app["started"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(app["containerID"], "skiff://c-0");
        assert_eq!(s["podIP"], "10.42.0.5");
        assert_eq!(s["hostIPs"], json!([{"ip": "10.0.0.1"}]));
        assert_eq!(s["startTime"], "2026-12-02T09:59:59Z");
        assert_eq!(s["qosClass"], "BestEffort");
        assert!(s.get("initContainerStatuses").is_none());
    }

    #[test]
    fn the_phase_follows_exits_and_the_restart_policy() {
        let phase = |policy: &str, exits: [Option<i32>; 2]| {
            let ctrs = vec![
                ("a", ctr(Some(attempt(0, exits[0])))),
                ("b", ctr(Some(attempt(0, exits[1])))),
            ];
            status(&pod(policy, &[], &["a", "b"]), ctrs)["phase"].clone()
        };
        assert_eq!(phase("Never", [Some(0), Some(0)]), "Succeeded");
        assert_eq!(phase("OnFailure", [Some(0), Some(0)]), "Succeeded");
        assert_eq!(phase("Never", [Some(0), Some(1)]), "Failed");
        assert_eq!(phase("OnFailure", [Some(0), Some(1)]), "Running");
        assert_eq!(phase("Always", [Some(0), Some(0)]), "Running");
        assert_eq!(phase("Never", [Some(0), None]), "Running");
        let one_not_created = status(
            &pod("Always", &[], &["a", "b"]),
            vec![("a", ctr(Some(attempt(0, None))))],
        );
        assert_eq!(one_not_created["phase"], "Pending");
        let s = &one_not_created["containerStatuses"][1];
        assert_eq!(s["state"], json!({"waiting": {"reason": "ContainerCreating"}}));
        let done = status(
            &pod("Never", &[], &["a"]),
            vec![("a", ctr(Some(attempt(0, Some(0)))))],
        );
        assert_eq!(condition(&done, "Ready")["reason"], "PodCompleted");
    }

    #[test]
    fn init_containers_hold_the_pod_until_they_succeed() {
        let p = pod("Never", &["setup"], &["app"]);
        let waiting = status(&p, vec![("setup", ctr(Some(attempt(0, None))))]);
        assert_eq!(waiting["phase"], "Pending");
        let initialized = condition(&waiting, "Initialized");
        assert_eq!(
            (initialized["status"].clone(), initialized["reason"].clone()),
            (json!("False"), json!("ContainersNotInitialized"))
        );
        assert_eq!(
            initialized["message"],
            "containers with incomplete status: [setup]"
        );
        assert_eq!(
            condition(&waiting, "Ready")["message"],
            "containers with unready status: [app]"
        );
        assert_eq!(
            waiting["initContainerStatuses"][0]["ready"], false,
            "an init container is never ready"
        );
        let done = status(
            &p,
            vec![
                ("setup", ctr(Some(attempt(0, Some(0))))),
                ("app", ctr(Some(attempt(0, None)))),
            ],
        );
        assert_eq!(done["phase"], "Running");
        assert_eq!(condition(&done, "Initialized")["status"], "True");
        assert_eq!(
            done["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        let failed = status(&p, vec![("setup", ctr(Some(attempt(0, Some(2)))))]);
        assert_eq!(failed["phase"], "Failed");
        // As the kubelet: with init containers, a container not created yet is PodInitializing.
        assert_eq!(
            failed["containerStatuses"][0]["state"],
            json!({"waiting": {"reason": "PodInitializing"}})
        );
        let none = status(&p, vec![]);
        assert_eq!(
            none["initContainerStatuses"][0]["state"],
            json!({"waiting": {"reason": "PodInitializing"}})
        );
    }

    #[test]
    fn a_crash_looping_container_waits_with_its_last_exit_as_last_state() {
        let mut crashing = ctr(Some(attempt(3, Some(137))));
        crashing.waiting = Some(("CrashLoopBackOff".into(), "back-off 40s".into()));
        crashing.previous = Some(attempt(2, Some(1)));
        let s = status(&pod("Always", &[], &["app"]), vec![("app", crashing)]);
        assert_eq!(s["phase"], "Running");
        let app = &s["containerStatuses"][0];
        assert_eq!(app["restartCount"], 3);
        assert_eq!(
            app["state"],
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}})
        );
        assert_eq!(app["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(app["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(
            app["lastState"]["terminated"]["finishedAt"],
            "2026-12-02T10:01:00Z"
        );

        let mut oom = attempt(0, Some(137));
        if let Some(e) = oom.exited.as_mut() {
            e.oom_killed = true;
            e.signal = Some(9);
        }
        let s = status(&pod("Never", &[], &["app"]), vec![("app", ctr(Some(oom)))]);
        let terminated = &s["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(
            (terminated["reason"].clone(), terminated["signal"].clone()),
            (json!("OOMKilled"), json!(9))
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_while_they_hold() {
        let mut p = pod("Always", &[], &["app"]);
        p["status"] = json!({"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-02T08:00:00Z"},
            {"type": "Initialized", "status": "False", "lastTransitionTime": "2026-12-02T08:00:00Z"},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-02T07:00:00Z"}
        ]});
        let s = status(&p, vec![("app", ctr(Some(attempt(0, None))))]);
        assert_eq!(
            condition(&s, "Ready")["lastTransitionTime"],
            "2026-12-02T08:00:00Z",
            "still ready"
        );
        assert_eq!(
            condition(&s, "Initialized")["lastTransitionTime"],
            "2026-12-02T10:05:00Z",
            "it flipped"
        );
        assert_eq!(
            condition(&s, "PodScheduled")["lastTransitionTime"],
            "2026-12-02T07:00:00Z",
            "the scheduler's, kept"
        );
    }
}
