//! `cargo xtask`: Skiff's build, bring-up and test tooling.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod bench;
mod clean_host;
mod ebpf;
mod fuzz;
mod peers;
mod previous;
mod proto_schema;
mod python_client;
mod vm;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build and start a single-node cluster on this host (control plane with its embedded store,
    /// and a node agent running pods here) and write an admin kubeconfig.
    Up {
        /// Directory for the control plane's state.
        #[arg(long, default_value = "/var/lib/skiff/control")]
        data_dir: PathBuf,
        /// Directory for the node agent's state (images, pods, logs).
        #[arg(long, default_value = "/var/lib/skiff/agent")]
        agent_data_dir: PathBuf,
        /// Start the control plane only.
        #[arg(long)]
        no_agent: bool,
        /// Kubernetes API address.
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: String,
        /// Build without optimisations (faster to build, slower to run).
        #[arg(long)]
        debug: bool,
    },
    /// Run a benchmark and record it in docs/benchmarks.md (`api`: store and API server; `store`:
    /// the store and etcd 3.4 through etcd's API, 1 and 3 members, and a leader kill;
    /// `scheduler`: pods/s and latency onto 1,000 and 5,000 nodes; `pods`: a real node; `proxy`:
    /// the service data planes side by side; `peers`: Skiff beside the real upstream components,
    /// built here from Debian's Kubernetes 1.20 source).
    Bench {
        /// Which benchmark.
        #[arg(value_parser = ["api", "store", "scheduler", "pods", "proxy", "peers"])]
        which: String,
        /// `peers` only: run one part and rewrite its table alone.
        #[arg(long, value_parser = ["api", "scheduler", "node", "proxy"])]
        only: Option<String>,
    },
    /// Regenerate control/src/objects/schema/table.rs from the k8s-pb crate's sources.
    GenProtoSchema {
        /// The k8s-pb 0.9.0 source directory (default: found in the cargo registry).
        #[arg(long)]
        k8s_pb: Option<PathBuf>,
    },
    /// Build the eBPF programs (agent-ebpf/) that the agent embeds; installs nightly's rust-src and
    /// bpf-linker first when missing.
    BuildEbpf,
    /// Fuzz the API server's decoders and patches (fuzz/, cargo-fuzz on nightly), each target for
    /// a bounded time from the corpora in fuzz/corpus/; `cargo xtask test` runs it for 20 s each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Remove what interrupted test runs left on this host (processes, mounts, bridges, cgroups,
    /// nftables tables named with the tests' `sk<hex>` prefix).
    CleanHost,
    /// Run every check CI runs: formatting, clippy, unit and end-to-end tests, then the pods and
    /// services suites again in a pure cgroup v2 machine (`test-vm`).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter); with them, the cgroup v2
        /// machine is skipped.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the pods and services suites in a pure cgroup v2 machine (QEMU with Debian's kernel;
    /// the binaries of the last `cargo xtask test` build).
    TestVm {
        /// A test name filter for both suites.
        filter: Option<String>,
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

/// Installs (as root) or names what this host lacks: `xtask/prerequisites.sh up|test`.
fn prerequisites(which: &str) -> anyhow::Result<()> {
    run(Command::new("bash").arg("xtask/prerequisites.sh").arg(which))
        .context("the host lacks what Skiff needs (xtask/prerequisites.sh says what)")
}

/// Says which step of `up` runs, so a first build's minutes are not silent.
fn step(n: u32, what: &str) {
    eprintln!("\n==> [{n}/5] {what}");
}

/// Whether a Skiff control plane with `kubeconfig` answers on the local `port`.
fn skiff_answers(kubeconfig: &Path) -> bool {
    kubeconfig.exists()
        && Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["get", "--raw", "/readyz", "--request-timeout=5s"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Waits until a node is Ready (or a process ends, or two minutes pass).
fn wait_for_a_ready_node(kubeconfig: &Path, control: &mut Child, agent: &mut Child) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = control.try_wait() {
            let _ = agent.kill();
            bail!("skiff-control exited with {status}");
        }
        if let Ok(Some(status)) = agent.try_wait() {
            let _ = control.kill();
            bail!("skiff-agent exited with {status}");
        }
        let ready = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "get",
                "nodes",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("True"));
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the node did not become Ready within 2 minutes (see the agent's log above)");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn up(data_dir: &Path, agent_dir: Option<&Path>, listen: &str, debug: bool) -> anyhow::Result<()> {
    let port = listen
        .rsplit_once(':')
        .map(|(_, p)| p)
        .unwrap_or("6443")
        .to_owned();
    let kubeconfig = data_dir.join("admin.kubeconfig");
    step(1, "checking this host's prerequisites");
    prerequisites("up")?;
    if std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok() {
        if skiff_answers(&kubeconfig) {
            eprintln!(
                "skiff is already running on this host (port {port}); nothing to start.\n  export KUBECONFIG={}\n  kubectl get nodes",
                kubeconfig.display()
            );
            return Ok(());
        }
        bail!(
            "port {port} is taken by a program that is not this host's Skiff (no answer with {}); stop it or pass --listen ADDR:PORT",
            kubeconfig.display()
        );
    }
    step(
        2,
        "building the eBPF programs (the first time installs nightly rust-src and bpf-linker)",
    );
    ebpf::build(&root())?;
    step(
        3,
        if debug {
            "building skiff-control and skiff-agent (debug)"
        } else {
            "building skiff-control and skiff-agent (release; a first build takes 10-20 minutes)"
        },
    );
    let mut build = cargo();
    build.args(["build", "-p", "skiff-control", "-p", "skiff-agent"]);
    if !debug {
        build.arg("--release");
    }
    run(&mut build)?;
    step(4, "starting the control plane");
    let bins = root()
        .join("target")
        .join(if debug { "debug" } else { "release" });
    let Some(agent_dir) = agent_dir else {
        eprintln!(
            "starting skiff-control; when it is serving:\n  export KUBECONFIG={}\n  kubectl get namespaces",
            data_dir.join("admin.kubeconfig").display()
        );
        let err = exec(
            Command::new(bins.join("skiff-control"))
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--listen")
                .arg(listen),
        );
        return Err(err).context("starting skiff-control");
    };
    let mut control = Command::new(bins.join("skiff-control"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(listen)
        .spawn()
        .context("starting skiff-control")?;
    let server = format!("https://127.0.0.1:{port}");
    // The control plane writes the node token and kubeconfig, then serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let token = loop {
        if let Ok(Some(status)) = control.try_wait() {
            bail!("skiff-control exited with {status}");
        }
        let serving = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok();
        if let (true, Ok(t)) = (serving, std::fs::read_to_string(data_dir.join("node-token"))) {
            break t.trim().to_owned();
        }
        if std::time::Instant::now() > deadline {
            let _ = control.kill();
            bail!("skiff-control did not start serving within 60s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    step(
        5,
        "starting this node's agent and waiting for the node to be Ready",
    );
    let mut agent = match Command::new(bins.join("skiff-agent"))
        .args(["--server", &server, "--token", &token])
        .arg("--data-dir")
        .arg(agent_dir)
        .spawn()
    {
        Ok(a) => a,
        Err(e) => {
            let _ = control.kill();
            return Err(e).context("starting skiff-agent");
        }
    };
    wait_for_a_ready_node(&kubeconfig, &mut control, &mut agent)?;
    eprintln!(
        "\nskiff is up: the control plane and this node's agent, the node Ready.\n  export KUBECONFIG={}\n  kubectl get nodes\nCtrl-C stops both (running pods keep running and are adopted at the next start).",
        kubeconfig.display()
    );
    loop {
        if let Ok(Some(status)) = control.try_wait() {
            let _ = agent.kill();
            bail!("skiff-control exited with {status}");
        }
        if let Ok(Some(status)) = agent.try_wait() {
            let _ = control.kill();
            bail!("skiff-agent exited with {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(unix)]
fn exec(cmd: &mut Command) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    cmd.exec()
}

fn test(args: &[String]) -> anyhow::Result<()> {
    prerequisites("test")?;
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        bail!("kubectl is not installed: apt-get install kubernetes-client (or put kubectl on PATH)");
    }
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["fmt", "--manifest-path", "agent-ebpf/Cargo.toml", "--", "--check"]))?;
    // The agent embeds the eBPF object; build it before clippy compiles the agent.
    ebpf::build(&root())?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The end-to-end suites drive the real binaries; build them first, the previous release's
    // agent (for the version-skew test) before this one's, whose binary lands at the same path.
    previous::agent(&root())?;
    run(cargo().args(["build", "-p", "skiff-control", "-p", "skiff-agent"]))?;
    python_client::ensure(&root())?;
    let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2 (unified)"
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "hybrid: cgroup v1 controllers, a controller-less cgroup2 at /sys/fs/cgroup/unified"
    } else {
        "cgroup v1"
    };
    eprintln!("+ the suites run on this host's cgroups: {cgroups}");
    run(cargo().args(["test", "--workspace"]).args(args))?;
    if args.is_empty() {
        fuzz::run(&root(), 20)?;
        test_vm(None)?;
    }
    Ok(())
}

/// The suites that run again in the cgroup v2 machine, with their test filters (a test runs when
/// its name contains one; none: all): the runtime where cgroup v2 and the older kernel change what
/// it does (cgroups, OOM kills, probes and restarts, exec after an upgrade, seccomp and
/// capabilities, user namespaces, cgroup stats for `kubectl top`, local storage limits) and both
/// service planes (eBPF hooks on cgroup2 and tc on a kernel without TCX; nftables with that
/// kernel). The pods suite's API-side tests (proxies, aggregation, the autoscaler's minutes of
/// scaling, ...) do not depend on the cgroup mode and run on the host only: under emulation they
/// took a third of the CI run.
const VM_SUITES: [(&str, &[&str]); 2] = [
    (
        "pods",
        &[
            "pods_run_log_restart_and_clean_up",
            "probes_flip_readiness",
            "exec_and_new_containers_outlive",
            "pods_are_confined",
            "host_users_false",
            "kubectl_top_shows",
            "outgrowing_their_local_storage",
        ],
    ),
    (
        "services",
        &["cluster_ip_balances", "dns_names_resolve", "udp_services"],
    ),
];

fn test_vm(filter: Option<&str>) -> anyhow::Result<()> {
    let out = cargo()
        .args(["test", "-p", "skiff-tests", "--no-run", "--message-format=json"])
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut script = String::from("rc=0\n");
    for (suite, default_filters) in VM_SUITES {
        let exe = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["reason"] == "compiler-artifact"
                    && v["target"]["name"] == suite
                    && v["target"]["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "test"))
            })
            .and_then(|v| v["executable"].as_str().map(str::to_owned))
            .with_context(|| format!("no test binary for the {suite} suite"))?;
        let filters = match filter {
            Some(f) => format!("'{f}'"),
            None => default_filters
                .iter()
                .map(|f| format!("'{f}'"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        script.push_str(&format!(
            "echo \"cgroup v2 machine: the {suite} suite\"\n'{exe}' {filters} --test-threads=2 || rc=1\n"
        ));
    }
    script.push_str("exit $rc\n");
    vm::run_in_vm(&root(), &root(), &script)
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
            agent_data_dir,
            no_agent,
            listen,
            debug,
        } => up(
            &data_dir,
            (!no_agent).then_some(agent_data_dir.as_path()),
            &listen,
            debug,
        ),
        Cmd::Test { args } => test(&args),
        Cmd::TestVm { filter } => test_vm(filter.as_deref()),
        Cmd::Fuzz { seconds } => fuzz::run(&root(), seconds),
        Cmd::CleanHost => clean_host::run(),
        Cmd::BuildEbpf => {
            let object = ebpf::build(&root())?;
            eprintln!("{}", object.display());
            Ok(())
        }
        Cmd::Bench { which, only } if which == "peers" => {
            prerequisites("peers")?;
            bench::peers(&root(), cargo, only.as_deref())
        }
        Cmd::Bench { only: Some(_), .. } => bail!("--only applies to `cargo xtask bench peers`"),
        Cmd::Bench { which, .. } => match prerequisites("bench").map(|()| which.as_str())? {
            "api" => bench::api(&root(), cargo),
            "store" => bench::store(&root(), cargo),
            "pods" => bench::pods(&root(), cargo),
            "scheduler" => bench::scheduler(&root(), cargo),
            "proxy" => bench::proxy(&root(), cargo),
            other => bail!("unknown benchmark {other}"),
        },
        Cmd::GenProtoSchema { k8s_pb } => {
            let out = root().join("control/src/objects/schema/table.rs");
            proto_schema::generate(k8s_pb.as_deref(), &out)?;
            run(cargo().args(["fmt", "-p", "skiff-control"]))
        }
    }
}
