//! What one pass of a pod's worker starts, decided from the containers' states alone, as the
//! kubelet's `computePodActions`: init containers one at a time in order (a sidecar counts as done
//! once it runs; a failed one ends the pod under `restartPolicy: Never`), sidecars restarted while
//! the pod runs, then the app containers that are not running and that the restart policy lets
//! start again; ephemeral containers once each. Whether each may start *now* is the back-off's
//! call (`backoff.rs`); the worker starts them (`worker/`). Pure, so the pass is unit-tested
//! without a runtime.

use std::collections::HashMap;

use serde_json::Value;

use super::containers::{Ctr, is_sidecar};

/// The containers a pass tries to start, in order.
#[derive(Debug, Default)]
pub(super) struct Pass {
    /// Container specs to start (each subject to its back-off).
    pub start: Vec<Value>,
}

/// The pass for `pod` whose containers are in `ctrs` (by name; a missing one was never created).
pub(super) fn plan(pod: &Value, ctrs: &HashMap<String, Ctr>) -> Pass {
    let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    let specs = |field: &str| -> Vec<Value> { pod["spec"][field].as_array().cloned().unwrap_or_default() };
    let state = |c: &Value| ctrs.get(c["name"].as_str().unwrap_or_default());
    let mut pass = Pass::default();
    // Ephemeral containers (`kubectl debug`) start once each, even before the pod is initialized,
    // and never again; not in a pod that has ended.
    if !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
        for c in specs("ephemeralContainers") {
            if state(&c).is_none_or(|s| s.current.is_none()) {
                pass.start.push(c);
            }
        }
    }
    // Init containers, in order; the first that is not done is the only one looked at.
    let mut initialized = true;
    let mut failed = false;
    for c in specs("initContainers") {
        let sidecar = is_sidecar(&c);
        let s = state(&c);
        if s.is_some_and(|s| s.init_done(sidecar)) {
            continue;
        }
        initialized = false;
        if s.is_some_and(Ctr::running) {
            break;
        }
        if let Some(e) = s.and_then(Ctr::exited)
            && !sidecar
            && policy == "Never"
            && !e.succeeded()
        {
            failed = true;
            break;
        }
        pass.start.push(c);
        break;
    }
    if !initialized || failed {
        return pass;
    }
    // Sidecars keep running (restarted on exit) while the pod runs.
    for c in specs("initContainers").into_iter().filter(is_sidecar) {
        if !state(&c).is_some_and(Ctr::running) {
            pass.start.push(c);
        }
    }
    for c in specs("containers") {
        let s = state(&c);
        if s.is_some_and(Ctr::running) {
            continue;
        }
        let restart = match s.and_then(Ctr::exited) {
            None => true,
            // Stopped because its spec changed: started again with the new spec.
            Some(_) if s.is_some_and(|s| s.replacing.is_some()) => true,
            Some(e) => match policy {
                "Never" => false,
                "OnFailure" => !e.succeeded(),
                _ => true,
            },
        };
        if restart {
            pass.start.push(c);
        }
    }
    pass
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::pods::containers::Attempt;
    use crate::runtime::shim::{Exited, Started};

    fn running() -> Ctr {
        Ctr {
            current: Some(Attempt {
                started: Some(Started::default()),
                ..Attempt::default()
            }),
            ..Ctr::default()
        }
    }

    fn exited(code: i32) -> Ctr {
        Ctr {
            current: Some(Attempt {
                started: Some(Started::default()),
                exited: Some(Exited {
                    exit_code: code,
                    ..Exited::default()
                }),
                ..Attempt::default()
            }),
            ..Ctr::default()
        }
    }

    fn pod(policy: &str, init: &[&str], sidecars: &[&str], app: &[&str]) -> Value {
        let init: Vec<Value> = init
            .iter()
            .map(|n| json!({"name": n}))
            .chain(
                sidecars
                    .iter()
                    .map(|n| json!({"name": n, "restartPolicy": "Always"})),
            )
            .collect();
        let app: Vec<Value> = app.iter().map(|n| json!({"name": n})).collect();
        json!({"spec": {"restartPolicy": policy, "initContainers": init, "containers": app}})
    }

    fn names(pass: &Pass) -> Vec<&str> {
        pass.start
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default())
            .collect()
    }

    fn states(list: Vec<(&str, Ctr)>) -> HashMap<String, Ctr> {
        list.into_iter().map(|(n, c)| (n.to_owned(), c)).collect()
    }

    #[test]
    fn a_new_pod_starts_its_first_init_container_only() {
        let p = pod("Always", &["a", "b"], &[], &["app"]);
        assert_eq!(names(&plan(&p, &HashMap::new())), ["a"]);
        let p = pod("Always", &[], &[], &["x", "y"]);
        assert_eq!(names(&plan(&p, &HashMap::new())), ["x", "y"]);
    }

    #[test]
    fn init_containers_go_one_at_a_time() {
        let p = pod("Always", &["a", "b"], &[], &["app"]);
        // A running init container is waited for.
        assert!(plan(&p, &states(vec![("a", running())])).start.is_empty());
        // A succeeded one lets the next start.
        assert_eq!(names(&plan(&p, &states(vec![("a", exited(0))]))), ["b"]);
        // A failed one is retried (restart policy Always or OnFailure).
        assert_eq!(names(&plan(&p, &states(vec![("a", exited(1))]))), ["a"]);
        // All done: the app containers.
        assert_eq!(
            names(&plan(&p, &states(vec![("a", exited(0)), ("b", exited(0))]))),
            ["app"]
        );
    }

    #[test]
    fn a_failed_init_container_ends_a_pod_that_never_restarts() {
        let p = pod("Never", &["a"], &[], &["app"]);
        assert!(plan(&p, &states(vec![("a", exited(2))])).start.is_empty());
    }

    #[test]
    fn sidecars_count_once_running_and_are_restarted() {
        let p = pod("Never", &["setup"], &["proxy"], &["app"]);
        let done = || states(vec![("setup", exited(0))]);
        // The sidecar is the next init container: started, the app waits for it.
        assert_eq!(names(&plan(&p, &done())), ["proxy"]);
        let mut with_sidecar = done();
        with_sidecar.insert("proxy".into(), running());
        assert_eq!(names(&plan(&p, &with_sidecar)), ["app"]);
        // A sidecar that exits while the pod runs is started again, whatever the pod's policy.
        let mut exited_sidecar = with_sidecar;
        exited_sidecar.insert("app".into(), running());
        exited_sidecar.insert("proxy".into(), exited(1));
        assert_eq!(names(&plan(&p, &exited_sidecar)), ["proxy"]);
    }

    #[test]
    fn the_restart_policy_decides_which_exited_containers_start_again() {
        let ctrs = || states(vec![("ok", exited(0)), ("bad", exited(1)), ("up", running())]);
        let p = |policy| pod(policy, &[], &[], &["ok", "bad", "up"]);
        assert_eq!(names(&plan(&p("Always"), &ctrs())), ["ok", "bad"]);
        assert_eq!(names(&plan(&p("OnFailure"), &ctrs())), ["bad"]);
        assert!(plan(&p("Never"), &ctrs()).start.is_empty());
    }

    #[test]
    fn ephemeral_containers_start_once_even_during_init_and_not_in_an_ended_pod() {
        let mut p = pod("Always", &["setup"], &[], &["app"]);
        p["spec"]["ephemeralContainers"] = json!([{"name": "debugger"}]);
        // Initialization is under way: the debugger starts beside the init container.
        let pass = plan(&p, &HashMap::new());
        assert_eq!(names(&pass), ["debugger", "setup"]);
        // Once it ran and ended, it is never started again.
        let ctrs = HashMap::from([
            ("setup".to_string(), exited(0)),
            ("app".to_string(), running()),
            ("debugger".to_string(), exited(0)),
        ]);
        assert!(plan(&p, &ctrs).start.is_empty());
        // An ended pod starts none.
        p["status"]["phase"] = json!("Succeeded");
        assert!(names(&plan(&p, &HashMap::new())).iter().all(|n| *n != "debugger"));
    }
}
