//! Raw HTTPS requests to the API server with the admin's client certificate, through `curl`, for
//! what kubectl cannot send: any method, header, content type and body.

use crate::BoundedOutput;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;

use crate::Control;

/// The admin's credentials as PEM files, for `curl`.
#[derive(Debug)]
pub struct RawClient {
    dir: tempfile::TempDir,
    url: String,
}

/// An HTTP answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status (0 when the connection failed).
    pub code: u16,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON (a `Status` for errors), or `null`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

fn kubeconfig_field(kubeconfig: &str, field: &str) -> Vec<u8> {
    let line = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}: ")))
        .unwrap_or_else(|| panic!("kubeconfig has no {field}"));
    base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .expect("base64 in the kubeconfig")
}

impl RawClient {
    /// A client for `control` with its admin kubeconfig's certificate.
    pub fn new(control: &Control) -> Self {
        let kubeconfig = std::fs::read_to_string(control.kubeconfig()).expect("admin kubeconfig");
        let dir = tempfile::Builder::new()
            .prefix("skiff-raw-")
            .tempdir()
            .expect("temp dir");
        for (file, field) in [
            ("ca.pem", "certificate-authority-data"),
            ("cert.pem", "client-certificate-data"),
            ("key.pem", "client-key-data"),
        ] {
            std::fs::write(dir.path().join(file), kubeconfig_field(&kubeconfig, field)).unwrap();
        }
        Self {
            dir,
            url: control.url(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Sends `method path` with `content_type` (None: no Content-Type header) and `body`; waits
    /// at most `max_secs`.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        max_secs: u32,
    ) -> Answer {
        let header = match content_type {
            Some(ct) => format!("Content-Type: {ct}"),
            None => "Content-Type:".to_owned(),
        };
        self.send_with(method, path, &[&header], body, max_secs)
    }

    /// GETs `path` with `Accept: accept`.
    pub fn get_accepting(&self, path: &str, accept: &str) -> Answer {
        self.send_with("GET", path, &[&format!("Accept: {accept}")], &[], 30)
    }

    /// Sends `method path` with extra `headers` (`Name: value`) and `body`; waits at most
    /// `max_secs`.
    pub fn send_with(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
        max_secs: u32,
    ) -> Answer {
        let body_file = self.file("body");
        let out_file = self.file("out");
        std::fs::write(&body_file, body).unwrap();
        let _ = std::fs::remove_file(&out_file);
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        cmd.arg("-o")
            .arg(&out_file)
            .args([
                "-w",
                "%{http_code}",
                "--max-time",
                &max_secs.to_string(),
                "--cacert",
            ])
            .arg(self.file("ca.pem"))
            .arg("--cert")
            .arg(self.file("cert.pem"))
            .arg("--key")
            .arg(self.file("key.pem"));
        if !body.is_empty() {
            cmd.arg("--data-binary").arg(format!("@{}", body_file.display()));
        }
        let out = cmd
            .arg(format!("{}{path}", self.url))
            .bounded_output()
            .expect("running curl");
        let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        Answer {
            code,
            body: std::fs::read_to_string(&out_file).unwrap_or_default(),
        }
    }

    /// POSTs `value` as JSON to `path`; waits at most `max_secs`.
    pub fn post_json(&self, path: &str, value: &serde_json::Value, max_secs: u32) -> Answer {
        self.send(
            "POST",
            path,
            Some("application/json"),
            value.to_string().as_bytes(),
            max_secs,
        )
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
