//! `componentstatuses` (`kubectl get cs`): deprecated upstream but still answered, computed on
//! each request rather than stored. The scheduler and the controllers run in this process, so
//! they are healthy while it answers; the store (etcd's place) is healthy while it is ready.

use serde_json::{Value, json};

use super::App;
use super::handlers::{Call, json_response};
use crate::objects::status::ApiError;

/// The components and their health, as upstream names them.
fn statuses(app: &App) -> Vec<Value> {
    let store = match app.store.not_ready() {
        None => ("True", "ok".to_owned(), None),
        Some(why) => ("False", String::new(), Some(why)),
    };
    [
        ("scheduler", ("True", "ok".to_owned(), None)),
        ("controller-manager", ("True", "ok".to_owned(), None)),
        ("etcd-0", store),
    ]
    .into_iter()
    .map(|(name, (status, message, error))| {
        let mut condition = json!({"type": "Healthy", "status": status, "message": message});
        if let Some(e) = error {
            condition["error"] = json!(e);
        }
        json!({"kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": name}, "conditions": [condition]})
    })
    .collect()
}

/// GET of one component's status or of the list; other verbs are not allowed.
pub fn serve(
    app: &App,
    call: &Call,
    method: &axum::http::Method,
) -> Result<axum::response::Response, ApiError> {
    if method != axum::http::Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let items = statuses(app);
    let rv = app.store.revision().to_string();
    match call.name.as_deref() {
        Some(name) => {
            let found = items
                .into_iter()
                .find(|c| c["metadata"]["name"] == name)
                .ok_or_else(|| ApiError::not_found(call.target(name)))?;
            if call.table {
                return Ok(json_response(
                    axum::http::StatusCode::OK,
                    &super::table::table(&call.info, &[found], &rv, None, call),
                ));
            }
            Ok(json_response(axum::http::StatusCode::OK, &found))
        }
        None if call.table => Ok(json_response(
            axum::http::StatusCode::OK,
            &super::table::table(&call.info, &items, &rv, None, call),
        )),
        None => Ok(json_response(
            axum::http::StatusCode::OK,
            &json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}),
        )),
    }
}
