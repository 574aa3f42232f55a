//! The developer portal: server-rendered pages on their own listener, over the store.
//! Developers browse the API catalog and reference, sign up (email verification through
//! the mailer), sign in, create applications, subscribe them to plans, get, rotate and
//! revoke keys, and see usage and the current invoice.
//!
//! Security: sessions are random ids whose SHA-256 digest is stored (HttpOnly, SameSite=Lax
//! cookies, `Secure` behind https), every form carries a CSRF token (the session's, or a
//! double-submit cookie before sign-in), sign-in and sign-up are rate limited, passwords
//! are argon2id hashes, and answers never tell whether an email has an account.

mod accounts;
mod apps;
mod catalog;
mod charts;
pub mod dashboard;
pub mod html;
pub mod mailer;
mod session;

pub use accounts::password_problem;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use gatehouse_policy::rate_limit::local::LocalStore;
use gatehouse_proxy::ConfigStore;
use gatehouse_store::Store;

/// What every handler shares.
#[derive(Clone)]
pub struct PortalState {
    pub config: Arc<ConfigStore>,
    pub data: Arc<Store>,
    pub mailer: Arc<mailer::Mailer>,
    /// Sign-in, sign-up and reset attempts, per client address and per email.
    pub(crate) attempts: Arc<LocalStore>,
    /// Where the gateway's first listener is bound: the APIs' address unless
    /// `portal.gateway_url` says otherwise.
    gateway_addr: Option<SocketAddr>,
    /// Where the portal is bound: its address in emails unless `portal.public_url` says
    /// otherwise.
    portal_addr: SocketAddr,
}

impl PortalState {
    pub fn new(
        config: Arc<ConfigStore>,
        data: Arc<Store>,
        portal_addr: SocketAddr,
        gateway_addr: Option<SocketAddr>,
    ) -> Result<Self, String> {
        let mailer = {
            let snapshot = config.snapshot();
            let portal = snapshot
                .config
                .portal
                .as_ref()
                .ok_or("the configuration has no `portal`")?;
            mailer::Mailer::new(&portal.mailer, &snapshot.config)?
        };
        Ok(Self {
            config,
            data,
            mailer: Arc::new(mailer),
            attempts: Arc::new(LocalStore::new()),
            gateway_addr,
            portal_addr,
        })
    }

    /// The running configuration's portal section (present: the portal runs only with it).
    pub(crate) fn settings(&self) -> Settings {
        let snapshot = self.config.snapshot();
        let first_listener = self.gateway_addr.map(|addr| format!("http://{addr}"));
        match snapshot.config.portal.as_ref() {
            Some(portal) => Settings {
                title: portal.title.clone(),
                public_url: portal
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", self.portal_addr))
                    .trim_end_matches('/')
                    .to_owned(),
                gateway_url: portal
                    .gateway_url
                    .clone()
                    .or(first_listener)
                    .unwrap_or_default()
                    .trim_end_matches('/')
                    .to_owned(),
                session_ttl: portal.session_ttl.0,
                rotation_overlaps: portal.rotation_overlaps.iter().map(|d| d.0).collect(),
            },
            None => Settings {
                title: "API portal".to_owned(),
                public_url: String::new(),
                gateway_url: first_listener.unwrap_or_default(),
                session_ttl: std::time::Duration::from_secs(3600),
                rotation_overlaps: vec![std::time::Duration::from_secs(3600)],
            },
        }
    }
}

pub(crate) struct Settings {
    pub title: String,
    pub public_url: String,
    pub gateway_url: String,
    pub session_ttl: std::time::Duration,
    pub rotation_overlaps: Vec<std::time::Duration>,
}

impl Settings {
    /// Cookies are `Secure` when developers reach the portal over https.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

pub fn router(state: PortalState) -> Router {
    Router::new()
        .route("/", get(catalog::index))
        .route("/apis/{id}", get(catalog::product))
        .route("/apis/{id}/try", post(catalog::try_it))
        .route("/signup", get(accounts::signup_form).post(accounts::signup))
        .route("/verify", get(accounts::verify))
        .route("/login", get(accounts::login_form).post(accounts::login))
        .route("/logout", post(accounts::logout))
        .route(
            "/reset",
            get(accounts::reset_form).post(accounts::reset_request),
        )
        .route(
            "/reset/confirm",
            get(accounts::reset_confirm_form).post(accounts::reset_confirm),
        )
        .route("/apps", get(apps::list).post(apps::create))
        .route("/apps/{id}", get(apps::show))
        .route("/apps/{id}/keys", post(apps::issue_key))
        .route("/apps/{id}/keys/{public_id}/rotate", post(apps::rotate_key))
        .route("/apps/{id}/keys/{public_id}/revoke", post(apps::revoke_key))
        .route("/apps/{id}/subscriptions", post(apps::subscribe))
        .route(
            "/apps/{id}/subscriptions/{subscription}/cancel",
            post(apps::cancel_subscription),
        )
        .route("/health", get(|| async { "ok\n" }))
        .fallback(catalog::not_found)
        .with_state(state)
}

/// Serves the portal until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: PortalState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The portal's listen address in the configuration.
pub fn portal_addr(config: &ConfigStore) -> Option<SocketAddr> {
    config
        .snapshot()
        .config
        .portal
        .as_ref()
        .and_then(|p| p.listen.value.parse().ok())
}
