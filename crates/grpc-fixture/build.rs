//! Compiles the fixture's protos with protox (no protoc on the machine) and generates the
//! tonic server and client. The descriptor set is kept too: the transcoding tests hand
//! it to the gateway.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/library/v1/library.proto",
        "proto/grpc/health/v1/health.proto",
    ];
    for proto in protos.iter().chain(&[
        "proto/google/api/annotations.proto",
        "proto/google/api/http.proto",
    ]) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
