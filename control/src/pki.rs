//! The cluster's certificate authority and the credentials derived from it.
//!
//! On first start the control plane creates a CA under `DATA_DIR/pki`, an admin client certificate
//! (`system:masters`), `DATA_DIR/admin.kubeconfig` and `DATA_DIR/node-token`. Later starts reuse the
//! CA, so existing kubeconfigs keep working; the serving certificate is re-issued at every start so
//! it always covers the current listen address and host name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Errors while creating or loading credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A node name that cannot be a certificate's DNS name.
    #[error("{0:?} cannot be named in a certificate")]
    Name(String),
}

/// A PEM certificate and its private key.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// The name the API server's front proxy certificate carries, which aggregated API servers
/// accept (`requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// The files under `DATA_DIR/pki` every member of a cluster shares: the CAs and their keys.
pub const SHARED_FILES: [&str; 4] = ["ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key"];

/// The loaded CA plus the serving credentials for this start.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    ca_key_pem: String,
    /// The API server's serving certificate.
    pub serving: CertAndKey,
    /// The front proxy's CA (a CA of its own, as upstream's `requestheader-client-ca-file`: a
    /// certificate the cluster CA signs, which users can get through a CSR, must not be able to
    /// pass as the proxy), PEM.
    pub front_proxy_ca_pem: String,
    /// The certificate the API server presents to aggregated API servers
    /// (`front-proxy-client`, signed by the front proxy CA).
    pub front_proxy_client: CertAndKey,
}

/// The CA `name` in `dir` (`NAME.crt`, `NAME.key`), created with common name `cn` when missing.
fn load_or_create_ca(dir: &Path, name: &str, cn: &str) -> Result<(String, String), PkiError> {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    Ok(match (read(&crt)?, read(&key)?) {
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            let pair = KeyPair::generate()?;
            let mut params = ca_params();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.self_signed(&pair)?;
            write_private(&key, &pair.serialize_pem())?;
            write_private(&crt, &cert.pem())?;
            (cert.pem(), pair.serialize_pem())
        }
    })
}

/// Signs `params` (valid for a year from an hour ago) with the CA `ca_pem`/`ca_key_pem`.
fn sign_with(ca_pem: &str, ca_key_pem: &str, mut params: CertificateParams) -> Result<CertAndKey, PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)?;
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn client_params(user: &str, groups: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, user);
    for group in groups {
        params.distinguished_name.push(DnType::OrganizationName, *group);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a file readable by its owner only, through a temporary file and a rename.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    skiff_common::fs::write_private(path, contents).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "skiff-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    params
}

impl Pki {
    /// Loads the CA from `dir` (creating it on first start) and issues a serving certificate for
    /// `listen` plus loopback, `localhost`, the host name, the `kubernetes.default.svc` names and
    /// `also` (the advertised address and the `kubernetes` Service's cluster IP, which in-cluster
    /// clients connect to).
    pub fn load_or_create(dir: &Path, listen: SocketAddr, also: &[IpAddr]) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let (ca_pem, ca_key_pem) = load_or_create_ca(dir, "ca", "skiff-ca")?;
        let (front_proxy_ca_pem, front_proxy_key) =
            load_or_create_ca(dir, "front-proxy-ca", "skiff-front-proxy-ca")?;
        let front_proxy_client = sign_with(
            &front_proxy_ca_pem,
            &front_proxy_key,
            client_params(FRONT_PROXY_CLIENT, &[]),
        )?;
        let mut pki = Self {
            ca_pem,
            ca_key_pem,
            serving: CertAndKey {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            front_proxy_ca_pem,
            front_proxy_client,
        };
        pki.serving = pki.issue_serving(listen, also)?;
        Ok(pki)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertAndKey, PkiError> {
        sign_with(&self.ca_pem, &self.ca_key_pem, params)
    }

    fn issue_serving(&self, listen: SocketAddr, also: &[IpAddr]) -> Result<CertAndKey, PkiError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "skiff-apiserver");
        let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
        if !listen.ip().is_unspecified() {
            ips.push(listen.ip());
        }
        for ip in also {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        let mut names = vec![
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
        ];
        if let Some(host) = hostname() {
            names.push(host);
        }
        params.subject_alt_names = ips.into_iter().map(SanType::IpAddress).collect();
        for name in names {
            params.subject_alt_names.push(SanType::DnsName(name.try_into()?));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Issues a client certificate for `user` in `groups` (as CN and O, like Kubernetes).
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<CertAndKey, PkiError> {
        self.sign(client_params(user, groups))
    }

    /// Writes `admin.kubeconfig` (if missing) and `node-token` (if missing) into `data_dir`.
    pub fn write_bootstrap_files(&self, data_dir: &Path, server_url: &str) -> Result<(), PkiError> {
        let kubeconfig = data_dir.join("admin.kubeconfig");
        if read(&kubeconfig)?.is_none() {
            let admin = self.issue_client("skiff-admin", &["system:masters"])?;
            write_private(&kubeconfig, &render_kubeconfig(server_url, &self.ca_pem, &admin))?;
        }
        for (file, label) in [("node-token", "node"), ("server-token", "server")] {
            let token = data_dir.join(file);
            if read(&token)?.is_none() {
                let secret: [u8; 24] = rand::random();
                write_private(
                    &token,
                    &format!("K10{}::{label}:{}\n", self.ca_hash(), hex(&secret)),
                )?;
            }
        }
        Ok(())
    }

    /// The certificate a store member presents to the others, as server and client: for
    /// [`crate::store::MEMBER_NAME`] in [`crate::store::MEMBER_ORG`].
    pub fn issue_member(&self, id: u64) -> Result<CertAndKey, PkiError> {
        let mut params = client_params(
            &format!("{}:{id:016x}", crate::store::MEMBER_NAME),
            &[crate::store::MEMBER_ORG],
        );
        params.subject_alt_names = vec![SanType::DnsName(crate::store::MEMBER_NAME.try_into()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// SHA-256 of the CA certificate (PEM), hex: agents pin the CA with it from their token.
    pub fn ca_hash(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, self.ca_pem.as_bytes()).as_ref())
    }

    /// Signs a CertificateSigningRequest's PEM request with the cluster CA: its subject and names
    /// as requested, the key and extended usages named (upstream's `usages`), valid for
    /// `seconds` (at most a year).
    pub fn sign_request(&self, csr_pem: &str, usages: &[&str], seconds: i64) -> Result<String, PkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params.is_ca = IsCa::NoCa;
        csr.params.key_usages = usages
            .iter()
            .filter_map(|u| match *u {
                "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
                "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
                "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
                "data encipherment" => Some(KeyUsagePurpose::DataEncipherment),
                _ => None,
            })
            .collect();
        csr.params.extended_key_usages = usages
            .iter()
            .filter_map(|u| match *u {
                "client auth" => Some(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => Some(ExtendedKeyUsagePurpose::ServerAuth),
                "code signing" => Some(ExtendedKeyUsagePurpose::CodeSigning),
                "email protection" => Some(ExtendedKeyUsagePurpose::EmailProtection),
                "timestamping" => Some(ExtendedKeyUsagePurpose::TimeStamping),
                "ocsp signing" => Some(ExtendedKeyUsagePurpose::OcspSigning),
                _ => None,
            })
            .collect();
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(5);
        csr.params.not_after = now + time::Duration::seconds(seconds.clamp(600, 365 * 86400));
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, ca_key)?;
        Ok(csr.signed_by(&issuer)?.pem())
    }

    /// Signs a node's certificate request as `system:node:<name>` in `system:nodes`, whatever
    /// subject the request asked for.
    pub fn sign_node_csr(&self, csr_pem: &str, node_name: &str) -> Result<String, PkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("system:node:{node_name}"));
        dn.push(DnType::OrganizationName, "system:nodes");
        csr.params.distinguished_name = dn;
        // The node serves its agent port with this certificate too (the API server checks the name).
        csr.params.subject_alt_names = vec![rcgen::SanType::DnsName(
            node_name
                .try_into()
                .map_err(|_| PkiError::Name(node_name.to_owned()))?,
        )];
        csr.params.is_ca = IsCa::NoCa;
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        csr.params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        csr.params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, ca_key)?;
        Ok(csr.signed_by(&issuer)?.pem())
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The parts of a node token: `K10<ca sha256>::node:<secret>`.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.trim().strip_prefix("K10")?;
    let (ca_hash, secret) = rest.split_once("::")?;
    let secret = secret.split_once(':').map_or(secret, |(_, s)| s);
    Some((ca_hash, secret))
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// The URL clients on this host use to reach a server listening on `listen`.
pub fn local_url(listen: SocketAddr) -> String {
    let host = match listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!("https://{host}:{}", listen.port())
}

/// A kubeconfig with one cluster, one user (a client certificate) and one current context.
pub fn render_kubeconfig(server_url: &str, ca_pem: &str, client: &CertAndKey) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: skiff-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: skiff
  context:
    cluster: skiff
    user: skiff-admin
current-context: skiff
",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_reused_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "0.0.0.0:6443".parse().unwrap();
        let first = Pki::load_or_create(dir.path(), listen, &[]).unwrap();
        let second = Pki::load_or_create(dir.path(), listen, &[]).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_ne!(first.serving.cert_pem, second.serving.cert_pem);
        first
            .write_bootstrap_files(dir.path(), &local_url(listen))
            .unwrap();
        let kc = std::fs::read_to_string(dir.path().join("admin.kubeconfig")).unwrap();
        assert!(kc.contains("server: https://127.0.0.1:6443"));
        let token = std::fs::read_to_string(dir.path().join("node-token")).unwrap();
        let (hash, secret) = parse_token(&token).unwrap();
        assert_eq!(hash, first.ca_hash());
        assert_eq!(secret.len(), 48);
    }

    #[test]
    fn node_csr_is_signed_as_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), "127.0.0.1:6443".parse().unwrap(), &[]).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "system:masters-wannabe");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert = pki.sign_node_csr(&csr, "n1").unwrap();
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let cn = parsed
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(cn, "system:node:n1");
    }
}
