//! Job selectors (upstream's Job strategy): a new Job's selector and its template's labels come
//! from its uid, unless `manualSelector` is set.

use serde_json::{Value, json};

use super::{Attributes, Lookup, Operation, Plugin};
use crate::objects::meta::meta_str;
use crate::objects::status::ApiError;

/// Generates a new Job's selector.
pub struct JobSelector;

#[tonic::async_trait]
impl Plugin for JobSelector {
    fn name(&self) -> &'static str {
        "JobSelector"
    }

    async fn admit(&self, _: &dyn Lookup, attrs: &Attributes<'_>, obj: &mut Value) -> Result<(), ApiError> {
        if attrs.operation == Operation::Create && attrs.is("batch", "Job") {
            let uid = meta_str(obj, "uid").to_owned();
            generate_job_selector(obj, &uid);
        }
        Ok(())
    }
}

/// Job selectors are generated from the job's uid unless `manualSelector` is set.
fn generate_job_selector(obj: &mut Value, uid: &str) {
    if obj["spec"]["manualSelector"] == json!(true) {
        return;
    }
    obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let name = obj["metadata"]["name"].clone();
    let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", json!(uid)),
        ("controller-uid", json!(uid)),
        ("batch.kubernetes.io/job-name", name.clone()),
        ("job-name", name),
    ] {
        labels[k] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::admission::testing::{Objects, block_on, create, resource};

    #[test]
    fn a_new_job_selects_its_pods_by_uid_unless_manual() {
        let jobs = resource("batch", "v1", "jobs");
        let attrs = create(&jobs, "default");
        let mut job = json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"metadata": {"labels": {"app": "pi"}}, "spec": {}}}});
        block_on(JobSelector.admit(&Objects::default(), &attrs, &mut job)).unwrap();
        assert_eq!(
            job["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        let labels = &job["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["app"], "pi");
        assert_eq!(labels["controller-uid"], "u-1");
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["job-name"], "pi");

        let manual = json!({"metadata": {"name": "m", "uid": "u-2"},
            "spec": {"manualSelector": true, "selector": {"matchLabels": {"mine": "yes"}}, "template": {}}});
        let mut job = manual.clone();
        block_on(JobSelector.admit(&Objects::default(), &attrs, &mut job)).unwrap();
        assert_eq!(job, manual);

        let mut update = create(&jobs, "default");
        update.operation = Operation::Update;
        let stored = json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {}}});
        let mut job = stored.clone();
        block_on(JobSelector.admit(&Objects::default(), &update, &mut job)).unwrap();
        assert_eq!(job, stored, "only new jobs get a generated selector");
    }
}
