//! Embeds the eBPF object built by `cargo xtask build-ebpf` (agent-ebpf/). Without it the agent still
//! builds, and its eBPF proxy mode reports that the object is missing.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = std::env::var_os("SKIFF_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/ebpf/bpfel-unknown-none/release/skiff-ebpf"));
    // A position-dependent executable, as Debian's containerd, its shims and runc are: the agent
    // runs again as every container's shim, and a PIE's load-time relocations dirty its
    // read-only-after-relocation data (about 0.9 MiB) privately in each of those processes.
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-env-changed=SKIFF_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("skiff-ebpf.o");
    match std::fs::read(&object) {
        Ok(bytes) => std::fs::write(&out, bytes).expect("writing OUT_DIR/skiff-ebpf.o"),
        Err(_) => {
            println!(
                "cargo:warning=no eBPF object at {} (run `cargo xtask build-ebpf`): the agent will offer the nftables proxy only",
                object.display()
            );
            std::fs::write(&out, b"").expect("writing OUT_DIR/skiff-ebpf.o");
        }
    }
}
