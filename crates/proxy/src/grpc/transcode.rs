//! HTTP/JSON to gRPC transcoding, with the semantics of Envoy's gRPC-JSON transcoder: each
//! annotated method's `google.api.http` rules (and `additional_bindings`) map an HTTP method
//! and path template to the method; path variables, the body (`*` or one field) and the
//! remaining query parameters fill the request message; the answer is written with the
//! canonical proto3 JSON mapping (well-known types, `int64` as strings, enums by name), a
//! non-OK status becomes the fitting HTTP status with the `google.rpc.Status` as the body,
//! and a server-streaming method's messages are written as NDJSON or server-sent events.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use gatehouse_config::{GrpcTranscodeConfig, StreamFormat};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, SerializeOptions, Value as ProtoValue,
};
use serde_json::{Map, Value};

use super::template::{Binding, PathTemplate};
use super::{take_message, Code, GRPC_MESSAGE, GRPC_STATUS, GRPC_STATUS_DETAILS};
use crate::body::{self, BoxError, ProxyBody};
use crate::error::GatewayError;

/// A route's transcoder: the HTTP bindings of the methods it serves.
pub struct Transcoder {
    bindings: Vec<HttpBinding>,
    print: SerializeOptions,
    ignore_unknown_query: bool,
    streaming: StreamFormat,
    max_body: usize,
    status_type: MessageDescriptor,
}

struct HttpBinding {
    method: Method,
    template: PathTemplate,
    rpc: MethodDescriptor,
    /// `/package.Service/Method`.
    grpc_path: http::uri::PathAndQuery,
    body: BodyRule,
    response_body: Option<FieldDescriptor>,
}

enum BodyRule {
    /// No body is read (`GET`, `DELETE` without `body`).
    None,
    /// `body: "*"`: the body is the request message; nothing comes from the query.
    Whole,
    /// `body: "<field>"`: the body is that field.
    Field(FieldDescriptor),
}

/// A request matched to one of the transcoder's bindings.
pub struct Call<'a> {
    binding: &'a HttpBinding,
    variables: Vec<Binding>,
}

/// Why a JSON request could not become a gRPC call: the client's fault (400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(String);

impl From<RequestError> for GatewayError {
    fn from(err: RequestError) -> Self {
        GatewayError::Transcode {
            status: StatusCode::BAD_REQUEST,
            detail: err.0,
        }
    }
}

impl Transcoder {
    pub fn compile(pool: &DescriptorPool, config: &GrpcTranscodeConfig) -> Result<Self, String> {
        let http_rule = pool.get_extension_by_name("google.api.http").ok_or(
            "the descriptors do not import google/api/annotations.proto, so no method has an HTTP binding",
        )?;
        let services: Vec<_> = if config.services.is_empty() {
            pool.services().collect()
        } else {
            config
                .services
                .iter()
                .map(|name| {
                    pool.get_service_by_name(name)
                        .ok_or_else(|| format!("service `{name}` is not in the descriptors"))
                })
                .collect::<Result<_, _>>()?
        };
        let mut bindings = Vec::new();
        for service in &services {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http_rule) {
                    continue;
                }
                if let ProtoValue::Message(rule) = options.get_extension(&http_rule).as_ref() {
                    add_rule(&method, rule, true, &mut bindings)?;
                }
            }
        }
        if bindings.is_empty() {
            return Err("no method of the services has a google.api.http annotation".to_owned());
        }
        let status_type = pool
            .get_message_by_name("google.rpc.Status")
            .ok_or("the descriptors lack google.rpc.Status")?;
        Ok(Self {
            bindings,
            print: SerializeOptions::new()
                .skip_default_fields(!config.emit_defaults)
                .use_proto_field_name(config.proto_field_names)
                .use_enum_numbers(config.enums_as_numbers),
            ignore_unknown_query: config.ignore_unknown_query_parameters,
            streaming: config.streaming,
            max_body: config.max_body.0 as usize,
            status_type,
        })
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The binding for `method path` (path still percent-encoded); the most specific when
    /// several match.
    pub fn find(&self, method: &Method, path: &str) -> Option<Call<'_>> {
        self.bindings
            .iter()
            .filter(|binding| binding.method == *method)
            .filter_map(|binding| {
                binding
                    .template
                    .matches(path)
                    .map(|variables| Call { binding, variables })
            })
            .max_by_key(|call| call.binding.template.specificity())
    }

    /// The request message, length-prefixed for the gRPC stream.
    pub fn request_message(
        &self,
        call: &Call<'_>,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Bytes, RequestError> {
        let input = call.binding.rpc.input();
        let mut tree = Map::new();
        let parse = |body: &[u8]| {
            serde_json::from_slice::<Value>(body)
                .map_err(|err| RequestError(format!("the body is not valid JSON: {err}")))
        };
        match &call.binding.body {
            BodyRule::Whole if !body.is_empty() => match parse(body)? {
                Value::Object(object) => tree = object,
                _ => return Err(RequestError("the body must be a JSON object".to_owned())),
            },
            BodyRule::Field(field) if !body.is_empty() => {
                tree.insert(field.name().to_owned(), parse(body)?);
            }
            _ => {}
        }
        for (path, value) in &call.variables {
            set_field(&input, &mut tree, path, value)?;
        }
        if !matches!(call.binding.body, BodyRule::Whole) {
            for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                let path: Vec<String> = name.split('.').map(str::to_owned).collect();
                let bound = call
                    .binding
                    .template
                    .bound_fields()
                    .any(|bound| path.starts_with(bound) || bound.starts_with(&path));
                let in_body = matches!(&call.binding.body, BodyRule::Field(f) if path.first().is_some_and(|first| first == f.name() || first == f.json_name()));
                if bound || in_body {
                    continue;
                }
                match set_field(&input, &mut tree, &path, &value) {
                    Ok(()) => {}
                    Err(_) if self.ignore_unknown_query && resolve(&input, &path).is_none() => {}
                    Err(err) => return Err(err),
                }
            }
        }
        let message = DynamicMessage::deserialize_with_options(
            input,
            Value::Object(tree),
            &DeserializeOptions::new().deny_unknown_fields(true),
        )
        .map_err(|err| {
            RequestError(format!(
                "the request does not fit the method's message: {err}"
            ))
        })?;
        Ok(super::frame(&prost::Message::encode_to_vec(&message)))
    }

    /// The gRPC request sent upstream for `call`: the client's headers as metadata.
    pub fn upstream_request(
        &self,
        call: &Call<'_>,
        mut parts: http::request::Parts,
        message: Bytes,
    ) -> Request<http_body_util::Full<Bytes>> {
        parts.method = Method::POST;
        parts.uri = http::Uri::from(call.binding.grpc_path.clone());
        let headers = &mut parts.headers;
        for name in [
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::ACCEPT,
            header::ACCEPT_ENCODING,
            header::TRANSFER_ENCODING,
        ] {
            headers.remove(name);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        Request::from_parts(parts, http_body_util::Full::new(message))
    }

    /// The JSON answer to `call` from the upstream's gRPC response.
    pub async fn response(
        &self,
        call: &Call<'_>,
        response: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let (parts, body) = response.into_parts();
        let is_grpc = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if parts.status != StatusCode::OK || !is_grpc {
            return Err(GatewayError::BadGateway(format!(
                "the upstream answered HTTP {} ({}) instead of gRPC",
                parts.status,
                parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no content type")
            )));
        }
        if let Some(status) = parts.headers.get(GRPC_STATUS) {
            // Trailers-only: an error (or an empty OK) with no message.
            let code = Code::from_header(status);
            if code != Code::Ok {
                return Ok(self.error_response(code, &parts.headers));
            }
        }
        let metadata = metadata(&parts.headers);
        let output = call.binding.rpc.output();
        let response_body = call.binding.response_body.clone();
        if call.binding.rpc.is_server_streaming() {
            let (content_type, format) = match self.streaming {
                StreamFormat::Ndjson => ("application/x-ndjson", StreamFormat::Ndjson),
                StreamFormat::Sse => ("text/event-stream", StreamFormat::Sse),
            };
            let stream = MessageStream {
                inner: Some(body),
                buffer: BytesMut::new(),
                pending: VecDeque::new(),
                printer: Printer {
                    output,
                    response_body,
                    print: self.print.clone(),
                    status_type: self.status_type.clone(),
                },
                format,
                finished: false,
            };
            let mut response = Response::new(stream.boxed_unsync());
            *response.headers_mut() = metadata;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            return Ok(response);
        }
        let (data, trailers) = body::read_with_trailers(body, self.max_body)
            .await
            .map_err(|err| GatewayError::BadGateway(err.to_string()))?;
        let status_headers = trailers.as_ref().unwrap_or(&parts.headers);
        let code = status_headers
            .get(GRPC_STATUS)
            .map(Code::from_header)
            .unwrap_or(Code::Unknown);
        if code != Code::Ok {
            return Ok(self.error_response(code, status_headers));
        }
        let printer = Printer {
            output,
            response_body,
            print: self.print.clone(),
            status_type: self.status_type.clone(),
        };
        let mut buffer = BytesMut::from(&data[..]);
        let payload = match take_message(&mut buffer) {
            Ok(Some(payload)) if buffer.is_empty() => payload,
            Ok(_) => {
                return Err(GatewayError::BadGateway(
                    "a unary gRPC answer did not hold exactly one message".to_owned(),
                ))
            }
            Err(err) => return Err(GatewayError::BadGateway(err)),
        };
        let json = printer
            .message_json(&payload)
            .map_err(GatewayError::BadGateway)?;
        let mut response = Response::new(body::full(json));
        *response.headers_mut() = metadata;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }

    /// A non-OK status as HTTP: the mapped status code and the `google.rpc.Status` as JSON.
    fn error_response(&self, code: Code, headers: &HeaderMap) -> Response<ProxyBody> {
        let status = status_json(&self.status_type, &self.print, code, headers);
        let mut response = Response::new(body::full(status.to_string()));
        *response.status_mut() = http_status(code);
        *response.headers_mut() = metadata(headers);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

fn add_rule(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
    top_level: bool,
    bindings: &mut Vec<HttpBinding>,
) -> Result<(), String> {
    let name = method.full_name();
    let text = |field: &str| match rule.get_field_by_name(field).as_deref() {
        Some(ProtoValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let mut pattern = None;
    for (field, http_method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(field) {
            pattern = Some((http_method, text(field)));
        }
    }
    if rule.has_field_by_name("custom") {
        if let Some(ProtoValue::Message(custom)) = rule.get_field_by_name("custom").as_deref() {
            let field = |name: &str| match custom.get_field_by_name(name).as_deref() {
                Some(ProtoValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            let kind = Method::from_bytes(field("kind").as_bytes()).map_err(|_| {
                format!(
                    "method `{name}`: custom HTTP method `{}` is not a token",
                    field("kind")
                )
            })?;
            pattern = Some((kind, field("path")));
        }
    }
    let (http_method, template) =
        pattern.ok_or_else(|| format!("method `{name}`: an HTTP rule without a pattern"))?;
    if method.is_client_streaming() {
        return Err(format!(
            "method `{name}` streams requests from the client, which cannot be transcoded from one HTTP body"
        ));
    }
    let template =
        PathTemplate::parse(&template).map_err(|err| format!("method `{name}`: {err}"))?;
    let input = method.input();
    for bound in template.bound_fields() {
        resolve(&input, bound).ok_or_else(|| {
            format!(
                "method `{name}`: the path binds `{}`, which `{}` does not have",
                bound.join("."),
                input.full_name()
            )
        })?;
    }
    let body = match text("body").as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        field => BodyRule::Field(input.get_field_by_name(field).ok_or_else(|| {
            format!(
                "method `{name}`: the body field `{field}` is not in `{}`",
                input.full_name()
            )
        })?),
    };
    let response_body = match text("response_body").as_str() {
        "" => None,
        field => Some(method.output().get_field_by_name(field).ok_or_else(|| {
            format!(
                "method `{name}`: the response_body field `{field}` is not in `{}`",
                method.output().full_name()
            )
        })?),
    };
    let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name())
        .parse()
        .map_err(|_| format!("method `{name}`: not a valid request path"))?;
    bindings.push(HttpBinding {
        method: http_method,
        template,
        rpc: method.clone(),
        grpc_path,
        body,
        response_body,
    });
    if top_level {
        if let Some(ProtoValue::List(additional)) =
            rule.get_field_by_name("additional_bindings").as_deref()
        {
            for extra in additional {
                if let ProtoValue::Message(extra) = extra {
                    add_rule(method, extra, false, bindings)?;
                }
            }
        }
    }
    Ok(())
}

/// The field at `path` (proto or JSON names) inside `message`.
fn resolve<S: AsRef<str>>(message: &MessageDescriptor, path: &[S]) -> Option<FieldDescriptor> {
    let mut current = message.clone();
    let mut found = None;
    for (index, name) in path.iter().enumerate() {
        let name = name.as_ref();
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))?;
        if index + 1 < path.len() {
            match field.kind() {
                Kind::Message(inner) if !field.is_list() && !field.is_map() => current = inner,
                _ => return None,
            }
        }
        found = Some(field);
    }
    found
}

/// Put `raw` (from the path or the query) at `path` in the JSON request tree, converted to
/// what the proto3 JSON mapping expects for the field's type; repeated fields collect.
fn set_field(
    message: &MessageDescriptor,
    tree: &mut Map<String, Value>,
    path: &[String],
    raw: &str,
) -> Result<(), RequestError> {
    let unknown = || {
        RequestError(format!(
            "`{}` is not a field of `{}`",
            path.join("."),
            message.full_name()
        ))
    };
    let mut current = message.clone();
    let mut node = tree;
    for (index, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(unknown)?;
        // One spelling per field: the proto name wins over a JSON name from the body.
        if field.json_name() != field.name() {
            if let Some(existing) = node.remove(field.json_name()) {
                node.entry(field.name().to_owned()).or_insert(existing);
            }
        }
        let key = field.name().to_owned();
        if index + 1 < path.len() {
            let Kind::Message(inner) = field.kind() else {
                return Err(unknown());
            };
            if field.is_list() || field.is_map() || is_well_known(&inner) {
                return Err(unknown());
            }
            let entry = node.entry(key).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(object) = entry else {
                return Err(RequestError(format!(
                    "`{}` is given both as a value and as a message",
                    path.join(".")
                )));
            };
            node = object;
            current = inner;
            continue;
        }
        if field.is_map() {
            return Err(RequestError(format!(
                "map field `{}` cannot be set from the path or the query",
                path.join(".")
            )));
        }
        let value = leaf_value(&field, raw)
            .map_err(|why| RequestError(format!("`{}`: {why}", path.join("."))))?;
        if field.is_list() {
            match node.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(items) => items.push(value),
                other => *other = Value::Array(vec![value]),
            }
        } else {
            node.insert(key, value);
        }
        return Ok(());
    }
    Err(unknown())
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

/// A path or query string as the JSON value the field's type reads: booleans as JSON
/// booleans, numbers and well-known scalars as the strings proto3 JSON accepts for them.
fn leaf_value(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    let boolean = || match raw {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        _ => Err(format!("`{raw}` is not true or false")),
    };
    match field.kind() {
        Kind::Bool => boolean(),
        Kind::Enum(_) => Ok(raw
            .parse::<i32>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(raw.to_owned()))),
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.BoolValue" => boolean(),
            "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue" => Ok(Value::String(raw.to_owned())),
            other => Err(format!("a `{other}` message cannot be given as text")),
        },
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// Writes answer messages as JSON.
struct Printer {
    output: MessageDescriptor,
    response_body: Option<FieldDescriptor>,
    print: SerializeOptions,
    status_type: MessageDescriptor,
}

impl Printer {
    fn message_json(&self, payload: &[u8]) -> Result<String, String> {
        let message = DynamicMessage::decode(self.output.clone(), payload)
            .map_err(|err| format!("the upstream's message does not decode: {err}"))?;
        let value = match &self.response_body {
            None => {
                // Straight to text: no intermediate JSON tree on the common path.
                let mut out = Vec::with_capacity(256);
                message
                    .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &self.print)
                    .map_err(|err| format!("cannot write the message as JSON: {err}"))?;
                return String::from_utf8(out).map_err(|err| err.to_string());
            }
            Some(field) => {
                // The field alone, with its default when unset.
                let all = to_json(&message, &self.print.clone().skip_default_fields(false))?;
                let key = if all.get(field.name()).is_some() {
                    field.name()
                } else {
                    field.json_name()
                };
                all.get(key).cloned().unwrap_or(Value::Null)
            }
        };
        Ok(value.to_string())
    }
}

fn to_json(message: &DynamicMessage, options: &SerializeOptions) -> Result<Value, String> {
    message
        .serialize_with_options(serde_json::value::Serializer, options)
        .map_err(|err| format!("cannot write the message as JSON: {err}"))
}

/// The `google.rpc.Status` of a failed call as JSON: from `grpc-status-details-bin` when the
/// server sent one (details rendered through the descriptors, `Any` by type), else from
/// `grpc-status` and `grpc-message`.
fn status_json(
    status_type: &MessageDescriptor,
    print: &SerializeOptions,
    code: Code,
    headers: &HeaderMap,
) -> Value {
    let message = headers
        .get(GRPC_MESSAGE)
        .map(|m| {
            percent_encoding::percent_decode(m.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let detailed = headers
        .get(GRPC_STATUS_DETAILS)
        .and_then(|value| {
            let trimmed = value.as_bytes().trim_ascii_end();
            let unpadded = trimmed
                .strip_suffix(b"==")
                .or_else(|| trimmed.strip_suffix(b"="))
                .unwrap_or(trimmed);
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(unpadded)
                .ok()
        })
        .and_then(|bytes| DynamicMessage::decode(status_type.clone(), bytes.as_slice()).ok())
        .and_then(|status| to_json(&status, print).ok());
    match detailed {
        Some(mut value) => {
            // The three members are always there, whatever the printing options.
            if let Value::Object(members) = &mut value {
                members.entry("code").or_insert(Value::from(code.number()));
                members.entry("message").or_insert(Value::from(message));
                members.entry("details").or_insert(Value::Array(Vec::new()));
            }
            value
        }
        None => serde_json::json!({
            "code": code.number(),
            "message": message,
            "details": [],
        }),
    }
}

/// The HTTP status for a gRPC status (as `google.rpc.Code` documents the mapping).
pub fn http_status(code: Code) -> StatusCode {
    let status = match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
    };
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The upstream's headers that are the call's metadata (not gRPC framing), for the client.
fn metadata(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let framing = name.as_str().starts_with("grpc-")
            || name == header::CONTENT_TYPE
            || name == header::CONTENT_LENGTH
            || name == header::TRAILER
            || name == header::TE;
        if !framing {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// A server-streaming answer as NDJSON lines or server-sent events, one per message, as
/// the messages arrive.
struct MessageStream {
    inner: Option<ProxyBody>,
    buffer: BytesMut,
    pending: VecDeque<Bytes>,
    printer: Printer,
    format: StreamFormat,
    finished: bool,
}

impl MessageStream {
    fn push_message(&mut self, json: String) {
        let framed = match self.format {
            StreamFormat::Ndjson => format!("{json}\n"),
            StreamFormat::Sse => format!("data: {json}\n\n"),
        };
        self.pending.push_back(Bytes::from(framed));
    }

    fn push_error(&mut self, status: Value) {
        let framed = match self.format {
            StreamFormat::Ndjson => format!("{}\n", serde_json::json!({ "error": status })),
            StreamFormat::Sse => format!("event: error\ndata: {status}\n\n"),
        };
        self.pending.push_back(Bytes::from(framed));
        self.finished = true;
        self.inner = None;
    }

    fn failure(&self, code: Code, message: &str) -> Value {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(message) {
            headers.insert(GRPC_MESSAGE, value);
        }
        status_json(
            &self.printer.status_type,
            &self.printer.print,
            code,
            &headers,
        )
    }
}

impl http_body::Body for MessageStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(out) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match take_message(&mut this.buffer) {
                Ok(Some(payload)) => {
                    match this.printer.message_json(&payload) {
                        Ok(json) => this.push_message(json),
                        Err(why) => this.push_error(this.failure(Code::Internal, &why)),
                    }
                    continue;
                }
                Ok(None) => {}
                Err(why) => {
                    this.push_error(this.failure(Code::Internal, &why));
                    continue;
                }
            }
            let Some(inner) = this.inner.as_mut() else {
                this.finished = true;
                continue;
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        let code = trailers
                            .get(GRPC_STATUS)
                            .map(Code::from_header)
                            .unwrap_or(Code::Unknown);
                        if code == Code::Ok {
                            this.inner = None;
                        } else {
                            let status = status_json(
                                &this.printer.status_type,
                                &this.printer.print,
                                code,
                                &trailers,
                            );
                            this.push_error(status);
                        }
                    }
                },
                Poll::Ready(Some(Err(err))) => {
                    let status =
                        this.failure(Code::Unavailable, &format!("upstream stream broke: {err}"));
                    this.push_error(status);
                }
                Poll::Ready(None) => {
                    if !this.buffer.is_empty() {
                        let status = this.failure(
                            Code::Internal,
                            "the upstream's stream ended inside a message",
                        );
                        this.push_error(status);
                    } else {
                        this.inner = None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `proto` compiled as `t.proto` (with the built-in google/api annotations).
    fn transcoder(proto: &str) -> Result<Transcoder, String> {
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-transcode-{}-{}",
            std::process::id(),
            proto.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.proto"), proto).unwrap();
        let pool = super::super::descriptors::compile(&["t.proto"], &[&dir]);
        std::fs::remove_dir_all(&dir).unwrap();
        let config: GrpcTranscodeConfig =
            serde_json::from_value(serde_json::json!({ "protos": "t" })).unwrap();
        Transcoder::compile(&pool?, &config)
    }

    const HEADER: &str = "syntax = \"proto3\";\npackage t;\nimport \"google/api/annotations.proto\";\nmessage M { string name = 1; M child = 2; }\n";

    #[test]
    fn bindings_that_cannot_work_are_refused_when_loading() {
        let cases = [
            (
                "service S { rpc Up(stream M) returns (M) { option (google.api.http) = { post: \"/up\" body: \"*\" }; } }",
                "streams requests from the client",
            ),
            (
                "service S { rpc Get(M) returns (M) { option (google.api.http) = { get: \"/m/{nope}\" }; } }",
                "the path binds `nope`",
            ),
            (
                "service S { rpc Put(M) returns (M) { option (google.api.http) = { put: \"/m\" body: \"nope\" }; } }",
                "the body field `nope`",
            ),
            (
                "service S { rpc Get(M) returns (M) { option (google.api.http) = { get: \"/m/**/x\" }; } }",
                "`**` must be the last segment",
            ),
            ("service S { rpc Get(M) returns (M); }", "no method of the services"),
        ];
        for (service, expected) in cases {
            let err = transcoder(&format!("{HEADER}{service}\n"))
                .err()
                .unwrap_or_else(|| panic!("accepted: {service}"));
            assert!(err.contains(expected), "{service}: {err}");
        }
        let nested = transcoder(&format!(
            "{HEADER}service S {{ rpc Get(M) returns (M) {{ option (google.api.http) = {{ get: \"/m/{{child.name=x/*}}\" }}; }} }}\n"
        ))
        .unwrap();
        let call = nested.find(&Method::GET, "/m/x/7").unwrap();
        assert_eq!(
            call.variables,
            vec![(
                vec!["child".to_owned(), "name".to_owned()],
                "x/7".to_owned()
            )]
        );
    }
}
