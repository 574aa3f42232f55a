//! Path templates of `google.api.http` rules:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{name}` is `{name=*}`. `**` matches the rest of the path and must come last.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: one segment.
    Single,
    /// `**`: any number of segments, to the end.
    Rest,
}

#[derive(Debug, Clone)]
struct Variable {
    /// The request field the value goes into (`book.name` → `["book", "name"]`).
    field_path: Vec<String>,
    /// The segments it covers.
    start: usize,
    end: usize,
}

#[derive(Debug, Clone)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// A matched variable: the field path and its percent-decoded value.
pub type Binding = (Vec<String>, String);

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("path template `{template}`: {why}");
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| invalid("must start with `/`"))?;
        let mut parsed = PathTemplate {
            segments: Vec::new(),
            variables: Vec::new(),
            verb: None,
        };
        let mut chars = rest;
        loop {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| invalid("unclosed `{`"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                let field_path: Vec<String> = field.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|part| !is_identifier(part)) {
                    return Err(invalid(&format!("`{field}` is not a field path")));
                }
                let start = parsed.segments.len();
                for part in pattern.split('/') {
                    if part.contains(['{', '}']) {
                        return Err(invalid("variables cannot nest"));
                    }
                    parsed
                        .segments
                        .push(segment(part).ok_or_else(|| invalid("empty segment"))?);
                }
                parsed.variables.push(Variable {
                    field_path,
                    start,
                    end: parsed.segments.len(),
                });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find(['/', ':']).unwrap_or(chars.len());
                let part = &chars[..end];
                if part.contains(['{', '}']) {
                    return Err(invalid("`{` or `}` inside a segment"));
                }
                parsed
                    .segments
                    .push(segment(part).ok_or_else(|| invalid("empty segment"))?);
                chars = &chars[end..];
            }
            if let Some(next) = chars.strip_prefix('/') {
                chars = next;
            } else if let Some(verb) = chars.strip_prefix(':') {
                if verb.is_empty() || verb.contains(['/', '{', '}', ':']) {
                    return Err(invalid("malformed verb"));
                }
                parsed.verb = Some(verb.to_owned());
                break;
            } else if chars.is_empty() {
                break;
            } else {
                return Err(invalid("unexpected characters after a variable"));
            }
        }
        if let Some(position) = parsed.segments.iter().position(|s| *s == Segment::Rest) {
            if position + 1 != parsed.segments.len() {
                return Err(invalid("`**` must be the last segment"));
            }
        }
        Ok(parsed)
    }

    /// How specific the template is, for choosing among several matches: more literal
    /// segments first, then fewer wildcards.
    pub fn specificity(&self) -> (usize, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let rest = self.segments.contains(&Segment::Rest);
        (literals, self.segments.len(), !rest)
    }

    /// The variables of `path` (the request path, still percent-encoded) when it matches.
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let mut path = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            path = path.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = path.split('/').collect();
        let rest = self.segments.last() == Some(&Segment::Rest);
        let fixed = self.segments.len() - usize::from(rest);
        if parts.len() < fixed || (!rest && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(literal) if literal != part => return None,
                Segment::Single if part.is_empty() => return None,
                _ => {}
            }
        }
        let mut bindings = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let end = if rest && variable.end == self.segments.len() {
                parts.len()
            } else {
                variable.end
            };
            let covered = parts.get(variable.start..end)?;
            let value = if covered.len() == 1 && self.segments[variable.start] != Segment::Rest {
                decode(covered[0], false)
            } else {
                // Multi-segment values keep an encoded `/` encoded (reserved expansion).
                covered
                    .iter()
                    .map(|part| decode(part, true))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            bindings.push((variable.field_path.clone(), value));
        }
        Some(bindings)
    }

    /// Field paths the template binds (they are not read from the query).
    pub fn bound_fields(&self) -> impl Iterator<Item = &[String]> {
        self.variables.iter().map(|v| v.field_path.as_slice())
    }
}

fn segment(part: &str) -> Option<Segment> {
    match part {
        "" => None,
        "*" => Some(Segment::Single),
        "**" => Some(Segment::Rest),
        literal => Some(Segment::Literal(literal.to_owned())),
    }
}

fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn decode(part: &str, keep_slash: bool) -> String {
    let part: Cow<'_, str> = if keep_slash {
        // Protect %2F so that decoding leaves it as written.
        Cow::Owned(part.replace("%2F", "%252F").replace("%2f", "%252f"))
    } else {
        Cow::Borrowed(part)
    };
    percent_encoding::percent_decode_str(&part)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(template)
            .unwrap()
            .matches(path)
            .map(|b| b.into_iter().map(|(f, v)| (f.join("."), v)).collect())
    }

    #[test]
    fn variables_capture_single_and_nested_segments() {
        assert_eq!(
            vars("/v1/{parent=shelves/*}/books", "/v1/shelves/1/books"),
            Some(vec![("parent".into(), "shelves/1".into())])
        );
        assert_eq!(
            vars("/v1/{book.name=shelves/*/books/*}", "/v1/shelves/1/books/2"),
            Some(vec![("book.name".into(), "shelves/1/books/2".into())])
        );
        assert_eq!(
            vars("/v1/books/{book_id}", "/v1/books/a%20b"),
            Some(vec![("book_id".into(), "a b".into())])
        );
        assert_eq!(
            vars("/v1/{name=files/**}", "/v1/files/a/b%2Fc/d"),
            Some(vec![("name".into(), "files/a/b%2Fc/d".into())])
        );
        assert_eq!(
            vars("/v1/{name=shelves/*}/books", "/v1/shelves//books"),
            None
        );
        assert_eq!(
            vars("/v1/{parent=shelves/*}/books", "/v1/shelves/1/books/x"),
            None
        );
        assert_eq!(vars("/v1/shelves", "/v1/shelves"), Some(vec![]));
    }

    #[test]
    fn custom_verbs_match_only_with_their_suffix() {
        let t = "/v1/{name=shelves/*/books/*}:archive";
        assert_eq!(
            vars(t, "/v1/shelves/1/books/2:archive"),
            Some(vec![("name".into(), "shelves/1/books/2".into())])
        );
        assert_eq!(vars(t, "/v1/shelves/1/books/2"), None);
        assert_eq!(vars(t, "/v1/shelves/1/books/2:restore"), None);
        assert_eq!(
            vars("/v1/{shelf=shelves/*}:watch", "/v1/shelves/7:watch"),
            Some(vec![("shelf".into(), "shelves/7".into())])
        );
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "v1/x",
            "/v1/{name",
            "/v1/{na-me}",
            "/v1/**/x",
            "/v1//x",
            "/v1/{a={b}}",
            "/v1/x:",
            "/v1/{name}x",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
