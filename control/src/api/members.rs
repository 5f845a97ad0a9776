//! `/skiff/v1/members`: the store's members, as `etcdctl member` manages etcd's.
//!
//! A new member presents the server token (`DATA_DIR/server-token` of the first member; a node
//! token does not do) twice: `POST /skiff/v1/members/bootstrap` answers the cluster's CAs, the
//! node token and the encryption configuration, which it needs before it can open a store of its
//! own; `POST /skiff/v1/members` then adds it as a learner, waits until it has caught up with the
//! log, and makes it a voter. Listing, removing and promoting members (`skiff-control member`)
//! are an administrator's (`/skiff/v1/members` as a non-resource URL: `system:masters` or a
//! role granting it).

use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::handlers::json_response;
use super::{App, Identity, authz, rbac};
use crate::objects::status::ApiError;
use crate::store::MembershipOp;

/// What a joining member is handed, and the secret it must present.
#[derive(Debug, Clone)]
pub struct Joining {
    /// The secret part of the server token.
    pub secret: String,
    /// The files a new member needs before it opens its store (name relative to the data
    /// directory -> content).
    pub bundle: Value,
}

/// Where member `id`'s name and API address are kept (beside the Raft membership, which holds
/// its Raft address).
pub fn record_key(id: u64) -> String {
    format!("/skiff/members/{id:016x}")
}

/// How long adding a member may take (its catching up with the log included).
const ADD_TIMEOUT: Duration = Duration::from_secs(120);

fn check_token(app: &App, req: &Value) -> Result<(), ApiError> {
    let token = req["token"].as_str().unwrap_or_default();
    let secret = crate::pki::parse_token(token).map(|(_, s)| s).unwrap_or_default();
    let expected = app
        .joining
        .as_ref()
        .map(|j| j.secret.as_str())
        .unwrap_or_default();
    if expected.is_empty() || !super::join::same(secret.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::new(
            401,
            "Unauthorized",
            "invalid server token (a member joins with the content of the first member's server-token file; the node token does not do)",
        ));
    }
    Ok(())
}

/// Routes `/skiff/v1/members[/ID[/promote]]`.
pub async fn serve(
    app: &App,
    method: &Method,
    rest: &[&str],
    body: &[u8],
    who: Option<&Identity>,
) -> Result<Response, ApiError> {
    let parse = || -> Result<Value, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid member request: {e}")))
    };
    let admin = |verb: &'static str| async move {
        let who = who.ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))?;
        authz::allow(app, who, verb, &rbac::Target::Path("/skiff/v1/members")).await
    };
    let id = |s: &str| {
        u64::from_str_radix(s, 16)
            .map_err(|_| ApiError::bad_request(format!("invalid member id {s:?} (hex, as listed)")))
    };
    match (method, rest) {
        (&Method::POST, ["bootstrap"]) => {
            check_token(app, &parse()?)?;
            let bundle = app.joining.as_ref().map(|j| j.bundle.clone()).unwrap_or_default();
            Ok(json_response(StatusCode::OK, &bundle))
        }
        (&Method::POST, []) => {
            let req = parse()?;
            check_token(app, &req)?;
            add(app, &req).await
        }
        (&Method::GET, []) => {
            admin("get").await?;
            Ok(json_response(StatusCode::OK, &list(app).await?))
        }
        (&Method::DELETE, [member]) => {
            admin("delete").await?;
            let member = id(member)?;
            known(app, member)?;
            let (members, _) = app.store.members();
            if members.iter().filter(|m| m.2).count() == 1 && members.iter().any(|m| m.0 == member && m.2) {
                return Err(ApiError::bad_request("the last voting member cannot be removed"));
            }
            // The record goes first: once removed, a member cannot write any more, and the list
            // is read before, in case this member is the one removed.
            let _ = app.store.delete(&record_key(member), None).await;
            let mut after = list(app).await?;
            if let Some(items) = after["items"].as_array_mut() {
                items.retain(|m| m["id"] != format!("{member:016x}"));
            }
            app.store
                .change_membership(MembershipOp::Remove { id: member }, ADD_TIMEOUT)
                .await
                .map_err(|e| ApiError::new(503, "ServiceUnavailable", e.to_string()))?;
            tracing::info!(member = format!("{member:016x}"), "member removed");
            Ok(json_response(StatusCode::OK, &after))
        }
        (&Method::POST, [member, "promote"]) => {
            admin("create").await?;
            let member = id(member)?;
            known(app, member)?;
            app.store
                .change_membership(MembershipOp::Promote { id: member }, ADD_TIMEOUT)
                .await
                .map_err(|e| ApiError::new(503, "ServiceUnavailable", e.to_string()))?;
            Ok(json_response(StatusCode::OK, &list(app).await?))
        }
        _ => Err(ApiError::no_route()),
    }
}

fn known(app: &App, id: u64) -> Result<(), ApiError> {
    if app.store.members().0.iter().any(|m| m.0 == id) {
        Ok(())
    } else {
        Err(ApiError::new(404, "NotFound", format!("member {id:x} not found")))
    }
}

/// Adds the member the request names: learner, caught up, voter; then records its name and API
/// address.
async fn add(app: &App, req: &Value) -> Result<Response, ApiError> {
    let id = req["id"]
        .as_u64()
        .filter(|id| *id != 0)
        .ok_or_else(|| ApiError::bad_request("id: a non-zero member id is required"))?;
    let peer = req["peerAddress"].as_str().unwrap_or_default();
    if peer.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::bad_request(format!(
            "peerAddress: {peer:?} is not an address and port"
        )));
    }
    let name = req["name"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    crate::objects::validation::check_subdomain("name", name, &mut causes);
    if let Some((_, m)) = causes.first() {
        return Err(ApiError::bad_request(format!("name: {m}")));
    }
    let (members, _) = app.store.members();
    if members.iter().any(|m| m.0 == id) {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("member {id:x} is already a member"),
        ));
    }
    for kv in app
        .store
        .list("/skiff/members/", None, 0)
        .await
        .map_err(ApiError::internal)?
        .items
    {
        let record: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        if record["name"] == name {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("a member named {name:?} exists; remove it first (skiff-control member remove ID)"),
            ));
        }
    }
    let unavailable = |e: crate::store::StoreError| ApiError::new(503, "ServiceUnavailable", e.to_string());
    let record = json!({"name": name, "peerAddress": peer, "apiURL": req["apiURL"]});
    app.store
        .create(&record_key(id), serde_json::to_vec(&record).unwrap_or_default())
        .await
        .map_err(unavailable)?;
    let added = async {
        app.store
            .change_membership(
                MembershipOp::AddLearner {
                    id,
                    addr: peer.to_owned(),
                },
                ADD_TIMEOUT,
            )
            .await?;
        app.store
            .change_membership(MembershipOp::Promote { id }, ADD_TIMEOUT)
            .await
    };
    if let Err(e) = added.await {
        // A learner that never caught up (unreachable, or refused by the others) goes again.
        let _ = app
            .store
            .change_membership(MembershipOp::Remove { id }, Duration::from_secs(10))
            .await;
        let _ = app.store.delete(&record_key(id), None).await;
        return Err(unavailable(e));
    }
    tracing::info!(member = format!("{id:x}"), name, peer, "member added");
    Ok(json_response(StatusCode::OK, &list(app).await?))
}

/// Every member: id, name, role, Raft address, API URL, applied revision, health.
async fn list(app: &App) -> Result<Value, ApiError> {
    let (members, leader) = app.store.members();
    let records = app
        .store
        .list("/skiff/members/", None, 0)
        .await
        .map_err(ApiError::internal)?;
    let mut items = Vec::new();
    for (id, addr, voter) in members {
        let record = records
            .items
            .iter()
            .find(|kv| kv.key == record_key(id))
            .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .unwrap_or_default();
        let role = if leader == Some(id) {
            "leader"
        } else if voter {
            "voter"
        } else {
            "learner"
        };
        let (revision, health) = match app.store.member_status(id, &addr).await {
            Ok(s) if s.leader.is_some() => (json!(s.revision), "healthy".to_owned()),
            Ok(_) => (Value::Null, "no leader".to_owned()),
            Err(e) => (Value::Null, format!("unreachable: {e}")),
        };
        items.push(json!({
            "id": format!("{id:016x}"),
            "name": record["name"],
            "role": role,
            "peerAddress": addr,
            "apiURL": record["apiURL"],
            "revision": revision,
            "health": health,
        }));
    }
    Ok(json!({"kind": "MemberList", "items": items}))
}

/// The API servers a member's record names, with the members' health: what the `kubernetes`
/// Service's endpoints are made of.
async fn healthy_api_servers(app: &App) -> Result<Vec<std::net::SocketAddrV4>, ApiError> {
    let listed = list(app).await?;
    Ok(listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["health"] == "healthy")
        .filter_map(|m| m["apiURL"].as_str()?.strip_prefix("https://")?.parse().ok())
        .collect())
}

/// On the leader, every 10 s: the `default/kubernetes` Service's endpoints are the healthy
/// members' API servers on this member's port (upstream's endpoint reconciler: all API servers
/// of a cluster serve on one port), so pods reach the API through whichever are up.
pub fn publish_api_servers(app: std::sync::Arc<App>, own: std::net::SocketAddrV4) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if !app.store.is_leader().await {
                continue;
            }
            let servers = match healthy_api_servers(&app).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e.message, "listing the API servers");
                    continue;
                }
            };
            let mut ips: Vec<std::net::Ipv4Addr> = servers
                .iter()
                .filter(|s| s.port() == own.port())
                .map(|s| *s.ip())
                .collect();
            if ips.is_empty() {
                ips.push(*own.ip());
            }
            let published = app
                .store
                .as_leader(crate::bootstrap::ensure_api_endpoints(
                    &app.objects,
                    &ips,
                    own.port(),
                ))
                .await;
            if let Err(e) = published {
                tracing::debug!(error = %e, "publishing the API servers");
            }
        }
    });
}
