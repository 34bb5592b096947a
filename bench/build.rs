//! The gRPC client of `tether-grpc-load`, generated from the gateway's
//! `src/grpc/tether.proto` with protox (no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "../src/grpc/tether.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let files = protox::compile([PROTO], ["../src/grpc"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .bytes(".tether.v1")
        .compile_fds(files)?;
    Ok(())
}
