//! Upstream's CSR signing controller: an approved CertificateSigningRequest for one of the
//! signers the cluster CA serves (`objects::certificates::SIGNERS`) gets its certificate in
//! `status.certificate`; one whose request cannot be signed, or that the signer's rules refuse
//! (`signer_refuses`), gets a `Failed` condition. Requests
//! for other signers are left to whoever serves them.

use std::sync::Arc;

use serde_json::{Value, json};

use super::runtime::{Caches, Next, Queue, queue_changes, run_workers};
use super::write::put_status;
use crate::objects::Objects;
use crate::objects::certificates::{SIGNERS, ready_to_sign, request_pem, signer_refuses, usages};
use crate::objects::keys;
use crate::objects::meta::now;
use crate::pki::Pki;

const MANAGER: &str = "certificatesigningrequest-signing-controller";

/// The status after signing `csr` (the certificate, or why not).
fn signed_status(ca: &Pki, csr: &Value) -> Value {
    let usages = usages(csr);
    let seconds = csr["spec"]["expirationSeconds"].as_i64().unwrap_or(365 * 86400);
    let mut status = csr["status"].clone();
    let signed = match signer_refuses(csr) {
        Some(why) => Err(why),
        None => request_pem(csr)
            .ok_or_else(|| "the request is not base64 PEM".to_owned())
            .and_then(|pem| ca.sign_request(&pem, &usages, seconds).map_err(|e| e.to_string())),
    };
    match signed {
        Ok(cert) => {
            use base64::Engine;
            status["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(cert));
        }
        Err(e) => {
            let failed = json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure",
                "message": e, "lastUpdateTime": now(), "lastTransitionTime": now()});
            match status["conditions"].as_array_mut() {
                Some(c) => c.push(failed),
                None => status["conditions"] = json!([failed]),
            }
        }
    }
    status
}

/// Starts the controller (nothing to sign with without the cluster CA).
pub fn start(app: Arc<Objects>, caches: &Caches, ca: Option<Arc<Pki>>) {
    let Some(ca) = ca else { return };
    let csrs = caches.get(&app, keys::CERTIFICATE_SIGNING_REQUESTS);
    let queue = Arc::new(Queue::default());
    queue_changes(&queue, &csrs);
    run_workers(app.clone(), "csrsigning", queue, 1, move |key| {
        let (app, csrs, ca) = (app.clone(), csrs.clone(), ca.clone());
        async move {
            let Some(csr) = csrs.get(&key) else {
                return Ok(Next::Done);
            };
            let ours = csr["spec"]["signerName"]
                .as_str()
                .is_some_and(|s| SIGNERS.contains(&s));
            if !ours || !ready_to_sign(&csr) {
                return Ok(Next::Done);
            }
            let status = signed_status(&ca, &csr);
            put_status(
                &app,
                &csr,
                "certificates.k8s.io",
                "certificatesigningrequests",
                status,
                MANAGER,
            )
            .await?;
            Ok(Next::Done)
        }
    });
}
