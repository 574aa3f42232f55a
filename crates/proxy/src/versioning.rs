//! API versions at run time: choosing a request's version, upgrading its JSON body step by
//! step to the version the backend speaks, downgrading the answer step by step back, and
//! the `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and `Link` headers of each version.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gatehouse_config::{ApiConfig, Problem};
use gatehouse_policy::{Consumer, Rejection};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use crate::error::GatewayError;
use crate::transform::{self, JqProgram};
use crate::upstream::Service;

/// One compiled API.
pub struct ApiRuntime {
    pub name: String,
    versions: Vec<VersionRuntime>,
    select_path: bool,
    header: Option<HeaderName>,
    /// `Vary` values of every answer: the selectors a downstream cache must key on.
    vary: Vec<HeaderValue>,
    query: Option<String>,
    media_type_parameter: Option<String>,
    default: usize,
    pub max_body: usize,
}

struct VersionRuntime {
    name: String,
    value: HeaderValue,
    /// Previous version's request body to this version's.
    request: Option<JqProgram>,
    /// This version's response body to the previous version's.
    response: Option<JqProgram>,
    service: Option<Arc<Service>>,
    deprecation: Option<HeaderValue>,
    /// Unix seconds, and the `Sunset` value.
    sunset: Option<(i64, HeaderValue)>,
    links: Vec<HeaderValue>,
}

/// The version chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// The version the client gets.
    pub index: usize,
    /// The version the backend speaks: the first at or after `index` with its own
    /// service, else the newest.
    pub target: usize,
    /// The version was the first segment of the forwarded path (to be removed).
    pub from_path: bool,
}

impl ApiRuntime {
    pub fn compile(
        name: &str,
        config: &ApiConfig,
        services: &HashMap<String, Arc<Service>>,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut versions = Vec::with_capacity(config.versions.len());
        for version in &config.versions {
            let label = &version.name.value;
            let mut program = |which: &str, code: Option<&gatehouse_config::Spanned<String>>| {
                let code = code?;
                match JqProgram::compile(&code.value) {
                    Ok(program) => Some(program),
                    Err(message) => {
                        problems.push(Problem::at(
                            &code.referenced,
                            format!("api `{name}` version `{label}`: `changes.{which}`: {message}"),
                        ));
                        None
                    }
                }
            };
            let changes = version.changes.as_ref();
            let request = program("request", changes.and_then(|c| c.request.as_ref()));
            let response = program("response", changes.and_then(|c| c.response.as_ref()));
            let unix =
                |value: &Option<String>| value.as_deref().and_then(gatehouse_config::parse_rfc3339);
            let deprecated = unix(&version.deprecated);
            let sunset = unix(&version.sunset);
            let mut links = Vec::new();
            if let Some(link) = &version.link {
                if deprecated.is_some() {
                    links.extend(
                        HeaderValue::from_str(&format!(
                            "<{link}>; rel=\"deprecation\"; type=\"text/html\""
                        ))
                        .ok(),
                    );
                }
                if sunset.is_some() {
                    links.extend(HeaderValue::from_str(&format!("<{link}>; rel=\"sunset\"")).ok());
                }
            }
            versions.push(VersionRuntime {
                value: HeaderValue::from_str(label).unwrap_or(HeaderValue::from_static("")),
                name: label.clone(),
                request,
                response,
                service: version
                    .service
                    .as_ref()
                    .and_then(|s| services.get(&s.value).cloned()),
                // RFC 9745: a Structured Field Date, `@` and Unix seconds.
                deprecation: deprecated.and_then(|t| HeaderValue::from_str(&format!("@{t}")).ok()),
                sunset: sunset.and_then(|t| {
                    let at = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
                    Some((t, HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok()?))
                }),
                links,
            });
        }
        let header = (!config.select.header.is_empty())
            .then(|| HeaderName::from_bytes(config.select.header.as_bytes()).ok())
            .flatten();
        let mut vary: Vec<HeaderValue> = header
            .iter()
            .filter_map(|name| HeaderValue::from_str(name.as_str()).ok())
            .collect();
        if config.select.media_type_parameter.is_some() {
            vary.push(HeaderValue::from_static("accept"));
        }
        let default = config
            .default
            .as_ref()
            .and_then(|d| versions.iter().position(|v| v.name == d.value))
            .unwrap_or(versions.len().saturating_sub(1));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            name: name.to_owned(),
            versions,
            select_path: config.select.path,
            header,
            vary,
            query: config.select.query.clone(),
            media_type_parameter: config.select.media_type_parameter.clone(),
            default,
            max_body: config.max_body.0 as usize,
        })
    }

    /// The query parameter naming the version, removed before forwarding.
    pub fn query_parameter(&self) -> Option<&str> {
        self.query.as_deref()
    }

    pub fn version_name(&self, index: usize) -> &str {
        self.versions.get(index).map_or("", |v| v.name.as_str())
    }

    /// Choose the version of a request: the forwarded path's first segment, the header,
    /// the query parameter, the `Accept` parameter, the consumer's pinned version, the
    /// API's default. A version named but unknown, or past its sunset, is refused.
    pub fn select(
        &self,
        forwarded_path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        consumer: Option<&Consumer>,
    ) -> Result<Selected, GatewayError> {
        let from_path = self
            .select_path
            .then(|| forwarded_path.trim_start_matches('/').split('/').next())
            .flatten()
            .and_then(|segment| self.position(segment));
        let named = match from_path {
            Some(index) => Some(index),
            None => self.named_elsewhere(query, headers)?,
        };
        let index = named
            .or_else(|| {
                consumer
                    .and_then(|c| c.api_versions.get(&self.name))
                    .and_then(|v| self.position(v))
            })
            .unwrap_or(self.default);
        let version = &self.versions[index];
        if let Some((sunset, _)) = version.sunset {
            if unix_now() >= sunset {
                let mut rejection = Rejection::new(
                    StatusCode::GONE,
                    "api_version_sunset",
                    format!(
                        "version `{}` of api `{}` is no longer served; use a later version",
                        version.name, self.name
                    ),
                );
                rejection.extensions = Some(serde_json::json!({ "versions": self.names() }));
                for link in &version.links {
                    rejection = rejection.with_header(header::LINK, link.clone());
                }
                return Err(GatewayError::Rejected(rejection));
            }
        }
        let target = (index..self.versions.len())
            .find(|&i| self.versions[i].service.is_some())
            .unwrap_or(self.versions.len() - 1);
        Ok(Selected {
            index,
            target,
            from_path: from_path.is_some(),
        })
    }

    /// A version named by the header, query parameter or `Accept` parameter.
    fn named_elsewhere(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Option<usize>, GatewayError> {
        let mut named: Option<String> = None;
        if let Some(name) = &self.header {
            named = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned());
        }
        if let (None, Some(parameter), Some(query)) = (&named, &self.query, query) {
            named = form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == parameter.as_str())
                .map(|(_, value)| value.into_owned());
        }
        if let (None, Some(parameter)) = (&named, &self.media_type_parameter) {
            named = accept_parameter(headers, parameter);
        }
        match named {
            None => Ok(None),
            Some(name) => match self.position(&name) {
                Some(index) => Ok(Some(index)),
                None => {
                    let mut rejection = Rejection::new(
                        StatusCode::BAD_REQUEST,
                        "unknown_api_version",
                        format!("api `{}` has no version `{name}`", self.name),
                    );
                    rejection.extensions = Some(serde_json::json!({ "versions": self.names() }));
                    Err(GatewayError::Rejected(rejection))
                }
            },
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| v.name == name)
    }

    fn names(&self) -> Vec<&str> {
        self.versions.iter().map(|v| v.name.as_str()).collect()
    }

    /// The request as forwarded: the version query parameter removed, and the version
    /// header naming the version the backend speaks.
    pub fn edit_forwarded_request(&self, selected: Selected, parts: &mut http::request::Parts) {
        if let Some(parameter) = &self.query {
            let named = parts.uri.query().is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes()).any(|(name, _)| name == parameter.as_str())
            });
            if named {
                let edits = gatehouse_config::Edits {
                    remove: vec![parameter.clone()],
                    ..Default::default()
                };
                transform::edit_request_query(parts, &edits);
            }
        }
        if let Some(name) = &self.header {
            parts
                .headers
                .insert(name.clone(), self.versions[selected.target].value.clone());
        }
    }

    /// The service of the version the backend speaks, when it has its own.
    pub fn service(&self, selected: Selected) -> Option<&Arc<Service>> {
        self.versions[selected.target].service.as_ref()
    }

    /// Some step between the client's version and the backend's rewrites requests.
    pub fn upgrades_requests(&self, selected: Selected) -> bool {
        self.steps(selected).any(|v| v.request.is_some())
    }

    /// Some step between the backend's version and the client's rewrites responses.
    pub fn downgrades_responses(&self, selected: Selected) -> bool {
        self.steps(selected).any(|v| v.response.is_some())
    }

    /// The versions after the client's, up to the backend's.
    fn steps(&self, selected: Selected) -> impl DoubleEndedIterator<Item = &VersionRuntime> {
        self.versions[selected.index + 1..=selected.target].iter()
    }

    /// The client's JSON request body upgraded one version at a time to the backend's.
    pub fn upgrade_request(&self, selected: Selected, body: &[u8]) -> Result<Bytes, GatewayError> {
        let failed = |step: String, detail: String| GatewayError::Transform {
            status: StatusCode::BAD_REQUEST,
            detail: format!("upgrading the request: {detail}"),
            step: Some(step),
        };
        let mut previous = &self.versions[selected.index];
        let mut value = transform::parse_json(body)
            .map_err(|detail| failed(format!("{} (request)", previous.name), detail))?;
        for version in self.steps(selected) {
            if let Some(program) = &version.request {
                let step = format!("{} → {} (request)", previous.name, version.name);
                value = program.run(value).map_err(|detail| failed(step, detail))?;
            }
            previous = version;
        }
        Ok(transform::to_json(&value))
    }

    /// The backend's JSON response body downgraded one version at a time to the client's.
    pub fn downgrade_response(
        &self,
        selected: Selected,
        body: &[u8],
    ) -> Result<Bytes, GatewayError> {
        let failed = |step: String, detail: String| GatewayError::Transform {
            status: StatusCode::BAD_GATEWAY,
            detail: format!("downgrading the response: {detail}"),
            step: Some(step),
        };
        let mut value = transform::parse_json(body).map_err(|detail| {
            failed(
                format!("{} (response)", self.versions[selected.target].name),
                detail,
            )
        })?;
        for index in (selected.index + 1..=selected.target).rev() {
            let version = &self.versions[index];
            if let Some(program) = &version.response {
                let step = format!(
                    "{} → {} (response)",
                    version.name,
                    self.versions[index - 1].name
                );
                value = program.run(value).map_err(|detail| failed(step, detail))?;
            }
        }
        Ok(transform::to_json(&value))
    }

    /// The version served, and its deprecation, sunset and changelog, on an answer.
    pub fn response_headers(&self, selected: Selected, headers: &mut HeaderMap) {
        let version = &self.versions[selected.index];
        let name = self
            .header
            .clone()
            .unwrap_or(HeaderName::from_static("api-version"));
        headers.insert(name, version.value.clone());
        if let Some(deprecation) = &version.deprecation {
            headers.insert(HeaderName::from_static("deprecation"), deprecation.clone());
        }
        if let Some((_, sunset)) = &version.sunset {
            headers.insert(HeaderName::from_static("sunset"), sunset.clone());
        }
        for link in &version.links {
            headers.append(header::LINK, link.clone());
        }
        // Shared caches downstream must keep versions apart.
        for value in &self.vary {
            headers.append(header::VARY, value.clone());
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The value of `parameter` in the request's `Accept` media ranges, if any names it.
fn accept_parameter(headers: &HeaderMap, parameter: &str) -> Option<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .flat_map(|range| range.split(';').skip(1))
        .find_map(|param| {
            let (name, value) = param.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case(parameter)
                .then(|| value.trim().trim_matches('"').to_owned())
        })
}

/// The path without its first segment (the version).
pub fn strip_first_segment(path: &str) -> String {
    let rest = path.trim_start_matches('/');
    match rest.find('/') {
        Some(slash) => rest[slash..].to_owned(),
        None => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_parameters_and_path_segments() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "text/html, application/json; charset=utf-8; Version=\"2024-06-01\"",
            ),
        );
        assert_eq!(
            accept_parameter(&headers, "version").as_deref(),
            Some("2024-06-01")
        );
        assert_eq!(accept_parameter(&headers, "v"), None);
        assert_eq!(strip_first_segment("/v1/users/7"), "/users/7");
        assert_eq!(strip_first_segment("/v1"), "/");
    }
}
