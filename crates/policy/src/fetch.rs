//! A small HTTP/1.1 client for the calls the gateway makes off the hot path or rarely
//! (identity providers' key sets, discovery, token introspection and exchange; usage
//! webhooks): one connection per call, a timeout on the whole exchange and a bound on the
//! body.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_config::ClientAuthMethod;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::TcpStream;

/// Identity provider documents are small; anything larger is refused.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL `{0}`")]
    Url(String),
    #[error("cannot read CA bundle {path}: {message}")]
    Ca { path: String, message: String },
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("cannot connect to {host}: {message}")]
    Connect { host: String, message: String },
    #[error("HTTP exchange with {host} failed: {message}")]
    Http { host: String, message: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url} sent invalid JSON: {message}")]
    Json { url: String, message: String },
}

/// The gateway's credentials as an OAuth client.
pub struct ClientCredentials {
    pub id: String,
    pub secret: String,
    pub method: ClientAuthMethod,
}

#[derive(Clone)]
pub struct HttpFetcher {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

pub struct FetchResponse {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpFetcher {
    /// `ca`: PEM bundle to trust instead of the Mozilla roots.
    pub fn new(ca: Option<&Path>, timeout: Duration) -> Result<Self, FetchError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let ca_error = |message: String| FetchError::Ca {
                    path: path.display().to_string(),
                    message,
                };
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| ca_error(e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ca_error(e.to_string()))?;
                for cert in certs {
                    roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Ca {
                path: String::new(),
                message: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: Arc::new(tls),
            timeout,
        })
    }

    pub async fn get(&self, url: &str) -> Result<FetchResponse, FetchError> {
        self.send(Method::GET, url, None, &[]).await
    }

    /// GET a JSON document that must answer 200.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, FetchError> {
        let response = self.get(url).await?;
        if response.status != StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status,
            });
        }
        parse_json(url, &response.body)
    }

    /// POST a form to an authorization server as an OAuth client (RFC 6749 section 2.3.1:
    /// credentials in HTTP Basic or in the form).
    pub async fn post_form_as_client(
        &self,
        url: &str,
        form: &[(&str, &str)],
        client: &ClientCredentials,
    ) -> Result<FetchResponse, FetchError> {
        match client.method {
            ClientAuthMethod::ClientSecretBasic => {
                self.post_form(url, form, Some((&client.id, &client.secret)))
                    .await
            }
            ClientAuthMethod::ClientSecretPost => {
                let mut form = form.to_vec();
                form.push(("client_id", &client.id));
                form.push(("client_secret", &client.secret));
                self.post_form(url, &form, None).await
            }
        }
    }

    /// POST an `application/x-www-form-urlencoded` body, optionally with HTTP Basic client
    /// authentication.
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<FetchResponse, FetchError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let authorization = basic.map(|(user, password)| {
            use base64::Engine;
            // RFC 6749 section 2.3.1: form-encode both parts before Basic encoding.
            let encode =
                |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(user), encode(password));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        let headers: Vec<(&str, String)> = authorization
            .map(|value| ("authorization", value))
            .into_iter()
            .collect();
        self.send(
            Method::POST,
            url,
            Some(("application/x-www-form-urlencoded", body)),
            &headers,
        )
        .await
    }

    /// Any request (the portal's try-it console): `body` is (content type, text).
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<(&'static str, String)>,
    ) -> Result<FetchResponse, FetchError> {
        self.send(method, url, body, headers).await
    }

    /// POST a JSON body with extra header fields (a webhook delivery and its signature).
    pub async fn post_json(
        &self,
        url: &str,
        body: String,
        headers: &[(&str, String)],
    ) -> Result<FetchResponse, FetchError> {
        self.send(Method::POST, url, Some(("application/json", body)), headers)
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<(&'static str, String)>,
        headers: &[(&str, String)],
    ) -> Result<FetchResponse, FetchError> {
        let uri: Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
        let host = uri
            .host()
            .ok_or_else(|| FetchError::Url(url.to_owned()))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::Url(url.to_owned())),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();

        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("gatehouse/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let body = match body {
            Some((content_type, body)) => {
                request =
                    request.header(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                body
            }
            None => String::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| FetchError::Url(url.to_owned()))?;

        let exchange = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| FetchError::Connect {
                    host: host.clone(),
                    message: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            if https {
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| FetchError::Url(url.to_owned()))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| FetchError::Connect {
                        host: host.clone(),
                        message: e.to_string(),
                    })?;
                exchange(TokioIo::new(tls), request, &host).await
            } else {
                exchange(TokioIo::new(tcp), request, &host).await
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(host.clone()))?
    }
}

async fn exchange<IO>(
    io: IO,
    request: Request<Full<Bytes>>,
    host: &str,
) -> Result<FetchResponse, FetchError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http_error = |e: &dyn std::fmt::Display| FetchError::Http {
        host: host.to_owned(),
        message: e.to_string(),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| http_error(&e))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_error(&e));
    let result = match response {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map(|body| FetchResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: body.to_bytes(),
                })
                .map_err(|e| http_error(&e))
        }
        Err(err) => Err(err),
    };
    driver.abort();
    result
}

pub fn parse_json<T: serde::de::DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, FetchError> {
    serde_json::from_slice(body).map_err(|e| FetchError::Json {
        url: url.to_owned(),
        message: e.to_string(),
    })
}
