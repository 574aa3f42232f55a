//! Checks of a route's `authorization`: well-formed SPIFFE sources, methods and paths.

use crate::authorization::{spiffe_problem, RouteAuthorization};
use crate::model::RouteConfig;
use crate::problem::Problem;

pub(crate) fn validate_route_authorization(
    route: &RouteConfig,
    label: &str,
    problems: &mut Vec<Problem>,
) {
    if let Some(authorization) = &route.authorization {
        validate_authorization(authorization, &format!("route `{label}`"), problems);
    }
}

/// The checks of one `authorization` block; `owner` names where it is (a route, a mesh
/// service) in the messages.
pub(crate) fn validate_authorization(
    authorization: &RouteAuthorization,
    owner: &str,
    problems: &mut Vec<Problem>,
) {
    for rule in &authorization.rules {
        let conditions = &rule.value;
        if conditions.sources.is_empty()
            && conditions.methods.is_empty()
            && conditions.paths.is_empty()
        {
            problems.push(Problem::at(
                &rule.referenced,
                format!(
                    "{owner}: an authorization rule needs at least one of `sources`, `methods`, `paths`"
                ),
            ));
        }
        for source in &conditions.sources {
            if let Some(message) = spiffe_problem(&source.value, true) {
                problems.push(Problem::at(
                    &source.referenced,
                    format!("{owner}: source {message}"),
                ));
            }
        }
        for method in &conditions.methods {
            let value = &method.value;
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_uppercase()) {
                problems.push(Problem::at(
                    &method.referenced,
                    format!("{owner}: method `{value}` must be an uppercase token like GET"),
                ));
            }
        }
        for path in &conditions.paths {
            let value = &path.value;
            if !value.starts_with('/') || value.contains(['?', '#', '*']) {
                problems.push(Problem::at(
                    &path.referenced,
                    format!(
                        "{owner}: path `{value}` must start with `/` and have no query, fragment or `*` (end it with `/` for a prefix)"
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::load::parse_str;

    const BASE: &str = r#"
listeners:
  - { name: public, listen: "127.0.0.1:8080" }
  - { name: internal, listen: "127.0.0.1:8081" }
services:
  - name: orders
    endpoints: [{ address: "127.0.0.1:7001" }]
  - name: canary
    endpoints: [{ address: "127.0.0.1:7002" }]
routes:
"#;

    fn problems(routes: &str) -> Vec<String> {
        match parse_str(&format!("{BASE}{routes}"), "f.yaml") {
            Ok(_) => Vec::new(),
            Err(errors) => errors.lines(),
        }
    }

    #[test]
    fn routes_on_other_listeners_do_not_conflict() {
        let on = |listeners: &str| {
            format!("  - match: {{ path: {{ prefix: /a }}{listeners} }}\n    service: orders\n")
        };
        // Disjoint listeners: both can be chosen.
        let disjoint = format!(
            "{}{}",
            on(", listeners: [public]"),
            on(", listeners: [internal]")
        );
        assert_eq!(problems(&disjoint), Vec::<String>::new());
        // An earlier route covering all of a later one's listeners shadows it.
        for (first, second) in [
            ("", ", listeners: [internal]"),
            (", listeners: [public, internal]", ", listeners: [internal]"),
            (", listeners: [public]", ", listeners: [public]"),
        ] {
            let routes = format!("{}{}", on(first), on(second));
            let found = problems(&routes);
            assert_eq!(found.len(), 1, "{routes}: {found:?}");
            assert!(found[0].contains("could never be chosen"), "{found:?}");
        }
        // A later route on every listener still takes the other listeners' requests.
        let wider = format!("{}{}", on(", listeners: [public]"), on(""));
        assert_eq!(problems(&wider), Vec::<String>::new());
    }

    #[test]
    fn unknown_listeners_are_refused_where_they_are_named() {
        let found = problems("  - match: { listeners: [public, intenal] }\n    service: orders\n");
        assert_eq!(
            found,
            vec!["f.yaml:11:34: route `routes[0]` is bound to undefined listener `intenal`, did you mean `internal`?"]
        );
    }

    #[test]
    fn splits_and_authorization_are_checked() {
        let found = problems(
            r#"  - backends: [{ service: orders, weight: 0 }, { service: canary, weight: 0 }]
  - match: { path: { prefix: /b } }
    backends: [{ service: orders, weight: 900 }, { service: canary, weight: 100 }]
    authorization:
      rules:
        - sources: ["spiffe://mesh.local/ns/shop/*", "*"]
          methods: [GET]
          paths: [/orders/, /health]
"#,
        );
        assert_eq!(
            found,
            vec!["f.yaml:11:15: route `routes[0]`: at least one backend needs a weight above 0"]
        );
    }
}
