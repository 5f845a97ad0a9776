//! Service-account tokens, as upstream's TokenRequest API makes them: `POST
//! serviceaccounts/NAME/token` returns a JWT (ES256) bound to the service account and, optionally,
//! to a pod; the API server accepts it as a bearer token while it has not expired, carries the API
//! server's audience, and the service account and bound pod (same uids) still exist. The signing
//! key is generated once and kept in the store (`/skiff/serviceaccount-signing-key`), so every
//! member of an HA control plane signs and verifies with the same key.

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use super::App;
use super::handlers::{Call, json_response, parse_body};
use super::server::Identity;
use crate::objects::keys;
use crate::objects::meta::from_kv;
use crate::objects::status::ApiError;
use crate::store::{WriteOp, WriteResult};

/// The issuer, and the audience the API server accepts, as upstream's defaults.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const KEY: &str = "/skiff/serviceaccount-signing-key";
/// Upstream's bounds and default for `expirationSeconds`.
const MIN_SECONDS: i64 = 600;
const DEFAULT_SECONDS: i64 = 3600;
const MAX_SECONDS: i64 = 48 * 3600;

/// Signs and verifies tokens.
#[derive(Debug)]
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()
}

impl Signer {
    fn from_pkcs8(pkcs8: &[u8]) -> Option<Signer> {
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &SystemRandom::new()).ok()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = b64(&digest.as_ref()[..16]);
        Some(Signer { key, kid })
    }

    /// The JWT for `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| ApiError::internal("signing a token failed"))?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }

    /// The claims of `token` when this key signed it and it is within its validity period.
    pub fn verify(&self, token: &str, now: i64) -> Option<Value> {
        let (input, sig) = token.rsplit_once('.')?;
        let (header, claims) = input.split_once('.')?;
        let header: Value = serde_json::from_slice(&unb64(header)?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(input.as_bytes(), &unb64(sig)?)
            .ok()?;
        let claims: Value = serde_json::from_slice(&unb64(claims)?).ok()?;
        let (exp, nbf) = (claims["exp"].as_i64()?, claims["nbf"].as_i64().unwrap_or(0));
        (claims["iss"] == ISSUER && now < exp && nbf <= now + 60).then_some(claims)
    }
}

/// The cluster's signer: loaded from the store, or made and stored by the first member to need it.
pub async fn signer(app: &App) -> Result<&Signer, ApiError> {
    app.signer
        .get_or_try_init(|| async {
            if let Some(kv) = app.store.get(KEY).await.map_err(ApiError::internal)? {
                return Signer::from_pkcs8(&kv.value)
                    .ok_or_else(|| ApiError::internal("the stored signing key is unreadable"));
            }
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| ApiError::internal("generating the signing key failed"))?;
            let op = WriteOp::Create {
                key: KEY.to_owned(),
                value: pkcs8.as_ref().to_vec(),
            };
            let value = match app.store.write(vec![op]).await.map_err(ApiError::internal)?.pop() {
                // Another member was first: its key is the cluster's.
                Some(WriteResult::AlreadyExists { current }) => current.value,
                _ => pkcs8.as_ref().to_vec(),
            };
            Signer::from_pkcs8(&value).ok_or_else(|| ApiError::internal("the signing key is unreadable"))
        })
        .await
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

async fn object(app: &App, resource: &str, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
    let key = keys::object(&keys::prefix("", resource), Some(ns), name);
    Ok(app
        .store
        .get(&key)
        .await
        .map_err(ApiError::internal)?
        .map(|kv| from_kv(&kv)))
}

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`. A node may only ask for tokens bound
/// to pods bound to it.
pub async fn create(app: &App, call: &Call, body: &[u8], node: Option<&str>) -> Result<Response, ApiError> {
    let (ns, name) = (call.ns.as_deref().unwrap_or("default"), call.name());
    let request = parse_body(body, &call.content_type)?;
    let Some(sa) = object(app, "serviceaccounts", ns, name).await? else {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("serviceaccounts \"{name}\" not found"),
        ));
    };
    let spec = &request["spec"];
    let seconds = spec["expirationSeconds"].as_i64().unwrap_or(DEFAULT_SECONDS);
    if seconds < MIN_SECONDS {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than 10 minutes"
            ),
        ));
    }
    let seconds = seconds.min(MAX_SECONDS);
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let audiences = if audiences.is_empty() {
        vec![ISSUER.to_owned()]
    } else {
        audiences
    };
    let issued = now();
    let mut private = json!({
        "namespace": ns,
        "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
    });
    let bound = &spec["boundObjectRef"];
    match bound["kind"].as_str() {
        None => {
            if let Some(node) = node {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "serviceaccounts \"{name}\" is forbidden: node \"{node}\" may only request tokens bound to its pods"
                    ),
                ));
            }
        }
        Some("Pod") => {
            let pod_name = bound["name"].as_str().unwrap_or_default();
            let pod = object(app, "pods", ns, pod_name)
                .await?
                .filter(|p| bound["uid"].as_str().is_none_or(|u| p["metadata"]["uid"] == u))
                .ok_or_else(|| ApiError::new(404, "NotFound", format!("pods \"{pod_name}\" not found")))?;
            let pod_sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
            if pod_sa != name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name."
                )));
            }
            if let Some(node) = node
                && pod["spec"]["nodeName"].as_str() != Some(node)
            {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "serviceaccounts \"{name}\" is forbidden: node \"{node}\" can only get tokens for pods bound to it"
                    ),
                ));
            }
            private["pod"] = json!({"name": pod_name, "uid": pod["metadata"]["uid"]});
        }
        Some(kind) => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of kind {kind}: only Pod is supported"
            )));
        }
    }
    let claims = json!({
        "aud": audiences,
        "exp": issued + seconds,
        "iat": issued,
        "nbf": issued,
        "iss": ISSUER,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "kubernetes.io": private,
    });
    let token = signer(app).await?.sign(&claims)?;
    let expires = jiff::Timestamp::from_second(issued + seconds)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut spec = spec.clone();
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(seconds);
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

/// The identity a bearer token stands for: a service account whose token this cluster signed for
/// the API server's audience, whose service account and bound pod still exist. `401` otherwise.
pub async fn authenticate(app: &App, token: &str) -> Result<Identity, ApiError> {
    let unauthorized = || ApiError::new(401, "Unauthorized", "Unauthorized");
    let claims = signer(app).await?.verify(token, now()).ok_or_else(unauthorized)?;
    let for_us = claims["aud"]
        .as_array()
        .is_some_and(|a| a.iter().any(|a| a == ISSUER));
    let private = &claims["kubernetes.io"];
    let (ns, sa) = (
        private["namespace"].as_str().unwrap_or_default(),
        private["serviceaccount"]["name"].as_str().unwrap_or_default(),
    );
    if !for_us || claims["sub"].as_str() != Some(&format!("system:serviceaccount:{ns}:{sa}")) {
        return Err(unauthorized());
    }
    let alive = |obj: Option<Value>, uid: &Value| obj.is_some_and(|o| &o["metadata"]["uid"] == uid);
    if !alive(
        object(app, "serviceaccounts", ns, sa).await?,
        &private["serviceaccount"]["uid"],
    ) {
        return Err(unauthorized());
    }
    if let Some(pod) = private["pod"]["name"].as_str()
        && !alive(object(app, "pods", ns, pod).await?, &private["pod"]["uid"])
    {
        return Err(unauthorized());
    }
    Ok(Identity {
        user: format!("system:serviceaccount:{ns}:{sa}"),
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_owned(),
        ],
    })
}

/// The users of a static token file (`--token-auth-file`, upstream's CSV format: `token,user,uid`
/// and optionally a quoted, comma-separated group list), by token.
#[derive(Debug, Default)]
pub struct StaticTokens(std::collections::HashMap<String, Identity>);

impl StaticTokens {
    /// Parses the file's text; errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = csv_fields(line);
            let (Some(token), Some(user)) = (fields.first(), fields.get(1)) else {
                return Err(format!("line {}: want token,user,uid[,\"groups\"]", i + 1));
            };
            if token.is_empty() || user.is_empty() || fields.len() < 3 {
                return Err(format!("line {}: want token,user,uid[,\"groups\"]", i + 1));
            }
            let mut groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            groups.push("system:authenticated".to_owned());
            out.insert(
                token.clone(),
                Identity {
                    user: user.clone(),
                    groups,
                },
            );
        }
        Ok(Self(out))
    }

    /// Who `token` stands for, if it is one of the file's.
    pub fn get(&self, token: &str) -> Option<&Identity> {
        self.0.get(token)
    }
}

/// The fields of one CSV line (double quotes around a field that holds commas).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut out, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut field).trim().to_owned()),
            c => field.push(c),
        }
    }
    out.push(field.trim().to_owned());
    out
}

/// A bootstrap token (`ID.SECRET`, six and sixteen of `[a-z0-9]`): the `kube-system`
/// `bootstrap-token-ID` Secret of type `bootstrap.kubernetes.io/token` holding the secret, usable
/// for authentication and not expired, stands for `system:bootstrap:ID` in `system:bootstrappers`
/// (and its `auth-extra-groups`). None when the token is not of that form.
pub async fn bootstrap_identity(app: &App, token: &str) -> Option<Result<Identity, ApiError>> {
    let (id, secret) = token.split_once('.')?;
    let shape =
        |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(shape(id, 6) && shape(secret, 16)) {
        return None;
    }
    let unauthorized = || ApiError::new(401, "Unauthorized", "Unauthorized");
    let check = async {
        let stored = object(app, "secrets", "kube-system", &format!("bootstrap-token-{id}"))
            .await?
            .ok_or_else(unauthorized)?;
        if stored["type"] != "bootstrap.kubernetes.io/token"
            || stored["metadata"]["deletionTimestamp"].is_string()
        {
            return Err(unauthorized());
        }
        let field = |k: &str| {
            stored["data"][k]
                .as_str()
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_default()
        };
        let same = field("token-id") == id
            && field("token-secret").len() == secret.len()
            && field("token-secret")
                .bytes()
                .zip(secret.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same || field("usage-bootstrap-authentication") != "true" {
            return Err(unauthorized());
        }
        let expiration = field("expiration");
        if !expiration.is_empty() {
            let expires =
                time::OffsetDateTime::parse(&expiration, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| unauthorized())?;
            if expires <= time::OffsetDateTime::now_utc() {
                return Err(unauthorized());
            }
        }
        let mut groups = vec!["system:bootstrappers".to_owned()];
        for g in field("auth-extra-groups")
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
        {
            if !g.starts_with("system:bootstrappers:") {
                return Err(unauthorized());
            }
            groups.push(g.to_owned());
        }
        groups.push("system:authenticated".to_owned());
        Ok(Identity {
            user: format!("system:bootstrap:{id}"),
            groups,
        })
    };
    Some(check.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_their_key() {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let signer = Signer::from_pkcs8(pkcs8.as_ref()).unwrap();
        let claims =
            json!({"iss": ISSUER, "sub": "system:serviceaccount:default:default", "exp": 2000, "nbf": 1000});
        let token = signer.sign(&claims).unwrap();
        assert_eq!(signer.verify(&token, 1500), Some(claims));
        assert_eq!(signer.verify(&token, 2000), None, "expired");
        let other =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        assert_eq!(
            Signer::from_pkcs8(other.as_ref()).unwrap().verify(&token, 1500),
            None
        );
        let (rest, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{rest}.{}", b64(&[0u8; 64]));
        assert_eq!(signer.verify(&forged, 1500), None);
    }

    #[test]
    fn static_token_files_are_read_as_upstream_writes_them() {
        let tokens = StaticTokens::parse("# comment\nabc,alice,1,\"dev,ops\"\ndef,bob,2\n").unwrap();
        let alice = tokens.get("abc").unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(tokens.get("def").unwrap().groups, ["system:authenticated"]);
        assert!(tokens.get("nope").is_none());
        assert!(StaticTokens::parse("onlytoken\n").unwrap_err().contains("line 1"));
    }
}
