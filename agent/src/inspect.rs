//! `skiff-agent inspect services|backends|pods|containers|images`: the node's state as tables, read
//! from what the agent keeps on disk (as `crictl` reads a runtime's): the service ports the data
//! plane was last programmed with (`DATA_DIR/proxy/services.json`, beside `bpftool map dump` and
//! `nft list table inet skiff`, which show the same from the kernel), each pod's directory (its
//! `pod.json`, and per container attempt its id and `started.json`/`exit.json`), the pod logs and
//! the image store. Works while the agent runs and after it stopped.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use crate::runtime::shim::{EXITED, STARTED};

/// What to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Service ports and how many backends each has.
    Services,
    /// One row per backend of each service port.
    Backends,
    /// The node's pods.
    Pods,
    /// The containers of the node's pods (the current attempt of each).
    Containers,
    /// The node's images.
    Images,
}

/// `skiff-agent inspect` flags.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// What to list.
    #[arg(value_enum)]
    pub what: What,
    /// The agent's data directory.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    pub data_dir: PathBuf,
    /// The agent's `--cgroup-root`.
    #[arg(long, default_value = "skiff")]
    pub cgroup_root: String,
    /// Only this namespace's pods and containers.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// Rows under a header, in columns three spaces apart, as kubectl prints them.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(w - cell.chars().count() + 3));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn pid_alive(pid: i64) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// One container's current attempt, as its directory tells.
struct Container {
    name: String,
    attempt: u32,
    id: String,
    state: String,
    pid: Option<i64>,
}

fn containers_of(pod_dir: &Path) -> Vec<Container> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(pod_dir.join("containers")) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(attempt) = std::fs::read_dir(e.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|a| a.file_name().to_string_lossy().parse::<u32>().ok())
            .max()
        else {
            continue;
        };
        let dir = e.path().join(attempt.to_string());
        let id = std::fs::read_to_string(dir.join("id"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let started = read_json(&dir.join("status").join(STARTED));
        let exited = read_json(&dir.join("status").join(EXITED));
        let pid = started.as_ref().and_then(|s| s["pid"].as_i64());
        let state = match (&started, &exited) {
            (_, Some(x)) => match x["oomKilled"].as_bool() {
                Some(true) => "Exited (OOMKilled)".to_owned(),
                _ => format!("Exited ({})", x["exitCode"].as_i64().unwrap_or(-1)),
            },
            (Some(_), None) if pid.is_some_and(pid_alive) => "Running".to_owned(),
            (Some(_), None) => "Unknown".to_owned(),
            (None, None) => "Created".to_owned(),
        };
        out.push(Container {
            name,
            attempt,
            id,
            state,
            pid: pid.filter(|_| exited.is_none()),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The node's pods: `(uid, pod.json, directory)`, by namespace and name.
fn pods(data_dir: &Path, namespace: Option<&str>) -> Vec<(String, Value, PathBuf)> {
    let mut out: Vec<(String, Value, PathBuf)> = std::fs::read_dir(data_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pod = read_json(&e.path().join("pod.json"))?;
            Some((e.file_name().to_string_lossy().into_owned(), pod, e.path()))
        })
        .filter(|(_, pod, _)| namespace.is_none_or(|ns| pod["metadata"]["namespace"] == ns))
        .collect();
    let key = |p: &Value| {
        (
            p["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            p["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        )
    };
    out.sort_by_key(|(_, p, _)| key(p));
    out
}

fn meta<'a>(pod: &'a Value, field: &str) -> &'a str {
    pod["metadata"][field].as_str().unwrap_or_default()
}

/// The table for `args`.
pub fn render(args: &InspectArgs) -> anyhow::Result<String> {
    let dir = &args.data_dir;
    anyhow::ensure!(
        dir.is_dir(),
        "no agent data directory at {} (--data-dir)",
        dir.display()
    );
    let ns = args.namespace.as_deref();
    match args.what {
        What::Services | What::Backends => {
            let path = dir.join(crate::proxy::RECORD);
            let record = read_json(&path).with_context(|| {
                format!(
                    "no record of programmed services at {} (is the service proxy on?)",
                    path.display()
                )
            })?;
            let ports: Vec<crate::proxy::Programmed> =
                serde_json::from_value(record["services"].clone()).context("reading the record")?;
            let mode = record["mode"].as_str().unwrap_or_default();
            if args.what == What::Services {
                let rows: Vec<Vec<String>> = ports
                    .iter()
                    .map(|p| {
                        let mut flags = Vec::new();
                        if p.external {
                            flags.push("external".to_owned());
                        }
                        if p.masquerade {
                            flags.push("masquerade".to_owned());
                        }
                        if p.affinity_timeout > 0 {
                            flags.push(format!("affinity={}s", p.affinity_timeout));
                        }
                        vec![
                            p.service.clone(),
                            p.address.clone(),
                            p.backends.len().to_string(),
                            mode.to_owned(),
                            if flags.is_empty() {
                                "<none>".into()
                            } else {
                                flags.join(",")
                            },
                        ]
                    })
                    .collect();
                return Ok(table(&["SERVICE", "ADDRESS", "BACKENDS", "MODE", "FLAGS"], &rows));
            }
            let rows: Vec<Vec<String>> = ports
                .iter()
                .flat_map(|p| {
                    p.backends.iter().enumerate().map(|(slot, b)| {
                        vec![p.service.clone(), p.address.clone(), slot.to_string(), b.clone()]
                    })
                })
                .collect();
            Ok(table(&["SERVICE", "ADDRESS", "SLOT", "BACKEND"], &rows))
        }
        What::Pods => {
            let rows: Vec<Vec<String>> = pods(dir, ns)
                .into_iter()
                .map(|(uid, pod, pod_dir)| {
                    let containers = containers_of(&pod_dir);
                    let running = containers.iter().filter(|c| c.state == "Running").count();
                    let restarts: u32 = containers.iter().map(|c| c.attempt).sum();
                    let ip = std::fs::read_to_string(pod_dir.join("ip")).unwrap_or_default();
                    vec![
                        meta(&pod, "namespace").to_owned(),
                        meta(&pod, "name").to_owned(),
                        format!("{running}/{}", containers.len()),
                        restarts.to_string(),
                        if ip.trim().is_empty() {
                            "<none>".into()
                        } else {
                            ip.trim().to_owned()
                        },
                        uid,
                    ]
                })
                .collect();
            Ok(table(
                &["NAMESPACE", "NAME", "RUNNING", "RESTARTS", "IP", "UID"],
                &rows,
            ))
        }
        What::Containers => {
            let mut rows = Vec::new();
            for (uid, pod, pod_dir) in pods(dir, ns) {
                let logs = dir.join("logs").join(format!(
                    "{}_{}_{uid}",
                    meta(&pod, "namespace"),
                    meta(&pod, "name")
                ));
                for c in containers_of(&pod_dir) {
                    rows.push(vec![
                        format!("{}/{}", meta(&pod, "namespace"), meta(&pod, "name")),
                        c.name.clone(),
                        c.state,
                        c.attempt.to_string(),
                        c.pid.map_or("-".into(), |p| p.to_string()),
                        format!("/{}/pod{uid}/{}", args.cgroup_root, c.id),
                        logs.join(&c.name)
                            .join(format!("{}.log", c.attempt))
                            .display()
                            .to_string(),
                    ]);
                }
            }
            Ok(table(
                &["POD", "CONTAINER", "STATE", "RESTARTS", "PID", "CGROUP", "LOG"],
                &rows,
            ))
        }
        What::Images => {
            let store = crate::image::ImageStore::open(dir)?;
            let rows: Vec<Vec<String>> = store
                .names()?
                .into_iter()
                .filter(|(name, _)| !name.starts_with('@'))
                .map(|(name, digest)| {
                    let (repo, tag) = match name.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                        Some((r, t)) => (r.to_owned(), t.to_owned()),
                        None => (name.clone(), "<none>".to_owned()),
                    };
                    vec![repo, tag, digest]
                })
                .collect();
            Ok(table(&["IMAGE", "TAG", "DIGEST"], &rows))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up_as_kubectl_prints_them() {
        let t = table(
            &["NAME", "STATE"],
            &[
                vec!["a".into(), "Running".into()],
                vec!["longer-name".into(), "Exited (0)".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          STATE\na             Running\nlonger-name   Exited (0)\n"
        );
    }

    #[test]
    fn containers_are_read_from_their_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let attempt = |name: &str, n: u32, started: Option<&str>, exited: Option<&str>| {
            let d = dir.path().join("containers").join(name).join(n.to_string());
            std::fs::create_dir_all(d.join("status")).unwrap();
            std::fs::write(d.join("id"), format!("{name}-{n}")).unwrap();
            if let Some(s) = started {
                std::fs::write(d.join("status").join(STARTED), s).unwrap();
            }
            if let Some(x) = exited {
                std::fs::write(d.join("status").join(EXITED), x).unwrap();
            }
        };
        let me = std::process::id();
        attempt("app", 0, Some(r#"{"pid": 1}"#), Some(r#"{"exitCode": 1}"#));
        attempt("app", 1, Some(&format!(r#"{{"pid": {me}}}"#)), None);
        attempt(
            "job",
            0,
            Some(r#"{"pid": 1}"#),
            Some(r#"{"exitCode": 137, "oomKilled": true}"#),
        );
        let cs = containers_of(dir.path());
        let shown: Vec<(String, u32, String, Option<i64>)> = cs
            .into_iter()
            .map(|c| (c.name, c.attempt, c.state, c.pid))
            .collect();
        assert_eq!(
            shown,
            [
                ("app".into(), 1, "Running".into(), Some(i64::from(me))),
                ("job".into(), 0, "Exited (OOMKilled)".into(), None)
            ]
        );
    }
}
