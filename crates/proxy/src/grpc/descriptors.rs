//! Protobuf descriptors for transcoding: `.proto` files compiled when the configuration
//! loads (protox: no `protoc`), or a compiled `FileDescriptorSet`. The `google/api` HTTP
//! annotations and the `google/rpc` error model are built in, so users bring only their
//! own files, and every pool can render `google.rpc.Status` details.

use std::path::Path;

use prost_reflect::DescriptorPool;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

/// The files built into the gateway, by import name.
const BUILT_IN: [(&str, &str); 4] = [
    (
        "google/api/annotations.proto",
        include_str!("../../proto/google/api/annotations.proto"),
    ),
    (
        "google/api/http.proto",
        include_str!("../../proto/google/api/http.proto"),
    ),
    (
        "google/rpc/status.proto",
        include_str!("../../proto/google/rpc/status.proto"),
    ),
    (
        "google/rpc/error_details.proto",
        include_str!("../../proto/google/rpc/error_details.proto"),
    ),
];

/// Always part of a pool: the error model that error bodies are rendered with.
const ERROR_MODEL: [&str; 2] = ["google/rpc/status.proto", "google/rpc/error_details.proto"];

struct BuiltIn;

impl FileResolver for BuiltIn {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match BUILT_IN.iter().find(|(built_in, _)| *built_in == name) {
            Some((name, source)) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compiles `files` (import names, found under `include_paths`; user files shadow the
/// built-in ones) with their imports and the error model.
pub fn compile(files: &[&str], include_paths: &[&Path]) -> Result<DescriptorPool, String> {
    let mut resolver = ChainFileResolver::new();
    for include in include_paths {
        resolver.add(IncludeFileResolver::new(include.to_path_buf()));
    }
    resolver.add(BuiltIn);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    for file in files.iter().copied().chain(ERROR_MODEL) {
        compiler.open_file(file).map_err(|err| describe(&err))?;
    }
    Ok(compiler.descriptor_pool())
}

/// Reads a compiled `FileDescriptorSet` and adds the error model when it lacks it.
pub fn load_descriptor_set(path: &Path) -> Result<DescriptorPool, String> {
    let bytes =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let mut pool = DescriptorPool::decode(bytes.as_slice())
        .map_err(|err| format!("{} is not a FileDescriptorSet: {err}", path.display()))?;
    if pool.get_message_by_name("google.rpc.Status").is_none() {
        let model = compile(&[], &[])?;
        let missing: Vec<_> = model
            .files()
            .filter(|file| pool.get_file_by_name(file.name()).is_none())
            .map(|file| file.file_descriptor_proto().clone())
            .collect();
        pool.add_file_descriptor_protos(missing)
            .map_err(|err| format!("{}: {err}", path.display()))?;
    }
    Ok(pool)
}

/// A protox error as `FILE:LINE:COLUMN: message` when it points into a file.
fn describe(err: &protox::Error) -> String {
    use miette::Diagnostic;
    let position = err
        .labels()
        .and_then(|mut labels| labels.next())
        .and_then(|label| {
            let source = err.source_code()?;
            let contents = source.read_span(label.inner(), 0, 0).ok()?;
            Some((contents.line() + 1, contents.column() + 1))
        });
    match (err.file(), position) {
        (Some(file), Some((line, column))) => format!("{file}:{line}:{column}: {err}"),
        (Some(file), None) if !err.to_string().contains(file) => format!("{file}: {err}"),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_model_and_http_annotations_are_built_in() {
        let pool = compile(&["google/api/annotations.proto"], &[]).unwrap();
        assert!(pool.get_message_by_name("google.rpc.Status").is_some());
        assert!(pool.get_message_by_name("google.rpc.ErrorInfo").is_some());
        assert!(pool.get_extension_by_name("google.api.http").is_some());
    }

    #[test]
    fn syntax_errors_point_into_the_proto_file() {
        let dir = std::env::temp_dir().join(format!("gatehouse-protos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("broken.proto"),
            "syntax = \"proto3\";\nmessage Broken {\n  string name = ;\n}\n",
        )
        .unwrap();
        let err = compile(&["broken.proto"], &[&dir]).unwrap_err();
        assert!(err.starts_with("broken.proto:3:17: "), "{err}");
        let missing = compile(&["missing.proto"], &[&dir]).unwrap_err();
        assert!(missing.contains("missing.proto"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
