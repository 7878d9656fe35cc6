//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`) and generates prost
//! messages plus tonic clients and servers.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "wfa/measurement/system/v1alpha/computations_service.proto",
    "wfa/measurement/system/v1alpha/computation_participants_service.proto",
    "wfa/measurement/system/v1alpha/computation_log_entries_service.proto",
    "wfa/measurement/system/v1alpha/requisitions_service.proto",
    "wfa/measurement/system/v1alpha/computation_control_service.proto",
    "wfa/measurement/api/v2alpha/requisition_fulfillment_service.proto",
    "halo/v1/admin.proto",
    "halo/v1/signed.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for p in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wfa").display());
    println!("cargo:rerun-if-changed={}", root.join("halo").display());
    let fds = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
