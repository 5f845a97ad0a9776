//! Deletion semantics: finalizers, owner-reference cascades (foreground, background, orphan) and
//! namespace deletion.

use std::time::Duration;

use skiff_tests::Control;

fn cm(name: &str, owner: Option<(&str, &str)>) -> String {
    let refs = owner
        .map(|(n, uid)| format!(", ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: {n}, uid: {uid}, blockOwnerDeletion: true}}]"))
        .unwrap_or_default();
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default{refs}}}\n")
}

fn eventually(c: &Control, what: &str, check: impl Fn(&Control) -> bool) {
    for _ in 0..200 {
        if check(c) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never happened: {what}");
}

fn family(c: &Control, prefix: &str) -> String {
    c.ok_stdin(&["apply", "-f", "-"], &cm(&format!("{prefix}-owner"), None));
    let uid = c.ok(&[
        "get",
        "cm",
        &format!("{prefix}-owner"),
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    c.ok_stdin(
        &["apply", "-f", "-"],
        &cm(
            &format!("{prefix}-child"),
            Some((&format!("{prefix}-owner"), &uid)),
        ),
    );
    uid
}

#[test]
fn foreground_cascade_deletes_dependents_before_the_owner() {
    let c = Control::start();
    family(&c, "fg");
    // kubectl waits until the owner is gone; the dependent must already be gone then.
    c.ok(&[
        "delete",
        "cm",
        "fg-owner",
        "--cascade=foreground",
        "--timeout=30s",
    ]);
    assert!(c.fails(&["get", "cm", "fg-owner"]).contains("not found"));
    assert!(c.fails(&["get", "cm", "fg-child"]).contains("not found"));
}

/// A dependent that another, live owner also names is not deleted with the first owner: it only
/// loses that owner's reference (the conformance suite's "should not delete dependents that have
/// both valid owner and owner that's waiting for dependents to be deleted").
#[test]
fn foreground_cascade_spares_dependents_another_owner_holds() {
    let c = Control::start();
    let doomed = family(&c, "two");
    c.ok_stdin(&["apply", "-f", "-"], &cm("keeper", None));
    let keeper = c.ok(&["get", "cm", "keeper", "-o", "jsonpath={.metadata.uid}"]);
    c.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: shared, namespace: default, ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: two-owner, uid: {doomed}}}, {{apiVersion: v1, kind: ConfigMap, name: keeper, uid: {keeper}}}]}}\n"
        ),
    );
    c.ok(&[
        "delete",
        "cm",
        "two-owner",
        "--cascade=foreground",
        "--timeout=30s",
    ]);
    assert!(c.fails(&["get", "cm", "two-child"]).contains("not found"));
    let owners = c.ok(&[
        "get",
        "cm",
        "shared",
        "-o",
        "jsonpath={.metadata.ownerReferences[*].name}",
    ]);
    assert_eq!(owners, "keeper");
}

#[test]
fn background_cascade_and_orphaning() {
    let c = Control::start();
    family(&c, "bg");
    c.ok(&["delete", "cm", "bg-owner"]);
    eventually(&c, "dependent collected", |c| {
        !c.kubectl(&["get", "cm", "bg-child"]).status.success()
    });
    family(&c, "or");
    c.ok(&["delete", "cm", "or-owner", "--cascade=orphan"]);
    eventually(&c, "owner gone", |c| {
        !c.kubectl(&["get", "cm", "or-owner"]).status.success()
    });
    assert_eq!(
        c.ok(&[
            "get",
            "cm",
            "or-child",
            "-o",
            "jsonpath={.metadata.ownerReferences}"
        ]),
        ""
    );
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let c = Control::start();
    c.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: default, finalizers: [example.com/hold]}\n");
    c.ok(&["delete", "cm", "held", "--wait=false"]);
    let ts = c.ok(&[
        "get",
        "cm",
        "held",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!ts.is_empty(), "deletionTimestamp not set");
    c.ok(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    assert!(c.fails(&["get", "cm", "held"]).contains("not found"));
}

#[test]
fn deleting_a_namespace_deletes_its_contents() {
    let c = Control::start();
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: doomed}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: doomed}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: doomed}\nstringData: {k: v}\n",
    );
    c.ok(&["delete", "namespace", "doomed", "--timeout=30s"]);
    assert!(c.fails(&["get", "namespace", "doomed"]).contains("not found"));
    assert_eq!(
        c.ok(&["get", "cm,secret", "-n", "doomed", "-o", "name"]).trim(),
        ""
    );
    let err = c.fails_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late, namespace: doomed}\n",
    );
    assert!(err.contains("not found"), "{err}");
}

/// Three objects owning each other in a circle, every reference blocking: deleting one in the
/// foreground deletes all three instead of leaving them waiting on each other (the conformance
/// suite's "should not be blocked by dependency circle").
#[test]
fn a_circle_of_owners_is_deleted_in_the_foreground() {
    let c = Control::start();
    let uid = |name: &str| c.ok(&["get", "cm", name, "-o", "jsonpath={.metadata.uid}"]);
    for name in ["c1", "c2", "c3"] {
        c.ok_stdin(&["apply", "-f", "-"], &cm(name, None));
    }
    for (name, owner) in [("c1", "c3"), ("c2", "c1"), ("c3", "c2")] {
        c.ok_stdin(&["apply", "-f", "-"], &cm(name, Some((owner, &uid(owner)))));
    }
    c.ok(&["delete", "cm", "c1", "--cascade=foreground", "--wait=false"]);
    eventually(&c, "the whole circle deleted", |c| {
        ["c1", "c2", "c3"]
            .iter()
            .all(|n| !c.kubectl(&["get", "cm", n]).status.success())
    });
}
