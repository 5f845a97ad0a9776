//! The behaviour every [`KeyValueStore`] must have, as checks over a store that is open and empty
//! under the prefixes they use (each check has its own). [`run`] runs them all; the Raft store's
//! tests run it on a single member, and a multi-member store runs it the same way.

use std::time::Duration;

use super::{EventKind, KeyValueStore, StoreError, WriteOp, WriteResult};

/// Every check, in turn.
pub async fn run(store: &dyn KeyValueStore) {
    writes_are_conditional_and_carry_revisions(store).await;
    every_write_bumps_one_global_revision(store).await;
    lists_are_ordered_paged_and_bounded_by_the_prefix(store).await;
    batched_writes_have_a_result_each(store).await;
    watches_replay_from_a_revision_then_follow(store).await;
    past_revisions_read_as_they_were_until_compacted(store).await;
    compaction_ends_the_history_behind_it(store).await;
}

/// Create, update and delete: revisions, compare-and-swap, and the errors' current values.
pub async fn writes_are_conditional_and_carry_revisions(store: &dyn KeyValueStore) {
    let a = store.create("/conf/cas/a", b"1".to_vec()).await.unwrap();
    assert_eq!(a.create_revision, a.mod_revision);
    assert_eq!(a.value, b"1");
    assert_eq!(store.get("/conf/cas/a").await.unwrap(), Some(a.clone()));
    match store.create("/conf/cas/a", b"again".to_vec()).await {
        Err(StoreError::AlreadyExists { current, .. }) => assert_eq!(*current, a),
        other => panic!("a second create: {other:?}"),
    }
    let a2 = store
        .update("/conf/cas/a", b"2".to_vec(), Some(a.mod_revision))
        .await
        .unwrap();
    assert!(a2.mod_revision > a.mod_revision);
    assert_eq!(a2.create_revision, a.create_revision);
    match store
        .update("/conf/cas/a", b"3".to_vec(), Some(a.mod_revision))
        .await
    {
        Err(StoreError::Conflict {
            expected,
            found,
            current,
            ..
        }) => {
            assert_eq!((expected, found), (a.mod_revision, a2.mod_revision));
            assert_eq!(current.value, b"2");
        }
        other => panic!("an update from a stale revision: {other:?}"),
    }
    let a3 = store.update("/conf/cas/a", b"3".to_vec(), None).await.unwrap();
    assert!(matches!(
        store.update("/conf/cas/none", vec![], None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete("/conf/cas/a", Some(a2.mod_revision)).await,
        Err(StoreError::Conflict { .. })
    ));
    let deleted = store.delete("/conf/cas/a", Some(a3.mod_revision)).await.unwrap();
    assert_eq!(deleted.value, b"3");
    assert!(
        deleted.mod_revision > a3.mod_revision,
        "the deletion's own revision"
    );
    assert_eq!(store.get("/conf/cas/a").await.unwrap(), None);
    assert!(matches!(
        store.delete("/conf/cas/a", None).await,
        Err(StoreError::NotFound { .. })
    ));
    // Created again, the key starts a new life.
    let again = store.create("/conf/cas/a", b"4".to_vec()).await.unwrap();
    assert!(again.create_revision > deleted.mod_revision);
}

/// Each successful write is the next revision; failed ones take none; local reads see them.
pub async fn every_write_bumps_one_global_revision(store: &dyn KeyValueStore) {
    let start = store.revision();
    let x = store.create("/conf/rev/x", vec![1]).await.unwrap();
    assert_eq!(x.mod_revision, start + 1);
    let y = store.create("/conf/rev/y", vec![2]).await.unwrap();
    assert_eq!(y.mod_revision, start + 2);
    assert!(store.create("/conf/rev/x", vec![3]).await.is_err());
    assert_eq!(store.revision(), start + 2, "a failed write takes no revision");
    let x2 = store.update("/conf/rev/x", vec![4], None).await.unwrap();
    assert_eq!(x2.mod_revision, start + 3);
    assert_eq!(store.get_local("/conf/rev/x").unwrap(), Some(x2));
    let listed = store.list("/conf/rev/", None, 0).await.unwrap();
    assert_eq!(listed.revision, store.revision());
}

/// Key order, pages with `more`, and nothing from beside the prefix.
pub async fn lists_are_ordered_paged_and_bounded_by_the_prefix(store: &dyn KeyValueStore) {
    for key in [
        "/conf/list/b",
        "/conf/list/a",
        "/conf/list/c",
        "/conf/listing",
        "/conf/lis",
    ] {
        store.create(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let keys = |items: &[super::KeyValue]| items.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
    let all = store.list("/conf/list/", None, 0).await.unwrap();
    assert_eq!(keys(&all.items), ["/conf/list/a", "/conf/list/b", "/conf/list/c"]);
    assert!(!all.more);
    let first = store.list("/conf/list/", None, 2).await.unwrap();
    assert_eq!(keys(&first.items), ["/conf/list/a", "/conf/list/b"]);
    assert!(first.more);
    let rest = store.list("/conf/list/", Some("/conf/list/b"), 2).await.unwrap();
    assert_eq!(keys(&rest.items), ["/conf/list/c"]);
    assert!(!rest.more);
    assert!(
        store
            .list("/conf/nothing/", None, 0)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// A batch applies its writes in order, each with its own result; failed ones change nothing.
pub async fn batched_writes_have_a_result_each(store: &dyn KeyValueStore) {
    let results = store
        .write(vec![
            WriteOp::Create {
                key: "/conf/batch/a".into(),
                value: b"1".to_vec(),
            },
            WriteOp::Create {
                key: "/conf/batch/a".into(),
                value: b"2".to_vec(),
            },
            WriteOp::Update {
                key: "/conf/batch/missing".into(),
                value: vec![],
                expected: None,
            },
            WriteOp::Update {
                key: "/conf/batch/a".into(),
                value: b"3".to_vec(),
                expected: Some(1),
            },
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    let created = match &results[0] {
        WriteResult::Done { revision, .. } => *revision,
        other => panic!("the create: {other:?}"),
    };
    assert!(matches!(&results[1], WriteResult::AlreadyExists { current } if current.value == b"1"));
    assert!(matches!(results[2], WriteResult::NotFound));
    assert!(matches!(&results[3], WriteResult::Conflict { current } if current.mod_revision == created));
    let a = store.get("/conf/batch/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"1"[..], created));
    assert_eq!(store.get("/conf/batch/missing").await.unwrap(), None);
}

/// A watch from a past revision gets what followed it under its prefix, in order and once, then
/// live changes; deletions carry the last value.
pub async fn watches_replay_from_a_revision_then_follow(store: &dyn KeyValueStore) {
    let from = store.revision();
    store.create("/conf/watch/a", b"1".to_vec()).await.unwrap();
    store.create("/conf/elsewhere", vec![]).await.unwrap();
    store.update("/conf/watch/a", b"2".to_vec(), None).await.unwrap();
    let mut watch = store.watch("/conf/watch/", from).unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the watch goes on")
    };
    let created = next().await;
    assert_eq!(
        (created.kind, created.kv.value.as_slice()),
        (EventKind::Put, &b"1"[..])
    );
    assert!(created.prev.is_none());
    let updated = next().await;
    assert_eq!(updated.kv.value, b"2");
    assert_eq!(updated.prev.as_ref().map(|p| p.value.as_slice()), Some(&b"1"[..]));
    assert!(updated.revision > created.revision);
    let deleted = store.delete("/conf/watch/a", None).await.unwrap();
    let live = next().await;
    assert_eq!(live.kind, EventKind::Delete);
    assert_eq!(live.kv.value, b"2");
    assert_eq!(live.revision, deleted.mod_revision);
}

/// Once compacted, a watch cannot start behind the compacted revision (410 Gone on the API).
pub async fn compaction_ends_the_history_behind_it(store: &dyn KeyValueStore) {
    let before = store.revision();
    store.create("/conf/compact/a", vec![]).await.unwrap();
    let after = store
        .create("/conf/compact/b", vec![])
        .await
        .unwrap()
        .mod_revision;
    store.compact(after).await.unwrap();
    assert!(matches!(
        store.watch("/conf/compact/", before),
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store.watch("/conf/compact/", after).unwrap();
    let c = store.create("/conf/compact/c", vec![]).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the watch goes on");
    assert_eq!(event.revision, c.mod_revision);
}

/// A list at a past revision shows the keys as they were then (updated ones with their old
/// value, deleted ones back, later ones absent), pages at that revision, and ends with the history
/// at compaction.
pub async fn past_revisions_read_as_they_were_until_compacted(store: &dyn KeyValueStore) {
    let keys = |r: &super::ListResult| -> Vec<(String, Vec<u8>)> {
        r.items
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect()
    };
    let own = |k: &str, v: &str| (format!("/conf/past/{k}"), v.as_bytes().to_vec());
    store.create("/conf/past/a", b"a1".to_vec()).await.unwrap();
    store.create("/conf/past/b", b"b1".to_vec()).await.unwrap();
    store.create("/conf/past/d", b"d1".to_vec()).await.unwrap();
    store.create("/conf/pasture", b"outside".to_vec()).await.unwrap();
    let then = store.revision();
    let at_then = store.list("/conf/past/", None, 0).await.unwrap();
    store.update("/conf/past/a", b"a2".to_vec(), None).await.unwrap();
    store.delete("/conf/past/b", None).await.unwrap();
    store.create("/conf/past/c", b"c1".to_vec()).await.unwrap();
    store.update("/conf/past/a", b"a3".to_vec(), None).await.unwrap();
    store.create("/conf/past/b", b"b2".to_vec()).await.unwrap();
    store.delete("/conf/pasture", None).await.unwrap();
    let now = store.revision();
    let past = store.list_at("/conf/past/", None, 0, then).await.unwrap();
    assert_eq!(past.revision, then);
    assert_eq!(keys(&past), [own("a", "a1"), own("b", "b1"), own("d", "d1")]);
    assert_eq!(past.items, at_then.items, "revisions as they were");
    assert_eq!(
        keys(&store.list_at("/conf/past/", None, 0, now).await.unwrap()),
        [own("a", "a3"), own("b", "b2"), own("c", "c1"), own("d", "d1")]
    );
    // Pages at the past revision, however the keys moved since.
    let first = store.list_at("/conf/past/", None, 2, then).await.unwrap();
    assert_eq!(
        (keys(&first), first.more),
        (vec![own("a", "a1"), own("b", "b1")], true)
    );
    let rest = store
        .list_at("/conf/past/", Some("/conf/past/b"), 2, then)
        .await
        .unwrap();
    assert_eq!((keys(&rest), rest.more), (vec![own("d", "d1")], false));
    assert!(matches!(
        store.list_at("/conf/past/", None, 0, now + 1000).await,
        Err(StoreError::FutureRevision { .. })
    ));
    store.compact(then + 1).await.unwrap();
    assert!(matches!(
        store.list_at("/conf/past/", None, 0, then).await,
        Err(StoreError::Compacted { .. })
    ));
    assert_eq!(
        keys(&store.list_at("/conf/past/", None, 0, then + 1).await.unwrap()),
        [own("a", "a2"), own("b", "b1"), own("d", "d1")]
    );
}
