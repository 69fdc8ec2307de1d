//! Compiles the journal's on-disk record bodies (proto/lockstep/journal/v1).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "../proto/lockstep/journal/v1/journal.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["../proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
