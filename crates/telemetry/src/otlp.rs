//! OTLP span export on a thread of its own: finished spans arrive through the tracer's
//! bounded queue, are batched (by count and by delay) and sent to the collector over gRPC
//! (the collector's TraceService) or HTTP (protobuf POST). A slow or absent collector costs
//! dropped, counted spans, never request latency.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, SpanFlags, Status,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost::Message;
use tokio::sync::mpsc::Receiver;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::metrics::ResultLabels;
use crate::trace::{AttributeValue, SpanKind, SpanRecord};
use gatehouse_config::{OtlpProtocol, TracingConfig};

pub(crate) enum Command {
    Span(Box<SpanRecord>),
    /// Export everything queued, then signal.
    Flush(std::sync::mpsc::SyncSender<()>),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    #[error("invalid endpoint `{endpoint}`: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("invalid header `{0}`")]
    Header(String),
}

/// How batches reach the collector; built on the caller's thread so configuration errors
/// surface at start-up, connected lazily on the exporter's runtime.
enum Transport {
    Grpc {
        endpoint: Box<Endpoint>,
        metadata: MetadataMap,
    },
    Http {
        uri: http::Uri,
        headers: http::HeaderMap,
    },
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

enum Connected {
    Grpc(TraceServiceClient<Channel>, MetadataMap),
    Http(Box<HttpsClient>, http::Uri, http::HeaderMap),
}

struct Batcher {
    resource: Resource,
    scope: InstrumentationScope,
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
    spans: Family<ResultLabels, Counter>,
    last_warning: Option<Instant>,
}

pub(crate) fn spawn(
    config: &TracingConfig,
    mut receiver: Receiver<Command>,
    spans: Family<ResultLabels, Counter>,
) -> Result<(), crate::trace::TraceError> {
    let otlp = &config.otlp;
    let endpoint = otlp.endpoint.value.clone();
    let invalid = |message: String| ExportError::Endpoint {
        endpoint: endpoint.clone(),
        message,
    };
    let transport = match otlp.protocol {
        OtlpProtocol::Grpc => {
            let mut channel = Endpoint::from_shared(endpoint.clone())
                .map_err(|e| invalid(e.to_string()))?
                .timeout(otlp.timeout.0)
                .connect_timeout(otlp.timeout.0);
            if endpoint.starts_with("https://") {
                channel = channel
                    .tls_config(ClientTlsConfig::new().with_webpki_roots())
                    .map_err(|e| invalid(e.to_string()))?;
            }
            let mut metadata = MetadataMap::new();
            for (name, value) in &otlp.headers {
                let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ExportError::Header(name.clone()))?;
                let value = MetadataValue::try_from(value.as_str())
                    .map_err(|_| ExportError::Header(name.clone()))?;
                metadata.insert(key, value);
            }
            Transport::Grpc {
                endpoint: Box::new(channel),
                metadata,
            }
        }
        OtlpProtocol::Http => {
            let uri: http::Uri = endpoint.parse().map_err(|e| invalid(format!("{e}")))?;
            let mut headers = http::HeaderMap::new();
            for (name, value) in &otlp.headers {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ExportError::Header(name.clone()))?;
                let value = http::HeaderValue::from_str(value)
                    .map_err(|_| ExportError::Header(name.to_string()))?;
                headers.insert(name, value);
            }
            Transport::Http { uri, headers }
        }
    };
    let mut attributes = vec![
        key_value("service.name", config.service_name.clone().into()),
        key_value("service.version", env!("CARGO_PKG_VERSION").into()),
    ];
    for (key, value) in &config.resource {
        attributes.push(key_value(key, value.clone().into()));
    }
    let mut batcher = Batcher {
        resource: Resource {
            attributes,
            ..Default::default()
        },
        scope: InstrumentationScope {
            name: "gatehouse".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        },
        max_batch: otlp.max_batch.max(1),
        delay: otlp.batch_delay.0,
        timeout: otlp.timeout.0,
        spans,
        last_warning: None,
    };
    std::thread::Builder::new()
        .name("gatehouse-otlp".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(%err, "cannot start the OTLP exporter; spans are dropped");
                    return;
                }
            };
            runtime.block_on(async move {
                let mut connected = connect(transport);
                batcher.run(&mut receiver, &mut connected).await;
            });
        })
        .map_err(crate::trace::TraceError::Thread)?;
    Ok(())
}

fn connect(transport: Transport) -> Connected {
    match transport {
        Transport::Grpc { endpoint, metadata } => {
            Connected::Grpc(TraceServiceClient::new(endpoint.connect_lazy()), metadata)
        }
        Transport::Http { uri, headers } => {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
                .enable_http1()
                .build();
            let client = Client::builder(TokioExecutor::new()).build(connector);
            Connected::Http(Box::new(client), uri, headers)
        }
    }
}

impl Batcher {
    async fn run(&mut self, receiver: &mut Receiver<Command>, connected: &mut Connected) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // Gather spans until the batch is full or its first span has waited `delay`.
        while let Some(command) = receiver.recv().await {
            let mut flush = None;
            match command {
                Command::Span(span) => batch.push(*span),
                Command::Flush(done) => flush = Some(done),
            }
            let deadline = tokio::time::Instant::now() + self.delay;
            while flush.is_none() && batch.len() < self.max_batch {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(Command::Span(span))) => batch.push(*span),
                    Ok(Some(Command::Flush(done))) => flush = Some(done),
                    Ok(None) | Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.export(connected, std::mem::take(&mut batch)).await;
            }
            if let Some(done) = flush {
                let _ = done.try_send(());
            }
        }
    }

    async fn export(&mut self, connected: &mut Connected, batch: Vec<SpanRecord>) {
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans: batch.into_iter().map(to_proto).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let outcome = match connected {
            Connected::Grpc(client, metadata) => {
                let mut call = tonic::Request::new(request);
                *call.metadata_mut() = metadata.clone();
                client
                    .export(call)
                    .await
                    .map(|_| ())
                    .map_err(|status| format!("{}: {}", status.code(), status.message()))
            }
            Connected::Http(client, uri, headers) => {
                post(client, uri, headers, request.encode_to_vec(), self.timeout).await
            }
        };
        let result = match outcome {
            Ok(()) => "exported",
            Err(message) => {
                // One line per minute at most: a down collector must not flood the log.
                let quiet = self
                    .last_warning
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(60));
                if !quiet {
                    tracing::warn!(error = %message, spans = count, "OTLP export failed; spans dropped");
                    self.last_warning = Some(Instant::now());
                }
                "failed"
            }
        };
        self.spans
            .get_or_create(&ResultLabels { result })
            .inc_by(count);
    }
}

async fn post(
    client: &HttpsClient,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let mut request = http::Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // The body is read so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

fn key_value(key: &str, value: AttributeValue) -> KeyValue {
    let value = match value {
        AttributeValue::Text(text) => any_value::Value::StringValue(text),
        AttributeValue::Int(int) => any_value::Value::IntValue(int),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn to_proto(record: SpanRecord) -> Span {
    let mut flags = 1; // W3C trace flags: sampled
    if record.parent.is_some() {
        flags |= SpanFlags::ContextHasIsRemoteMask as u32;
        if record.remote_parent {
            flags |= SpanFlags::ContextIsRemoteMask as u32;
        }
    }
    Span {
        trace_id: record.trace_id.to_vec(),
        span_id: record.span_id.to_vec(),
        trace_state: record.tracestate.unwrap_or_default(),
        parent_span_id: record.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags,
        name: record.name,
        kind: match record.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: unix_nanos(record.start),
        end_time_unix_nano: unix_nanos(record.end),
        attributes: record
            .attributes
            .into_iter()
            .map(|(key, value)| key_value(key, value))
            .collect(),
        status: record.error.map(|message| Status {
            message,
            code: status::StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}
