//! Compiles `proto/` with protox (a pure-Rust protobuf compiler, so no `protoc` is needed on
//! the build machine) and generates prost messages and tonic services into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/skein/proxy/v1/proxy.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Shared, reference-counted config bytes: one encoding serves many proxies.
        .bytes(".skein.proxy.v1.DiscoveryResponse.config")
        .compile_fds(fds)?;
    Ok(())
}
