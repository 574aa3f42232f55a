//! Sign-in sessions and CSRF protection. A session id is 256 random bits in an HttpOnly,
//! SameSite=Lax cookie; the store keeps its SHA-256 digest, the developer and the
//! session's CSRF token. Forms shown before sign-in use a double-submit token: a random
//! cookie whose value the form must echo.

use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use gatehouse_policy::rate_limit::local::LocalStore;
use gatehouse_policy::rate_limit::LimitShape;
use gatehouse_store::accounts::Session;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::PortalState;

pub(crate) const SESSION_COOKIE: &str = "gh_portal_session";
pub(crate) const CSRF_COOKIE: &str = "gh_portal_csrf";

/// 256 random bits, URL-safe.
pub(crate) fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random generator failed".to_owned())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a session id or one-time token.
pub(crate) fn digest_hex(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value of cookie `name`.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value (`secure`: the portal is reached over https).
pub(crate) fn set_cookie(secure: bool, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
}

/// The signed-in developer, if the session cookie names a live session. A store failure
/// is logged and treated as signed out.
pub(crate) async fn current(state: &PortalState, headers: &HeaderMap) -> Option<Session> {
    let id = cookie(headers, SESSION_COOKIE)?;
    match state.data.developer_session(&digest_hex(id)).await {
        Ok(session) => session,
        Err(err) => {
            tracing::error!(error = %err, "cannot read portal sessions from the store");
            None
        }
    }
}

/// The double-submit CSRF token of a visitor who is not signed in: the cookie's, or a
/// fresh one (with the header that sets it).
pub(crate) fn anonymous_csrf(
    secure: bool,
    headers: &HeaderMap,
) -> (String, Option<(http::HeaderName, HeaderValue)>) {
    if let Some(token) = cookie(headers, CSRF_COOKIE).filter(|t| t.len() >= 32) {
        return (token.to_owned(), None);
    }
    let token = random_token().unwrap_or_default();
    let header = set_cookie(secure, CSRF_COOKIE, &token, 3600 * 24);
    (token, Some((SET_COOKIE, header)))
}

/// Whether `client` (and `email`, when given) may make another attempt at `action`: at
/// most 10 per address and 5 per email in 5 minutes.
pub(crate) fn attempt_allowed(
    attempts: &LocalStore,
    action: &str,
    client: std::net::SocketAddr,
    email: Option<&str>,
) -> bool {
    let per_client = LimitShape::gcra(10, Duration::from_secs(300), 10);
    let per_email = LimitShape::gcra(5, Duration::from_secs(300), 5);
    let ip = client.ip().to_string();
    let by_client = attempts.acquire(
        &per_client,
        attempts.key_of([action, "ip", ip.as_str()].into_iter()),
    );
    if !by_client.allowed {
        return false;
    }
    match email {
        Some(email) => {
            let email = email.trim().to_lowercase();
            attempts
                .acquire(
                    &per_email,
                    attempts.key_of([action, "email", email.as_str()].into_iter()),
                )
                .allowed
        }
        None => true,
    }
}

/// Constant-time comparison of a form's CSRF token with the expected one.
pub(crate) fn csrf_matches(expected: &str, given: &str) -> bool {
    !expected.is_empty()
        && expected.len() == given.len()
        && aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), given.as_bytes())
            .is_ok()
}

/// Whether a form posted without a session carries the visitor's double-submit token.
pub(crate) fn anonymous_csrf_ok(headers: &HeaderMap, given: &str) -> bool {
    cookie(headers, CSRF_COOKIE).is_some_and(|expected| csrf_matches(expected, given))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_tokens_and_csrf() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; gh_portal_csrf=xyz; b=2"),
        );
        assert_eq!(cookie(&headers, CSRF_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "missing"), None);
        assert!(anonymous_csrf_ok(&headers, "xyz"));
        assert!(!anonymous_csrf_ok(&headers, "xy"));
        assert!(!csrf_matches("", ""));
        let token = random_token().unwrap();
        assert_eq!(token.len(), 43);
        assert_ne!(token, random_token().unwrap());
        assert_eq!(digest_hex(&token).len(), 64);
    }
}
