//! Generates the tonic/prost code for Skiff's `.proto` contracts.

#[expect(unsafe_code, reason = "set_var in a single-threaded build script cannot race")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps a fresh machine free of extra system packages.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts run single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // Skiff's own contracts, with their descriptors kept for the compatibility test (`compat.rs`).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("skiff_descriptors.bin"))
        .compile_protos(
            &["proto/raft.proto", "proto/node.proto", "proto/health.proto"],
            &["proto"],
        )?;
    // etcd's v3 API, which the store serves for etcdctl: server side only.
    tonic_prost_build::configure()
        .build_client(false)
        .generate_default_stubs(true)
        .compile_protos(&["proto/etcd/rpc.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
