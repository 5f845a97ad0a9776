//! The pure cgroup v2 run: end-to-end suites again, inside a small QEMU machine whose only cgroup
//! hierarchy is cgroup2 with every controller, the way production nodes run. Hosts we test on may be
//! hybrid (v1 controllers, a controller-less cgroup2), and a host's hierarchies are never remounted,
//! so the machine brings its own kernel: Debian's current `linux-image-amd64` (Linux 6.1 on Debian
//! 12), unpacked, not installed. Its root is the host's, read-only through 9p under a tmpfs overlay,
//! so the suites run the binaries this build made and nothing the guest writes reaches the host.
//! QEMU emulates the CPU (TCG): nested KVM is not available on every CI machine.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;

/// The first stage (initramfs `/init`) and the second (run as the guest's init on the host's root).
const INIT: &str = include_str!("../vm/init.sh");
const STAGE2: &str = include_str!("../vm/stage2.sh");
/// Module directories the first stage needs before the host's root is mounted.
const EARLY_MODULES: [&str; 6] = [
    "fs/9p",
    "net/9p",
    "fs/netfs",
    "fs/fscache",
    "fs/overlayfs",
    "drivers/virtio",
];
/// The whole guest run, suites included, is stopped after this.
const DEADLINE: Duration = Duration::from_secs(40 * 60);

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The unpacked kernel under `dir`: its image and version, when it is there and indexed.
fn unpacked_kernel(dir: &Path) -> Option<(PathBuf, String)> {
    let boot = std::fs::read_dir(dir.join("boot")).ok()?;
    boot.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let version = name.strip_prefix("vmlinuz-")?.to_owned();
        dir.join("lib/modules")
            .join(&version)
            .join("modules.dep")
            .exists()
            .then(|| (e.path(), version))
    })
}

/// Downloads the package that `linux-image-amd64` points at into `dir`; returns its name.
fn download_kernel(dir: &Path) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("running apt-cache (the guest kernel comes from Debian's packages)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .context("apt knows no linux-image-amd64")?
        .to_owned();
    run(Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(dir))?;
    Ok(package)
}

/// Downloads Debian's current kernel package into `dir` and unpacks it there (once).
fn kernel(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let unpacked = dir.join("kernel");
    if let Some(found) = unpacked_kernel(&unpacked) {
        return Ok(found);
    }
    std::fs::create_dir_all(dir)?;
    // With stale package lists the named version may be gone from the mirror: refresh once.
    let package = match download_kernel(dir) {
        Ok(p) => p,
        Err(_) => {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            download_kernel(dir)?
        }
    };
    let deb = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with(&package) && n.to_string_lossy().ends_with(".deb")
            })
        })
        .context("apt-get download left no package")?;
    let _ = std::fs::remove_dir_all(&unpacked);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::remove_file(&deb)?;
    let boot = std::fs::read_dir(unpacked.join("boot"))?;
    let version = boot
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-").map(str::to_owned)
        })
        .context("the kernel package holds no vmlinuz")?;
    run(Command::new("busybox")
        .args(["depmod", "-b"])
        .arg(&unpacked)
        .arg(&version))?;
    unpacked_kernel(&unpacked).context("the unpacked kernel has no module index")
}

/// Builds the initramfs (busybox, the early modules, both stages) for kernel `version`.
fn initramfs(dir: &Path, modules: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "lower", "upper", "newroot"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    // Debian's busybox-static: it runs before any library is reachable.
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .context("copying /bin/busybox (package busybox-static)")?;
    let target = tree.join("lib/modules").join(version).join("kernel");
    for m in EARLY_MODULES {
        let to = target.join(m);
        std::fs::create_dir_all(&to)?;
        run(Command::new("cp")
            .arg("-r")
            .arg(modules.join(version).join("kernel").join(m).join("."))
            .arg(&to))?;
    }
    run(Command::new("busybox")
        .args(["depmod", "-b"])
        .arg(&tree)
        .arg(version))?;
    for (name, text) in [("init", INIT), ("stage2.sh", STAGE2)] {
        std::fs::write(tree.join(name), text)?;
    }
    run(Command::new("chmod").arg("+x").arg(tree.join("init")))?;
    let image = dir.join("initramfs.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg(r#"cd "$1" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$2""#)
        .arg("sh")
        .arg(&tree)
        .arg(&image))?;
    Ok(image)
}

/// Runs `script` (bash, in `workdir`) in the machine; its output goes to ours. Fails unless it
/// exits 0.
pub fn run_in_vm(root: &Path, workdir: &Path, script: &str) -> anyhow::Result<()> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86");
    }
    let dir = root.join("target/vm");
    let (vmlinuz, version) = kernel(&dir)?;
    let modules = dir.join("kernel/lib/modules");
    let initrd = initramfs(&dir, &modules, &version)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let append = format!(
        "console=ttyS0 panic=-1 quiet skiffdir={} skiffcmd={}",
        b64(&workdir.to_string_lossy()),
        b64(script)
    );
    // A guest that hangs with a soft lockup (seen once in about ten runs, with both virtual CPUs
    // stuck in the kernel under TCG) is stopped at once and booted again, once; the message says so.
    for attempt in 1..=2 {
        match boot(&version, &vmlinuz, &initrd, &append, &modules)? {
            Boot::Exited(0) => return Ok(()),
            Boot::Exited(code) => bail!("the suites in the cgroup v2 machine failed (exit status {code})"),
            Boot::Lockup if attempt == 1 => {
                eprintln!("cargo xtask: the cgroup v2 machine hung (soft lockup); booting it again, once");
            }
            Boot::Lockup => bail!("the cgroup v2 machine hung (soft lockup) twice"),
            Boot::OutOfTime => bail!("the cgroup v2 machine ran out of time"),
            Boot::Stopped => bail!("the cgroup v2 machine stopped before its suites ended"),
        }
    }
    unreachable!("the loop returns or fails by its second attempt")
}

/// How one boot of the machine ended.
enum Boot {
    /// The suites ended with this status.
    Exited(i32),
    /// The guest kernel reported a soft lockup, and the machine was stopped.
    Lockup,
    /// The deadline stopped it.
    OutOfTime,
    /// It ended without a status.
    Stopped,
}

/// Boots the machine once; its console goes to our output.
fn boot(version: &str, vmlinuz: &Path, initrd: &Path, append: &str, modules: &Path) -> anyhow::Result<Boot> {
    eprintln!("+ the cgroup v2 machine (Linux {version}, QEMU TCG)");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "8192",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-net",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=modules,security_model=passthrough,readonly=on",
            modules.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().context("qemu's console")?;
    let started = Instant::now();
    let pid = qemu.id();
    // A watchdog: the machine is stopped at the deadline, which ends the console below.
    std::thread::spawn(move || {
        while started.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_secs(5));
        }
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let mut exit = None;
    let mut lockup = false;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(code) = line.trim().strip_prefix("SKIFF-VM-EXIT=") {
            exit = code.parse::<i32>().ok();
        }
        if line.contains("BUG: soft lockup") && !lockup {
            lockup = true;
            let _ = qemu.kill();
        }
    }
    let _ = qemu.wait();
    Ok(match exit {
        Some(code) => Boot::Exited(code),
        None if lockup => Boot::Lockup,
        None if started.elapsed() >= DEADLINE => Boot::OutOfTime,
        None => Boot::Stopped,
    })
}
