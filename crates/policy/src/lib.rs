//! Route policies: what runs between routing and the upstream call.
//!
//! A policy is a plain value compiled from configuration into the snapshot. The pipeline
//! runs a route's policies in phase order:
//!
//! - **preflight** ([`Cors`]): CORS preflights are answered before anything else;
//! - **authorization** ([`Authorization`]): which mesh peers (by the SPIFFE ID of their
//!   client certificate), methods and paths may use the route; runs right after routing;
//! - **shaping** ([`IpFilter`], [`Shaping`]): client address, method, head and body size,
//!   content type;
//! - **access** ([`AccessPolicy`]): may refuse the request with a [`Rejection`], answer it
//!   directly (an OIDC redirect), or grant it with an [`Identity`];
//! - **admission** ([`RateLimiter`], [`InFlightLimit`], [`products`]): rate and
//!   concurrency limits; on a route an API product exposes, the caller's subscription and
//!   its plan's limits and quota;
//! - **upstream request** ([`Security::prepare_upstream`]): remove client-sent identity
//!   headers and hidden credentials, add the authenticated identity;
//! - **response**: headers policies add to the answer (a refreshed session cookie,
//!   `RateLimit`, CORS).
//!
//! Policies are an enum per concern rather than one trait with many hooks; a route without
//! policies pays nothing but an `Option` check.

pub mod auth;
pub mod authorization;
pub mod concurrency;
pub mod consumer;
pub mod cors;
pub mod fetch;
pub mod identity;
pub mod ip_filter;
mod limit_key;
pub mod openapi;
pub mod products;
pub mod quota;
pub mod rate_limit;
pub mod redis;
pub mod rejection;
pub mod request;
pub mod shaping;

pub use auth::{AccessOutcome, AccessPolicy, Granted, Security};
pub use authorization::Authorization;
pub use concurrency::{InFlightGuard, InFlightLimit};
pub use consumer::{ApiKeyRecord, Consumer, ConsumerDirectory, StaticDirectory};
pub use cors::Cors;
pub use identity::Identity;
pub use ip_filter::IpFilter;
pub use quota::{Quota, Quotas};
pub use rate_limit::{LimitRequest, RateLimiter, RateLimits};
pub use rejection::Rejection;
pub use request::{ClientCertificate, RequestInfo};
pub use shaping::Shaping;
