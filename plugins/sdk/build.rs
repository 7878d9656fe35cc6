//! Generates prost messages (no gRPC services) for the protos a protocol plugin reads and
//! writes, from the host's `proto/` tree, with protox (pure Rust, no system `protoc`).

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "wfa/measurement/system/v1alpha/computation.proto",
    "wfa/measurement/system/v1alpha/computation_participant.proto",
    "wfa/measurement/system/v1alpha/computation_stage.proto",
    "wfa/measurement/api/v2alpha/requisition_fulfillment_service.proto",
    // Also defines services; prost-build ignores them without a service generator.
    "halo/v1/admin.proto",
    "halo/v1/signed.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    for p in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
