//! `POST pods/NAME/eviction`: deletes a pod unless that would break a PodDisruptionBudget
//! (`429 TooManyRequests`), as `kubectl drain` expects.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::App;
use super::handlers::{Call, json_response, parse_body};
use crate::objects::keys;
use crate::objects::meta::{from_kv, meta_str, to_stored};
use crate::objects::selector::LabelSelector;
use crate::objects::status::ApiError;
use crate::objects::write::{DeleteOptions, Preconditions, Propagation};
use crate::store::StoreError;

const PDB_PREFIX: &str = keys::POD_DISRUPTION_BUDGETS;

/// Evicts the pod named in the call.
pub async fn evict(app: &App, call: &Call, body: &[u8]) -> Result<Response, ApiError> {
    let eviction = if body.is_empty() {
        json!({})
    } else {
        parse_body(body, &call.content_type)?
    };
    let ns = call.ns.clone().unwrap_or_default();
    let name = call.name().to_owned();
    let pod_call = Call {
        sub: None,
        ..call.clone_meta()
    };
    let pod_key = call.info.key(Some(&ns), &name);
    let pod = app
        .store
        .get(&pod_key)
        .await
        .map_err(ApiError::internal)?
        .map(|kv| from_kv(&kv))
        .ok_or_else(|| {
            ApiError::not_found(crate::objects::status::Target {
                group: "",
                resource: "pods",
                kind: "Pod",
                name: &name,
            })
        })?;
    let terminal = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    if !terminal && !pod["metadata"]["deletionTimestamp"].is_string() {
        let pdbs = app
            .store
            .list(&format!("{PDB_PREFIX}{ns}/"), None, 0)
            .await
            .map_err(ApiError::internal)?;
        let matching: Vec<_> = pdbs
            .items
            .iter()
            .filter(|kv| {
                let pdb = from_kv(kv);
                LabelSelector::from_object(&pdb["spec"]["selector"])
                    .is_ok_and(|s| !s.is_empty() && s.matches(pod["metadata"].get("labels")))
            })
            .collect();
        if matching.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(kv) = matching.first() {
            let mut pdb = from_kv(kv);
            let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
            if allowed <= 0 {
                let mut err = ApiError::new(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
                err.details = Some(
                    json!({"causes": [{"reason": "DisruptionBudget", "message": format!("The disruption budget {} needs {} healthy pods and has {} currently", meta_str(&pdb, "name"), pdb["status"]["desiredHealthy"], pdb["status"]["currentHealthy"])}]}),
                );
                return Err(err);
            }
            // Spend one disruption before deleting, so concurrent evictions cannot overspend.
            pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
            pdb["status"]["disruptedPods"][&name] = json!(crate::objects::meta::now());
            match app
                .store
                .update(&kv.key, to_stored(&pdb), Some(kv.mod_revision))
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => {
                    return Err(ApiError::new(
                        429,
                        "TooManyRequests",
                        "the disruption budget changed; please retry the eviction",
                    ));
                }
                Err(e) => return Err(ApiError::internal(e)),
            }
        }
    }
    let opts = &eviction["deleteOptions"];
    let grace = opts["gracePeriodSeconds"].as_i64();
    app.objects
        .delete(
            &pod_call.write(),
            &name,
            &DeleteOptions {
                propagation: opts["propagationPolicy"].as_str().and_then(Propagation::parse),
                grace_seconds: grace,
                preconditions: Preconditions::from_json(&opts["preconditions"]),
                dry_run: call.query.get("dryRun").is_some_and(|d| d == "All"),
            },
        )
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}
