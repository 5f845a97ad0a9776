//! Ephemeral containers (`pods/NAME/ephemeralcontainers`, what `kubectl debug` adds to a running
//! pod). Through the subresource only `spec.ephemeralContainers` changes, and only by adding
//! containers: those already there may not change or go, as upstream's EphemeralContainers
//! strategy and validation have it. A pod is never created with any, and a write of the pod
//! itself keeps the ones it has. The field checks of each container are in `validation.rs`.

use serde_json::Value;

use super::validation::Causes;

const FIELD: &str = "spec.ephemeralContainers";

fn list(pod: &Value) -> &[Value] {
    pod["spec"]["ephemeralContainers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The pod to store for a write of the subresource: `old` with the ephemeral containers of
/// `new`, or the reasons it is refused.
pub fn add(old: &Value, new: &Value) -> Result<Value, Causes> {
    let (before, after) = (list(old), list(new));
    let mut causes = Causes::new();
    for c in before {
        let name = c["name"].as_str().unwrap_or_default();
        match after.iter().find(|n| n["name"] == c["name"]) {
            None => causes.push((
                FIELD.into(),
                format!("Forbidden: existing ephemeral containers \"{name}\" may not be removed"),
            )),
            Some(n) if n != c => causes.push((
                FIELD.into(),
                format!("Forbidden: existing ephemeral containers \"{name}\" may not be changed"),
            )),
            Some(_) => {}
        }
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    let mut pod = old.clone();
    match new["spec"].get("ephemeralContainers") {
        Some(v) if !after.is_empty() => pod["spec"]["ephemeralContainers"] = v.clone(),
        _ => {}
    }
    Ok(pod)
}

/// A write of the pod itself keeps the ephemeral containers it has (only the subresource adds).
pub fn keep(old: &Value, new: &mut Value) {
    match old["spec"].get("ephemeralContainers") {
        Some(v) => new["spec"]["ephemeralContainers"] = v.clone(),
        None => {
            if let Some(spec) = new["spec"].as_object_mut() {
                spec.remove("ephemeralContainers");
            }
        }
    }
}

/// The fields an ephemeral container may not set (`Forbidden: cannot be set for an Ephemeral
/// Container`), and the target it names, which must be one of the pod's containers.
pub fn check(spec: &Value, causes: &mut Causes) {
    let names: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, c) in spec["ephemeralContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for f in [
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
            "resizePolicy",
            "restartPolicy",
        ] {
            if c.get(f).is_some_and(|v| !v.is_null()) {
                causes.push((
                    format!("{FIELD}[{i}].{f}"),
                    "Forbidden: cannot be set for an Ephemeral Container".into(),
                ));
            }
        }
        if c["resources"]
            .as_object()
            .is_some_and(|r| r.values().any(|v| v.as_object().is_some_and(|m| !m.is_empty())))
        {
            causes.push((
                format!("{FIELD}[{i}].resources"),
                "Forbidden: cannot be set for an Ephemeral Container".into(),
            ));
        }
        if let Some(target) = c["targetContainerName"].as_str().filter(|t| !t.is_empty())
            && !names.contains(&target)
        {
            causes.push((
                format!("{FIELD}[{i}].targetContainerName"),
                format!("Not found: \"{target}\""),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ephemeral: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "a"}], "ephemeralContainers": ephemeral}})
    }

    #[test]
    fn containers_are_added_but_never_changed_or_removed() {
        let debugger = json!({"name": "debugger", "image": "busybox", "stdin": true});
        let old = pod(json!([debugger]));
        let other = json!({"name": "second", "image": "busybox"});
        // Adding keeps everything else of the stored pod.
        let mut new = pod(json!([debugger, other]));
        new["spec"]["containers"][0]["image"] = json!("changed");
        let stored = add(&old, &new).unwrap();
        assert_eq!(stored["spec"]["ephemeralContainers"], json!([debugger, other]));
        assert_eq!(stored["spec"]["containers"][0]["image"], "a");

        let err = add(&old, &pod(json!([other]))).unwrap_err();
        assert_eq!(
            err,
            [(
                FIELD.to_string(),
                "Forbidden: existing ephemeral containers \"debugger\" may not be removed".to_string()
            )]
        );
        let changed = json!({"name": "debugger", "image": "alpine"});
        let err = add(&old, &pod(json!([changed]))).unwrap_err();
        assert!(err[0].1.contains("may not be changed"), "{err:?}");
    }

    #[test]
    fn a_write_of_the_pod_keeps_its_ephemeral_containers() {
        let old = pod(json!([{"name": "debugger", "image": "busybox"}]));
        let mut new = pod(json!([]));
        keep(&old, &mut new);
        assert_eq!(
            new["spec"]["ephemeralContainers"],
            old["spec"]["ephemeralContainers"]
        );
        let mut sneaky = json!({"spec": {"containers": [], "ephemeralContainers": [{"name": "x"}]}});
        keep(&json!({"spec": {}}), &mut sneaky);
        assert!(sneaky["spec"].get("ephemeralContainers").is_none());
    }

    #[test]
    fn ports_probes_and_resources_are_forbidden_and_the_target_must_exist() {
        let spec = json!({"containers": [{"name": "app"}], "ephemeralContainers": [
            {"name": "ok", "image": "b", "targetContainerName": "app", "resources": {}},
            {"name": "bad", "image": "b", "ports": [{"containerPort": 80}], "readinessProbe": {},
             "resources": {"limits": {"cpu": "1"}}, "targetContainerName": "nope"},
        ]});
        let mut causes = Causes::new();
        check(&spec, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.ephemeralContainers[1].ports",
                "spec.ephemeralContainers[1].readinessProbe",
                "spec.ephemeralContainers[1].resources",
                "spec.ephemeralContainers[1].targetContainerName",
            ]
        );
    }
}
