//! CertificateSigningRequests (`certificates.k8s.io/v1`): what a request must hold, who asked
//! for it (set by the server from the requester, whatever the body says), and the approval
//! conditions the `approval` subresource writes. Signing is the `csr_signer` controller's.

use serde_json::{Value, json};

use super::validation::Causes;

/// The signers Skiff signs for with the cluster CA, as upstream's kube-controller-manager.
pub const SIGNERS: &[&str] = &[
    "kubernetes.io/kube-apiserver-client",
    "kubernetes.io/kube-apiserver-client-kubelet",
    "kubernetes.io/kubelet-serving",
];

const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The PEM request of a CSR (`spec.request` is base64 of it).
pub fn request_pem(csr: &Value) -> Option<String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(csr["spec"]["request"].as_str()?)
        .ok()?;
    String::from_utf8(raw).ok()
}

/// The key and extended usages a CSR asks for.
pub fn usages(csr: &Value) -> Vec<&str> {
    csr["spec"]["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Field errors of a new request.
pub fn check(csr: &Value, causes: &mut Causes) {
    let spec = &csr["spec"];
    match request_pem(csr) {
        None => causes.push((
            "spec.request".into(),
            "Required value: a base64-encoded PEM certificate request".into(),
        )),
        Some(pem) => {
            if rcgen::CertificateSigningRequestParams::from_pem(&pem).is_err() {
                causes.push((
                    "spec.request".into(),
                    "Invalid value: []byte{...}: PEM block type must be CERTIFICATE REQUEST".into(),
                ));
            }
        }
    }
    match spec["signerName"].as_str() {
        None | Some("") => causes.push(("spec.signerName".into(), "Required value".into())),
        Some(s) if !s.contains('/') => causes.push((
            "spec.signerName".into(),
            format!("Invalid value: \"{s}\": must be a fully qualified domain and path of the form 'example.com/signer-name'"),
        )),
        _ => {}
    }
    let usages = spec["usages"].as_array().map(Vec::as_slice).unwrap_or_default();
    if usages.is_empty() {
        causes.push(("spec.usages".into(), "Required value".into()));
    }
    for (i, u) in usages.iter().enumerate() {
        let u = u.as_str().unwrap_or_default();
        if !USAGES.contains(&u) {
            causes.push((format!("spec.usages[{i}]"), format!("Unsupported value: \"{u}\"")));
        }
    }
    if let Some(s) = spec["expirationSeconds"].as_i64()
        && s < 600
    {
        causes.push((
            "spec.expirationSeconds".into(),
            format!("Invalid value: {s}: may not specify a duration less than 600 seconds (10 minutes)"),
        ));
    }
    check_conditions(csr, causes);
}

/// Approved and Denied exclude each other, and each is "True".
pub fn check_conditions(csr: &Value, causes: &mut Causes) {
    let conditions = csr["status"]["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has = |t: &str| conditions.iter().any(|c| c["type"] == t);
    for (i, c) in conditions.iter().enumerate() {
        let t = c["type"].as_str().unwrap_or_default();
        if t.is_empty() {
            causes.push((format!("status.conditions[{i}].type"), "Required value".into()));
        }
        if matches!(t, "Approved" | "Denied") && c["status"] != "True" {
            causes.push((
                format!("status.conditions[{i}].status"),
                format!("Unsupported value: {}: supported values: \"True\"", c["status"]),
            ));
        }
    }
    if has("Approved") && has("Denied") {
        causes.push((
            "status.conditions".into(),
            "Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive".into(),
        ));
    }
}

/// Records who asked: the server's word, not the body's.
pub fn set_requester(csr: &mut Value, user: &str, groups: &[String]) {
    let spec = &mut csr["spec"];
    spec["username"] = json!(user);
    spec["groups"] = json!(groups);
    if let Some(spec) = spec.as_object_mut() {
        spec.remove("uid");
        spec.remove("extra");
    }
}

/// Why the signer named in `csr` will not issue it (upstream's per-signer rules), if it will not:
/// client certificates only authenticate clients, and the kubelet signers issue only to nodes
/// (`system:node:NAME` in `system:nodes`).
pub fn signer_refuses(csr: &Value) -> Option<String> {
    let usages = usages(csr);
    let signer = csr["spec"]["signerName"].as_str().unwrap_or_default();
    let allowed: &[&str] = match signer {
        "kubernetes.io/kubelet-serving" => &["digital signature", "key encipherment", "server auth"],
        _ => &["digital signature", "key encipherment", "client auth"],
    };
    if let Some(u) = usages.iter().find(|u| !allowed.contains(u)) {
        return Some(format!("usage \"{u}\" is not allowed by signer {signer}"));
    }
    let params = rcgen::CertificateSigningRequestParams::from_pem(&request_pem(csr)?).ok()?;
    let field = |t: rcgen::DnType| -> Vec<String> {
        params
            .params
            .distinguished_name
            .iter()
            .filter(|(k, _)| **k == t)
            .filter_map(|(_, v)| match v {
                rcgen::DnValue::Utf8String(s) => Some(s.clone()),
                rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
                rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
            .collect()
    };
    if signer != "kubernetes.io/kube-apiserver-client" {
        let (cn, o) = (
            field(rcgen::DnType::CommonName),
            field(rcgen::DnType::OrganizationName),
        );
        let node = cn.len() == 1 && cn[0].starts_with("system:node:") && o == ["system:nodes"];
        if !node {
            return Some(format!(
                "signer {signer} issues only to nodes: subject must be CN=system:node:<name>, O=system:nodes"
            ));
        }
    }
    None
}

/// Whether a request may be signed now: approved, not denied or failed, and not yet issued.
pub fn ready_to_sign(csr: &Value) -> bool {
    let conditions = csr["status"]["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
    has("Approved")
        && !has("Denied")
        && !has("Failed")
        && csr["status"]["certificate"].as_str().is_none_or(str::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(request: &str, usages: Value) -> Value {
        use base64::Engine;
        json!({"spec": {"request": base64::engine::general_purpose::STANDARD.encode(request),
            "signerName": "kubernetes.io/kube-apiserver-client", "usages": usages}})
    }

    fn pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "jane");
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn a_request_needs_a_pem_request_a_signer_and_known_usages() {
        let mut causes = Causes::new();
        check(&csr(&pem(), json!(["client auth"])), &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut causes = Causes::new();
        let mut bad = csr("not pem", json!(["client auth", "flying"]));
        bad["spec"]["signerName"] = json!("nosigner");
        bad["spec"]["expirationSeconds"] = json!(60);
        check(&bad, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.request",
                "spec.signerName",
                "spec.usages[1]",
                "spec.expirationSeconds"
            ]
        );
    }

    #[test]
    fn approval_and_denial_exclude_each_other_and_the_requester_is_the_servers_word() {
        let mut both = csr(&pem(), json!(["client auth"]));
        both["status"]["conditions"] =
            json!([{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]);
        let mut causes = Causes::new();
        check_conditions(&both, &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert!(!ready_to_sign(&both));
        let mut approved = csr(&pem(), json!(["client auth"]));
        approved["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}]);
        assert!(ready_to_sign(&approved));
        approved["status"]["certificate"] = json!("Y2VydA==");
        assert!(!ready_to_sign(&approved));
        let mut forged = json!({"spec": {"username": "admin", "groups": ["system:masters"], "uid": "x"}});
        set_requester(&mut forged, "jane", &["devs".to_owned()]);
        assert_eq!(forged["spec"], json!({"username": "jane", "groups": ["devs"]}));
    }

    #[test]
    fn client_signers_issue_client_certificates_and_kubelet_signers_only_to_nodes() {
        let request = |cn: &str, o: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            params.distinguished_name.push(rcgen::DnType::OrganizationName, o);
            params.serialize_request(&key).unwrap().pem().unwrap()
        };
        let mut client = csr(
            &request("jane", "devs"),
            json!(["client auth", "digital signature"]),
        );
        assert_eq!(signer_refuses(&client), None);
        client["spec"]["usages"] = json!(["server auth"]);
        assert!(signer_refuses(&client).unwrap().contains("server auth"));
        let mut serving = csr(&request("jane", "devs"), json!(["server auth"]));
        serving["spec"]["signerName"] = json!("kubernetes.io/kubelet-serving");
        assert!(signer_refuses(&serving).unwrap().contains("only to nodes"));
        let mut node = csr(&request("system:node:n1", "system:nodes"), json!(["server auth"]));
        node["spec"]["signerName"] = json!("kubernetes.io/kubelet-serving");
        assert_eq!(signer_refuses(&node), None);
    }
}
