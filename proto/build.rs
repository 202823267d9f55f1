//! Generates the gRPC code from `proto/*.proto` with protox, a pure-Rust protobuf
//! compiler, because the build machines have no `protoc`.

use std::path::PathBuf;

const PROTOS: &[&str] = &["global_master.proto", "bridge.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let files: Vec<PathBuf> = PROTOS.iter().map(|name| include.join(name)).collect();

    // compile_fds never sees the file paths, so it cannot print these itself; without
    // them cargo would rerun this script on every change anywhere in the package.
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [&include])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
