//! Signing keys of an issuer: fetched from a JWKS URL (or found through OIDC discovery),
//! refreshed in the background, refetched when a token names an unknown `kid` (at most once
//! per `min_refetch_interval`), and served from the last good set while the issuer is down.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::fetch::{FetchError, HttpFetcher};

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    JwksUri(String),
    /// `<issuer>/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery(String),
}

/// The parts of an OpenID Provider's metadata the gateway uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
}

pub struct KeySet {
    keys: Vec<KeyEntry>,
}

struct KeyEntry {
    kid: Option<String>,
    /// The `alg` the JWK pins, if any: a token must use exactly that.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl KeyEntry {
    fn accepts(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        let kid_ok = match kid {
            Some(kid) => self.kid.as_deref() == Some(kid),
            None => true,
        };
        kid_ok && self.key.family() == alg.family() && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

pub enum KeyLookup {
    Found(Arc<KeySet>, usize),
    /// No key matches, even after a refetch.
    Unknown,
    /// No key set could ever be loaded.
    Unavailable(String),
}

impl KeySet {
    /// A key for the token's `kid` and `alg`: the key's family must be the algorithm's
    /// (no HMAC with an RSA public key), and a pinned `alg` must match.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<usize> {
        self.keys.iter().position(|entry| entry.accepts(kid, alg))
    }

    /// Every key a token without `kid` may have been signed with.
    pub fn candidates(&self, alg: Algorithm) -> impl Iterator<Item = &DecodingKey> {
        self.keys
            .iter()
            .filter(move |entry| entry.accepts(None, alg))
            .map(|entry| &entry.key)
    }

    pub fn key(&self, index: usize) -> Option<&DecodingKey> {
        self.keys.get(index).map(|e| &e.key)
    }
}

struct FetchState {
    /// Last refetch caused by an unknown `kid` (the rate-limited kind).
    last_unknown_kid: Option<Instant>,
    /// Last failed fetch while no key set was loaded: callers fail fast until a second
    /// has passed, instead of queueing behind a dead issuer.
    last_failure: Option<Instant>,
}

pub struct JwksCache {
    source: KeySource,
    fetcher: HttpFetcher,
    keys: ArcSwapOption<KeySet>,
    metadata: ArcSwapOption<ProviderMetadata>,
    state: tokio::sync::Mutex<FetchState>,
    min_refetch: Duration,
    refresh_interval: Duration,
    /// The refresh task runs once per cache, however many snapshots share it.
    started: std::sync::atomic::AtomicBool,
    /// Identifies the settings, so a reload with the same source keeps this cache.
    pub fingerprint: String,
}

impl JwksCache {
    pub fn new(
        source: KeySource,
        fetcher: HttpFetcher,
        refresh_interval: Duration,
        min_refetch: Duration,
        fingerprint: String,
    ) -> Self {
        Self {
            source,
            fetcher,
            keys: ArcSwapOption::empty(),
            metadata: ArcSwapOption::empty(),
            state: tokio::sync::Mutex::new(FetchState {
                last_unknown_kid: None,
                last_failure: None,
            }),
            min_refetch,
            refresh_interval,
            started: std::sync::atomic::AtomicBool::new(false),
            fingerprint,
        }
    }

    /// The provider metadata (discovery sources only), once fetched.
    pub fn metadata(&self) -> Option<Arc<ProviderMetadata>> {
        self.metadata.load_full()
    }

    /// Fetch now and then every `refresh_interval`, until the cache is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = self.refresh_interval;
        tokio::spawn(async move {
            let mut first = true;
            loop {
                if !first {
                    tokio::time::sleep(interval).await;
                }
                first = false;
                let Some(cache) = weak.upgrade() else { return };
                let _state = cache.state.lock().await;
                if let Err(err) = cache.refresh().await {
                    tracing::warn!(source = ?cache.source, error = %err, "key set refresh failed; keeping the last good set");
                }
            }
        });
    }

    /// Ensure provider metadata is loaded (discovery sources); fetches if needed.
    pub async fn ensure_loaded(&self) -> Result<(), String> {
        if self.keys.load().is_some() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        if self.keys.load().is_some() {
            return Ok(());
        }
        self.fetch_with_backoff(&mut state).await
    }

    async fn fetch_with_backoff(&self, state: &mut FetchState) -> Result<(), String> {
        if state
            .last_failure
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return Err("identity provider unreachable".to_owned());
        }
        match self.refresh().await {
            Ok(()) => {
                state.last_failure = None;
                Ok(())
            }
            Err(err) => {
                state.last_failure = Some(Instant::now());
                tracing::warn!(source = ?self.source, error = %err, "cannot load the key set");
                Err(err.to_string())
            }
        }
    }

    pub async fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup {
        if let Some(set) = self.keys.load_full() {
            if let Some(index) = set.find(kid, alg) {
                return KeyLookup::Found(set, index);
            }
        }
        let mut state = self.state.lock().await;
        // Another request may have refreshed the set while this one waited.
        let loaded = self.keys.load_full();
        if let Some(set) = &loaded {
            if let Some(index) = set.find(kid, alg) {
                return KeyLookup::Found(set.clone(), index);
            }
        }
        match loaded {
            None => {
                if let Err(message) = self.fetch_with_backoff(&mut state).await {
                    return KeyLookup::Unavailable(message);
                }
            }
            Some(_) => {
                let allowed = state
                    .last_unknown_kid
                    .is_none_or(|at| at.elapsed() >= self.min_refetch);
                if !allowed {
                    return KeyLookup::Unknown;
                }
                state.last_unknown_kid = Some(Instant::now());
                if let Err(err) = self.refresh().await {
                    tracing::warn!(source = ?self.source, error = %err, "refetch for an unknown key id failed");
                }
            }
        }
        match self.keys.load_full() {
            Some(set) => match set.find(kid, alg) {
                Some(index) => KeyLookup::Found(set, index),
                None => KeyLookup::Unknown,
            },
            None => KeyLookup::Unavailable("no key set loaded".to_owned()),
        }
    }

    /// Fetch the key set (through discovery when configured) and swap it in if usable.
    async fn refresh(&self) -> Result<(), RefreshError> {
        let jwks_uri = match &self.source {
            KeySource::JwksUri(uri) => uri.clone(),
            KeySource::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let metadata: ProviderMetadata = self.fetcher.get_json(&url).await?;
                // OpenID Connect Discovery 1.0 section 4.3: the issuer must match exactly.
                if metadata.issuer != *issuer {
                    return Err(RefreshError::IssuerMismatch(metadata.issuer));
                }
                let jwks_uri = metadata.jwks_uri.clone();
                self.metadata.store(Some(Arc::new(metadata)));
                jwks_uri
            }
        };
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawSet = self.fetcher.get_json(&jwks_uri).await?;
        let keys: Vec<KeyEntry> = raw
            .keys
            .into_iter()
            // One odd key must not make the whole set unusable.
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter(|jwk| {
                !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
                    // Symmetric keys are never taken from a URL.
                    && !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
            })
            .filter_map(|jwk| {
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse::<Algorithm>().ok());
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                Some(KeyEntry {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(RefreshError::NoUsableKeys(jwks_uri));
        }
        tracing::debug!(source = ?self.source, keys = keys.len(), "key set loaded");
        self.keys.store(Some(Arc::new(KeySet { keys })));
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("discovery document names issuer `{0}`, not the configured one")]
    IssuerMismatch(String),
    #[error("{0} holds no usable signing key")]
    NoUsableKeys(String),
}
