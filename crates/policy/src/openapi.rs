//! Validation against OpenAPI 3.0 and 3.1 documents: the request's operation is found by
//! method and path template; path, query and header parameters and the JSON body are
//! checked against their schemas (JSON Schema via the `jsonschema` crate; 3.0's `nullable`
//! translated), and optionally the JSON response. Every violation is reported with a JSON
//! pointer: `/path/id`, `/query/limit`, `/header/x-tenant`, `/body/items/0/qty`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use gatehouse_config::{ResponseValidation, RouteOpenApi};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::rejection::Rejection;
use crate::request::{media_matches, media_type};

/// One thing wrong with a request or response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    Path,
    Query,
    Header,
}

struct Parameter {
    name: String,
    location: Location,
    required: bool,
    /// `type` of the schema (and of `items` for arrays), to turn text into JSON values.
    kind: Option<String>,
    item_kind: Option<String>,
    explode: bool,
    schema: Option<jsonschema::Validator>,
}

struct Body {
    required: bool,
    /// Media types the operation accepts.
    media_types: Vec<String>,
    json: Option<jsonschema::Validator>,
}

pub struct Operation {
    pub id: Option<String>,
    /// What a sandbox answers: the first success response, from its example or made from
    /// its schema.
    pub mock: Option<MockAnswer>,
    parameters: Vec<Parameter>,
    body: Option<Body>,
    /// By status (`200`), range (`2XX`) or `default`: the JSON schema of the answer, if any.
    responses: HashMap<String, Option<jsonschema::Validator>>,
}

/// A sandbox's answer to an operation.
#[derive(Debug, Clone)]
pub struct MockAnswer {
    pub status: StatusCode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Content type and body.
    pub body: Option<(http::HeaderValue, Bytes)>,
    /// Whether the JSON body validates against the response's schema (false only when
    /// neither the example nor a value made from the schema does).
    pub conforms: bool,
}

struct PathTemplate {
    segments: Vec<Segment>,
    literal_segments: usize,
    operations: Vec<(Method, Arc<Operation>)>,
}

enum Segment {
    Literal(String),
    Param(String),
}

/// A loaded document, its operations ready to validate against.
pub struct OpenApiDocument {
    paths: Vec<PathTemplate>,
}

/// The document and settings of one route.
pub struct RouteValidation {
    document: Arc<OpenApiDocument>,
    strip_prefix: Option<String>,
    pub validate_requests: bool,
    pub validate_responses: ResponseValidation,
    pub max_body: u64,
}

/// The operation a request maps to, with its path parameters.
pub struct MatchedOperation<'d> {
    pub operation: &'d Operation,
    path_params: Vec<(String, String)>,
}

impl OpenApiDocument {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let document: Value = serde_saphyr::from_str(&text)
            .map_err(|e| format!("{}: not a YAML or JSON document: {e}", path.display()))?;
        Self::from_value(document).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_value(document: Value) -> Result<Self, String> {
        let version = document
            .get("openapi")
            .and_then(Value::as_str)
            .ok_or("no `openapi` version field (only OpenAPI 3.x is supported)")?;
        let draft = if version.starts_with("3.0") {
            jsonschema::Draft::Draft4
        } else if version.starts_with("3.1") {
            jsonschema::Draft::Draft202012
        } else {
            return Err(format!("OpenAPI {version} is not supported (3.0 or 3.1)"));
        };
        let legacy = draft == jsonschema::Draft::Draft4;
        let mut components = document.get("components").cloned().unwrap_or(json!({}));
        if legacy {
            translate_nullable(&mut components);
        }
        let compiler = SchemaCompiler {
            document: &document,
            components,
            draft,
            legacy,
        };
        let mut paths = Vec::new();
        let Some(path_items) = document.get("paths").and_then(Value::as_object) else {
            return Ok(Self { paths });
        };
        for (template, item) in path_items {
            let item = compiler.resolve(item)?;
            let shared = item
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut operations = Vec::new();
            for method in [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ] {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                let compiled = compiler
                    .operation(operation, &shared)
                    .map_err(|e| format!("{} {template}: {e}", method.to_uppercase()))?;
                let method = Method::from_bytes(method.to_uppercase().as_bytes())
                    .map_err(|e| e.to_string())?;
                operations.push((method, Arc::new(compiled)));
            }
            let segments: Vec<Segment> = template
                .trim_start_matches('/')
                .split('/')
                .map(
                    |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) => Segment::Param(name.to_owned()),
                        None => Segment::Literal(s.to_owned()),
                    },
                )
                .collect();
            let literal_segments = segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count();
            paths.push(PathTemplate {
                segments,
                literal_segments,
                operations,
            });
        }
        Ok(Self { paths })
    }

    /// A sandbox's answer to a request: the operation's mock once the request's
    /// parameters are valid (`400` listing violations, `404`/`405` for no operation).
    pub fn mock(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<&MockAnswer, Rejection> {
        let matched = self.find(method, path)?;
        let mut violations = Vec::new();
        for parameter in &matched.operation.parameters {
            parameter.check(&matched.path_params, query, headers, &mut violations);
        }
        if !violations.is_empty() {
            return Err(invalid_request(violations));
        }
        matched.operation.mock.as_ref().ok_or_else(|| {
            Rejection::new(
                StatusCode::NOT_IMPLEMENTED,
                "no_mock",
                "the API description gives this operation no success response to mock",
            )
        })
    }

    /// The operation for `method` and `path`: concrete paths win over templated ones.
    fn find(&self, method: &Method, path: &str) -> Result<MatchedOperation<'_>, Rejection> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut best: Option<(&PathTemplate, Vec<(String, String)>)> = None;
        for template in &self.paths {
            if template.segments.len() != parts.len() {
                continue;
            }
            let mut params = Vec::new();
            let matched =
                template
                    .segments
                    .iter()
                    .zip(&parts)
                    .all(|(segment, part)| match segment {
                        Segment::Literal(literal) => literal == part,
                        Segment::Param(name) => {
                            let value = percent_encoding::percent_decode_str(part)
                                .decode_utf8_lossy()
                                .into_owned();
                            params.push((name.clone(), value));
                            !part.is_empty()
                        }
                    });
            if matched
                && best
                    .as_ref()
                    .is_none_or(|(b, _)| template.literal_segments > b.literal_segments)
            {
                best = Some((template, params));
            }
        }
        let Some((template, path_params)) = best else {
            return Err(Rejection::new(
                StatusCode::NOT_FOUND,
                "operation_not_found",
                format!("the API description has no path matching {path}"),
            ));
        };
        match template.operations.iter().find(|(m, _)| m == method) {
            Some((_, operation)) => Ok(MatchedOperation {
                operation,
                path_params,
            }),
            None => {
                let allow: Vec<&str> = template
                    .operations
                    .iter()
                    .map(|(m, _)| m.as_str())
                    .collect();
                let mut rejection = Rejection::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not an operation of {path}"),
                );
                if let Ok(value) = http::HeaderValue::from_str(&allow.join(", ")) {
                    rejection = rejection.with_header(header::ALLOW, value);
                }
                Err(rejection)
            }
        }
    }
}

impl RouteValidation {
    pub fn new(config: &RouteOpenApi, document: Arc<OpenApiDocument>) -> Self {
        Self {
            document,
            strip_prefix: config
                .strip_prefix
                .as_ref()
                .map(|p| p.trim_end_matches('/').to_owned()),
            validate_requests: config.validate_requests,
            validate_responses: config.validate_responses,
            max_body: config.max_body.0,
        }
    }

    /// Find the operation and check the parameters (400 listing the violations).
    pub fn check_request(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<MatchedOperation<'_>, Rejection> {
        let path = match &self.strip_prefix {
            Some(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some("") => "/",
                Some(rest) if rest.starts_with('/') => rest,
                _ => path,
            },
            None => path,
        };
        let matched = self.document.find(method, path)?;
        if !self.validate_requests {
            return Ok(matched);
        }
        let mut violations = Vec::new();
        for parameter in &matched.operation.parameters {
            parameter.check(&matched.path_params, query, headers, &mut violations);
        }
        if let Some(body) = &matched.operation.body {
            let declared = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let has_body =
                declared.is_some_and(|l| l > 0) || headers.contains_key(header::TRANSFER_ENCODING);
            if has_body {
                let media_type = media_type(headers);
                if !body.media_types.is_empty()
                    && !body
                        .media_types
                        .iter()
                        .any(|m| media_matches(m, &media_type))
                {
                    return Err(Rejection::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        format!("the operation does not accept {media_type}"),
                    ));
                }
            }
        }
        if violations.is_empty() {
            Ok(matched)
        } else {
            Err(invalid_request(violations))
        }
    }

    /// Check a request body read whole (after `check_request`).
    pub fn check_body(
        &self,
        operation: &Operation,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<(), Rejection> {
        let Some(spec) = &operation.body else {
            return Ok(());
        };
        let mut violations = Vec::new();
        if body.is_empty() {
            if spec.required {
                violations.push(Violation {
                    pointer: "/body".to_owned(),
                    message: "a request body is required".to_owned(),
                });
            }
        } else if let Some(validator) = &spec.json {
            if is_json(&media_type(headers)) {
                match serde_json::from_slice::<Value>(body) {
                    Ok(value) => collect(validator, &value, "/body", &mut violations),
                    Err(err) => violations.push(Violation {
                        pointer: "/body".to_owned(),
                        message: format!("not valid JSON: {err}"),
                    }),
                }
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(invalid_request(violations))
        }
    }

    /// Whether a response of `status` with these headers should be read and checked.
    pub fn wants_response(
        &self,
        operation: &Operation,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> bool {
        self.validate_responses != ResponseValidation::Off
            && is_json(&media_type(headers))
            && operation.response_schema(status).is_some()
    }

    /// Check a JSON response body; the violations found (empty when valid).
    pub fn check_response(
        &self,
        operation: &Operation,
        status: StatusCode,
        body: &Bytes,
    ) -> Vec<Violation> {
        let Some(validator) = operation.response_schema(status) else {
            return Vec::new();
        };
        let mut violations = Vec::new();
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => collect(validator, &value, "/body", &mut violations),
            Err(err) => violations.push(Violation {
                pointer: "/body".to_owned(),
                message: format!("not valid JSON: {err}"),
            }),
        }
        violations
    }
}

impl Operation {
    /// Whether the operation describes a request body.
    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }

    fn response_schema(&self, status: StatusCode) -> Option<&jsonschema::Validator> {
        let code = status.as_u16().to_string();
        let range = format!("{}XX", status.as_u16() / 100);
        [code.as_str(), range.as_str(), "default"]
            .iter()
            .find_map(|key| self.responses.get(*key))
            .and_then(Option::as_ref)
    }
}

impl Parameter {
    fn check(
        &self,
        path_params: &[(String, String)],
        query: Option<&str>,
        headers: &HeaderMap,
        violations: &mut Vec<Violation>,
    ) {
        let (prefix, raw): (&str, Vec<String>) = match self.location {
            Location::Path => (
                "/path",
                path_params
                    .iter()
                    .filter(|(k, _)| *k == self.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
            ),
            Location::Query => (
                "/query",
                query
                    .map(|q| {
                        form_urlencoded::parse(q.as_bytes())
                            .filter(|(k, _)| *k == self.name)
                            .map(|(_, v)| v.into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Location::Header => (
                "/header",
                headers
                    .get_all(self.name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_owned))
                    .collect(),
            ),
        };
        let pointer = format!("{prefix}/{}", escape_pointer(&self.name));
        if raw.is_empty() {
            if self.required {
                violations.push(Violation {
                    pointer,
                    message: format!("required parameter `{}` is missing", self.name),
                });
            }
            return;
        }
        let Some(validator) = &self.schema else {
            return;
        };
        let value = if self.kind.as_deref() == Some("array") {
            let items: Vec<&str> =
                if raw.len() == 1 && !self.explode || self.location != Location::Query {
                    raw[0].split(',').collect()
                } else {
                    raw.iter().map(String::as_str).collect()
                };
            Value::Array(
                items
                    .iter()
                    .map(|item| coerce(item, self.item_kind.as_deref()))
                    .collect(),
            )
        } else {
            coerce(&raw[0], self.kind.as_deref())
        };
        collect(validator, &value, &pointer, violations);
    }
}

/// Text from a URL or header as the JSON value its schema type expects (left as a string
/// when it does not parse, so the schema reports the mismatch).
fn coerce(text: &str, kind: Option<&str>) -> Value {
    match kind {
        Some("integer") => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| text.into()),
        Some("number") => text
            .parse::<f64>()
            .ok()
            .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number))
            .unwrap_or_else(|| text.into()),
        Some("boolean") => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => other.into(),
        },
        _ => text.into(),
    }
}

fn collect(
    validator: &jsonschema::Validator,
    value: &Value,
    prefix: &str,
    violations: &mut Vec<Violation>,
) {
    for error in validator.iter_errors(value) {
        violations.push(Violation {
            pointer: format!("{prefix}{}", error.instance_path()),
            message: error.to_string(),
        });
    }
}

fn invalid_request(violations: Vec<Violation>) -> Rejection {
    let detail = match violations.len() {
        1 => "the request does not match the API description: 1 violation".to_owned(),
        n => format!("the request does not match the API description: {n} violations"),
    };
    let mut rejection = Rejection::new(StatusCode::BAD_REQUEST, "request_invalid", detail);
    rejection.extensions = Some(json!({ "violations": violations }));
    rejection
}

fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `null` added to `type` (and `enum`).
fn translate_nullable(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if object.remove("nullable") == Some(Value::Bool(true)) {
                match object.get_mut("type") {
                    Some(Value::String(kind)) => {
                        let kind = std::mem::take(kind);
                        object.insert("type".to_owned(), json!([kind, "null"]));
                    }
                    Some(Value::Array(kinds)) => kinds.push(json!("null")),
                    _ => {}
                }
                if let Some(Value::Array(values)) = object.get_mut("enum") {
                    values.push(Value::Null);
                }
            }
            object.values_mut().for_each(translate_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(translate_nullable),
        _ => {}
    }
}

/// Builds validators whose `#/components/...` references resolve: each schema is compiled
/// as a document carrying the specification's `components`.
struct SchemaCompiler<'d> {
    document: &'d Value,
    components: Value,
    draft: jsonschema::Draft,
    legacy: bool,
}

impl SchemaCompiler<'_> {
    /// Follow local `$ref`s of parameter, body and response objects.
    fn resolve<'v>(&'v self, mut value: &'v Value) -> Result<&'v Value, String> {
        for _ in 0..16 {
            let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
                return Ok(value);
            };
            let pointer = reference
                .strip_prefix('#')
                .ok_or_else(|| format!("only local references are supported: `{reference}`"))?;
            value = self
                .document
                .pointer(pointer)
                .ok_or_else(|| format!("unresolved reference `{reference}`"))?;
        }
        Err("reference chain too long".to_owned())
    }

    fn schema(&self, schema: &Value) -> Result<jsonschema::Validator, String> {
        let mut schema = schema.clone();
        if self.legacy {
            translate_nullable(&mut schema);
        }
        let mut root = match schema {
            Value::Object(object) => object,
            Value::Bool(true) => Map::new(),
            other => return Err(format!("schema `{other}` is not an object")),
        };
        root.insert("components".to_owned(), self.components.clone());
        jsonschema::options()
            .with_draft(self.draft)
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .map_err(|e| format!("invalid schema: {e}"))
    }

    fn operation(&self, operation: &Value, shared: &[Value]) -> Result<Operation, String> {
        let mut parameters: Vec<Parameter> = Vec::new();
        let own = operation
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // Operation parameters override path-level ones of the same name and location.
        for raw in shared.iter().chain(own.iter()) {
            let parameter = self.resolve(raw)?;
            let name = parameter
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a parameter has no name")?
                .to_owned();
            let location = match parameter.get("in").and_then(Value::as_str) {
                Some("path") => Location::Path,
                Some("query") => Location::Query,
                Some("header") => Location::Header,
                // Cookie parameters are not checked.
                _ => continue,
            };
            let schema = parameter
                .get("schema")
                .map(|s| self.resolve(s))
                .transpose()?;
            let compiled = Parameter {
                required: location == Location::Path
                    || parameter.get("required").and_then(Value::as_bool) == Some(true),
                kind: schema
                    .and_then(|s| s.get("type"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                item_kind: schema
                    .and_then(|s| s.get("items"))
                    .map(|i| self.resolve(i))
                    .transpose()?
                    .and_then(|i| i.get("type"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                explode: parameter
                    .get("explode")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
                schema: parameter
                    .get("schema")
                    .map(|s| self.schema(s))
                    .transpose()?,
                name: if location == Location::Header {
                    name.to_ascii_lowercase()
                } else {
                    name
                },
                location,
            };
            parameters.retain(|p| !(p.name == compiled.name && p.location == compiled.location));
            parameters.push(compiled);
        }
        let body = match operation.get("requestBody") {
            Some(raw) => {
                let body = self.resolve(raw)?;
                let content = body.get("content").and_then(Value::as_object);
                let json_schema = content.and_then(|c| {
                    c.iter()
                        .find(|(media, _)| is_json(media))
                        .and_then(|(_, media)| media.get("schema"))
                });
                Some(Body {
                    required: body.get("required").and_then(Value::as_bool) == Some(true),
                    media_types: content
                        .map(|c| c.keys().map(|k| k.to_ascii_lowercase()).collect())
                        .unwrap_or_default(),
                    json: json_schema.map(|s| self.schema(s)).transpose()?,
                })
            }
            None => None,
        };
        let mut responses = HashMap::new();
        if let Some(all) = operation.get("responses").and_then(Value::as_object) {
            for (status, raw) in all {
                let response = self.resolve(raw)?;
                let schema = response
                    .get("content")
                    .and_then(Value::as_object)
                    .and_then(|c| c.iter().find(|(media, _)| is_json(media)))
                    .and_then(|(_, media)| media.get("schema"));
                responses.insert(
                    status.to_ascii_uppercase(),
                    schema.map(|s| self.schema(s)).transpose()?,
                );
            }
        }
        Ok(Operation {
            id: operation
                .get("operationId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            mock: self.mock(operation)?,
            parameters,
            body,
            responses,
        })
    }
}

impl SchemaCompiler<'_> {
    /// The first success response of `operation` as a sandbox answers it.
    fn mock(&self, operation: &Value) -> Result<Option<MockAnswer>, String> {
        let Some(responses) = operation.get("responses").and_then(Value::as_object) else {
            return Ok(None);
        };
        let chosen = responses
            .keys()
            .filter(|status| status.len() == 3 && status.starts_with('2'))
            .filter(|status| status.bytes().all(|b| b.is_ascii_digit()))
            .min()
            .or_else(|| responses.keys().find(|s| s.eq_ignore_ascii_case("2XX")))
            .or_else(|| responses.keys().find(|s| *s == "default"));
        let Some(chosen) = chosen else {
            return Ok(None);
        };
        let status = chosen
            .parse::<u16>()
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let response = self.resolve(&responses[chosen])?;
        let mut headers = Vec::new();
        if let Some(declared) = response.get("headers").and_then(Value::as_object) {
            for (name, header) in declared {
                let header = self.resolve(header)?;
                let value = match header.get("example") {
                    Some(example) => example.clone(),
                    None => match header.get("schema") {
                        Some(schema) => self.example_of(schema, 0)?,
                        None => continue,
                    },
                };
                let text = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(&text),
                ) {
                    headers.push((name, value));
                }
            }
        }
        let content = response.get("content").and_then(Value::as_object);
        let media = content.and_then(|c| {
            c.iter()
                .find(|(media, _)| is_json(media))
                .or_else(|| c.iter().next())
        });
        let Some((media_type, media)) = media else {
            return Ok(Some(MockAnswer {
                status,
                headers,
                body: None,
                conforms: true,
            }));
        };
        let schema = media.get("schema");
        let validator = match schema {
            Some(schema) if is_json(media_type) => Some(self.schema(schema)?),
            _ => None,
        };
        let given = match media.get("example") {
            Some(example) => Some(example.clone()),
            None => match media
                .get("examples")
                .and_then(Value::as_object)
                .and_then(|examples| examples.values().next())
            {
                Some(example) => self.resolve(example)?.get("value").cloned(),
                None => None,
            },
        };
        let valid = |value: &Value| validator.as_ref().is_none_or(|v| v.is_valid(value));
        let (value, conforms) = match given {
            Some(example) if valid(&example) => (example, true),
            _ => {
                let made = match schema {
                    Some(schema) => self.example_of(schema, 0)?,
                    None => Value::Null,
                };
                let conforms = valid(&made);
                (made, conforms)
            }
        };
        let bytes = if is_json(media_type) {
            serde_json::to_vec(&value).map_err(|e| e.to_string())?
        } else {
            match value {
                Value::String(text) => text.into_bytes(),
                other => other.to_string().into_bytes(),
            }
        };
        let content_type = http::HeaderValue::from_str(media_type)
            .unwrap_or(http::HeaderValue::from_static("application/json"));
        Ok(Some(MockAnswer {
            status,
            headers,
            body: Some((content_type, Bytes::from(bytes))),
            conforms,
        }))
    }

    /// A value for `schema`: its example or default, else one made from its type,
    /// following references, `allOf`, `oneOf` and `anyOf`.
    fn example_of(&self, schema: &Value, depth: usize) -> Result<Value, String> {
        let schema = self.resolve(schema)?;
        if depth > 8 {
            return Ok(Value::Null);
        }
        for key in ["example", "const", "default"] {
            if let Some(value) = schema.get(key) {
                return Ok(value.clone());
            }
        }
        if let Some(values) = schema.get("examples").and_then(Value::as_array) {
            if let Some(first) = values.first() {
                return Ok(first.clone());
            }
        }
        if let Some(first) = schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|values| values.first())
        {
            return Ok(first.clone());
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            let mut merged = Map::new();
            for part in parts {
                if let Value::Object(object) = self.example_of(part, depth + 1)? {
                    merged.extend(object);
                }
            }
            return Ok(Value::Object(merged));
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(first) = schema
                .get(key)
                .and_then(Value::as_array)
                .and_then(|options| options.first())
            {
                return self.example_of(first, depth + 1);
            }
        }
        let kind = match schema.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            // 3.1: ["string", "null"]: the first that is not null.
            Some(Value::Array(kinds)) => kinds
                .iter()
                .filter_map(Value::as_str)
                .find(|k| *k != "null")
                .unwrap_or("null"),
            _ if schema.get("properties").is_some() => "object",
            _ if schema.get("items").is_some() => "array",
            _ => "object",
        };
        let number = |key: &str| schema.get(key).and_then(Value::as_f64);
        Ok(match kind {
            "object" => {
                let mut object = Map::new();
                if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                    for (name, property) in properties {
                        object.insert(name.clone(), self.example_of(property, depth + 1)?);
                    }
                }
                Value::Object(object)
            }
            "array" => {
                let item = match schema.get("items") {
                    Some(items) => self.example_of(items, depth + 1)?,
                    None => Value::String("item".to_owned()),
                };
                let count = schema
                    .get("minItems")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
                    .clamp(1, 3);
                Value::Array(vec![item; count as usize])
            }
            "integer" => {
                let minimum = number("minimum").map_or(0, |m| m.ceil() as i64);
                let exclusive = number("exclusiveMinimum").map(|m| m.floor() as i64 + 1);
                json!(exclusive.map_or(minimum, |e| e.max(minimum)))
            }
            "number" => json!(number("minimum").unwrap_or(0.0)),
            "boolean" => json!(true),
            "null" => Value::Null,
            _ => {
                let text = match schema.get("format").and_then(Value::as_str) {
                    Some("date-time") => "2026-01-01T00:00:00Z".to_owned(),
                    Some("date") => "2026-01-01".to_owned(),
                    Some("email") => "developer@example.com".to_owned(),
                    Some("uuid") => "00000000-0000-4000-8000-000000000000".to_owned(),
                    Some("uri") | Some("url") => "https://example.com/".to_owned(),
                    Some("ipv4") => "192.0.2.1".to_owned(),
                    _ => "string".to_owned(),
                };
                let minimum = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
                let maximum = schema
                    .get("maxLength")
                    .and_then(Value::as_u64)
                    .map(|m| m as usize);
                let mut text = text;
                while text.chars().count() < minimum {
                    text.push('x');
                }
                if let Some(maximum) = maximum {
                    text = text.chars().take(maximum).collect();
                }
                Value::String(text)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mocks_use_examples_that_conform_and_make_values_from_schemas() {
        let document = json!({
            "openapi": "3.0.3",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/books/{id}": {"get": {
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                    "responses": {
                        "404": {"description": "missing"},
                        "200": {"description": "a book",
                                "headers": {"x-rate": {"schema": {"type": "integer", "minimum": 5}}},
                                "content": {"application/json": {
                                    "schema": {"$ref": "#/components/schemas/Book"},
                                    // Wrong: title must be a string; the mock makes one instead.
                                    "example": {"id": 1, "title": 7}}}}}}},
                "/books": {"post": {"responses": {"201": {"description": "made", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "format": "uuid"}}},
                    "examples": {"one": {"value": {"id": "9b2f7c1e-4a53-4c8e-9f0a-2d6b1e3c5a7d"}}}}}}}}}
            },
            "components": {"schemas": {"Book": {"type": "object", "required": ["id", "title", "tags"],
                "properties": {"id": {"type": "integer", "minimum": 1}, "title": {"type": "string", "minLength": 3},
                               "tags": {"type": "array", "items": {"type": "string", "enum": ["sf", "classic"]}},
                               "published": {"type": "string", "format": "date", "nullable": true}}}}}
        });
        let api = OpenApiDocument::from_value(document).unwrap();
        let none = HeaderMap::new();
        let answer = api.mock(&Method::GET, "/books/12", None, &none).unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.conforms);
        let body: Value = serde_json::from_slice(&answer.body.as_ref().unwrap().1).unwrap();
        assert_eq!(
            body,
            json!({"id": 1, "title": "string", "tags": ["sf"], "published": "2026-01-01"})
        );
        assert_eq!(answer.headers[0].1, "5");
        let created = api.mock(&Method::POST, "/books", None, &none).unwrap();
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(
            &created.body.as_ref().unwrap().1[..],
            br#"{"id":"9b2f7c1e-4a53-4c8e-9f0a-2d6b1e3c5a7d"}"#
        );
        let refused = api
            .mock(&Method::GET, "/books/twelve", None, &none)
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            api.mock(&Method::GET, "/authors", None, &none)
                .unwrap_err()
                .status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn nullable_becomes_a_null_type() {
        let mut schema = json!({"type": "string", "nullable": true, "properties": {"a": {"type": "integer", "nullable": true}}});
        translate_nullable(&mut schema);
        assert_eq!(schema["type"], json!(["string", "null"]));
        assert_eq!(
            schema["properties"]["a"]["type"],
            json!(["integer", "null"])
        );
        assert!(schema.get("nullable").is_none());
    }
}
