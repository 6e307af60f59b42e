//! Compiles the .proto files without a system protoc (protox).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/herd/v1/herd.proto",
        "proto/herd/v1/raft.proto",
        "proto/prometheus/remote.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
