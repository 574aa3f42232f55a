//! Route transformations at run time: header and query edits, status mapping, and jq
//! programs over JSON bodies. The programs run in jaq (jq's language, compiled once per
//! snapshot) with the natives that reach outside the document (`env`, `halt`, logging)
//! replaced by errors.

use std::collections::HashMap;

use bytes::Bytes;
use gatehouse_config::{Edits, TransformConfig};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use jaq_core::load::{lex, parse, Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, Cv, Error, Exn, Native, ValXs, Vars};
use jaq_json::Val;

use crate::body::{self, BoxError, ProxyBody};
use crate::error::GatewayError;

type Data = data::JustLut<Val>;

/// Natives a gateway's programs must not reach: the process environment, exiting the
/// process, and writing to its stderr. The standard definitions refer to them, so they
/// are replaced rather than left out.
const REFUSED_NATIVES: [&str; 4] = ["env", "halt", "stderr_empty", "debug_empty"];

fn refused<'a>(_: Cv<'a, Data>) -> ValXs<'a, Val> {
    Box::new(std::iter::once(Err(Exn::from(Error::str(
        "not available in gateway programs",
    )))))
}

/// A compiled jq program.
pub struct JqProgram {
    filter: jaq_core::Filter<Data>,
}

impl std::fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JqProgram")
    }
}

impl JqProgram {
    /// Compile `code`; the error says what is wrong and where in the program.
    pub fn compile(code: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .map(|(name, arity, native)| {
                if REFUSED_NATIVES.contains(&name) {
                    (name, arity, Native::<Data>::new(refused))
                } else {
                    (name, arity, native)
                }
            });
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errors| {
                let messages: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, error)| load_error(code, error))
                    .collect();
                messages.join("; ")
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let messages: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, undefined)| undefined)
                    .map(|(name, _)| format!("`{name}` is not defined"))
                    .collect();
                messages.join("; ")
            })?;
        Ok(Self { filter })
    }

    /// Run on one value: the program must produce exactly one.
    pub fn run(&self, input: Val) -> Result<Val, String> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input));
        let first = match outputs.next() {
            None => return Err("the program produced no value".into()),
            Some(Ok(value)) => value,
            Some(Err(exception)) => return Err(describe(exception)),
        };
        match outputs.next() {
            None => Ok(first),
            Some(Err(exception)) => Err(describe(exception)),
            Some(Ok(_)) => Err("the program produced more than one value".into()),
        }
    }
}

/// Parse a JSON document for a program.
pub fn parse_json(bytes: &[u8]) -> Result<Val, String> {
    jaq_json::read::parse_single(bytes).map_err(|e| format!("the body is not JSON: {e}"))
}

/// Serialize a program's result.
pub fn to_json(value: &Val) -> Bytes {
    Bytes::from(value.to_string())
}

fn describe(exception: Exn<'_, Val>) -> String {
    match exception.get_err() {
        Ok(error) => format!("the program failed: {error}"),
        Err(_) => "the program stopped".into(),
    }
}

fn load_error(code: &str, error: jaq_core::load::Error<&str>) -> Vec<String> {
    let at = |rest: &str| {
        let offset = code.len().saturating_sub(rest.len());
        let before = &code[..offset.min(code.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("program line {line}, column {column}")
    };
    match error {
        jaq_core::load::Error::Io(errors) => errors.into_iter().map(|(_, e)| e).collect(),
        jaq_core::load::Error::Lex(errors) => errors
            .into_iter()
            .map(|(expected, rest)| {
                let expected = match expected {
                    lex::Expect::Delim(open) => format!("the `{open}` opened here to be closed"),
                    other => format!("{other:?}").to_lowercase(),
                };
                format!("expected {expected} ({})", at(rest))
            })
            .collect(),
        jaq_core::load::Error::Parse(errors) => errors
            .into_iter()
            .map(|(expected, rest): (parse::Expect<&str>, &str)| {
                format!("expected {} ({})", expected.as_str(), at(rest))
            })
            .collect(),
    }
}

/// Header edits, names and values checked once.
#[derive(Default)]
struct HeaderEdits {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    fn new(edits: &Edits) -> Result<Self, String> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("invalid header name `{n}`"))
        };
        let value =
            |v: &str| HeaderValue::from_str(v).map_err(|_| format!("invalid header value `{v}`"));
        Ok(Self {
            remove: edits
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            rename: edits
                .rename
                .iter()
                .map(|(from, to)| Ok((name(from)?, name(to)?)))
                .collect::<Result<_, String>>()?,
            set: edits
                .set
                .iter()
                .map(|(n, v)| Ok((name(n)?, value(v)?)))
                .collect::<Result<_, String>>()?,
            add: edits
                .add
                .iter()
                .map(|(n, v)| Ok((name(n)?, value(v)?)))
                .collect::<Result<_, String>>()?,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (from, to) in &self.rename {
            if let header::Entry::Occupied(entry) = headers.entry(from) {
                let (_, values) = entry.remove_entry_mult();
                let values: Vec<HeaderValue> = values.collect();
                headers.remove(to);
                for value in values {
                    headers.append(to, value);
                }
            }
        }
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
    }
}

/// A route's `transform`, compiled.
pub struct RouteTransform {
    request_headers: HeaderEdits,
    query: Edits,
    request_body: Option<JqProgram>,
    status: HashMap<u16, StatusCode>,
    response_headers: HeaderEdits,
    response_body: Option<JqProgram>,
    max_body: usize,
}

/// A problem compiling a route's transform: which option, and what.
pub struct TransformProblem {
    pub location: gatehouse_config::Location,
    pub message: String,
}

impl RouteTransform {
    pub fn new(config: &TransformConfig) -> Result<Self, Vec<TransformProblem>> {
        let mut problems = Vec::new();
        let mut program = |which: &str, code: &Option<gatehouse_config::Spanned<String>>| {
            let code = code.as_ref()?;
            match JqProgram::compile(&code.value) {
                Ok(program) => Some(program),
                Err(message) => {
                    problems.push(TransformProblem {
                        location: code.referenced,
                        message: format!("`transform.{which}.body`: {message}"),
                    });
                    None
                }
            }
        };
        let request_body = program("request", &config.request.body);
        let response_body = program("response", &config.response.body);
        let headers = |edits: &Edits| HeaderEdits::new(edits).unwrap_or_default();
        let transform = Self {
            request_headers: headers(&config.request.headers),
            query: config.request.query.clone(),
            request_body,
            status: config
                .response
                .status
                .iter()
                .filter_map(|(from, to)| Some((*from, StatusCode::from_u16(*to).ok()?)))
                .collect(),
            response_headers: headers(&config.response.headers),
            response_body,
            max_body: config.max_body.0 as usize,
        };
        if problems.is_empty() {
            Ok(transform)
        } else {
            Err(problems)
        }
    }

    /// Headers and query of the request to forward. A response program needs the body
    /// as it is, so the upstream is not offered compression.
    pub fn edit_request_head(&self, parts: &mut request::Parts) {
        self.request_headers.apply(&mut parts.headers);
        if self.response_body.is_some() {
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        if !self.query.is_empty() {
            edit_request_query(parts, &self.query);
        }
    }

    /// Whether JSON request bodies go through a request program.
    pub fn rewrites_request_body(&self) -> bool {
        self.request_body.is_some()
    }

    /// Largest body read whole for a program.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The request body after the request program.
    pub fn rewrite_request(&self, bytes: Bytes) -> Result<Bytes, GatewayError> {
        let Some(program) = &self.request_body else {
            return Ok(bytes);
        };
        let rewritten = parse_json(&bytes)
            .and_then(|value| program.run(value))
            .map_err(|detail| GatewayError::Transform {
                status: StatusCode::BAD_REQUEST,
                detail: format!("request transform: {detail}"),
                step: None,
            })?;
        Ok(to_json(&rewritten))
    }

    /// The response after the status map, header edits and response program. `head`:
    /// the request was a HEAD (no body to rewrite).
    pub async fn response(
        &self,
        response: Response<ProxyBody>,
        head: bool,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let (mut parts, body) = response.into_parts();
        if let Some(status) = self.status.get(&parts.status.as_u16()) {
            parts.status = *status;
        }
        if !self.response_headers.is_empty() {
            self.response_headers.apply(&mut parts.headers);
        }
        let Some(program) = self
            .response_body
            .as_ref()
            .filter(|_| is_json(&parts.headers))
        else {
            return Ok(Response::from_parts(parts, body));
        };
        if head {
            // The length of a GET's rewritten body is unknown without running it.
            parts.headers.remove(header::CONTENT_LENGTH);
            return Ok(Response::from_parts(parts, body));
        }
        let bytes = read_response(body, &parts.headers, self.max_body).await?;
        let rewritten = parse_json(&bytes)
            .and_then(|value| program.run(value))
            .map_err(|detail| GatewayError::Transform {
                status: StatusCode::BAD_GATEWAY,
                detail: format!("response transform: {detail}"),
                step: None,
            })?;
        let bytes = to_json(&rewritten);
        rewrote_body(&mut parts.headers, bytes.len());
        Ok(Response::from_parts(parts, body::full(bytes)))
    }
}

/// Read a request body whole for a program: larger than `max` is a 413.
pub async fn read_request<B>(body: B, max: usize) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Ok(Limited::new(body, max)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<LengthLimitError>() {
                GatewayError::PayloadTooLarge { limit: max as u64 }
            } else {
                GatewayError::BadRequest("malformed request body")
            }
        })?
        .to_bytes())
}

/// Read a response body whole for a program, refusing what exceeds `max` or is encoded.
pub async fn read_response(
    body: ProxyBody,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, GatewayError> {
    let failed = |detail: String| GatewayError::Transform {
        status: StatusCode::BAD_GATEWAY,
        detail,
        step: None,
    };
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(failed(
            "response transform: the upstream sent an encoded body".into(),
        ));
    }
    body::read_limited(body, max).await.map_err(|err| {
        failed(format!(
            "response transform: reading the body (at most {max} bytes): {err}"
        ))
    })
}

/// Headers of a body rewritten by the gateway: its new length, and a weak validator.
pub fn rewrote_body(headers: &mut HeaderMap, length: usize) {
    set_length(headers, length);
    if let Some(etag) = headers.get(header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            match HeaderValue::from_bytes(&weak) {
                Ok(weak) => headers.insert(header::ETAG, weak),
                Err(_) => headers.remove(header::ETAG),
            };
        }
    }
}

/// The new length of a body the gateway rewrote.
pub fn set_length(headers: &mut HeaderMap, length: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

/// `application/json` or any `+json` media type.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let media = value.as_bytes().split(|b| *b == b';').next().unwrap_or(&[]);
    let media = media.trim_ascii();
    media.eq_ignore_ascii_case(b"application/json")
        || (media.len() >= 5 && media[media.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// Apply query `edits` to a request's URI.
pub fn edit_request_query(parts: &mut request::Parts, edits: &Edits) {
    let query = edit_query(edits, parts.uri.query());
    set_query(&mut parts.uri, query.as_deref());
}

/// Replace the query of `uri` (`None`: no query), keeping its scheme, authority and path.
pub fn set_query(uri: &mut Uri, query: Option<&str>) {
    let path_and_query = match query {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    *uri = Uri::from_parts(parts).unwrap_or_default();
}

/// The query after `edits` (remove, rename, set, add), re-encoded; `None` when empty.
fn edit_query(edits: &Edits, query: Option<&str>) -> Option<String> {
    let mut pairs: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    pairs.retain(|(name, _)| !edits.remove.contains(name));
    for (from, to) in &edits.rename {
        if pairs.iter().any(|(name, _)| name == from) {
            pairs.retain(|(name, _)| name != to);
            for (name, _) in pairs.iter_mut().filter(|(name, _)| name == from) {
                name.clone_from(to);
            }
        }
    }
    for (name, value) in &edits.set {
        pairs.retain(|(n, _)| n != name);
        pairs.push((name.clone(), value.clone()));
    }
    for (name, value) in &edits.add {
        pairs.push((name.clone(), value.clone()));
    }
    if pairs.is_empty() {
        return None;
    }
    Some(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(code: &str, input: &str) -> Result<String, String> {
        let program = JqProgram::compile(code)?;
        let value = program.run(parse_json(input.as_bytes())?)?;
        Ok(value.to_string())
    }

    #[test]
    fn programs_run_on_json_and_keep_large_numbers() {
        assert_eq!(
            run(
                "{name: (.first + \" \" + .last), id}",
                r#"{"first":"Ada","last":"Lovelace","id":12345678901234567890}"#
            )
            .unwrap(),
            r#"{"name":"Ada Lovelace","id":12345678901234567890}"#
        );
    }

    #[test]
    fn programs_must_yield_one_value_and_cannot_reach_the_process() {
        assert!(run(".[]", "[1,2]").unwrap_err().contains("more than one"));
        assert!(run("empty", "1").unwrap_err().contains("no value"));
        assert!(run("error(\"boom\")", "1").unwrap_err().contains("boom"));
        for denied in ["env", "halt", "halt_error", "debug", "stderr"] {
            let error = run(denied, "1").unwrap_err();
            assert!(error.contains("not available"), "{denied}: {error}");
        }
        assert!(JqProgram::compile("$ENV")
            .unwrap_err()
            .contains("not defined"));
        assert!(JqProgram::compile("input")
            .unwrap_err()
            .contains("not defined"));
    }

    #[test]
    fn syntax_errors_say_where() {
        let error = JqProgram::compile("{a: .b,\n  c: (.d | .[0)}").unwrap_err();
        assert!(error.contains("program line 2"), "{error}");
    }

    #[test]
    fn json_media_types() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonl"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn query_edits_apply_in_order() {
        let edits = Edits {
            remove: vec!["utm".into()],
            rename: [("q".to_owned(), "search".to_owned())].into(),
            set: [("limit".to_owned(), "10".to_owned())].into(),
            add: [("tag".to_owned(), "a b".to_owned())].into(),
        };
        assert_eq!(
            edit_query(&edits, Some("q=shoes&utm=x&limit=500&tag=z")).as_deref(),
            Some("search=shoes&tag=z&limit=10&tag=a+b")
        );
        let only_remove = Edits {
            remove: vec!["utm".into()],
            ..Edits::default()
        };
        assert_eq!(edit_query(&only_remove, Some("utm=1")), None);
    }

    #[test]
    fn header_edits_apply_in_order() {
        let edits = HeaderEdits::new(&Edits {
            remove: vec!["x-internal".into()],
            rename: [("x-old".to_owned(), "x-new".to_owned())].into(),
            set: [("x-set".to_owned(), "1".to_owned())].into(),
            add: [("x-add".to_owned(), "2".to_owned())].into(),
        })
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-internal", HeaderValue::from_static("secret"));
        headers.append("x-old", HeaderValue::from_static("a"));
        headers.append("x-old", HeaderValue::from_static("b"));
        headers.insert("x-new", HeaderValue::from_static("replaced"));
        headers.insert("x-set", HeaderValue::from_static("0"));
        headers.insert("x-add", HeaderValue::from_static("1"));
        edits.apply(&mut headers);
        assert!(!headers.contains_key("x-internal") && !headers.contains_key("x-old"));
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-new"), ["a", "b"]);
        assert_eq!(all("x-set"), ["1"]);
        assert_eq!(all("x-add"), ["1", "2"]);
    }
}
