//! Generates the tonic/prost code for Skiff's `.proto` contracts.

#[expect(unsafe_code, reason = "set_var in a single-threaded build script cannot race")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps a fresh machine free of extra system packages.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts run single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(
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
