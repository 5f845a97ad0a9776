//! Encryption at rest, configured with upstream's `EncryptionConfiguration` file
//! (`apiserver.config.k8s.io/v1`): values of the resources it lists are sealed before they are
//! proposed to the Raft log (so neither the log, the state machine nor a snapshot holds them in
//! the clear) and opened when read, listed or watched.
//!
//! As upstream: the first provider of a resource's list writes, every provider reads; `aesgcm`
//! stores `k8s:enc:aesgcm:v1:<key name>:` + a random 12-byte nonce + the AES-GCM ciphertext and
//! tag, authenticated with the value's store key, and `identity` stores the value as it is. A
//! value read through anything but the writing provider's first key is *stale*: [`Store`]
//! rewrites such values at start, which is how a rotation or a change of provider completes.
//!
//! [`Store`]: super::Store

use base64::Engine as _;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

use crate::objects::keys;

/// Where every encrypting provider's values start.
const ENCRYPTED: &[u8] = b"k8s:enc:";

/// How the values of the store are protected at rest.
#[derive(Default)]
pub struct Encryption {
    /// The first rule whose prefix a key starts with applies to it.
    rules: Vec<Rule>,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.prefix))
            .finish()
    }
}

/// The providers of the keys under one prefix.
struct Rule {
    prefix: String,
    providers: std::sync::Arc<[Provider]>,
}

enum Provider {
    Identity,
    AesGcm(Vec<GcmKey>),
}

struct GcmKey {
    /// `k8s:enc:aesgcm:v1:<name>:`.
    prefix: Vec<u8>,
    key: LessSafeKey,
}

/// A value that no configured provider can open.
#[derive(Debug, thiserror::Error)]
#[error("cannot decrypt {key}: {reason}")]
pub struct DecryptError {
    key: String,
    reason: String,
}

/// An encryption configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Encryption {
    /// Parses an `EncryptionConfiguration` (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| bad(format!("not YAML: {e}")))?;
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        if api_version != "apiserver.config.k8s.io/v1" {
            return Err(bad(format!(
                "apiVersion {api_version:?}: expected \"apiserver.config.k8s.io/v1\""
            )));
        }
        if doc["kind"] != "EncryptionConfiguration" {
            return Err(bad("kind must be EncryptionConfiguration"));
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (i, entry) in doc["resources"].as_array().into_iter().flatten().enumerate() {
            let at = format!("resources[{i}]");
            let providers = entry["providers"]
                .as_array()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| bad(format!("{at}.providers: at least one provider is required")))?
                .iter()
                .enumerate()
                .map(|(j, p)| provider(p, &format!("{at}.providers[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let resources = entry["resources"]
                .as_array()
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad(format!("{at}.resources: at least one resource is required")))?;
            let providers: std::sync::Arc<[Provider]> = providers.into();
            for (j, resource) in resources.iter().enumerate() {
                let name = resource
                    .as_str()
                    .ok_or_else(|| bad(format!("{at}.resources[{j}]: must be a string")))?;
                let prefix = resource_prefix(name)
                    .ok_or_else(|| bad(format!("{at}.resources[{j}]: {name:?} is not a resource")))?;
                if rules.iter().any(|r| r.prefix == prefix) {
                    return Err(bad(format!("{at}.resources[{j}]: {name:?} is listed twice")));
                }
                rules.push(Rule {
                    prefix,
                    providers: providers.clone(),
                });
            }
        }
        Ok(Self { rules })
    }

    /// The prefixes of the store keys this configuration encrypts or reads specially.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.prefix.as_str())
    }

    fn rule(&self, key: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| key.starts_with(&r.prefix))
    }

    /// Whether any value is sealed (a cheap check before a batch is transformed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// `value` as it is to be stored at `key`.
    pub fn seal(&self, key: &str, value: Vec<u8>) -> Vec<u8> {
        let Some(rule) = self.rule(key) else {
            return value;
        };
        match &rule.providers[0] {
            Provider::Identity => value,
            Provider::AesGcm(keys) => {
                let k = &keys[0];
                let mut nonce = [0u8; NONCE_LEN];
                // The system's CSPRNG failing is not something to carry on from with a reused nonce.
                SystemRandom::new()
                    .fill(&mut nonce)
                    .expect("the system random number generator failed");
                let mut sealed = value;
                k.key
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(key.as_bytes()),
                        &mut sealed,
                    )
                    .expect("AES-GCM sealing a value under the size limit");
                let mut out = Vec::with_capacity(k.prefix.len() + NONCE_LEN + sealed.len());
                out.extend_from_slice(&k.prefix);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
                out
            }
        }
    }

    /// The value stored at `key`, opened, and whether it was written with anything but the
    /// current writing key (a rewrite would change how it is stored).
    pub fn open(&self, key: &str, stored: Vec<u8>) -> Result<(Vec<u8>, bool), DecryptError> {
        let Some(rule) = self.rule(key) else {
            return Ok((stored, false));
        };
        let fail = |reason: String| DecryptError {
            key: key.to_owned(),
            reason,
        };
        if !stored.starts_with(ENCRYPTED) {
            return match rule
                .providers
                .iter()
                .position(|p| matches!(p, Provider::Identity))
            {
                Some(i) => Ok((stored, i != 0)),
                None => Err(fail(
                    "it is stored unencrypted and the identity provider is not configured".into(),
                )),
            };
        }
        for (i, provider) in rule.providers.iter().enumerate() {
            let Provider::AesGcm(keys) = provider else {
                continue;
            };
            for (j, k) in keys.iter().enumerate() {
                if !stored.starts_with(&k.prefix) {
                    continue;
                }
                let body = &stored[k.prefix.len()..];
                if body.len() < NONCE_LEN {
                    return Err(fail("the value is truncated".into()));
                }
                let (nonce, sealed) = body.split_at(NONCE_LEN);
                let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail("bad nonce".into()))?;
                let mut buf = sealed.to_vec();
                let plain_len = k
                    .key
                    .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
                    .map_err(|_| fail(format!("{} does not authenticate it", key_name(&k.prefix))))?
                    .len();
                buf.truncate(plain_len);
                return Ok((buf, i != 0 || j != 0));
            }
        }
        let written_with = stored
            .splitn(6, |b| *b == b':')
            .take(5)
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(":");
        Err(fail(format!("no configured key matches {written_with}")))
    }

    /// This configuration with its rules moved to cover keys under `prefix` instead (for suites
    /// whose keys are not objects').
    #[cfg(test)]
    pub(crate) fn moved_to(mut self, prefix: &str) -> Self {
        for rule in &mut self.rules {
            rule.prefix = prefix.to_owned();
        }
        self
    }

    /// The configuration made at first start when none is given: Secrets sealed with a new
    /// random 256-bit AES-GCM key (`identity` after it, so values from before encryption read).
    pub fn generate_default() -> String {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the system random number generator failed");
        let secret = base64::engine::general_purpose::STANDARD.encode(key);
        format!(
            "# Made by skiff-control at first start: Secrets are encrypted at rest with this key.\n\
             # Keep a copy with your backups: the store cannot be read without it. To rotate the key,\n\
             # see docs/operations.md (\"Encryption at rest\").\n\
             apiVersion: apiserver.config.k8s.io/v1\n\
             kind: EncryptionConfiguration\n\
             resources:\n\
             - resources: [secrets]\n  \
               providers:\n  \
               - aesgcm:\n      \
                   keys:\n      \
                   - name: key1\n        \
                     secret: {secret}\n  \
               - identity: {{}}\n"
        )
    }
}

fn key_name(prefix: &[u8]) -> String {
    let text = String::from_utf8_lossy(prefix);
    let name = text.trim_end_matches(':').rsplit(':').next().unwrap_or_default();
    format!("key {name:?}")
}

/// The store prefix of an upstream resource name: `secrets` (core), `deployments.apps`,
/// `*.apps` (a whole group), `*.` (the core group) or `*.*` (everything).
fn resource_prefix(name: &str) -> Option<String> {
    let (resource, group) = name.split_once('.').unwrap_or((name, ""));
    if resource.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
        return None;
    }
    match (resource, group) {
        ("*", "*") => Some(keys::ROOT.to_owned()),
        ("*", group) => Some(keys::group_prefix(group)),
        (_, "*") => None,
        (resource, group) => Some(keys::prefix(group, resource)),
    }
}

fn provider(p: &Value, at: &str) -> Result<Provider, ConfigError> {
    let Some((kind, body)) = p
        .as_object()
        .and_then(|o| if o.len() == 1 { o.iter().next() } else { None })
    else {
        return Err(bad(format!("{at}: exactly one provider type per entry")));
    };
    match kind.as_str() {
        "identity" => Ok(Provider::Identity),
        "aesgcm" => {
            let list = body["keys"]
                .as_array()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| bad(format!("{at}.aesgcm.keys: at least one key is required")))?;
            let mut keys: Vec<GcmKey> = Vec::new();
            for (i, k) in list.iter().enumerate() {
                let at = format!("{at}.aesgcm.keys[{i}]");
                let name = k["name"]
                    .as_str()
                    .filter(|n| !n.is_empty() && !n.contains(':'))
                    .ok_or_else(|| bad(format!("{at}.name: a non-empty name without ':' is required")))?;
                let secret = base64::engine::general_purpose::STANDARD
                    .decode(k["secret"].as_str().unwrap_or_default())
                    .map_err(|e| bad(format!("{at}.secret: not base64: {e}")))?;
                let algorithm = match secret.len() {
                    16 => &AES_128_GCM,
                    32 => &AES_256_GCM,
                    n => {
                        return Err(bad(format!(
                            "{at}.secret: {n} bytes; an AES-GCM key is 16 or 32 bytes"
                        )));
                    }
                };
                let prefix = format!("k8s:enc:aesgcm:v1:{name}:").into_bytes();
                if keys.iter().any(|k| k.prefix == prefix) {
                    return Err(bad(format!("{at}.name: {name:?} is used twice")));
                }
                let key = UnboundKey::new(algorithm, &secret)
                    .map_err(|_| bad(format!("{at}.secret: unusable key")))?;
                keys.push(GcmKey {
                    prefix,
                    key: LessSafeKey::new(key),
                });
            }
            Ok(Provider::AesGcm(keys))
        }
        "aescbc" | "secretbox" | "kms" => Err(bad(format!(
            "{at}: provider {kind} is not supported; use aesgcm (or identity)"
        ))),
        other => Err(bad(format!("{at}: unknown provider {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &[(&str, &str)], identity_first: bool) -> Encryption {
        let keys: String = keys
            .iter()
            .map(|(n, s)| format!("        - {{name: {n}, secret: {s}}}\n"))
            .collect();
        let gcm = format!("    - aesgcm:\n        keys:\n{keys}");
        let providers = if identity_first {
            format!("    - identity: {{}}\n{gcm}")
        } else {
            format!("{gcm}    - identity: {{}}\n")
        };
        Encryption::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, '*.apps']\n  providers:\n{providers}"
        ))
        .unwrap()
    }

    const K1: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=";
    const K2: &str = "YWJjZGVmZ2hpamtsbW5vcGFiY2RlZmdoaWprbG1ub3A=";
    const SECRET: &str = "/registry/core/secrets/default/s";

    #[test]
    fn sealed_values_open_and_hide_the_plaintext() {
        let e = config(&[("k1", K1)], false);
        let sealed = e.seal(SECRET, b"{\"data\":\"hunter2\"}".to_vec());
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            e.open(SECRET, sealed.clone()).unwrap(),
            (b"{\"data\":\"hunter2\"}".to_vec(), false)
        );
        // Bound to its key: moved elsewhere it does not open.
        assert!(e.open("/registry/core/secrets/default/t", sealed).is_err());
        // Other resources pass through; `*.apps` covers the group.
        assert_eq!(e.seal("/registry/core/configmaps/a/b", b"x".to_vec()), b"x");
        assert!(
            e.seal("/registry/apps/deployments/a/b", b"x".to_vec())
                .starts_with(ENCRYPTED)
        );
    }

    #[test]
    fn rotation_reads_old_keys_and_marks_their_values_stale() {
        let old = config(&[("k1", K1)], false);
        let plain = config(&[("k1", K1)], true);
        let v1 = old.seal(SECRET, b"one".to_vec());
        let rotated = config(&[("k2", K2), ("k1", K1)], false);
        assert_eq!(rotated.open(SECRET, v1.clone()).unwrap(), (b"one".to_vec(), true));
        let v2 = rotated.seal(SECRET, b"one".to_vec());
        assert!(v2.starts_with(b"k8s:enc:aesgcm:v1:k2:"));
        assert!(!rotated.open(SECRET, v2.clone()).unwrap().1);
        let only_new = config(&[("k2", K2)], false);
        assert!(
            only_new
                .open(SECRET, v1)
                .unwrap_err()
                .to_string()
                .contains("k8s:enc:aesgcm:v1:k1")
        );
        assert_eq!(only_new.open(SECRET, v2.clone()).unwrap().0, b"one");
        // Plain values read through identity and are stale while aesgcm writes.
        assert_eq!(
            only_new.open(SECRET, b"{}".to_vec()).unwrap(),
            (b"{}".to_vec(), true)
        );
        // With identity first, encrypted values are stale (the way to turn encryption off).
        assert_eq!(
            plain.open(SECRET, old.seal(SECRET, b"z".to_vec())).unwrap(),
            (b"z".to_vec(), true)
        );
        assert_eq!(plain.seal(SECRET, b"z".to_vec()), b"z");
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n";
        let err = |body: &str| {
            Encryption::parse(&format!("{head}{body}"))
                .unwrap_err()
                .to_string()
        };
        assert!(err("  - aesgcm: {keys: [{name: a, secret: c2hvcnQ=}]}\n").contains("16 or 32 bytes"));
        assert!(err("  - aescbc: {keys: [{name: a, secret: c2hvcnQ=}]}\n").contains("not supported"));
        assert!(err("  - aesgcm: {keys: []}\n").contains("at least one key"));
        assert!(err("  - rot13: {}\n").contains("unknown provider"));
        assert!(Encryption::parse("apiVersion: v1\nkind: EncryptionConfiguration\n").is_err());
        assert!(Encryption::parse(&Encryption::generate_default()).is_ok());
    }
}
