//! Checks of `apis`, `routes[].api` and `consumers[].api_versions`.

use std::collections::HashSet;

use crate::model::Config;
use crate::problem::Problem;

use super::did_you_mean;

pub(crate) fn validate_apis(config: &Config, problems: &mut Vec<Problem>) {
    let services: Vec<&str> = config
        .services
        .iter()
        .map(|s| s.name.value.as_str())
        .collect();
    for (name, api) in &config.apis {
        if api.versions.is_empty() {
            problems.push(Problem::new(0, 0, format!("api `{name}` has no versions")));
        }
        if api.max_body.0 == 0 {
            problems.push(Problem::new(
                0,
                0,
                format!("api `{name}`: `max_body` must be above zero"),
            ));
        }
        let select = &api.select;
        if !select.header.is_empty() && !super::auth::is_header_name(&select.header) {
            problems.push(Problem::new(
                0,
                0,
                format!(
                    "api `{name}`: `select.header` `{}` is not a valid header name",
                    select.header
                ),
            ));
        }
        if [&select.query, &select.media_type_parameter]
            .into_iter()
            .any(|p| p.as_ref().is_some_and(|p| p.is_empty()))
        {
            problems.push(Problem::new(
                0,
                0,
                format!("api `{name}`: `select.query` and `select.media_type_parameter` must not be empty"),
            ));
        }
        let mut seen = HashSet::new();
        for (index, version) in api.versions.iter().enumerate() {
            let at = &version.name.referenced;
            let label = &version.name.value;
            if label.is_empty() || label.contains(['/', '?', '#', ' ', ',', ';']) {
                problems.push(Problem::at(
                    at,
                    format!("api `{name}`: version name `{label}` must be non-empty, without `/ ? # , ;` or spaces"),
                ));
            }
            if !seen.insert(label.as_str()) {
                problems.push(Problem::at(
                    at,
                    format!("api `{name}`: version `{label}` is listed twice"),
                ));
            }
            if index == 0 && version.changes.is_some() {
                problems.push(Problem::at(
                    at,
                    format!("api `{name}`: the first version `{label}` has no previous version to describe `changes` from"),
                ));
            }
            if let Some(service) = &version.service {
                if !services.contains(&service.value.as_str()) {
                    let mut message = format!(
                        "api `{name}` version `{label}` uses undefined service `{}`",
                        service.value
                    );
                    if let Some(best) = did_you_mean(&service.value, services.iter().copied()) {
                        message.push_str(&format!(", did you mean `{best}`?"));
                    }
                    problems.push(Problem::at(&service.referenced, message));
                }
            }
            for (option, value) in [
                ("deprecated", &version.deprecated),
                ("sunset", &version.sunset),
            ] {
                if let Some(value) = value {
                    if super::auth::parse_rfc3339(value).is_none() {
                        problems.push(Problem::at(
                            at,
                            format!("api `{name}` version `{label}`: `{option}` `{value}` is not an RFC 3339 time like 2025-06-30T00:00:00Z"),
                        ));
                    }
                }
            }
            if let Some(link) = &version.link {
                if let Err(message) = super::auth::check_url(link) {
                    problems.push(Problem::at(
                        at,
                        format!("api `{name}` version `{label}`: `link`: {message}"),
                    ));
                }
            }
        }
        if let Some(default) = &api.default {
            if !api.versions.iter().any(|v| v.name.value == default.value) {
                problems.push(Problem::at(
                    &default.referenced,
                    format!(
                        "api `{name}`: default version `{}` is not one of its versions",
                        default.value
                    ),
                ));
            }
        }
    }
    for (index, route) in config.routes.iter().enumerate() {
        let Some(api) = &route.api else { continue };
        if !config.apis.contains_key(&api.value) {
            let mut message = format!(
                "route `{}` serves undefined api `{}`",
                route.name_or_default(index),
                api.value
            );
            if let Some(best) = did_you_mean(&api.value, config.apis.keys().map(String::as_str)) {
                message.push_str(&format!(", did you mean `{best}`?"));
            }
            problems.push(Problem::at(&api.referenced, message));
        }
        if !route.forwards() {
            problems.push(Problem::at(
                &api.referenced,
                format!(
                    "route `{}`: `api` needs a `service` to forward to",
                    route.name_or_default(index)
                ),
            ));
        }
    }
    for consumer in &config.consumers {
        for (api_name, version) in &consumer.api_versions {
            let at = &consumer.id.referenced;
            match config.apis.get(api_name) {
                None => problems.push(Problem::at(
                    at,
                    format!(
                        "consumer `{}`: `api_versions` names undefined api `{api_name}`",
                        consumer.id.value
                    ),
                )),
                Some(api) if !api.versions.iter().any(|v| &v.name.value == version) => problems
                    .push(Problem::at(
                        at,
                        format!(
                            "consumer `{}`: api `{api_name}` has no version `{version}`",
                            consumer.id.value
                        ),
                    )),
                Some(_) => {}
            }
        }
    }
}
