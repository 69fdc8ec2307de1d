//! Compiles the etcd v3 API subset (`proto/etcd_kv_subset.proto`) that
//! `lockstep-bench etcd` uses as its baseline client; protox, so no system
//! protoc, as in `proto/build.rs`. Client stubs only: nothing here serves it.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/etcd_kv_subset.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile(["etcd_kv_subset.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(fds)?;
    Ok(())
}
