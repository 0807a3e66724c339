//! Generates the gRPC code from `proto/carry/v1/*.proto`. Uses `$PROTOC` when set,
//! otherwise the vendored protoc, so no system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &[
                "proto/carry/v1/coordinator.proto",
                "proto/carry/v1/predictor.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=proto/carry/v1/coordinator.proto");
    println!("cargo:rerun-if-changed=proto/carry/v1/predictor.proto");
    Ok(())
}
