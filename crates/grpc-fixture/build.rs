//! Compiles the fixture's protos with protox (no protoc on the machine) and generates the
//! tonic server and client. The descriptor set is kept too: the transcoding tests hand
//! it to the gateway.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/library/v1/library.proto",
        "proto/grpc/health/v1/health.proto",
        // Error details the library sends, as in the gateway's built-in copy.
        "google/rpc/error_details.proto",
        "google/rpc/status.proto",
    ];
    // google/api and google/rpc come from the gateway's own copies, which it builds in.
    let includes = ["proto", "../proxy/proto"];
    for include in includes {
        println!("cargo:rerun-if-changed={include}");
    }
    let mut compiler = protox::Compiler::new(includes)?;
    compiler.include_imports(true);
    compiler.open_files(protos)?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Encoded from the compiler, not from prost-types: that keeps the method options'
    // google.api.http extensions, as `protoc --descriptor_set_out` does.
    std::fs::write(
        out.join("descriptors.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
