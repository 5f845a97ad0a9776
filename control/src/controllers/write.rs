//! How controllers (and the scheduler) write objects: as a named field manager, through the same
//! create/update paths as API requests (admission, defaults, validation, managedFields). These
//! become thin once the typed write path lives in `objects/`.

use serde_json::Value;

use super::error::Error;
use crate::api::App;
use crate::api::handlers::{Call, update_object};
use crate::objects::meta::meta_str;

/// The `Call` for writing `plural` objects in `ns` as the controller `manager`.
pub fn call(
    app: &App,
    group: &str,
    plural: &str,
    ns: &str,
    name: Option<&str>,
    sub: Option<&str>,
    manager: &str,
) -> Call {
    let info = app
        .registry
        .all()
        .into_iter()
        .find(|r| r.group == group && r.plural == plural)
        .expect("built-in resource is registered");
    Call {
        info,
        ns: Some(ns.to_owned()),
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
        query: [("fieldManager".to_owned(), manager.to_owned())]
            .into_iter()
            .collect(),
        table: false,
        partial: None,
        content_type: "application/json".into(),
    }
}

/// Writes `next` over the object (or its subresource `sub`) of `group`/`plural` that its
/// metadata names, as `manager`; returns the stored object.
pub async fn put_object(
    app: &App,
    next: Value,
    group: &str,
    plural: &str,
    sub: Option<&str>,
    manager: &str,
) -> Result<Value, Error> {
    let c = call(
        app,
        group,
        plural,
        meta_str(&next, "namespace"),
        Some(meta_str(&next, "name")),
        sub,
        manager,
    );
    Ok(update_object(app, &c, next).await?)
}

/// Writes `obj`'s status subresource (`group`/`plural`) as `manager`.
pub async fn put_status(
    app: &App,
    obj: &Value,
    group: &str,
    plural: &str,
    status: Value,
    manager: &str,
) -> Result<(), Error> {
    let mut next = obj.clone();
    next["status"] = status;
    put_object(app, next, group, plural, Some("status"), manager)
        .await
        .map(|_| ())
}

/// Writes `status` unless the object already has it.
pub async fn write_status(
    app: &App,
    obj: &Value,
    group: &str,
    plural: &str,
    status: Value,
    manager: &str,
) -> Result<(), Error> {
    if obj["status"] == status {
        return Ok(());
    }
    put_status(app, obj, group, plural, status, manager).await
}
