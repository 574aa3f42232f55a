//! Compiles the control-plane API with protox (no protoc on the machine) and generates the
//! tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.open_files(["gatehouse/mesh/v1/mesh.proto"])?;
    // Ordered maps: a snapshot's encoding (and so its version digest) must not depend on
    // hash order.
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
