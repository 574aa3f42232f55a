//! The gRPC part of the model: protobuf descriptors the gateway loads (top-level `protos`)
//! and HTTP/JSON to gRPC transcoding on routes (`routes[].grpc_transcode`). Documented in
//! `docs/grpc.md`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::units::ByteSize;

/// Protobuf descriptors, from `.proto` files compiled when the configuration loads (no
/// `protoc` needed) or from a compiled `FileDescriptorSet`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtoSource {
    /// `.proto` files, named as they are imported (relative to an include path).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub files: Vec<Spanned<String>>,
    /// Directories searched for `files` and their imports; relative paths are taken from
    /// the configuration's directory. `google/protobuf/*`, `google/api/annotations.proto`,
    /// `google/api/http.proto`, `google/rpc/status.proto` and
    /// `google/rpc/error_details.proto` are built in.
    #[serde(default)]
    pub include_paths: Vec<String>,
    /// A compiled descriptor set instead of `files` (`protoc --include_imports
    /// --descriptor_set_out=FILE`, or `buf build -o FILE`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub descriptor_set: Option<Spanned<String>>,
}

/// HTTP/JSON to gRPC transcoding on a route, driven by the `google.api.http` annotations
/// of the methods (the semantics of Envoy's gRPC-JSON transcoder).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcTranscodeConfig {
    /// Name of an entry of the top-level `protos`.
    #[schemars(with = "String")]
    pub protos: Spanned<String>,
    /// Fully qualified services whose annotated methods the route serves; empty: every
    /// service in the descriptors.
    #[serde(default)]
    pub services: Vec<String>,
    /// Write fields that hold their default value (`0`, `""`, `false`, empty lists) instead
    /// of leaving them out.
    #[serde(default)]
    pub emit_defaults: bool,
    /// Name fields as in the `.proto` (`page_count`) instead of lowerCamelCase
    /// (`pageCount`). Requests accept both either way.
    #[serde(default)]
    pub proto_field_names: bool,
    /// Write enum values as numbers instead of names.
    #[serde(default)]
    pub enums_as_numbers: bool,
    /// Leave out query parameters that name no field, instead of answering 400.
    #[serde(default)]
    pub ignore_unknown_query_parameters: bool,
    /// How a server-streaming method's messages are written.
    #[serde(default)]
    pub streaming: StreamFormat,
    /// Largest JSON request body and unary response read.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

/// Framing of a server-streaming method's messages in the HTTP response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// One JSON object per line (`application/x-ndjson`); an error after the first message
    /// is a last line `{"error": <google.rpc.Status>}`.
    #[default]
    Ndjson,
    /// Server-sent events (`text/event-stream`): each message a `data:` event; an error an
    /// `event: error`.
    Sse,
}

fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
