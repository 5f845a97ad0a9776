//! How controllers (and the scheduler) write objects: as a named field manager, through the same
//! create/update paths as API requests (admission, defaults, validation, managedFields).

use serde_json::Value;

use super::error::Error;
use crate::objects::Objects;
use crate::objects::meta::meta_str;
use crate::objects::write::Request;

/// The write of `plural` objects (object `name`, subresource `sub`) in `ns` as the controller
/// `manager`.
pub fn call(
    app: &Objects,
    group: &str,
    plural: &str,
    ns: &str,
    name: Option<&str>,
    sub: Option<&str>,
    manager: &str,
) -> Request {
    Request::new(app.resource(group, plural), Some(ns), name)
        .at(sub)
        .by(manager)
}

/// Writes `next` over the object (or its subresource `sub`) of `group`/`plural` that its
/// metadata names, as `manager`; returns the stored object.
pub async fn put_object(
    app: &Objects,
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
    Ok(app.update(&c, next).await?)
}

/// Writes `obj`'s status subresource (`group`/`plural`) as `manager`.
pub async fn put_status(
    app: &Objects,
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
    app: &Objects,
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
