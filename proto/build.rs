//! Generates the gRPC code from `proto/*.proto` with a vendored `protoc`, so a build needs no
//! system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            config,
            &[
                "proto/signer.proto",
                "proto/core.proto",
                "proto/errors.proto",
                "proto/admin.proto",
                "proto/acme.proto",
                "proto/cmp.proto",
                "proto/scep.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
