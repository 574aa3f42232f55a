//! Sign-up with email verification, sign-in, sign-out and password reset. Answers never
//! tell whether an email has an account: sign-up and reset always say "check your inbox"
//! (the mail itself says what happened), sign-in says "email or password is wrong".

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Form, Query, State};
use axum::response::{IntoResponse, Response};
use gatehouse_policy::auth::basic::{hash_password, verify_password};
use gatehouse_store::accounts::{Developer, TokenPurpose};
use gatehouse_store::StoreError;
use http::header::{LOCATION, SET_COOKIE};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::html::{csrf_field, esc, field, Flash, Page};
use crate::mailer::Message;
use crate::session::{self, anonymous_csrf, anonymous_csrf_ok, csrf_matches, SESSION_COOKIE};
use crate::PortalState;

const VERIFY_TTL_SECS: i64 = 24 * 3600;
const RESET_TTL_SECS: i64 = 3600;
const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 128;

/// A valid argon2id hash of nothing anyone types: verified against when the email is
/// unknown, so a wrong email takes as long as a wrong password.
pub(crate) const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$Z2F0ZWhvdXNlLWRlY295$9TnZ4J3F1O+5k0tC3PzrFJwq1Yh2yq0XoVqkq8c6ZkE";

#[derive(Deserialize)]
pub(crate) struct SignupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize)]
pub(crate) struct ResetForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
}

#[derive(Deserialize)]
pub(crate) struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A page for a visitor who is not signed in; sets the CSRF cookie when it is new.
fn anonymous_page(
    state: &PortalState,
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    flash: Option<Flash>,
    body: impl FnOnce(&str) -> String,
) -> Response {
    let settings = state.settings();
    let (csrf, set_cookie) = anonymous_csrf(settings.secure_cookies(), headers);
    let mut response = Page {
        site: &settings.title,
        title,
        nav: None,
        signed_in: None,
        flash,
        body: body(&csrf),
    }
    .respond(status);
    if let Some((name, value)) = set_cookie {
        response.headers_mut().append(name, value);
    }
    response
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_owned())]).into_response()
}

fn unavailable(state: &PortalState, headers: &HeaderMap, err: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %err, "portal request failed");
    anonymous_page(
        state,
        headers,
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        Some(Flash::Error(
            "The portal cannot reach its store right now. Nothing was changed; try again shortly."
                .to_owned(),
        )),
        |_| String::new(),
    )
}

fn csrf_refused(state: &PortalState, headers: &HeaderMap) -> Response {
    anonymous_page(
        state,
        headers,
        StatusCode::FORBIDDEN,
        "Form expired",
        Some(Flash::Error(
            "This form expired or did not come from this site. Reload the page and try again."
                .to_owned(),
        )),
        |_| String::new(),
    )
}

fn too_many(state: &PortalState, headers: &HeaderMap) -> Response {
    let mut response = anonymous_page(
        state,
        headers,
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        Some(Flash::Error(
            "Too many attempts. Wait a few minutes and try again.".to_owned(),
        )),
        |_| String::new(),
    );
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("300"),
    );
    response
}

/// What is wrong with a password, if anything.
pub fn password_problem(password: &str, email: &str) -> Option<String> {
    let length = password.chars().count();
    if length < MIN_PASSWORD {
        return Some(format!("Use at least {MIN_PASSWORD} characters."));
    }
    if length > MAX_PASSWORD {
        return Some(format!("Use at most {MAX_PASSWORD} characters."));
    }
    if password.trim().to_lowercase() == email.trim().to_lowercase() {
        return Some("The password must not be your email.".to_owned());
    }
    let mut chars = password.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Some("The password must not be one character repeated.".to_owned());
    }
    None
}

fn email_problem(email: &str) -> Option<&'static str> {
    let email = email.trim();
    let valid = email.len() <= 254
        && !email.contains(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    (!valid).then_some("Enter an email address like name@example.com.")
}

fn signup_body(csrf: &str, email: &str, name: &str) -> String {
    format!(
        r#"<h1>Create your developer account</h1><div class="card"><form method="post" action="/signup">{csrf}{email}{name}{password}<p class="muted" id="password-rules">At least {MIN_PASSWORD} characters.</p><button type="submit">Sign up</button></form><p>Already have an account? <a href="/login">Sign in</a>.</p></div>"#,
        csrf = csrf_field(csrf),
        email = field(
            "email",
            "Email",
            "email",
            email,
            r#"required autocomplete="email""#
        ),
        name = field(
            "name",
            "Name",
            "text",
            name,
            r#"required autocomplete="name" maxlength="100""#
        ),
        password = field(
            "password",
            "Password",
            "password",
            "",
            r#"required autocomplete="new-password" aria-describedby="password-rules""#
        ),
    )
}

pub(crate) async fn signup_form(State(state): State<PortalState>, headers: HeaderMap) -> Response {
    if session::current(&state, &headers).await.is_some() {
        return redirect("/apps");
    }
    anonymous_page(&state, &headers, StatusCode::OK, "Sign up", None, |csrf| {
        signup_body(csrf, "", "")
    })
}

pub(crate) async fn signup(
    State(state): State<PortalState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignupForm>,
) -> Response {
    if !anonymous_csrf_ok(&headers, &form.csrf) {
        return csrf_refused(&state, &headers);
    }
    if !session::attempt_allowed(&state.attempts, "signup", client, None) {
        return too_many(&state, &headers);
    }
    let problem = email_problem(&form.email)
        .map(str::to_owned)
        .or_else(|| {
            let name = form.name.trim();
            (name.is_empty() || name.chars().count() > 100)
                .then(|| "Enter your name (up to 100 characters).".to_owned())
        })
        .or_else(|| password_problem(&form.password, &form.email));
    if let Some(problem) = problem {
        return anonymous_page(
            &state,
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Sign up",
            Some(Flash::Error(problem)),
            |csrf| signup_body(csrf, &form.email, &form.name),
        );
    }
    let password = form.password.clone();
    let hashed = tokio::task::spawn_blocking(move || hash_password(&password)).await;
    let hash = match hashed {
        Ok(Ok(hash)) => hash,
        Ok(Err(message)) => return unavailable(&state, &headers, &message),
        Err(err) => return unavailable(&state, &headers, &err),
    };
    let settings = state.settings();
    let email = form.email.trim().to_lowercase();
    let mail = match state.data.create_developer(&email, &form.name, &hash).await {
        Ok(developer) => {
            let sent = mail_link(&state, &developer, TokenPurpose::VerifyEmail, |link| {
                format!(
                    "Hello {},\n\nconfirm your email address to finish creating your account on {}:\n\n{link}\n\nThe link works for 24 hours. If you did not sign up, ignore this message.\n",
                    developer.name, settings.title
                )
            })
            .await;
            if let Err(message) = sent {
                return unavailable(&state, &headers, &message);
            }
            None
        }
        Err(StoreError::Conflict(_)) => Some(format!(
            "Hello,\n\nsomeone tried to create an account on {} with this email address, which already has one. If it was you, sign in at {}/login or reset your password at {}/reset.\n",
            settings.title, settings.public_url, settings.public_url
        )),
        Err(err) => return unavailable(&state, &headers, &err),
    };
    // The owner of a taken address hears of the attempt; the visitor sees the same page.
    if let Some(body) = mail {
        let sent = state
            .mailer
            .send(Message {
                to: &email,
                subject: &format!("Confirm your email for {}", settings.title),
                body: &body,
            })
            .await;
        if let Err(err) = sent {
            return unavailable(&state, &headers, &err);
        }
    }
    anonymous_page(
        &state,
        &headers,
        StatusCode::OK,
        "Check your inbox",
        Some(Flash::Info(format!(
            "We sent a message to {email}. Follow its link to confirm your address, then sign in."
        ))),
        |_| {
            r#"<h1>Check your inbox</h1><p>The confirmation link works for 24 hours.</p>"#
                .to_owned()
        },
    )
}

pub(crate) async fn verify(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    let consumed = state
        .data
        .consume_developer_token(
            &session::digest_hex(&query.token),
            TokenPurpose::VerifyEmail,
        )
        .await;
    match consumed {
        Ok(Some(developer)) => {
            if let Err(err) = state.data.mark_email_verified(&developer).await {
                return unavailable(&state, &headers, &err);
            }
            anonymous_page(
                &state,
                &headers,
                StatusCode::OK,
                "Email confirmed",
                Some(Flash::Info(
                    "Your email is confirmed. Sign in to continue.".to_owned(),
                )),
                |csrf| login_body(csrf, ""),
            )
        }
        Ok(None) => anonymous_page(
            &state,
            &headers,
            StatusCode::BAD_REQUEST,
            "Link expired",
            Some(Flash::Error(
                "This confirmation link is invalid, used or expired. Sign in to get a new one."
                    .to_owned(),
            )),
            |csrf| login_body(csrf, ""),
        ),
        Err(err) => unavailable(&state, &headers, &err),
    }
}

fn login_body(csrf: &str, email: &str) -> String {
    format!(
        r#"<h1>Sign in</h1><div class="card"><form method="post" action="/login">{csrf}{email}{password}<button type="submit">Sign in</button></form><p><a href="/reset">Forgot your password?</a> · <a href="/signup">Create an account</a></p></div>"#,
        csrf = csrf_field(csrf),
        email = field(
            "email",
            "Email",
            "email",
            email,
            r#"required autocomplete="username""#
        ),
        password = field(
            "password",
            "Password",
            "password",
            "",
            r#"required autocomplete="current-password""#
        ),
    )
}

pub(crate) async fn login_form(State(state): State<PortalState>, headers: HeaderMap) -> Response {
    if session::current(&state, &headers).await.is_some() {
        return redirect("/apps");
    }
    anonymous_page(&state, &headers, StatusCode::OK, "Sign in", None, |csrf| {
        login_body(csrf, "")
    })
}

pub(crate) async fn login(
    State(state): State<PortalState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !anonymous_csrf_ok(&headers, &form.csrf) {
        return csrf_refused(&state, &headers);
    }
    if !session::attempt_allowed(&state.attempts, "login", client, Some(&form.email)) {
        return too_many(&state, &headers);
    }
    let developer = match state.data.developer_by_email(&form.email).await {
        Ok(developer) => developer,
        Err(err) => return unavailable(&state, &headers, &err),
    };
    let hash = developer
        .as_ref()
        .map_or(DECOY_HASH.to_owned(), |d| d.password_hash.clone());
    let password = form.password.clone();
    let verified = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let wrong = || {
        anonymous_page(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            "Sign in",
            Some(Flash::Error("Email or password is wrong.".to_owned())),
            |csrf| login_body(csrf, &form.email),
        )
    };
    let Some(developer) = developer.filter(|_| verified) else {
        return wrong();
    };
    if developer.disabled_at.is_some() {
        return wrong();
    }
    let settings = state.settings();
    if developer.email_verified_at.is_none() {
        // A fresh link: the first may have expired or gone astray.
        let sent = mail_link(&state, &developer, TokenPurpose::VerifyEmail, |link| {
            format!(
                "Hello {},\n\nconfirm your email address to sign in to {}:\n\n{link}\n\nThe link works for 24 hours.\n",
                developer.name, settings.title
            )
        })
        .await;
        if let Err(message) = sent {
            tracing::error!(error = %message, "cannot send a confirmation email");
        }
        return anonymous_page(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            "Confirm your email",
            Some(Flash::Error(
                "Confirm your email first: we sent you a new link.".to_owned(),
            )),
            |csrf| login_body(csrf, &form.email),
        );
    }
    let (Ok(id), Ok(csrf)) = (session::random_token(), session::random_token()) else {
        return unavailable(&state, &headers, &"the system random generator failed");
    };
    let ttl = settings.session_ttl.as_secs() as i64;
    if let Err(err) = state
        .data
        .create_developer_session(&session::digest_hex(&id), &developer.id, &csrf, now() + ttl)
        .await
    {
        return unavailable(&state, &headers, &err);
    }
    let mut response = redirect("/apps");
    response.headers_mut().append(
        SET_COOKIE,
        session::set_cookie(settings.secure_cookies(), SESSION_COOKIE, &id, ttl),
    );
    response
}

pub(crate) async fn logout(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(current) = session::current(&state, &headers).await else {
        return redirect("/");
    };
    if !csrf_matches(&current.csrf, &form.csrf) {
        return csrf_refused(&state, &headers);
    }
    if let Some(id) = session::cookie(&headers, SESSION_COOKIE) {
        if let Err(err) = state
            .data
            .delete_developer_session(&session::digest_hex(id))
            .await
        {
            return unavailable(&state, &headers, &err);
        }
    }
    let settings = state.settings();
    let mut response = redirect("/");
    response.headers_mut().append(
        SET_COOKIE,
        session::set_cookie(settings.secure_cookies(), SESSION_COOKIE, "", 0),
    );
    response
}

fn reset_body(csrf: &str) -> String {
    format!(
        r#"<h1>Reset your password</h1><div class="card"><form method="post" action="/reset">{csrf}{email}<button type="submit">Send me a link</button></form></div>"#,
        csrf = csrf_field(csrf),
        email = field(
            "email",
            "Email",
            "email",
            "",
            r#"required autocomplete="email""#
        ),
    )
}

pub(crate) async fn reset_form(State(state): State<PortalState>, headers: HeaderMap) -> Response {
    anonymous_page(
        &state,
        &headers,
        StatusCode::OK,
        "Reset your password",
        None,
        reset_body,
    )
}

pub(crate) async fn reset_request(
    State(state): State<PortalState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<ResetForm>,
) -> Response {
    if !anonymous_csrf_ok(&headers, &form.csrf) {
        return csrf_refused(&state, &headers);
    }
    if !session::attempt_allowed(&state.attempts, "reset", client, Some(&form.email)) {
        return too_many(&state, &headers);
    }
    let developer = match state.data.developer_by_email(&form.email).await {
        Ok(developer) => developer.filter(|d| d.disabled_at.is_none()),
        Err(err) => return unavailable(&state, &headers, &err),
    };
    if let Some(developer) = developer {
        let settings = state.settings();
        let sent = mail_link(&state, &developer, TokenPurpose::ResetPassword, |link| {
            format!(
                "Hello {},\n\nchoose a new password for {}:\n\n{link}\n\nThe link works for one hour. If you did not ask for it, ignore this message: your password stays as it is.\n",
                developer.name, settings.title
            )
        })
        .await;
        if let Err(message) = sent {
            return unavailable(&state, &headers, &message);
        }
    }
    anonymous_page(
        &state,
        &headers,
        StatusCode::OK,
        "Check your inbox",
        Some(Flash::Info(
            "If an account exists for that email, we sent it a link to choose a new password."
                .to_owned(),
        )),
        |_| r#"<h1>Check your inbox</h1><p>The link works for one hour.</p>"#.to_owned(),
    )
}

fn confirm_body(csrf: &str, token: &str) -> String {
    format!(
        r#"<h1>Choose a new password</h1><div class="card"><form method="post" action="/reset/confirm">{csrf}<input type="hidden" name="token" value="{token}">{password}<p class="muted">At least {MIN_PASSWORD} characters. Every session of the account ends.</p><button type="submit">Set password</button></form></div>"#,
        csrf = csrf_field(csrf),
        token = esc(token),
        password = field(
            "password",
            "New password",
            "password",
            "",
            r#"required autocomplete="new-password""#
        ),
    )
}

pub(crate) async fn reset_confirm_form(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    anonymous_page(
        &state,
        &headers,
        StatusCode::OK,
        "Choose a new password",
        None,
        |csrf| confirm_body(csrf, &query.token),
    )
}

pub(crate) async fn reset_confirm(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Form(form): Form<ConfirmForm>,
) -> Response {
    if !anonymous_csrf_ok(&headers, &form.csrf) {
        return csrf_refused(&state, &headers);
    }
    if let Some(problem) = password_problem(&form.password, "") {
        return anonymous_page(
            &state,
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choose a new password",
            Some(Flash::Error(problem)),
            |csrf| confirm_body(csrf, &form.token),
        );
    }
    let developer = match state
        .data
        .consume_developer_token(
            &session::digest_hex(&form.token),
            TokenPurpose::ResetPassword,
        )
        .await
    {
        Ok(Some(developer)) => developer,
        Ok(None) => {
            return anonymous_page(
                &state,
                &headers,
                StatusCode::BAD_REQUEST,
                "Link expired",
                Some(Flash::Error(
                    "This link is invalid, used or expired. Ask for a new one.".to_owned(),
                )),
                reset_body,
            )
        }
        Err(err) => return unavailable(&state, &headers, &err),
    };
    let password = form.password.clone();
    let hash = match tokio::task::spawn_blocking(move || hash_password(&password)).await {
        Ok(Ok(hash)) => hash,
        Ok(Err(message)) => return unavailable(&state, &headers, &message),
        Err(err) => return unavailable(&state, &headers, &err),
    };
    if let Err(err) = state.data.set_developer_password(&developer, &hash).await {
        return unavailable(&state, &headers, &err);
    }
    // A reset proves the mailbox: the address is confirmed too.
    if let Err(err) = state.data.mark_email_verified(&developer).await {
        return unavailable(&state, &headers, &err);
    }
    anonymous_page(
        &state,
        &headers,
        StatusCode::OK,
        "Password changed",
        Some(Flash::Info(
            "Your password is changed. Sign in with it.".to_owned(),
        )),
        |csrf| login_body(csrf, ""),
    )
}

/// Makes a one-time token for `purpose` and mails its link to the developer, in the body
/// `write` makes around it; the store keeps only the token's digest.
async fn mail_link(
    state: &PortalState,
    developer: &Developer,
    purpose: TokenPurpose,
    write: impl FnOnce(&str) -> String,
) -> Result<(), String> {
    let settings = state.settings();
    let (path, ttl, subject) = match purpose {
        TokenPurpose::VerifyEmail => ("/verify", VERIFY_TTL_SECS, "Confirm your email for"),
        TokenPurpose::ResetPassword => {
            ("/reset/confirm", RESET_TTL_SECS, "Reset your password for")
        }
    };
    let token = session::random_token()?;
    state
        .data
        .create_developer_token(
            &developer.id,
            purpose,
            &session::digest_hex(&token),
            now() + ttl,
        )
        .await
        .map_err(|err| err.to_string())?;
    let link = format!("{}{path}?token={token}", settings.public_url);
    state
        .mailer
        .send(Message {
            to: &developer.email,
            subject: &format!("{subject} {}", settings.title),
            body: &write(&link),
        })
        .await
        .map_err(|err| err.to_string())
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_and_email_rules() {
        assert!(password_problem("short", "a@b.io")
            .unwrap()
            .contains("at least"));
        assert!(password_problem(&"x".repeat(129), "a@b.io")
            .unwrap()
            .contains("at most"));
        assert!(password_problem("aaaaaaaaaaaa", "a@b.io")
            .unwrap()
            .contains("repeated"));
        assert!(password_problem("Ann@Example.com", "ann@example.com")
            .unwrap()
            .contains("email"));
        assert_eq!(password_problem("correct horse battery", "a@b.io"), None);
        assert!(email_problem("ann@example.com").is_none());
        for bad in [
            "ann",
            "ann@example",
            "@example.com",
            "a b@example.com",
            "ann@.com",
        ] {
            assert!(email_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn the_decoy_hash_parses_and_matches_nothing() {
        assert!(argon2::PasswordHash::new(DECOY_HASH).is_ok());
        assert!(!verify_password("", DECOY_HASH));
    }
}
