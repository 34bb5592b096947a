//! Generates the gRPC API's messages, server and client from
//! `src/grpc/tether.proto` with protox (a protobuf compiler in Rust), so
//! a build needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "src/grpc/tether.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let files = protox::compile([PROTO], ["src/grpc"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Payloads as `bytes::Bytes`: a message's payload is shared, not copied.
        .bytes(".tether.v1")
        .compile_fds(files)?;
    Ok(())
}
