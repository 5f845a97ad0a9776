//! Test images and a registry on loopback: a busybox image built from Debian's `busybox-static`,
//! written as an OCI-layout archive, and served by Debian's `docker-registry` after a `skopeo copy`.

use crate::BoundedOutput;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(bytes)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn tar_add(builder: &mut Vec<u8>, path: &str, kind: u8, mode: u32, data: &[u8], link: &str) {
    // A ustar header, written by hand to keep the test crate free of archive dependencies.
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    let octal = |h: &mut [u8], v: u64, width: usize| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[..width].copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], u64::from(mode), 8);
    octal(&mut h[108..116], 0, 8);
    octal(&mut h[116..124], 0, 8);
    octal(&mut h[124..136], data.len() as u64, 12);
    octal(&mut h[136..148], 1_700_000_000, 12);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    builder.extend_from_slice(&h);
    builder.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    builder.extend(std::iter::repeat_n(0u8, pad));
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let out = Command::new("gzip")
        .args(["-c", "-n", "-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            let mut stdin = c.stdin.take().expect("stdin");
            let data = data.to_vec();
            let t = std::thread::spawn(move || stdin.write_all(&data));
            let out = c.wait_with_output();
            let _ = t.join();
            out
        })
        .expect("gzip");
    out.stdout
}

/// Commands the busybox image links to `/bin/busybox`.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "env", "id", "hostname", "wget", "nc", "httpd", "mkdir", "rm",
    "tail", "head", "true", "false", "test", "grep", "tar", "dd", "date", "seq", "touch", "kill", "ps",
    "printf", "sync", "cmp", "cp", "mv",
];

/// Writes an OCI-layout archive of a busybox image (from the host's static busybox) into `dir`;
/// returns the archive path.
pub fn busybox_oci_archive(dir: &Path) -> PathBuf {
    busybox_oci_archive_with_env(
        dir,
        &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    )
}

/// [`busybox_oci_archive`] with `env` as the image config's environment.
pub fn busybox_oci_archive_with_env(dir: &Path, env: &[&str]) -> PathBuf {
    busybox_oci_archive_with_files(dir, env, &[])
}

/// [`busybox_oci_archive_with_env`] with more executable files: `(path in the image, content)`,
/// each under a directory the image has (`usr/local/bin/` is added).
pub fn busybox_oci_archive_with_files(dir: &Path, env: &[&str], files: &[(&str, &[u8])]) -> PathBuf {
    busybox_oci_archive_as(dir, "busybox-oci.tar", env, files, &["sh"])
}

/// [`busybox_oci_archive_with_files`] written to `dir/file`, with `cmd` as the image's command.
pub fn busybox_oci_archive_as(
    dir: &Path,
    file: &str,
    env: &[&str],
    files: &[(&str, &[u8])],
    cmd: &[&str],
) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static) is needed");
    let mut layer = Vec::new();
    for d in [
        "bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/", "var/", "var/www/",
    ] {
        tar_add(
            &mut layer,
            d,
            b'5',
            if d == "tmp/" { 0o1777 } else { 0o755 },
            &[],
            "",
        );
    }
    tar_add(&mut layer, "bin/busybox", b'0', 0o755, &busybox, "");
    if !files.is_empty() {
        for d in ["usr/", "usr/local/", "usr/local/bin/"] {
            tar_add(&mut layer, d, b'5', 0o755, &[], "");
        }
    }
    for (path, data) in files {
        tar_add(&mut layer, path, b'0', 0o755, data, "");
    }
    for a in APPLETS {
        tar_add(&mut layer, &format!("bin/{a}"), b'2', 0o777, &[], "busybox");
    }
    tar_add(
        &mut layer,
        "etc/passwd",
        b'0',
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "",
    );
    tar_add(
        &mut layer,
        "etc/group",
        b'0',
        0o644,
        b"root:x:0:\nnobody:x:65534:\n",
        "",
    );
    tar_add(
        &mut layer,
        "var/www/index.html",
        b'0',
        0o644,
        b"hello from skiff\n",
        "",
    );
    layer.extend_from_slice(&[0u8; 1024]);
    let diff_id = sha256_hex(&layer);
    let compressed = gzip(&layer);
    let layer_digest = sha256_hex(&compressed);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env, "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    }))
    .expect("json");
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{layer_digest}"), "size": compressed.len()}],
    }))
    .expect("json");
    let manifest_digest = sha256_hex(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    }))
    .expect("json");
    let mut archive = Vec::new();
    tar_add(
        &mut archive,
        "oci-layout",
        b'0',
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        "",
    );
    tar_add(&mut archive, "index.json", b'0', 0o644, &index, "");
    tar_add(&mut archive, "blobs/", b'5', 0o755, &[], "");
    tar_add(&mut archive, "blobs/sha256/", b'5', 0o755, &[], "");
    for (d, b) in [
        (&layer_digest, &compressed),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        tar_add(&mut archive, &format!("blobs/sha256/{d}"), b'0', 0o644, b, "");
    }
    archive.extend_from_slice(&[0u8; 1024]);
    let path = dir.join(file);
    std::fs::write(&path, archive).expect("writing the archive");
    path
}

/// Debian's `docker-registry`, serving on a free loopback port from a temp dir.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry and pushes the busybox test image as `HOST/skiff/busybox:1`.
    pub fn start_with_busybox() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) is needed");
        let registry = Registry {
            child,
            host,
            _dir: dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&registry.host).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let archive = busybox_oci_archive(registry._dir.path());
        registry.push(&archive, "skiff/busybox:1");
        registry
    }

    /// Pushes an OCI-layout archive as `HOST/name` with skopeo.
    pub fn push(&self, archive: &Path, name: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{name}", self.host))
            .bounded_output()
            .expect("skopeo (Debian package skopeo) is needed");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The busybox test image's reference.
    pub fn busybox(&self) -> String {
        format!("{}/skiff/busybox:1", self.host)
    }

    /// Pushes the busybox image with no environment in its config (no `PATH`, as some images
    /// have) and returns its reference.
    pub fn busybox_without_path(&self) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = busybox_oci_archive_with_env(dir.path(), &[]);
        self.push(&archive, "skiff/busybox-nopath:1");
        format!("{}/skiff/busybox-nopath:1", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
