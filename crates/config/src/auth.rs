//! The security part of the model: consumers (who calls), authentication methods (how they
//! prove it), route access rules (what they may do) and IP filters. Documented in
//! `docs/authentication.md`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::model::Secret;
use crate::units::{ByteSize, HumanDuration};

/// A caller of the APIs: a partner, an application, a team.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Stable identifier, forwarded upstream and used by rate limits and metering.
    #[schemars(with = "String")]
    pub id: Spanned<String>,
    /// Display name (defaults to the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Groups used by route access rules (`allow_groups`, `deny_groups`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form attributes.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// API keys of this consumer, stored as keyed hashes (`gatehouse keys generate`).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyEntry>,
    /// Username and argon2 password hash for HTTP Basic authentication
    /// (`gatehouse keys hash-password`).
    #[serde(default)]
    pub basic_auth: Option<BasicCredential>,
    /// Client-certificate identities (subject CN, DNS, URI or email SAN, as the
    /// `client_certificate` method's `identity_from` says) that authenticate as this consumer.
    #[serde(default)]
    pub certificate_identities: Vec<String>,
    /// This consumer's allowance per quota policy, overriding the policy's `requests`.
    #[serde(default)]
    pub quotas: BTreeMap<String, u64>,
    /// The version this consumer gets of each API (by API name) when a request names
    /// none: pinned when the consumer started, so later versions do not break it.
    #[serde(default)]
    pub api_versions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The public id: the middle part of `<prefix>_<public id>_<secret>`.
    #[schemars(with = "String")]
    pub id: Spanned<String>,
    /// `hmac-sha256:<base64>` of the whole key under `authentication.api_key_secret`.
    #[schemars(with = "String")]
    pub hash: Spanned<String>,
    /// RFC 3339 instant after which the key is refused, e.g. `2027-01-01T00:00:00Z`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub expires: Option<Spanned<String>>,
    /// A revoked key is refused (kept in the file for the record).
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    pub username: String,
    /// Argon2 PHC string (`$argon2id$v=19$...`); plain passwords are refused.
    #[schemars(with = "String")]
    pub password_hash: Spanned<String>,
}

/// Global authentication settings and the named methods that routes use.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationConfig {
    /// Server secret keying API key hashes (HMAC-SHA-256). Use `${ENV_VAR}`; at least 32
    /// characters. Required when any consumer has API keys.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub api_key_secret: Option<Spanned<Secret>>,
    /// Authentication methods by name; routes list the names they accept.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, AuthMethodConfig>")]
    pub methods: BTreeMap<String, Spanned<AuthMethodConfig>>,
    /// Headers that carry the authenticated identity upstream. Client-sent copies are
    /// always removed, on every route.
    #[serde(default)]
    pub identity_headers: IdentityHeaders,
    /// Verified tokens (JWT, introspection results) kept to skip repeated verification.
    #[serde(default = "default_token_cache")]
    pub token_cache_entries: u64,
}

fn default_token_cache() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeaders {
    #[serde(default = "h_consumer_id")]
    pub consumer_id: String,
    #[serde(default = "h_consumer_name")]
    pub consumer_name: String,
    /// Comma-separated groups.
    #[serde(default = "h_groups")]
    pub groups: String,
    /// Space-separated scopes (tokens only).
    #[serde(default = "h_scopes")]
    pub scopes: String,
    /// `<method>:<credential id>`: which method and which key or subject authenticated.
    #[serde(default = "h_credential")]
    pub credential: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            consumer_id: h_consumer_id(),
            consumer_name: h_consumer_name(),
            groups: h_groups(),
            scopes: h_scopes(),
            credential: h_credential(),
        }
    }
}

fn h_consumer_id() -> String {
    "x-consumer-id".to_owned()
}
fn h_consumer_name() -> String {
    "x-consumer-name".to_owned()
}
fn h_groups() -> String {
    "x-consumer-groups".to_owned()
}
fn h_scopes() -> String {
    "x-authenticated-scopes".to_owned()
}
fn h_credential() -> String {
    "x-credential".to_owned()
}

/// One way of proving identity. Written as a one-key map: `api_key: {...}`, `jwt: {...}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethodConfig {
    ApiKey(ApiKeyMethod),
    Jwt(JwtMethod),
    Introspection(IntrospectionMethod),
    Oidc(OidcMethod),
    Basic(BasicMethod),
    ClientCertificate(ClientCertificateMethod),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyMethod {
    /// Request header carrying the key (checked first).
    #[serde(default = "default_key_header")]
    pub header: Option<String>,
    /// Query parameter carrying the key.
    #[serde(default)]
    pub query: Option<String>,
    /// Remove the key from the request before it goes upstream.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
}

fn default_key_header() -> Option<String> {
    Some("x-api-key".to_owned())
}

fn yes() -> bool {
    true
}

/// Where a bearer token is read from. Default: `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// Read `Authorization: Bearer` (default when neither cookie nor query is set).
    #[serde(default)]
    pub bearer: Option<bool>,
    /// Cookie holding the token.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Query parameter holding the token.
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtMethod {
    /// Expected `iss`; with `discovery`, also where `/.well-known/openid-configuration` is.
    #[schemars(with = "String")]
    pub issuer: Spanned<String>,
    /// Find `jwks_uri` through OIDC discovery on the issuer.
    #[serde(default)]
    pub discovery: bool,
    /// URL of the JSON Web Key Set.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub jwks_uri: Option<Spanned<String>>,
    /// Shared secret for HS256/384/512. HMAC algorithms are only accepted when this is set
    /// and they are listed in `algorithms`.
    #[serde(default)]
    pub hmac_secret: Option<Secret>,
    /// Accepted `alg` values. Default: every asymmetric algorithm (RS*, PS*, ES256, ES384,
    /// EdDSA). `none` is never accepted.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub algorithms: Vec<Spanned<String>>,
    /// Accepted `aud` values; one must be present in the token. Empty: `aud` not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "d30s")]
    pub leeway: HumanDuration,
    /// Refuse tokens whose `iat` is older than this (requires `iat`).
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    /// Claims that must be present (besides `exp`, which always is).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Where the token is read from.
    #[serde(default)]
    pub token: TokenSource,
    /// Claim naming the consumer; a configured consumer with that id lends its name and
    /// groups, any other value is an ad-hoc consumer.
    #[serde(default = "default_sub")]
    pub consumer_claim: String,
    /// Claim with the caller's groups (array or space-separated string).
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Claim with the granted scopes (`scope` string or `scp` array).
    #[serde(default = "default_scope")]
    pub scopes_claim: String,
    /// Upstream headers filled from claims: `{x-user-email: email}`.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Key set refresh period.
    #[serde(default = "d5m")]
    pub refresh_interval: HumanDuration,
    /// A token with an unknown `kid` triggers a refetch at most this often.
    #[serde(default = "d10s")]
    pub min_refetch_interval: HumanDuration,
    /// Timeout for discovery and key set requests.
    #[serde(default = "d5s")]
    pub fetch_timeout: HumanDuration,
    /// PEM bundle trusted for the issuer's HTTPS certificate (default: the Mozilla roots).
    #[serde(default)]
    pub ca: Option<String>,
    /// Longer tokens are refused without parsing.
    #[serde(default = "default_max_token")]
    pub max_token_size: ByteSize,
}

fn default_sub() -> String {
    "sub".to_owned()
}
fn default_scope() -> String {
    "scope".to_owned()
}
fn d5s() -> HumanDuration {
    HumanDuration::secs(5)
}
fn d10s() -> HumanDuration {
    HumanDuration::secs(10)
}
fn d30s() -> HumanDuration {
    HumanDuration::secs(30)
}
fn d5m() -> HumanDuration {
    HumanDuration::secs(300)
}
fn default_max_token() -> ByteSize {
    ByteSize(8 << 10)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with client id and secret (RFC 6749 section 2.3.1).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionMethod {
    /// RFC 7662 introspection endpoint URL.
    #[schemars(with = "String")]
    pub endpoint: Spanned<String>,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(default)]
    pub client_auth: ClientAuthMethod,
    /// Where the token is read from.
    #[serde(default)]
    pub token: TokenSource,
    /// Upper bound on caching an active result (never beyond the token's `exp`).
    #[serde(default = "d5m")]
    pub cache_ttl: HumanDuration,
    /// How long an inactive result is remembered.
    #[serde(default = "d10s")]
    pub negative_cache_ttl: HumanDuration,
    #[serde(default = "d5s")]
    pub timeout: HumanDuration,
    /// Response member naming the consumer (`sub`, `username` or `client_id`).
    #[serde(default = "default_sub")]
    pub consumer_claim: String,
    #[serde(default)]
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default = "default_max_token")]
    pub max_token_size: ByteSize,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcMethod {
    /// The provider; its `/.well-known/openid-configuration` is fetched.
    #[schemars(with = "String")]
    pub issuer: Spanned<String>,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(default)]
    pub client_auth: ClientAuthMethod,
    /// Path of the redirect URI; must fall within a route that uses this method.
    #[serde(default = "default_callback")]
    pub callback_path: String,
    /// Requests to this path end the session (and the provider's, when it supports it).
    #[serde(default = "default_logout")]
    pub logout_path: String,
    /// Where the browser lands after logout.
    #[serde(default = "default_root")]
    pub post_logout_redirect: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// Session cookie name.
    #[serde(default = "default_session_cookie")]
    pub cookie_name: String,
    /// Mark cookies `Secure` (turn off only for plain-HTTP development).
    #[serde(default = "yes")]
    pub cookie_secure: bool,
    /// Key material for the encrypted session cookie; at least 32 characters.
    pub session_secret: Secret,
    /// Longest session, refreshes included.
    #[serde(default = "d8h")]
    pub session_lifetime: HumanDuration,
    #[serde(default = "default_sub")]
    pub consumer_claim: String,
    #[serde(default)]
    pub groups_claim: Option<String>,
    #[serde(default = "d5s")]
    pub timeout: HumanDuration,
    #[serde(default)]
    pub ca: Option<String>,
}

fn default_callback() -> String {
    "/oauth2/callback".to_owned()
}
fn default_logout() -> String {
    "/oauth2/logout".to_owned()
}
fn default_root() -> String {
    "/".to_owned()
}
fn default_oidc_scopes() -> Vec<String> {
    vec![
        "openid".to_owned(),
        "profile".to_owned(),
        "email".to_owned(),
    ]
}
fn default_session_cookie() -> String {
    "gatehouse_session".to_owned()
}
fn d8h() -> HumanDuration {
    HumanDuration::secs(8 * 3600)
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicMethod {
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Remove the `Authorization` header before the request goes upstream.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// A verified username and password are remembered (as a keyed digest) this long, so
    /// argon2 runs once per client rather than once per request.
    #[serde(default = "d60s")]
    pub cache_ttl: HumanDuration,
}

fn default_realm() -> String {
    "gatehouse".to_owned()
}
fn d60s() -> HumanDuration {
    HumanDuration::secs(60)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CertificateIdentity {
    #[default]
    SubjectCn,
    SanDns,
    SanUri,
    SanEmail,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateMethod {
    /// Which part of the verified client certificate names the consumer
    /// (matched against `consumers[].certificate_identities`).
    #[serde(default)]
    pub identity_from: CertificateIdentity,
}

/// Who may use a route.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    /// Accepted authentication methods, tried in order; the first that authenticates wins.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub methods: Vec<Spanned<String>>,
    /// Consumer used when the request carries no credential at all (a wrong credential is
    /// still refused).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub anonymous: Option<Spanned<String>>,
    /// The consumer must be in one of these groups.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Consumers in any of these groups are refused.
    #[serde(default)]
    pub deny_groups: Vec<String>,
    /// Scopes that must all be granted (token methods).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Conditions on token claims.
    #[serde(default)]
    pub claims: Vec<ClaimRule>,
}

/// `claim` (a dotted path into the claims) must equal one of the given sources.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    #[schemars(with = "String")]
    pub claim: Spanned<String>,
    /// A fixed value, or one of several.
    #[serde(default)]
    pub equals: Vec<String>,
    /// The value of this request header.
    #[serde(default)]
    pub equals_header: Option<String>,
    /// The value of this path capture of the route.
    #[serde(default)]
    pub equals_path_param: Option<String>,
    /// The value of this query parameter.
    #[serde(default)]
    pub equals_query: Option<String>,
}

/// Client IP rules, by CIDR. Deny wins over allow; with an allow list, others are refused.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub deny: Vec<Spanned<String>>,
}

/// Client certificates on a TLS listener (mutual TLS).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateAuth {
    /// PEM bundle of CAs that issue client certificates.
    #[schemars(with = "String")]
    pub ca: Spanned<String>,
    /// Refuse the handshake without a valid certificate; otherwise routes decide.
    #[serde(default)]
    pub required: bool,
}
