//! The official Kubernetes Python client, which the pods suite runs inside a pod as an in-cluster
//! client nobody here wrote: a venv under `target/python-client` made from Debian's python3 (its
//! interpreter and libraries are what the pod mounts from the host), with `kubernetes` 32 from PyPI;
//! and the Prometheus project's own client library, whose text-format parser reads `/metrics`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The interpreter the venv is made from: Debian's, whose files live under `/usr`.
const PYTHON: &str = "/usr/bin/python3";
/// The client release the compatibility tests were written against.
const CLIENT: &str = "kubernetes>=32,<33";
/// The reference parser of Prometheus' text format.
const PROMETHEUS: &str = "prometheus-client>=0.20,<1";

/// Where the venv lives (the tests look for it there).
pub fn venv(root: &Path) -> PathBuf {
    root.join("target/python-client")
}

/// Makes the venv unless it already imports the client.
pub fn ensure(root: &Path) -> anyhow::Result<()> {
    let dir = venv(root);
    let python = dir.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import kubernetes, prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(());
    }
    if !Path::new(PYTHON).exists() {
        bail!("{PYTHON} is missing: apt-get install python3-venv (the pods suite runs the Python client)");
    }
    super::run(
        Command::new(PYTHON)
            .arg("-m")
            .arg("venv")
            .arg("--clear")
            .arg(&dir),
    )
    .context("making the Python client's venv (apt-get install python3-venv)")?;
    super::run(Command::new(dir.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        CLIENT,
        PROMETHEUS,
    ]))
    .context("installing the Python client from PyPI")?;
    Ok(())
}
