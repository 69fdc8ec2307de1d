//! Compiles `lockstep/v1/*.proto` with protox (no system protoc needed) and
//! writes the descriptor set to OUT_DIR so the servers can offer reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "lockstep/v1/common.proto",
        "lockstep/v1/host_session.proto",
        "lockstep/v1/admin.proto",
        "lockstep/v1/ingest.proto",
        "lockstep/v1/raft.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("lockstep_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
