//! Checks of rate-limit policies, the Redis connection and concurrency limits.

use std::collections::BTreeMap;

use crate::model::{Config, RouteConfig};
use crate::problem::Problem;
use crate::traffic::{LimitAlgorithm, LimitMode};
use serde_saphyr::{Location, Spanned};

use super::did_you_mean;

/// Key parts a limit may count by; `header:NAME` and `claim:NAME` take a name.
pub const LIMIT_KEYS: [&str; 6] = [
    "consumer",
    "credential",
    "client_ip",
    "route",
    "header:",
    "claim:",
];

pub(crate) fn validate_traffic(config: &Config, problems: &mut Vec<Problem>) {
    let cache = &config.cache;
    if cache.max_size.0 == 0 || cache.max_object_size.0 == 0 {
        problems.push(Problem::new(
            0,
            0,
            "`cache.max_size` and `cache.max_object_size` must be above zero",
        ));
    } else if cache.max_object_size.0 > cache.max_size.0 {
        problems.push(Problem::new(
            0,
            0,
            "`cache.max_object_size` is larger than `cache.max_size`",
        ));
    }
    if cache.redis && config.redis.is_none() {
        problems.push(Problem::new(
            0,
            0,
            "`cache.redis` shares the cache through Redis, but no top-level `redis` is configured",
        ));
    }
    if !super::auth::is_header_name(&cache.tag_header) {
        problems.push(Problem::new(
            0,
            0,
            format!(
                "`cache.tag_header`: `{}` is not a valid header name",
                cache.tag_header
            ),
        ));
    }
    for (name, quota) in &config.quotas {
        let at = &quota.referenced;
        if quota.value.requests == 0 {
            problems.push(Problem::at(
                at,
                format!("quota `{name}`: `requests` must be at least 1"),
            ));
        }
        match quota.value.mode {
            LimitMode::Cluster if config.redis.is_none() => problems.push(Problem::at(
                at,
                format!("quota `{name}` is in cluster mode but no `redis` is configured"),
            )),
            LimitMode::Local if config.quota_store.is_none() => problems.push(Problem::at(
                at,
                format!("quota `{name}` is local: set `quota_store.path` so its counts survive a restart"),
            )),
            _ => {}
        }
        for part in &quota.value.key {
            check_key_part(part, problems);
        }
    }
    for consumer in &config.consumers {
        for policy in consumer.quotas.keys() {
            if !config.quotas.contains_key(policy) {
                let mut message = format!(
                    "consumer `{}` overrides undefined quota `{policy}`",
                    consumer.id.value
                );
                if let Some(best) = did_you_mean(policy, config.quotas.keys().map(String::as_str)) {
                    message.push_str(&format!(", did you mean `{best}`?"));
                }
                problems.push(Problem::at(&consumer.id.referenced, message));
            }
        }
    }
    if let Some(store) = &config.quota_store {
        if store.flush_interval.0.is_zero() {
            problems.push(Problem::at(
                &store.path.referenced,
                "`quota_store.flush_interval` must be greater than 0",
            ));
        }
    }
    if let Some(redis) = &config.redis {
        let url = &redis.url.value;
        if url.starts_with("rediss://") {
            problems.push(Problem::at(
                &redis.url.referenced,
                "TLS to Redis (`rediss://`) is not supported yet; use `redis://` on a trusted network",
            ));
        } else if !url.starts_with("redis://") && !url.starts_with("redis+unix://") {
            problems.push(Problem::at(
                &redis.url.referenced,
                format!("`{url}` is not a Redis URL like redis://127.0.0.1:6379"),
            ));
        }
        if redis.timeout.0.is_zero() {
            problems.push(Problem::at(
                &redis.url.referenced,
                "`redis.timeout` must be greater than 0",
            ));
        }
    }
    if let Some(store) = &config.store {
        if store.plan_limits == LimitMode::Cluster && config.redis.is_none() {
            problems.push(Problem::at(
                &store.url.referenced,
                "`store.plan_limits: cluster` needs the top-level `redis`",
            ));
        }
        if store.usage_flush_interval.0.is_zero() {
            problems.push(Problem::at(
                &store.url.referenced,
                "`store.usage_flush_interval` must be greater than 0",
            ));
        }
        if let Some(webhook) = &store.usage_webhook {
            if let Err(message) = super::auth::check_url(&webhook.url.value) {
                problems.push(Problem::at(&webhook.url.referenced, message));
            }
            if webhook.secret.value.0.len() < 16 {
                problems.push(Problem::at(
                    &webhook.secret.referenced,
                    "the usage webhook's `secret` must be at least 16 characters",
                ));
            }
        }
    }
    if let Some(portal) = &config.portal {
        let at = &portal.listen.referenced;
        if config.store.is_none() {
            problems.push(Problem::at(at, "`portal` needs `store`"));
        }
        if config.authentication.api_key_secret.is_none() {
            problems.push(Problem::at(
                at,
                "`portal` issues API keys: it needs `authentication.api_key_secret`",
            ));
        }
        if portal.listen.value.parse::<std::net::SocketAddr>().is_err() {
            problems.push(Problem::at(
                at,
                format!(
                    "`{}` is not a socket address like 127.0.0.1:8081",
                    portal.listen.value
                ),
            ));
        }
        for url in [&portal.public_url, &portal.gateway_url]
            .into_iter()
            .flatten()
        {
            if let Err(message) = super::auth::check_url(url) {
                problems.push(Problem::at(at, message));
            }
        }
        if portal.rotation_overlaps.is_empty() {
            problems.push(Problem::at(
                at,
                "`portal.rotation_overlaps` must list at least one duration",
            ));
        }
        let mailer = &portal.mailer;
        if mailer.kind == crate::model::MailerKind::Smtp && mailer.smtp.is_none() {
            problems.push(Problem::at(
                at,
                "`portal.mailer.kind: smtp` needs `portal.mailer.smtp`",
            ));
        }
        if let Some(smtp) = &mailer.smtp {
            if smtp.username.is_some() != smtp.password.is_some() {
                problems.push(Problem::at(
                    at,
                    "`portal.mailer.smtp` needs both `username` and `password`, or neither",
                ));
            }
        }
        if portal.session_ttl.0.is_zero() {
            problems.push(Problem::at(
                at,
                "`portal.session_ttl` must be greater than 0",
            ));
        }
    }
    for (name, policy) in &config.rate_limits {
        let at = &policy.referenced;
        let policy = &policy.value;
        if policy.limits.is_empty() {
            problems.push(Problem::at(
                at,
                format!("rate-limit policy `{name}` has no limits"),
            ));
        }
        if policy.mode == LimitMode::Cluster && config.redis.is_none() {
            problems.push(Problem::at(
                at,
                format!(
                    "rate-limit policy `{name}` is in cluster mode but no `redis` is configured"
                ),
            ));
        }
        for (index, limit) in policy.limits.iter().enumerate() {
            let label = limit
                .name
                .clone()
                .unwrap_or_else(|| format!("{name}-{index}"));
            if limit.requests == 0 {
                problems.push(Problem::at(
                    at,
                    format!("limit `{label}`: `requests` must be at least 1"),
                ));
            }
            if limit.per.0.as_millis() == 0 {
                problems.push(Problem::at(
                    at,
                    format!("limit `{label}`: `per` must be at least 1ms"),
                ));
            }
            match (limit.algorithm, limit.burst) {
                (LimitAlgorithm::Gcra, Some(0)) => problems.push(Problem::at(
                    at,
                    format!("limit `{label}`: `burst` must be at least 1"),
                )),
                (LimitAlgorithm::SlidingWindow, Some(_)) => problems.push(Problem::at(
                    at,
                    format!("limit `{label}`: `burst` applies to `gcra` only"),
                )),
                _ => {}
            }
            for part in &limit.key {
                check_key_part(part, problems);
            }
        }
    }
}

fn check_key_part(part: &Spanned<String>, problems: &mut Vec<Problem>) {
    let value = part.value.as_str();
    let named = value
        .strip_prefix("header:")
        .or_else(|| value.strip_prefix("claim:"));
    match named {
        Some("") => problems.push(Problem::at(
            &part.referenced,
            format!("`{value}` needs a name after the colon"),
        )),
        Some(_) => {}
        None if LIMIT_KEYS.contains(&value) => {}
        None => {
            let mut message = format!(
                "unknown limit key `{value}` (consumer, credential, client_ip, route, header:NAME, claim:NAME)"
            );
            if let Some(best) = did_you_mean(value, LIMIT_KEYS) {
                message.push_str(&format!(", did you mean `{best}`?"));
            }
            problems.push(Problem::at(&part.referenced, message));
        }
    }
}

pub(crate) fn validate_route_traffic(
    route: &RouteConfig,
    label: &str,
    policies: &BTreeMap<String, Spanned<crate::traffic::RateLimitPolicy>>,
    quotas: &BTreeMap<String, Spanned<crate::traffic::QuotaConfig>>,
    services: &[&str],
    specs: &[&str],
    problems: &mut Vec<Problem>,
) {
    let at = &route.matches.referenced;
    if let Some(shaping) = &route.request {
        for method in &shaping.methods {
            if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
                problems.push(Problem::at(
                    at,
                    format!(
                        "route `{label}`: method `{method}` must be an uppercase token like GET"
                    ),
                ));
            }
        }
        for media in &shaping.content_types {
            let valid = media.split_once('/').is_some_and(|(kind, sub)| {
                !kind.is_empty() && !sub.is_empty() && !media.contains([';', ' ', ','])
            });
            if !valid {
                problems.push(Problem::at(
                    at,
                    format!("route `{label}`: `{media}` is not a media type like application/json or text/*"),
                ));
            }
        }
    }
    if let Some(cors) = &route.cors {
        if cors.allow_origins.is_empty() {
            problems.push(Problem::at(
                at,
                format!("route `{label}`: `cors.allow_origins` is empty"),
            ));
        }
        for origin in &cors.allow_origins {
            let value = origin.value.as_str();
            let valid = value == "*"
                || value.split_once("://").is_some_and(|(scheme, host)| {
                    !scheme.is_empty()
                        && !host.is_empty()
                        && (!host.contains('*')
                            || (host.starts_with("*.") && !host[2..].contains('*')))
                });
            if !valid {
                problems.push(Problem::at(
                    &origin.referenced,
                    format!("origin `{value}` must be `*`, `scheme://host[:port]` or `scheme://*.domain`"),
                ));
            }
        }
    }
    if let Some(cache) = &route.cache {
        if !route.forwards() {
            problems.push(Problem::at(
                at,
                format!("route `{label}`: `cache` needs a `service` to forward to"),
            ));
        }
        if cache.ttl.is_some_and(|ttl| ttl.0.is_zero()) {
            problems.push(Problem::at(
                at,
                format!("route `{label}`: `cache.ttl` must be above zero"),
            ));
        }
        for name in &cache.key_headers {
            super::auth::check_header_name(name, at, problems);
        }
        for (option, window) in [
            ("stale_while_revalidate", cache.stale_while_revalidate),
            ("stale_if_error", cache.stale_if_error),
        ] {
            if window.is_some_and(|w| w.0.is_zero()) {
                problems.push(Problem::at(
                    at,
                    format!("route `{label}`: `cache.{option}` must be above zero"),
                ));
            }
        }
    }
    if let Some(transform) = &route.transform {
        check_transform(transform, label, at, !route.forwards(), problems);
    }
    if let Some(mirror) = &route.mirror {
        if !services.contains(&mirror.service.value.as_str()) {
            let mut message = format!(
                "route `{label}` mirrors to undefined service `{}`",
                mirror.service.value
            );
            if let Some(best) = did_you_mean(&mirror.service.value, services.iter().copied()) {
                message.push_str(&format!(", did you mean `{best}`?"));
            }
            problems.push(Problem::at(&mirror.service.referenced, message));
        }
        if !(0.0..=100.0).contains(&mirror.percent) {
            problems.push(Problem::at(
                &mirror.service.referenced,
                format!("mirror percent {} is outside 0..=100", mirror.percent),
            ));
        }
        if mirror.max_in_flight == 0 || mirror.timeout.0.is_zero() {
            problems.push(Problem::at(
                &mirror.service.referenced,
                "mirror `max_in_flight` and `timeout` must be greater than 0",
            ));
        }
    }
    for name in &route.rate_limits {
        if !policies.contains_key(&name.value) {
            let mut message = format!(
                "route `{label}` uses undefined rate-limit policy `{}`",
                name.value
            );
            if let Some(best) = did_you_mean(&name.value, policies.keys().map(String::as_str)) {
                message.push_str(&format!(", did you mean `{best}`?"));
            }
            problems.push(Problem::at(&name.referenced, message));
        }
    }
    if let Some(openapi) = &route.openapi {
        if !specs.contains(&openapi.spec.value.as_str()) {
            let mut message = format!(
                "route `{label}` validates against undefined OpenAPI document `{}`",
                openapi.spec.value
            );
            if let Some(best) = did_you_mean(&openapi.spec.value, specs.iter().copied()) {
                message.push_str(&format!(", did you mean `{best}`?"));
            }
            problems.push(Problem::at(&openapi.spec.referenced, message));
        }
    }
    for name in &route.quotas {
        if !quotas.contains_key(&name.value) {
            let mut message = format!("route `{label}` uses undefined quota `{}`", name.value);
            if let Some(best) = did_you_mean(&name.value, quotas.keys().map(String::as_str)) {
                message.push_str(&format!(", did you mean `{best}`?"));
            }
            problems.push(Problem::at(&name.referenced, message));
        }
    }
    if route.max_in_flight == Some(0) {
        problems.push(Problem::at(
            &route.matches.referenced,
            format!("route `{label}`: `max_in_flight` must be at least 1"),
        ));
    }
}

fn check_transform(
    transform: &crate::transform::TransformConfig,
    label: &str,
    at: &Location,
    no_service: bool,
    problems: &mut Vec<Problem>,
) {
    if no_service {
        problems.push(Problem::at(
            at,
            format!("route `{label}`: `transform` needs a `service` to forward to"),
        ));
    }
    if transform.max_body.0 == 0 {
        problems.push(Problem::at(
            at,
            format!("route `{label}`: `transform.max_body` must be above zero"),
        ));
    }
    let header_edits = [
        ("request.headers", &transform.request.headers),
        ("response.headers", &transform.response.headers),
    ];
    for (place, edits) in header_edits {
        let names = edits
            .remove
            .iter()
            .chain(edits.rename.keys())
            .chain(edits.rename.values())
            .chain(edits.set.keys())
            .chain(edits.add.keys());
        for name in names {
            if !super::auth::is_header_name(name) {
                problems.push(Problem::at(
                    at,
                    format!(
                        "route `{label}`: `transform.{place}`: `{name}` is not a valid header name"
                    ),
                ));
            }
        }
        for value in edits.set.values().chain(edits.add.values()) {
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                problems.push(Problem::at(
                    at,
                    format!("route `{label}`: `transform.{place}`: the value `{}` has control characters", value.escape_debug()),
                ));
            }
        }
    }
    let query = &transform.request.query;
    if query
        .remove
        .iter()
        .chain(query.rename.keys())
        .chain(query.rename.values())
        .chain(query.set.keys())
        .chain(query.add.keys())
        .any(|name| name.is_empty())
    {
        problems.push(Problem::at(
            at,
            format!("route `{label}`: `transform.request.query` has an empty parameter name"),
        ));
    }
    for (from, to) in &transform.response.status {
        for code in [from, to] {
            if !(100..=599).contains(code) {
                problems.push(Problem::at(
                    at,
                    format!("route `{label}`: `transform.response.status`: {code} is not an HTTP status"),
                ));
            }
        }
    }
}
