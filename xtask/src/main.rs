//! `cargo xtask`: Skiff's build, bring-up and test tooling.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod bench;
mod proto_schema;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build and start a single-node cluster on this host (control plane with its embedded store)
    /// and write an admin kubeconfig.
    Up {
        /// Directory for the control plane's state.
        #[arg(long, default_value = "/var/lib/skiff/control")]
        data_dir: PathBuf,
        /// Kubernetes API address.
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: String,
        /// Build without optimisations (faster to build, slower to run).
        #[arg(long)]
        debug: bool,
    },
    /// Run a benchmark and record it in docs/benchmarks.md (`api`: store and API server;
    /// `scheduler`: pods/s and latency onto 1,000 and 5,000 nodes).
    Bench {
        /// Which benchmark.
        #[arg(value_parser = ["api", "scheduler"])]
        which: String,
    },
    /// Regenerate control/src/api/protobuf/schema.rs from the k8s-pb crate's sources.
    GenProtoSchema {
        /// The k8s-pb 0.9.0 source directory (default: found in the cargo registry).
        #[arg(long)]
        k8s_pb: Option<PathBuf>,
    },
    /// Run every check CI runs: formatting, clippy, unit and end-to-end tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn up(data_dir: &Path, listen: &str, debug: bool) -> anyhow::Result<()> {
    let mut build = cargo();
    build.args(["build", "-p", "skiff-control"]);
    if !debug {
        build.arg("--release");
    }
    run(&mut build)?;
    let bin = root()
        .join("target")
        .join(if debug { "debug" } else { "release" })
        .join("skiff-control");
    eprintln!(
        "starting skiff-control; when it is serving:\n  export KUBECONFIG={}\n  kubectl get namespaces",
        data_dir.join("admin.kubeconfig").display()
    );
    let err = exec(
        Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen),
    );
    Err(err).context("starting skiff-control")
}

#[cfg(unix)]
fn exec(cmd: &mut Command) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    cmd.exec()
}

fn test(args: &[String]) -> anyhow::Result<()> {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        bail!("kubectl is not installed: apt-get install kubernetes-client (or put kubectl on PATH)");
    }
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The end-to-end suites drive the real binaries; build them first.
    run(cargo().args(["build", "-p", "skiff-control", "-p", "skiff-agent"]))?;
    run(cargo().args(["test", "--workspace"]).args(args))
}

fn main() {
    // One line on failure, whatever RUST_BACKTRACE says.
    if let Err(e) = dispatch() {
        eprintln!("cargo xtask: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Up {
            data_dir,
            listen,
            debug,
        } => up(&data_dir, &listen, debug),
        Cmd::Test { args } => test(&args),
        Cmd::Bench { which } => match which.as_str() {
            "api" => bench::api(&root(), cargo),
            "scheduler" => bench::scheduler(&root(), cargo),
            other => bail!("unknown benchmark {other}"),
        },
        Cmd::GenProtoSchema { k8s_pb } => {
            let out = root().join("control/src/api/protobuf/schema.rs");
            proto_schema::generate(k8s_pb.as_deref(), &out)?;
            run(cargo().args(["fmt", "-p", "skiff-control"]))
        }
    }
}
