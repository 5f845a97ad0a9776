//! The one place where errors become Kubernetes `Status` responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// A request-level failure, rendered as a `Status` object with upstream's reason and code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human-readable message, as kubectl prints it.
    pub message: String,
    /// `details` (name, group, kind, causes), when known.
    pub details: Option<Value>,
}

/// Identifies the object an error is about, for `details` and messages.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// API group ("" for core).
    pub group: &'a str,
    /// Plural resource name.
    pub resource: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Object name.
    pub name: &'a str,
}

impl Target<'_> {
    /// `pods` or `deployments.apps`, as upstream qualifies resources in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    fn details(&self) -> Value {
        json!({"name": self.name, "group": self.group, "kind": self.resource})
    }
}

impl ApiError {
    /// An error with no details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 NotFound for an object.
    pub fn not_found(t: Target<'_>) -> Self {
        Self {
            details: Some(t.details()),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{}\" not found", t.qualified(), t.name),
            )
        }
    }

    /// 404 NotFound for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(t: Target<'_>) -> Self {
        Self {
            details: Some(t.details()),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", t.qualified(), t.name),
            )
        }
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(t: Target<'_>) -> Self {
        Self {
            details: Some(t.details()),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    t.qualified(),
                    t.name
                ),
            )
        }
    }

    /// 422 Invalid with field causes `(field, message)`.
    pub fn invalid(t: Target<'_>, causes: &[(String, String)]) -> Self {
        let list: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = if list.len() == 1 {
            format!("{} \"{}\" is invalid: {}", t.kind, t.name, list[0])
        } else {
            format!("{} \"{}\" is invalid: [{}]", t.kind, t.name, list.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(field, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": field}))
            .collect();
        let mut details = json!({"name": t.name, "group": t.group, "kind": t.kind});
        details["causes"] = Value::Array(causes);
        Self {
            details: Some(details),
            ..Self::new(422, "Invalid", message)
        }
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 410 Expired for a compacted resourceVersion.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 504 Timeout for a resource version the store has not reached (after waiting for it), as
    /// upstream words it.
    pub fn too_large(requested: u64, current: u64) -> Self {
        let mut e = Self::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        );
        e.details = Some(serde_json::json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        }));
        e
    }

    /// 500 InternalError.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// The `Status` object for this error.
    /// (Fields in upstream's order; a NotFound always has `details`, `{}` at least, which kubectl
    /// reads without checking.)
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        });
        match &self.details {
            Some(d) => status["details"] = d.clone(),
            None if self.code == 404 => status["details"] = json!({}),
            None => {}
        }
        status["code"] = json!(self.code);
        status
    }

    /// Maps a store failure to the API error for `t`.
    pub fn from_store(e: StoreError, t: Target<'_>) -> Self {
        match e {
            StoreError::AlreadyExists { .. } => Self::already_exists(t),
            StoreError::NotFound { .. } => Self::not_found(t),
            StoreError::Conflict { .. } => Self::conflict(t),
            StoreError::Compacted { requested, oldest } => Self::expired(requested, oldest),
            StoreError::FutureRevision { requested, current } => Self::too_large(requested, current),
            StoreError::Unavailable(m) | StoreError::NoSpace(m) => Self::new(503, "ServiceUnavailable", m),
            StoreError::Io(m) => Self::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}

/// The `Status` a successful immediate delete returns.
pub fn success(t: Target<'_>, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": t.name, "group": t.group, "kind": t.resource, "uid": uid},
    })
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    #[test]
    fn statuses_have_upstreams_field_order_and_a_not_found_has_details() {
        let status = ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .to_status();
        let keys: Vec<&str> = status.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "kind",
                "apiVersion",
                "metadata",
                "status",
                "message",
                "reason",
                "details",
                "code"
            ]
        );
        assert_eq!(status["details"], serde_json::json!({}));
        let bad = ApiError::bad_request("nope").to_status();
        assert!(bad.get("details").is_none());
        assert_eq!(
            bad.as_object().unwrap().keys().next_back().map(String::as_str),
            Some("code")
        );
    }
}
