use std::path::Path;

use serde_saphyr::{Error as YamlError, MessageFormatter};

use crate::model::Config;
use crate::problem::{ConfigErrors, Problem};
use crate::validate::{did_you_mean, validate};

/// Read, substitute, parse and validate a configuration file.
pub fn load_file(path: &Path) -> Result<(Config, String), ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigErrors::single(
            &origin,
            Problem::new(0, 0, format!("cannot read file: {err}")),
        )
    })?;
    let mut config = parse_str(&text, &origin)?;
    config.base_dir = path.parent().map(Path::to_path_buf);
    Ok((config, text))
}

/// Parse and validate configuration text; `origin` names it in error lines.
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let substituted =
        substitute_env(text, &|name| std::env::var(name).ok()).map_err(|problems| {
            ConfigErrors {
                file: origin.to_owned(),
                problems,
            }
        })?;
    let config: Config = if substituted.trim().is_empty() {
        Config::default()
    } else {
        serde_saphyr::from_str(&substituted)
            .map_err(|err| ConfigErrors::single(origin, yaml_problem(&err, &substituted)))?
    };
    let problems = validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors {
            file: origin.to_owned(),
            problems,
        })
    }
}

fn yaml_problem(err: &YamlError, text: &str) -> Problem {
    let err = err.without_snippet();
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = match err {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let mut message = format!("unknown field `{field}`");
            match did_you_mean(field, expected.iter().copied()) {
                Some(best) => message.push_str(&format!(", did you mean `{best}`?")),
                None if !expected.is_empty() => {
                    message.push_str(&format!(", expected one of: {}", expected.join(", ")))
                }
                None => {}
            }
            message
        }
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let mut message = format!("unknown value `{variant}`");
            match did_you_mean(variant, expected.iter().copied()) {
                Some(best) => message.push_str(&format!(", did you mean `{best}`?")),
                None => message.push_str(&format!(", expected one of: {}", expected.join(", "))),
            }
            message
        }
        YamlError::InvalidScalar { ty, .. } => {
            let expected = match *ty {
                "bool" => "true or false",
                "f32" | "f64" => "a number",
                "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number that is not negative",
                "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
                other => other,
            };
            match scalar_at(text, line, column) {
                Some(found) => format!("expected {expected}, found `{found}`"),
                None => format!("expected {expected}"),
            }
        }
        other => serde_saphyr::DefaultMessageFormatter
            .format_message(other)
            .into_owned(),
    };
    Problem::new(line, column, message)
}

/// The plain scalar that starts at a 1-based line and column, for error messages.
fn scalar_at(text: &str, line: u64, column: u64) -> Option<&str> {
    let line_text = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let start = line_text
        .char_indices()
        .nth(usize::try_from(column).ok()?.checked_sub(1)?)?
        .0;
    let rest = &line_text[start..];
    let end = rest.find([',', '}', ']', '#']).unwrap_or(rest.len());
    Some(rest[..end].trim()).filter(|s| !s.is_empty())
}

/// Replace `${NAME}` (or `${NAME:-default}`) with the environment value; `$${` is a literal `${`.
/// A variable that is unset and has no default is a problem at its position.
fn substitute_env(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        let mut column = 1u64;
        while let Some(start) = rest.find("${") {
            if start > 0 && rest.as_bytes()[start - 1] == b'$' {
                out.push_str(&rest[..start - 1]);
                out.push_str("${");
                column += rest[..start + 2].chars().count() as u64;
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let at = column + rest[..start].chars().count() as u64;
            let Some(end) = rest[start..].find('}') else {
                problems.push(Problem::new(
                    index as u64 + 1,
                    at,
                    "unterminated `${`: write `${NAME}`, or `$${` for a literal",
                ));
                rest = &rest[start + 2..];
                continue;
            };
            let inner = &rest[start + 2..start + end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid_name =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            match (valid_name, lookup(name), default) {
                (false, _, _) => problems.push(Problem::new(
                    index as u64 + 1,
                    at,
                    format!("`${{{inner}}}` is not a valid environment variable reference"),
                )),
                (true, Some(value), _) => out.push_str(&value),
                (true, None, Some(default)) => out.push_str(default),
                (true, None, None) => problems.push(Problem::new(
                    index as u64 + 1,
                    at,
                    format!("environment variable `{name}` is not set"),
                )),
            }
            column = at + rest[start..start + end + 1].chars().count() as u64;
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The JSON Schema of the configuration, pretty-printed (`gatehouse schema`).
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Config);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The configuration text, `${ENV}` substituted, as a JSON value: for roles that build a
/// configuration from a user's file plus generated parts (the sidecar).
pub fn parse_value(text: &str, origin: &str) -> Result<serde_json::Value, ConfigErrors> {
    let substituted =
        substitute_env(text, &|name| std::env::var(name).ok()).map_err(|problems| {
            ConfigErrors {
                file: origin.to_owned(),
                problems,
            }
        })?;
    if substituted.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_saphyr::from_str(&substituted)
        .map_err(|err| ConfigErrors::single(origin, yaml_problem(&err, &substituted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn substitutes_variables_defaults_and_escapes() {
        let out = substitute_env("a: ${TOKEN}\nb: ${MISSING:-x}\nc: $${TOKEN}\n", &env).unwrap();
        assert_eq!(out, "a: s3cret\nb: x\nc: ${TOKEN}\n");
    }

    #[test]
    fn reports_unset_variables_with_position() {
        let problems = substitute_env("a: 1\nb: ${NOPE}\n", &env).unwrap_err();
        assert_eq!(
            problems,
            vec![Problem::new(2, 4, "environment variable `NOPE` is not set")]
        );
    }

    #[test]
    fn unknown_field_suggests_the_closest() {
        let err = parse_str(
            "listeners:\n  - name: a\n    lisen: 127.0.0.1:1\n",
            "f.yaml",
        )
        .unwrap_err();
        assert_eq!(
            err.lines(),
            vec!["f.yaml:3:5: unknown field `lisen`, did you mean `listen`?"]
        );
    }
}
