//! The write path on a real (single-member, temporary) store: what each write fills, checks and
//! refuses, without the HTTP layer.

use serde_json::{Value, json};

use super::*;
use crate::objects::service::Cidr;
use crate::store::{Store, StoreConfig};

async fn objects(dir: &std::path::Path) -> Objects {
    let store = Store::open(StoreConfig::single(
        dir.to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let objects = Objects::new(store, Cidr::parse("10.96.0.0/12").unwrap());
    crate::bootstrap::ensure_defaults(&objects).await.unwrap();
    objects
}

fn config_maps(o: &Objects, name: Option<&str>) -> Request {
    Request::new(o.resource("", "configmaps"), Some("default"), name).by("test")
}

fn deployments(o: &Objects, name: Option<&str>) -> Request {
    Request::new(o.resource("apps", "deployments"), Some("default"), name).by("test")
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "c", "image": "registry.local/app:1"}]}}}})
}

#[tokio::test]
async fn a_create_fills_what_the_server_owns() {
    let dir = tempfile::tempdir().unwrap();
    let o = objects(dir.path()).await;
    let created = o
        .create(
            &config_maps(&o, None),
            json!({"metadata": {"generateName": "cm-", "resourceVersion": "5", "uid": "mine"}, "data": {"a": "b"}}),
        )
        .await
        .unwrap();
    assert_eq!(created["apiVersion"], "v1");
    assert_eq!(created["kind"], "ConfigMap");
    assert_eq!(created["metadata"]["namespace"], "default");
    assert!(meta_str(&created, "name").starts_with("cm-"));
    assert_ne!(created["metadata"]["uid"], "mine");
    assert_ne!(created["metadata"]["resourceVersion"], "5");
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "test");
    let stored = o
        .read(&config_maps(&o, None), meta_str(&created, "name"))
        .await
        .unwrap();
    assert_eq!(from_kv(&stored)["data"]["a"], "b");
}

#[tokio::test]
async fn a_create_refuses_another_kind_or_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let o = objects(dir.path()).await;
    let req = config_maps(&o, None);
    let kind = o
        .create(&req, json!({"kind": "Secret", "metadata": {"name": "x"}}))
        .await
        .unwrap_err();
    assert_eq!(kind.code, 400);
    let ns = o
        .create(
            &req,
            json!({"metadata": {"name": "x", "namespace": "kube-system"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(ns.code, 400);
    o.create(&req, json!({"metadata": {"name": "x"}})).await.unwrap();
    let again = o
        .create(&req, json!({"metadata": {"name": "x"}}))
        .await
        .unwrap_err();
    assert_eq!(again.code, 409);
    assert_eq!(again.reason, "AlreadyExists");
}

#[tokio::test]
async fn dry_run_and_strict_writes() {
    let dir = tempfile::tempdir().unwrap();
    let o = objects(dir.path()).await;
    let mut req = config_maps(&o, None);
    req.options.dry_run = true;
    o.create(&req, json!({"metadata": {"name": "dry"}}))
        .await
        .unwrap();
    let missing = o.read(&req, "dry").await.unwrap_err();
    assert_eq!(missing.code, 404);
    let mut strict = config_maps(&o, None);
    strict.options.strict = true;
    let err = o
        .create(&strict, json!({"metadata": {"name": "s"}, "dta": {}}))
        .await
        .unwrap_err();
    assert_eq!(err.code, 400);
    assert!(err.message.contains("unknown field \"dta\""), "{}", err.message);
}

#[tokio::test]
async fn an_update_at_an_old_version_conflicts_and_spec_changes_bump_generation() {
    let dir = tempfile::tempdir().unwrap();
    let o = objects(dir.path()).await;
    let created = o
        .create(&deployments(&o, None), deployment("web", 1))
        .await
        .unwrap();
    assert_eq!(created["metadata"]["generation"], 1);
    let req = deployments(&o, Some("web"));
    let mut next = created.clone();
    next["spec"]["replicas"] = json!(3);
    let updated = o.update(&req, next.clone()).await.unwrap();
    assert_eq!(updated["metadata"]["generation"], 2);
    // `next` still carries the version it was read at.
    let stale = o.update(&req, next).await.unwrap_err();
    assert_eq!(stale.code, 409);
    // A status write keeps the spec and leaves the generation alone.
    let mut status = updated.clone();
    status["spec"]["replicas"] = json!(7);
    status["status"] = json!({"replicas": 3});
    let written = o.update(&req.clone().at(Some("status")), status).await.unwrap();
    assert_eq!(written["spec"]["replicas"], 3);
    assert_eq!(written["status"]["replicas"], 3);
    assert_eq!(written["metadata"]["generation"], 2);
    // A status write takes annotations along (an apps workload keeps its labels).
    let mut annotated = written.clone();
    annotated["metadata"]["annotations"] = json!({"patchedstatus": "true"});
    annotated["metadata"]["labels"] = json!({"changed": "yes"});
    let written = o
        .update(&req.clone().at(Some("status")), annotated)
        .await
        .unwrap();
    assert_eq!(written["metadata"]["annotations"]["patchedstatus"], "true");
    assert!(written["metadata"].get("labels").is_none());
    // An update of the object leaves the status alone.
    let mut spec = written.clone();
    spec["status"] = json!({"replicas": 0});
    let written = o.update(&req, spec).await.unwrap();
    assert_eq!(written["status"]["replicas"], 3);
}

#[tokio::test]
async fn a_merge_patch_merges_and_a_pinned_old_version_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let o = objects(dir.path()).await;
    o.create(
        &config_maps(&o, None),
        json!({"metadata": {"name": "p"}, "data": {"a": "1"}}),
    )
    .await
    .unwrap();
    let req = config_maps(&o, Some("p"));
    let (patched, created) = o
        .patch(&req, PatchType::Merge, json!({"data": {"b": "2"}}), 20)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(patched["data"], json!({"a": "1", "b": "2"}));
    let pinned = o
        .patch(
            &req,
            PatchType::Merge,
            json!({"metadata": {"resourceVersion": "1"}, "data": {"c": "3"}}),
            20,
        )
        .await
        .unwrap_err();
    assert_eq!(pinned.code, 409);
}

#[tokio::test]
async fn an_apply_of_a_missing_object_creates_it_and_needs_a_manager() {
    let dir = tempfile::tempdir().unwrap();
    let o = objects(dir.path()).await;
    let req = config_maps(&o, Some("applied"));
    let patch =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"k": "v"}});
    let (obj, created) = o.patch(&req, PatchType::Apply, patch.clone(), 64).await.unwrap();
    assert!(created);
    assert_eq!(obj["metadata"]["managedFields"][0]["operation"], "Apply");
    let mut anonymous = config_maps(&o, Some("applied"));
    anonymous.options.manager = None;
    let err = o
        .patch(&anonymous, PatchType::Apply, patch, 64)
        .await
        .unwrap_err();
    assert_eq!(err.code, 422);
}

#[tokio::test]
async fn a_delete_checks_preconditions_and_waits_for_finalizers() {
    let dir = tempfile::tempdir().unwrap();
    let o = objects(dir.path()).await;
    let req = config_maps(&o, None);
    let created = o
        .create(
            &req,
            json!({"metadata": {"name": "f", "finalizers": ["example.com/hold"]}}),
        )
        .await
        .unwrap();
    let wrong = DeleteOptions {
        preconditions: Preconditions::from_json(&json!({"uid": "not-its-uid"})),
        ..DeleteOptions::default()
    };
    let err = o.delete(&req, "f", &wrong).await.unwrap_err();
    assert_eq!(err.code, 409);
    let marked = o.delete(&req, "f", &DeleteOptions::default()).await.unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(o.read(&req, "f").await.is_ok(), "held by its finalizer");
    // Removing the last finalizer completes the deletion.
    let mut released = marked.clone();
    released["metadata"]["finalizers"] = json!([]);
    o.update(&config_maps(&o, Some("f")), released).await.unwrap();
    assert_eq!(o.read(&req, "f").await.unwrap_err().code, 404);
    assert_eq!(meta_str(&created, "name"), "f");
}

#[tokio::test]
async fn a_pod_binds_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = objects(dir.path()).await;
    let pods = Request::new(o.resource("", "pods"), Some("default"), None).by("test");
    o.create(
        &pods,
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "registry.local/app:1"}]}}),
    )
    .await
    .unwrap();
    let pod = Request {
        name: Some("p".into()),
        ..pods
    };
    let bound = o.bind(&pod, "node-a").await.unwrap();
    assert_eq!(bound["spec"]["nodeName"], "node-a");
    let stored = from_kv(&o.read(&pod, "p").await.unwrap());
    assert_eq!(stored["spec"]["nodeName"], "node-a");
    assert!(
        stored["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "PodScheduled")
    );
    assert_eq!(o.bind(&pod, "node-b").await.unwrap_err().code, 409);
}

#[tokio::test]
async fn kinds_without_a_spec_keep_their_generation() {
    let dir = tempfile::tempdir().unwrap();
    let o = objects(dir.path()).await;
    let req = config_maps(&o, None);
    // What a Go client's protobuf body carries: an explicit zero generation.
    let created = o
        .create(
            &req,
            json!({"metadata": {"name": "g", "generation": 0}, "data": {"a": "1"}}),
        )
        .await
        .unwrap();
    let mut next = created.clone();
    next["data"]["a"] = json!("2");
    let updated = o.update(&config_maps(&o, Some("g")), next).await.unwrap();
    assert_eq!(updated["metadata"]["generation"], 0);
}
