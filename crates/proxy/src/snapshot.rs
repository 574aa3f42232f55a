//! The immutable runtime form of a configuration. Requests load the current snapshot once
//! and keep it until they finish; a reload compiles a new one and swaps it in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gatehouse_config::{
    Config, HttpsRedirect, ListenerLimits, Problem, RedirectAction, RouteConfig, UpstreamProtocol,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;
use tokio_rustls::TlsAcceptor;

use gatehouse_policy::{
    AccessPolicy, Authorization, Cors, InFlightLimit, IpFilter, Quota, Quotas, RateLimiter,
    RateLimits, Security, Shaping,
};

use crate::mirror::Mirror;
use gatehouse_policy::openapi::{OpenApiDocument, RouteValidation};

use crate::cache::{ResponseCache, RouteCache};
use crate::grpc::transcode::Transcoder;
use crate::router::Router;
use crate::tls;
use crate::transform::RouteTransform;
use crate::upstream::Service;
use crate::versioning::ApiRuntime;

pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
    pub router: Router<RouteRuntime>,
    /// Consumers, authentication methods and identity headers.
    pub security: Security,
    /// Rate-limit policies and the shared Redis connection.
    pub rate_limits: RateLimits,
    /// Quota policies and their local counters.
    pub quotas: Quotas,
    pub services: HashMap<String, Arc<Service>>,
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
    /// The response cache's memory, kept across reloads while `cache` is unchanged.
    pub response_cache: Arc<ResponseCache>,
    /// API products from the store: which routes need a subscription, and the plans'
    /// limits. Kept across reloads (the store follower replaces its contents).
    pub products: gatehouse_policy::products::StoredCatalog,
    /// Some service is a mesh service: calls to it count in the mesh metrics by callee.
    pub has_mesh_services: bool,
    /// Handles to the metric series of requests no route took (an empty route label).
    pub unrouted_series: gatehouse_telemetry::metrics::RouteSeries,
}

/// Per-listener settings read at each accepted connection.
pub struct ListenerRuntime {
    pub name: String,
    pub addr: SocketAddr,
    pub limits: ListenerLimits,
    pub trusted_proxies: Vec<IpNet>,
    pub redirect_to_https: Option<HttpsRedirect>,
    pub tls: Option<TlsAcceptor>,
    pub http2: bool,
    /// Terminates mesh mTLS: its calls count in the mesh metrics by caller.
    pub mesh: bool,
}

/// A route's compiled payload: its policies, then its action.
pub struct RouteRuntime {
    /// Which peers, methods and paths may use the route; checked right after routing.
    pub authorization: Option<Authorization>,
    /// Client IP rules, checked first.
    pub ip_filter: Option<IpFilter>,
    /// Authentication and authorization.
    pub access: Option<AccessPolicy>,
    /// Rate-limit policies, all applied after authentication.
    pub rate_limits: Vec<Arc<RateLimiter>>,
    /// Quota policies, applied after the rate limits.
    pub quotas: Vec<Arc<Quota>>,
    /// `max_in_flight` of the route.
    pub in_flight: Option<InFlightLimit>,
    /// Methods, sizes and content types the route accepts.
    pub shaping: Option<Shaping>,
    pub cors: Option<Cors>,
    pub mirror: Option<Mirror>,
    /// OpenAPI validation of requests and responses.
    pub openapi: Option<RouteValidation>,
    /// Count this route's requests per consumer (`metrics.per_consumer`).
    pub per_consumer_metrics: bool,
    /// Handles to the route's metric series, found on first use.
    pub series: gatehouse_telemetry::metrics::RouteSeries,
    /// Answer from the response cache when it may.
    pub cache: Option<RouteCache>,
    /// Headers, query, status and JSON bodies changed on the way through.
    pub transform: Option<RouteTransform>,
    /// The versioned API the route serves.
    pub api: Option<Arc<ApiRuntime>>,
    /// HTTP/JSON requests answered by calling the service's gRPC methods.
    pub grpc_transcode: Option<Arc<Transcoder>>,
    pub action: RouteAction,
}

pub enum RouteAction {
    Forward {
        /// The route's service, or its traffic split: [`Backends::pick`] per request.
        backends: Backends,
        rewrite: Option<PathRewrite>,
        host_rewrite: Option<HeaderValue>,
    },
    Redirect(RedirectAction),
    Respond {
        status: StatusCode,
        body: Bytes,
        headers: HeaderMap,
    },
}

/// Where a forwarding route sends its requests.
pub enum Backends {
    /// `service`: taken as is, without a draw.
    One(Arc<Service>),
    /// `backends`: each service with the running total of the weights up to and including
    /// its own, and the total (above 0; validation refuses splits without weight).
    Split {
        backends: Box<[(Arc<Service>, u32)]>,
        total: u32,
    },
}

impl Backends {
    /// The service that takes this request: the route's only one, or one drawn by weight.
    pub fn pick(&self) -> &Arc<Service> {
        match self {
            Self::One(service) => service,
            Self::Split { backends, total } => {
                let draw = fastrand::u32(..*total);
                // The first backend whose running total is above the draw; zero weights
                // add nothing to the total and are never drawn.
                let at = backends.partition_point(|(_, running)| *running <= draw);
                // `draw < total`, the last running total: `at` is always in bounds.
                &backends[at].0
            }
        }
    }

    /// Whether requests are split over several services.
    pub fn is_split(&self) -> bool {
        matches!(self, Self::Split { .. })
    }

    /// The services with their configured weights (1 for a plain `service`).
    pub fn weighted(&self) -> Vec<(&Arc<Service>, u32)> {
        match self {
            Self::One(service) => vec![(service, 1)],
            Self::Split { backends, .. } => {
                let mut previous = 0;
                backends
                    .iter()
                    .map(|(service, running)| {
                        let weight = running - previous;
                        previous = *running;
                        (service, weight)
                    })
                    .collect()
            }
        }
    }

    /// Whether every backend speaks HTTP/2 (gRPC-Web is translated only for those).
    pub fn all_http2(&self) -> bool {
        match self {
            Self::One(service) => service.config.protocol == UpstreamProtocol::Http2,
            Self::Split { backends, .. } => backends
                .iter()
                .all(|(service, _)| service.config.protocol == UpstreamProtocol::Http2),
        }
    }
}

pub enum PathRewrite {
    /// Replace the matched prefix (empty string strips it).
    ReplacePrefix { prefix: String, with: String },
    /// A template filled from the route's captures.
    Template(String),
}

impl Snapshot {
    /// Why an API product could not be built on these routes and sandbox service: a route
    /// the configuration does not have or that has no `auth` (subscriptions are found
    /// through the caller's identity), a sandbox service it does not have. Empty: fine.
    pub fn product_problems(
        &self,
        routes: &[String],
        sandbox_service: Option<&str>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(service) = sandbox_service {
            if !self.services.contains_key(service) {
                problems.push(format!(
                    "no service `{service}` for the sandbox in the running configuration"
                ));
            }
        }
        for name in routes {
            match self.router.routes().iter().find(|r| &r.name == name) {
                None => problems.push(format!("no route `{name}` in the running configuration")),
                Some(route) if route.payload.access.is_none() => problems.push(format!(
                    "route `{name}` has no `auth`; a product's routes must identify the calling application"
                )),
                Some(_) => {}
            }
        }
        problems
    }

    /// Names of the routes an API product may expose (those with `auth`), in file order.
    pub fn product_routes(&self) -> Vec<String> {
        self.router
            .routes()
            .iter()
            .filter(|route| route.payload.access.is_some())
            .map(|route| route.name.clone())
            .collect()
    }

    /// Compile a validated configuration. Services whose definition did not change are taken
    /// over from `previous`, keeping their connection pools and health state.
    pub fn compile(
        config: Config,
        version: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Self, Vec<Problem>> {
        Self::compile_in_mesh(config, version, previous, None)
    }

    /// [`Snapshot::compile`] for a process that joined the mesh: mesh listeners and services
    /// get their mTLS and endpoints from `member`.
    pub fn compile_in_mesh(
        config: Config,
        version: u64,
        previous: Option<&Snapshot>,
        member: Option<&Arc<gatehouse_mesh::Member>>,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut services = HashMap::new();
        for service_config in &config.services {
            let name = &service_config.name;
            let reused = previous
                .and_then(|p| p.services.get(&name.value))
                .filter(|s| s.fingerprint() == crate::upstream::fingerprint(service_config))
                .cloned();
            let service = match reused {
                Some(service) => {
                    if let Some(member) = member {
                        service.refresh_mesh_endpoints(member);
                    }
                    service
                }
                None => match Service::new(service_config, &config, member) {
                    Ok(service) => {
                        if tokio::runtime::Handle::try_current().is_ok() {
                            service.start_background_tasks();
                        }
                        service
                    }
                    Err(err) => {
                        problems.push(Problem::at(
                            &name.referenced,
                            format!("service `{}`: {err}", name.value),
                        ));
                        continue;
                    }
                },
            };
            services.insert(name.value.clone(), service);
        }

        let mut listeners = HashMap::new();
        for listener in &config.listeners {
            let Ok(addr) = listener.listen.value.parse::<SocketAddr>() else {
                continue; // validation already reported it
            };
            let tls = match (&listener.tls, listener.mesh) {
                (_, true) => {
                    let alpn: &[&[u8]] = if listener.http2 {
                        &[b"h2", b"http/1.1"]
                    } else {
                        &[b"http/1.1"]
                    };
                    match member.map(|m| m.server_config(alpn)) {
                        Some(Ok(server)) => Some(TlsAcceptor::from(server)),
                        Some(Err(err)) => {
                            problems.push(Problem::at(
                                &listener.name.referenced,
                                format!("listener `{}`: mesh mTLS: {err}", listener.name.value),
                            ));
                            continue;
                        }
                        None => {
                            problems.push(Problem::at(
                                &listener.name.referenced,
                                format!(
                                    "listener `{}` terminates mesh mTLS, but this process has not joined a mesh (add `mesh:`)",
                                    listener.name.value
                                ),
                            ));
                            continue;
                        }
                    }
                }
                (Some(tls_config), false) => {
                    match tls::server_config(tls_config, listener.http2, &config) {
                        Ok(server) => Some(TlsAcceptor::from(server)),
                        Err(err) => {
                            let at = tls_config
                                .certificates
                                .first()
                                .map(|c| c.cert.referenced)
                                .unwrap_or(listener.name.referenced);
                            problems.push(Problem::at(
                                &at,
                                format!("listener `{}`: {err}", listener.name.value),
                            ));
                            continue;
                        }
                    }
                }
                (None, false) => None,
            };
            let trusted_proxies = listener
                .trusted_proxies
                .iter()
                .filter_map(|entry| {
                    entry
                        .value
                        .parse::<IpNet>()
                        .or_else(|_| entry.value.parse::<std::net::IpAddr>().map(IpNet::from))
                        .ok()
                })
                .collect();
            listeners.insert(
                listener.name.value.clone(),
                Arc::new(ListenerRuntime {
                    name: listener.name.value.clone(),
                    addr,
                    limits: listener.limits.clone(),
                    trusted_proxies,
                    redirect_to_https: listener.redirect_to_https.clone(),
                    tls,
                    http2: listener.http2,
                    mesh: listener.mesh,
                }),
            );
        }

        let security = match Security::compile(&config, previous.map(|p| &p.security)) {
            Ok(security) => security,
            Err(mut security_problems) => {
                problems.append(&mut security_problems);
                return Err(problems);
            }
        };
        let rate_limits = match RateLimits::compile(&config, previous.map(|p| &p.rate_limits)) {
            Ok(rate_limits) => rate_limits,
            Err(mut limit_problems) => {
                problems.append(&mut limit_problems);
                return Err(problems);
            }
        };
        let quotas = match Quotas::compile(
            &config,
            rate_limits.redis.clone(),
            previous.map(|p| &p.quotas),
        ) {
            Ok(quotas) => quotas,
            Err(mut quota_problems) => {
                problems.append(&mut quota_problems);
                return Err(problems);
            }
        };
        let mut documents = HashMap::new();
        for (name, spec) in &config.openapi {
            match OpenApiDocument::load(&config.resolve_path(&spec.path.value)) {
                Ok(document) => {
                    documents.insert(name.clone(), Arc::new(document));
                }
                Err(message) => problems.push(Problem::at(
                    &spec.path.referenced,
                    format!("OpenAPI document `{name}`: {message}"),
                )),
            }
        }
        let mut apis = HashMap::new();
        for (name, api) in &config.apis {
            match ApiRuntime::compile(name, api, &services) {
                Ok(api) => {
                    apis.insert(name.clone(), Arc::new(api));
                }
                Err(mut api_problems) => problems.append(&mut api_problems),
            }
        }
        let mut transforms: Vec<Option<RouteTransform>> = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            transforms.push(match route.transform.as_ref().map(RouteTransform::new) {
                None => None,
                Some(Ok(transform)) => Some(transform),
                Some(Err(transform_problems)) => {
                    problems.extend(
                        transform_problems
                            .into_iter()
                            .map(|p| Problem::at(&p.location, p.message)),
                    );
                    None
                }
            });
        }
        let mut pools = HashMap::new();
        for (name, source) in &config.protos {
            let (loaded, at) = match &source.descriptor_set {
                Some(set) => (
                    crate::grpc::descriptors::load_descriptor_set(&config.resolve_path(&set.value)),
                    set.referenced,
                ),
                None => {
                    let includes: Vec<_> = source
                        .include_paths
                        .iter()
                        .map(|path| config.resolve_path(path))
                        .collect();
                    let includes: Vec<&std::path::Path> =
                        includes.iter().map(|p| p.as_path()).collect();
                    let files: Vec<&str> = source.files.iter().map(|f| f.value.as_str()).collect();
                    let at = source
                        .files
                        .first()
                        .map(|f| f.referenced)
                        .unwrap_or(gatehouse_config::Location::UNKNOWN);
                    (crate::grpc::descriptors::compile(&files, &includes), at)
                }
            };
            match loaded {
                Ok(pool) => {
                    pools.insert(name.clone(), pool);
                }
                Err(message) => {
                    problems.push(Problem::at(&at, format!("protos `{name}`: {message}")))
                }
            }
        }
        let mut transcoders: Vec<Option<Arc<Transcoder>>> = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let compiled = route.grpc_transcode.as_ref().and_then(|transcode| {
                let pool = pools.get(&transcode.protos.value)?;
                match Transcoder::compile(pool, transcode) {
                    Ok(transcoder) => Some(Arc::new(transcoder)),
                    Err(message) => {
                        problems.push(Problem::at(
                            &transcode.protos.referenced,
                            format!("`grpc_transcode`: {message}"),
                        ));
                        None
                    }
                }
            });
            transcoders.push(compiled);
        }
        if !problems.is_empty() {
            // Routes naming an unloadable document would only repeat the problem.
            return Err(problems);
        }
        let response_cache = previous
            .map(|p| p.response_cache.clone())
            .filter(|cache| cache.same_config(&config.cache, rate_limits.redis.as_ref()))
            .unwrap_or_else(|| ResponseCache::new(&config.cache, rate_limits.redis.as_ref()));
        let router = Router::compile(&config.routes, |index, route| {
            Ok(RouteRuntime {
                transform: transforms.get_mut(index).and_then(Option::take),
                grpc_transcode: transcoders.get(index).cloned().flatten(),
                api: route
                    .api
                    .as_ref()
                    .and_then(|name| apis.get(&name.value).cloned()),
                cache: route.cache.as_ref().map(|rules| {
                    RouteCache::new(
                        response_cache.clone(),
                        rules,
                        &route.name_or_default(index),
                        &config.cache.tag_header,
                    )
                }),
                openapi: route
                    .openapi
                    .as_ref()
                    .map(|rules| {
                        documents
                            .get(&rules.spec.value)
                            .map(|document| RouteValidation::new(rules, document.clone()))
                            .ok_or_else(|| {
                                format!("OpenAPI document `{}` is not loaded", rules.spec.value)
                            })
                    })
                    .transpose()?,
                quotas: route
                    .quotas
                    .iter()
                    .map(|name| {
                        quotas
                            .get(&name.value)
                            .ok_or_else(|| format!("undefined quota `{}`", name.value))
                    })
                    .collect::<Result<_, _>>()?,
                ip_filter: route.ip_filter.as_ref().map(IpFilter::new),
                authorization: route
                    .authorization
                    .as_ref()
                    .map(|rules| Authorization::new(rules, &route.name_or_default(index)))
                    .transpose()?,
                series: Default::default(),
                per_consumer_metrics: {
                    let name = route.name_or_default(index);
                    config
                        .metrics
                        .per_consumer
                        .iter()
                        .any(|listed| listed.value == "*" || listed.value == name)
                },
                rate_limits: route
                    .rate_limits
                    .iter()
                    .map(|name| {
                        rate_limits
                            .get(&name.value)
                            .ok_or_else(|| format!("undefined rate-limit policy `{}`", name.value))
                    })
                    .collect::<Result<_, _>>()?,
                in_flight: route.max_in_flight.map(|max| {
                    InFlightLimit::new(max, format!("route `{}`", route.name_or_default(index)))
                }),
                shaping: route.request.as_ref().map(Shaping::new).transpose()?,
                cors: route.cors.as_ref().map(Cors::new).transpose()?,
                mirror: route
                    .mirror
                    .as_ref()
                    .map(|mirror| {
                        services
                            .get(&mirror.service.value)
                            .map(|service| Mirror::new(mirror, service.clone()))
                            .ok_or_else(|| format!("undefined service `{}`", mirror.service.value))
                    })
                    .transpose()?,
                access: route
                    .auth
                    .as_ref()
                    .map(|auth| security.access_policy(auth))
                    .transpose()?,
                action: route_action(route, &services)?,
            })
        });
        let router = match router {
            Ok(router) => Some(router),
            Err(err) => {
                let at = config.routes[err.index].matches.referenced;
                problems.push(Problem::at(&at, err.message));
                None
            }
        };
        match router {
            Some(router) if problems.is_empty() => {
                if tokio::runtime::Handle::try_current().is_ok() {
                    security.start_background_tasks();
                    rate_limits.start_background_tasks();
                    quotas.start_background_tasks();
                }
                let has_mesh_services = services.values().any(|s| s.mesh_peer.is_some());
                Ok(Self {
                    has_mesh_services,
                    unrouted_series: Default::default(),
                    version,
                    config: Arc::new(config),
                    router,
                    security,
                    rate_limits,
                    quotas,
                    services,
                    listeners,
                    response_cache,
                    products: previous.map(|p| p.products.clone()).unwrap_or_default(),
                })
            }
            _ => Err(problems),
        }
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.get(name)
    }
}

fn route_action(
    route: &RouteConfig,
    services: &HashMap<String, Arc<Service>>,
) -> Result<RouteAction, String> {
    if let Some(redirect) = &route.redirect {
        return Ok(RouteAction::Redirect(redirect.clone()));
    }
    if let Some(respond) = &route.respond {
        let mut headers = HeaderMap::new();
        for (name, value) in &respond.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name `{name}`"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value for header `{name}`"))?;
            headers.append(name, value);
        }
        let content_type = HeaderValue::from_str(&respond.content_type)
            .map_err(|_| format!("invalid content type `{}`", respond.content_type))?;
        headers.insert(http::header::CONTENT_TYPE, content_type);
        return Ok(RouteAction::Respond {
            status: StatusCode::from_u16(respond.status).map_err(|e| e.to_string())?,
            body: Bytes::from(respond.body.clone()),
            headers,
        });
    }
    let service = |name: &str| {
        services
            .get(name)
            .cloned()
            .ok_or_else(|| format!("undefined service `{name}`"))
    };
    let backends = match (&route.service, &route.backends) {
        (Some(name), _) => Backends::One(service(&name.value)?),
        (None, Some(split)) => {
            let mut total = 0u32;
            let backends = split
                .value
                .iter()
                .map(|backend| {
                    total = total.saturating_add(backend.weight);
                    Ok((service(&backend.service.value)?, total))
                })
                .collect::<Result<Box<[_]>, String>>()?;
            if total == 0 {
                return Err("`backends` has no backend with a weight above 0".to_owned());
            }
            Backends::Split { backends, total }
        }
        (None, None) => return Err("route has no action".to_owned()),
    };
    let prefix = match &route.matches.value.path {
        Some(gatehouse_config::PathMatch::Prefix(p)) => Some(p.trim_end_matches('/').to_owned()),
        _ => None,
    };
    let rewrite = route.rewrite.as_ref().and_then(|rewrite| {
        if let Some(template) = &rewrite.path {
            Some(PathRewrite::Template(template.clone()))
        } else if let Some(with) = &rewrite.replace_prefix {
            prefix.clone().map(|prefix| PathRewrite::ReplacePrefix {
                prefix,
                with: with.trim_end_matches('/').to_owned(),
            })
        } else if rewrite.strip_prefix {
            prefix.clone().map(|prefix| PathRewrite::ReplacePrefix {
                prefix,
                with: String::new(),
            })
        } else {
            None
        }
    });
    let host_rewrite = route
        .host_rewrite
        .as_ref()
        .map(|h| HeaderValue::from_str(h).map_err(|_| format!("invalid host `{h}`")))
        .transpose()?;
    Ok(RouteAction::Forward {
        backends,
        rewrite,
        host_rewrite,
    })
}

impl PathRewrite {
    pub fn apply(&self, path: &str, captures: &[(String, String)]) -> String {
        match self {
            Self::ReplacePrefix { prefix, with } => {
                let rest = path.strip_prefix(prefix.as_str()).unwrap_or(path);
                let joined = format!("{with}{rest}");
                if joined.is_empty() {
                    "/".to_owned()
                } else if joined.starts_with('/') {
                    joined
                } else {
                    format!("/{joined}")
                }
            }
            Self::Template(template) => fill_template(template, captures),
        }
    }
}

/// Replace `{name}` (and `{*name}`) with captured values.
pub fn fill_template(template: &str, captures: &[(String, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = rest[start + 1..start + end].trim_start_matches('*');
        if let Some((_, value)) = captures.iter().find(|(k, _)| k == name) {
            out.push_str(value);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}
