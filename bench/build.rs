//! Generates the etcd v3 client the store benchmarks drive etcd and Skiff's store with.

#[expect(unsafe_code, reason = "set_var in a single-threaded build script cannot race")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts run single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // etcd's v3 API as the control plane vendors it (the client side: the harness drives etcd
    // and Skiff's store through it alike).
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["../proto/proto/etcd/rpc.proto"], &["../proto/proto"])?;
    println!("cargo:rerun-if-changed=../proto/proto/etcd");
    Ok(())
}
