//! `POST /skiff/v1/join`: an agent presenting the node token gets its certificate request signed
//! as `system:node:<name>`; from then on it talks to the control plane with mTLS. A name whose
//! Node exists is taken (its agent holds a certificate for it): joining under it again needs the
//! operator to remove that Node first, so one node token cannot be used to impersonate another
//! node and read its pods' secrets.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::App;
use super::handlers::json_response;
use crate::objects::status::ApiError;

/// Compares secrets in constant time.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies the token and signs the node's certificate request.
pub async fn join(app: &App, body: &[u8]) -> Result<Response, ApiError> {
    let req: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid join request: {e}")))?;
    let token = req["token"].as_str().unwrap_or_default();
    let secret = crate::pki::parse_token(token).map(|(_, s)| s).unwrap_or_default();
    if app.node_secret.is_empty() || !same(secret.as_bytes(), app.node_secret.as_bytes()) {
        return Err(ApiError::new(401, "Unauthorized", "invalid node token"));
    }
    let name = req["nodeName"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    crate::objects::validation::check_subdomain("nodeName", name, &mut causes);
    if let Some((_, m)) = causes.first() {
        return Err(ApiError::bad_request(format!("nodeName: {m}")));
    }
    let node = crate::objects::keys::object(crate::objects::keys::NODES, None, name);
    if app.store.get(&node).await.map_err(ApiError::internal)?.is_some() {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!(
                "node \"{name}\" already exists and holds a certificate; to join another machine under its name, remove it first (kubectl delete node {name})"
            ),
        ));
    }
    let pki = app
        .pki
        .as_ref()
        .ok_or_else(|| ApiError::internal("no certificate authority"))?;
    let cert = pki
        .sign_node_csr(req["csr"].as_str().unwrap_or_default(), name)
        .map_err(|e| ApiError::bad_request(format!("invalid certificate request: {e}")))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"certificate": cert, "ca": pki.ca_pem}),
    ))
}
