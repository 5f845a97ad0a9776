//! Owner-reference garbage collection: background deletion of dependents whose owners are gone,
//! foreground deletion (dependents first, then the owner, which waits for those whose reference
//! sets `blockOwnerDeletion`), and orphaning. Owners that own each other in a circle are deleted
//! as upstream does: a dependent whose own dependents are already waiting has its references
//! made non-blocking, so that nobody waits on anybody for ever.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::json;

use super::{RESYNC, call_for_key, edit_object, remove_finalizer};
use crate::objects::Objects;
use crate::objects::keys;
use crate::objects::meta::{finalizers, from_kv, meta_str};
use crate::objects::write::{DeleteOptions, Propagation};
use crate::store::{EventKind, StoreError};

/// What the collector knows about every object with a uid.
#[derive(Debug, Default)]
struct Graph {
    /// uid -> key of every live object.
    keys: HashMap<String, String>,
    /// owner uid -> keys of objects that name it in `ownerReferences`.
    dependents: HashMap<String, HashSet<String>>,
    /// key -> owner uids it names, each with whether the reference blocks the owner's
    /// foreground deletion (`blockOwnerDeletion`).
    owners: HashMap<String, Vec<(String, bool)>>,
    /// key -> uid of every live object.
    uids: HashMap<String, String>,
    /// Objects being deleted with the `foregroundDeletion` or `orphan` finalizer.
    pending: HashSet<String>,
    /// Owner uids that disappeared and whose dependents must be looked at.
    gone: HashSet<String>,
}

/// The metadata the collector needs, decoded without building the whole object.
#[derive(Debug, Default, serde::Deserialize)]
struct Meta {
    #[serde(default)]
    metadata: MetaFields,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaFields {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    owner_references: Vec<OwnerRef>,
    #[serde(default)]
    deletion_timestamp: Option<String>,
    #[serde(default)]
    finalizers: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnerRef {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    block_owner_deletion: Option<bool>,
}

fn meta(kv: &crate::store::KeyValue) -> MetaFields {
    serde_json::from_slice::<Meta>(&kv.value)
        .unwrap_or_default()
        .metadata
}

impl Graph {
    fn forget(&mut self, key: &str) {
        if let Some(owners) = self.owners.remove(key) {
            for (o, _) in owners {
                if let Some(set) = self.dependents.get_mut(&o) {
                    set.remove(key);
                    if set.is_empty() {
                        self.dependents.remove(&o);
                    }
                }
            }
        }
        self.pending.remove(key);
    }

    fn observe(&mut self, key: &str, meta: MetaFields) {
        self.forget(key);
        if !meta.uid.is_empty() {
            self.uids.insert(key.to_owned(), meta.uid.clone());
            self.keys.insert(meta.uid, key.to_owned());
        }
        let owners: Vec<(String, bool)> = meta
            .owner_references
            .into_iter()
            .map(|r| (r.uid, r.block_owner_deletion == Some(true)))
            .collect();
        for (o, _) in &owners {
            self.dependents
                .entry(o.clone())
                .or_default()
                .insert(key.to_owned());
            if !self.keys.contains_key(o) {
                self.gone.insert(o.clone());
            }
        }
        self.owners.insert(key.to_owned(), owners);
        if meta.deletion_timestamp.is_some()
            && meta
                .finalizers
                .iter()
                .any(|f| f == "foregroundDeletion" || f == "orphan")
        {
            self.pending.insert(key.to_owned());
        }
    }

    /// Whether `key` has an owner besides `except` that exists and is not itself waiting to be
    /// deleted (foreground or orphaning): upstream's "solid" owner.
    fn has_solid_owner(&self, key: &str, except: &str) -> bool {
        self.owners.get(key).into_iter().flatten().any(|(o, _)| {
            o != except
                && self
                    .keys
                    .get(o)
                    .is_some_and(|owner_key| !self.pending.contains(owner_key))
        })
    }

    /// Whether `key`'s reference to the owner `uid` holds that owner's foreground deletion.
    fn blocks(&self, key: &str, uid: &str) -> bool {
        self.owners
            .get(key)
            .is_some_and(|owners| owners.iter().any(|(o, block)| o == uid && *block))
    }

    /// Whether one of `key`'s dependents is itself waiting on its dependents: deleting `key` in
    /// the foreground would then close a circle of owners waiting on each other.
    fn closes_a_circle(&self, key: &str) -> bool {
        let Some(uid) = self.uids.get(key) else {
            return false;
        };
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .any(|d| self.pending.contains(d))
    }

    fn removed(&mut self, key: &str, meta: MetaFields) {
        self.forget(key);
        self.uids.remove(key);
        let uid = meta.uid;
        if self.keys.get(&uid).is_some_and(|k| k == key) {
            self.keys.remove(&uid);
            if self.dependents.contains_key(&uid) {
                self.gone.insert(uid);
            }
        }
    }
}

async fn delete_key(app: &Objects, key: &str, policy: &str) {
    let Some(call) = call_for_key(app, key) else {
        return;
    };
    let name = call.name().to_owned();
    if let Err(e) = app
        .delete(
            &call,
            &name,
            &DeleteOptions {
                propagation: Propagation::parse(policy),
                ..DeleteOptions::default()
            },
        )
        .await
        && e.code != 404
    {
        tracing::warn!(%key, error = %e, "garbage collector could not delete");
    }
}

/// Makes every owner reference of `key` non-blocking (`blockOwnerDeletion: false`).
async fn unblock_owner_refs(app: &Objects, key: &str) -> Result<(), StoreError> {
    edit_object(app, key, |obj| {
        let mut changed = false;
        for r in obj["metadata"]["ownerReferences"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if r["blockOwnerDeletion"] == json!(true) {
                r["blockOwnerDeletion"] = json!(false);
                changed = true;
            }
        }
        changed
    })
    .await
}

async fn drop_owner_ref(app: &Objects, key: &str, uid: &str) -> Result<(), StoreError> {
    edit_object(app, key, |obj| {
        let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() else {
            return false;
        };
        let before = refs.len();
        refs.retain(|r| r["uid"] != json!(uid));
        let changed = refs.len() != before;
        if refs.is_empty()
            && let Some(m) = obj["metadata"].as_object_mut()
        {
            m.remove("ownerReferences");
        }
        changed
    })
    .await
}

/// One pass over the work the graph holds.
async fn process(app: &Objects, graph: &mut Graph) {
    // Dependents of owners that no longer exist.
    for uid in std::mem::take(&mut graph.gone) {
        if graph.keys.contains_key(&uid) {
            continue;
        }
        for key in graph.dependents.get(&uid).cloned().unwrap_or_default() {
            let owners = graph.owners.get(&key).cloned().unwrap_or_default();
            if owners.iter().all(|(o, _)| !graph.keys.contains_key(o)) {
                delete_key(app, &key, "Background").await;
            } else if let Err(e) = drop_owner_ref(app, &key, &uid).await {
                tracing::warn!(%key, error = %e, "garbage collector could not drop an owner reference");
            }
        }
    }
    // Owners waiting on their dependents (foreground) or releasing them (orphan).
    for key in graph.pending.clone() {
        let Ok(Some(kv)) = app.store.get(&key).await else {
            continue;
        };
        let owner = from_kv(&kv);
        let uid = meta_str(&owner, "uid").to_owned();
        let dependents = graph.dependents.get(&uid).cloned().unwrap_or_default();
        let fins = finalizers(&owner);
        if fins.iter().any(|f| f == "orphan") {
            for dep in &dependents {
                if let Err(e) = drop_owner_ref(app, dep, &uid).await {
                    tracing::warn!(key = %dep, error = %e, "could not orphan dependent");
                }
            }
            if let Err(e) = remove_finalizer(app, &key, "orphan").await {
                tracing::warn!(%key, error = %e, "could not remove the orphan finalizer");
            }
        } else if fins.iter().any(|f| f == "foregroundDeletion") {
            if !dependents.iter().any(|d| graph.blocks(d, &uid)) {
                if let Err(e) = remove_finalizer(app, &key, "foregroundDeletion").await {
                    tracing::warn!(%key, error = %e, "could not remove the foregroundDeletion finalizer");
                }
            } else {
                for dep in &dependents {
                    // A dependent that another owner still holds (one that exists and is not
                    // being deleted itself) only loses its reference to this one, as upstream.
                    if graph.has_solid_owner(dep, &uid) {
                        if let Err(e) = drop_owner_ref(app, dep, &uid).await {
                            tracing::warn!(key = %dep, error = %e, "could not drop an owner reference");
                        }
                    } else {
                        if graph.closes_a_circle(dep)
                            && let Err(e) = unblock_owner_refs(app, dep).await
                        {
                            tracing::warn!(key = %dep, error = %e, "could not unblock owner references");
                        }
                        delete_key(app, dep, "Foreground").await;
                    }
                }
            }
        }
    }
}

async fn run_once(app: &Objects) -> Result<(), StoreError> {
    let mut graph = Graph::default();
    let list = app.store.list(keys::ROOT, None, 0).await?;
    for kv in &list.items {
        graph.observe(&kv.key, meta(kv));
    }
    let mut watch = app.store.watch(keys::ROOT, list.revision)?;
    loop {
        process(app, &mut graph).await;
        let event = tokio::select! {
            e = watch.next() => e?,
            () = tokio::time::sleep(RESYNC), if !graph.pending.is_empty() => continue,
        };
        let Some(event) = event else { return Ok(()) };
        match event.kind {
            EventKind::Put => graph.observe(&event.kv.key, meta(&event.kv)),
            EventKind::Delete => graph.removed(&event.kv.key, meta(&event.kv)),
        }
    }
}

/// Runs the collector until the store shuts down.
pub async fn run(app: Arc<Objects>) {
    loop {
        match run_once(&app).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "garbage collector restarting");
                tokio::time::sleep(RESYNC).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: &str, owners: &[&str], deleting: Option<&str>) -> MetaFields {
        MetaFields {
            uid: uid.into(),
            owner_references: owners
                .iter()
                .map(|o| OwnerRef {
                    uid: (*o).into(),
                    block_owner_deletion: Some(true),
                })
                .collect(),
            deletion_timestamp: deleting.map(|_| "2026-12-02T00:00:00Z".into()),
            finalizers: deleting.map(|f| vec![f.to_owned()]).unwrap_or_default(),
        }
    }

    #[test]
    fn a_dependent_with_another_live_owner_is_held_by_it() {
        let mut g = Graph::default();
        g.observe("rc/doomed", meta("u-doomed", &[], Some("foregroundDeletion")));
        g.observe("rc/stay", meta("u-stay", &[], None));
        g.observe("pod/shared", meta("u-p1", &["u-doomed", "u-stay"], None));
        g.observe("pod/only", meta("u-p2", &["u-doomed"], None));
        assert!(g.has_solid_owner("pod/shared", "u-doomed"));
        assert!(!g.has_solid_owner("pod/only", "u-doomed"));
        // An owner that is itself waiting on its dependents holds nothing.
        g.observe("rc/stay", meta("u-stay", &[], Some("foregroundDeletion")));
        assert!(!g.has_solid_owner("pod/shared", "u-doomed"));
        // Nor does one that is gone.
        g.removed("rc/stay", meta("u-stay", &[], None));
        assert!(!g.has_solid_owner("pod/shared", "u-doomed"));
    }

    #[test]
    fn only_blocking_references_hold_an_owner_and_a_circle_is_seen() {
        let mut g = Graph::default();
        g.observe("cm/one", meta("u1", &["u3"], Some("foregroundDeletion")));
        g.observe("cm/two", meta("u2", &["u1"], None));
        g.observe("cm/three", meta("u3", &["u2"], None));
        assert!(g.blocks("cm/two", "u1"));
        // Two's dependent (three) is not waiting yet: deleting two closes nothing.
        assert!(!g.closes_a_circle("cm/two"));
        // Once two waits too, deleting three (whose dependent one waits) would close the circle.
        g.observe("cm/two", meta("u2", &["u1"], Some("foregroundDeletion")));
        assert!(g.closes_a_circle("cm/three"));
        // A reference without blockOwnerDeletion does not hold its owner.
        let mut loose = meta("u3", &["u2"], None);
        loose.owner_references[0].block_owner_deletion = Some(false);
        g.observe("cm/three", loose);
        assert!(!g.blocks("cm/three", "u2"));
    }
}
