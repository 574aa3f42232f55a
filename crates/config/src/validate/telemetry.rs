//! Checks of the access log and tracing settings.

use crate::model::Config;
use crate::problem::Problem;
use crate::telemetry::ACCESS_LOG_FIELDS;

use super::auth::{check_header_name, check_url};
use super::did_you_mean;

pub(crate) fn validate_telemetry(config: &Config, problems: &mut Vec<Problem>) {
    let route_names: Vec<String> = config
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| route.name_or_default(index))
        .collect();
    for name in &config.metrics.per_consumer {
        if name.value != "*" && !route_names.contains(&name.value) {
            let mut message = format!(
                "`metrics.per_consumer` names undefined route `{}`",
                name.value
            );
            if let Some(best) = did_you_mean(&name.value, route_names.iter().map(String::as_str)) {
                message.push_str(&format!(", did you mean `{best}`?"));
            }
            problems.push(Problem::at(&name.referenced, message));
        }
    }
    if let Some(log) = &config.access_log {
        if !(0.0..=1.0).contains(&log.sample) {
            problems.push(Problem::new(
                0,
                0,
                format!("`access_log.sample` {} is outside 0..=1", log.sample),
            ));
        }
        if log.buffer_lines == 0 {
            problems.push(Problem::new(
                0,
                0,
                "`access_log.buffer_lines` must be at least 1",
            ));
        }
        if log.format.value != "json" {
            let placeholders = log
                .format
                .value
                .split('{')
                .skip(1)
                .filter_map(|p| p.split_once('}'));
            for (field, _) in placeholders {
                if !ACCESS_LOG_FIELDS.contains(&field) {
                    let mut message =
                        format!("`access_log.format` uses unknown field `{{{field}}}`");
                    if let Some(best) = did_you_mean(field, ACCESS_LOG_FIELDS) {
                        message.push_str(&format!(", did you mean `{best}`?"));
                    }
                    problems.push(Problem::at(&log.format.referenced, message));
                }
            }
        }
    }
    if let Some(tracing) = &config.tracing {
        if !(0.0..=1.0).contains(&tracing.sample) {
            problems.push(Problem::new(
                0,
                0,
                format!("`tracing.sample` {} is outside 0..=1", tracing.sample),
            ));
        }
        let otlp = &tracing.otlp;
        let at = &otlp.endpoint.referenced;
        if let Err(message) = check_url(&otlp.endpoint.value) {
            problems.push(Problem::at(
                at,
                format!("`tracing.otlp.endpoint` {message}"),
            ));
        }
        for name in otlp.headers.keys() {
            check_header_name(name, at, problems);
        }
        if otlp.max_batch == 0 || otlp.max_queue == 0 {
            problems.push(Problem::at(
                at,
                "`tracing.otlp.max_batch` and `max_queue` must be at least 1",
            ));
        }
        if otlp.timeout.0.is_zero() {
            problems.push(Problem::at(at, "`tracing.otlp.timeout` must be above zero"));
        }
    }
}
