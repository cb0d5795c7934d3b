//! OTLP transports: gRPC (tonic, the generated `LogsService` / `TraceService` clients) and
//! HTTP/protobuf (hyper). Every request has the configured time limit; failures say whether
//! the OTLP spec lets them be retried.

use std::{io::Write, sync::Arc, time::Duration};

use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, trace::v1::ExportTraceServiceResponse,
};
use prost::Message;
use tonic::{
    client::Grpc,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{MetadataKey, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
    Code, Status,
};

use super::{
    config::{ExportConfig, Protocol},
    payload::{Payload, PayloadBody},
};

/// A failed export request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Whether the same request may succeed later (OTLP's retryable codes, connection errors).
    pub retryable: bool,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// What happened.
    pub message: String,
}

/// The transport could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP {what}: {reason}")]
pub struct TransportError {
    what: &'static str,
    reason: String,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, PayloadBody>;

#[derive(Debug, Clone)]
enum Inner {
    Grpc { logs: Grpc<Channel>, traces: Grpc<Channel> },
    Http { client: HttpClient, logs: Uri, traces: Uri },
}

/// The gRPC methods of OTLP.
const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
const TRACES_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A codec that sends an already encoded request (so a retry resends the same bytes instead of
/// re-encoding or cloning the message) and decodes the answer `R`.
#[derive(Debug)]
struct Preencoded<R>(std::marker::PhantomData<R>);

impl<R> Default for Preencoded<R> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<R: Message + Default + Send + 'static> Codec for Preencoded<R> {
    type Encode = Payload;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = Preencoded<R>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        Preencoded::default()
    }
}

/// Writes the bytes as they are.
#[derive(Debug)]
struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Payload;
    type Error = Status;

    fn encode(&mut self, item: Payload, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // At once: grown piece by piece, the buffer would be moved as it grows.
        dst.reserve(item.len());
        item.put_into(dst);
        Ok(())
    }
}

impl<R: Message + Default + Send + 'static> Decoder for Preencoded<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        R::decode(src).map(Some).map_err(|e| Status::internal(format!("undecodable answer: {e}")))
    }
}

/// A connection to the collector, cheap to clone.
#[derive(Debug, Clone)]
pub struct Transport {
    inner: Inner,
    headers: Arc<Vec<(String, String)>>,
    timeout: Duration,
    gzip: bool,
}

/// Largest response body read (a response carries at most a partial-success message).
const MAX_RESPONSE: usize = 64 * 1024;

fn grpc_channel(uri: &Uri, cfg: &ExportConfig) -> Result<Channel, TransportError> {
    let bad = |reason: String| TransportError { what: "gRPC endpoint", reason };
    let mut ep = Endpoint::from_shared(uri.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(cfg.timeout)
        .timeout(cfg.timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(cfg.timeout);
    if uri.scheme_str() == Some("https") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = &cfg.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        ep = ep.tls_config(tls).map_err(|e| bad(e.to_string()))?;
    }
    // Lazy: the collector may come up after us; each export connects (again) as needed.
    Ok(ep.connect_lazy())
}

fn http_client(cfg: &ExportConfig) -> Result<HttpClient, TransportError> {
    let bad = |reason: String| TransportError { what: "HTTP client", reason };
    let tls = tracer_tls::client_config(cfg.ca_pem.as_deref(), false).map_err(|e| bad(e.to_string()))?;
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(cfg.timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector))
}

/// Whether a TLS failure (an untrusted or mismatched certificate, a failed handshake) is in
/// `e`'s chain: a configuration problem that retrying within seconds will not fix.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps (connectors nest them): look inside.
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn std::error::Error + 'static) = inner;
            return is_tls_failure(inner);
        }
        next = err.source();
    }
    false
}

fn grpc_retryable(code: Code) -> bool {
    // The OTLP spec's retryable gRPC codes.
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    )
}

impl Transport {
    /// A transport for `cfg`. Connects lazily; must be called inside the tokio runtime.
    pub fn new(cfg: &ExportConfig) -> Result<Self, TransportError> {
        let inner = match cfg.protocol {
            Protocol::Grpc => {
                let mut logs =
                    Grpc::new(grpc_channel(&cfg.logs_endpoint, cfg)?).max_decoding_message_size(MAX_RESPONSE);
                let mut traces =
                    Grpc::new(grpc_channel(&cfg.traces_endpoint, cfg)?).max_decoding_message_size(MAX_RESPONSE);
                if cfg.gzip {
                    logs = logs.send_compressed(CompressionEncoding::Gzip);
                    traces = traces.send_compressed(CompressionEncoding::Gzip);
                }
                Inner::Grpc { logs, traces }
            }
            Protocol::HttpProtobuf => Inner::Http {
                client: http_client(cfg)?,
                logs: cfg.logs_endpoint.clone(),
                traces: cfg.traces_endpoint.clone(),
            },
        };
        Ok(Self { inner, headers: Arc::new(cfg.headers.clone()), timeout: cfg.timeout, gzip: cfg.gzip })
    }

    fn grpc_request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        for (k, v) in self.headers.iter() {
            if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(k.as_bytes()), MetadataValue::try_from(v.as_str())) {
                req.metadata_mut().insert(k, v);
            }
        }
        req
    }

    fn grpc_error(status: &tonic::Status) -> SendError {
        // A connection that could not be made or broke comes back as `Unknown` with the
        // transport error as its source: as retryable as `Unavailable`.
        let source = std::error::Error::source(status);
        let transport = source.is_some_and(|e| e.is::<tonic::transport::Error>());
        let tls = source.is_some_and(is_tls_failure);
        SendError {
            retryable: !tls && (grpc_retryable(status.code()) || (status.code() == Code::Unknown && transport)),
            retry_after: None,
            message: format!("gRPC {:?}: {}", status.code(), status.message()),
        }
    }

    async fn unary<R: Message + Default + Send + Sync + 'static>(
        &self,
        client: &Grpc<Channel>,
        method: &'static str,
        body: Payload,
    ) -> Result<R, SendError> {
        let mut client = client.clone();
        client.ready().await.map_err(|e| SendError {
            retryable: !is_tls_failure(&e),
            retry_after: None,
            message: format!("gRPC connection: {e}"),
        })?;
        let answer = client
            .unary(self.grpc_request(body), PathAndQuery::from_static(method), Preencoded::<R>::default())
            .await
            .map_err(|s| Self::grpc_error(&s))?;
        Ok(answer.into_inner())
    }

    /// Exports an encoded `ExportLogsServiceRequest`; answers how many records the collector
    /// rejected.
    pub async fn logs(&self, body: Payload) -> Result<u64, SendError> {
        let answer: ExportLogsServiceResponse = match &self.inner {
            Inner::Grpc { logs, .. } => self.unary(logs, LOGS_EXPORT, body).await?,
            Inner::Http { client, logs, .. } => {
                ExportLogsServiceResponse::decode(self.post(client, logs, body).await?).unwrap_or_default()
            }
        };
        Ok(answer.partial_success.map_or(0, |p| p.rejected_log_records.max(0) as u64))
    }

    /// Exports an encoded `ExportTraceServiceRequest`; answers how many spans the collector
    /// rejected.
    pub async fn traces(&self, body: Payload) -> Result<u64, SendError> {
        let answer: ExportTraceServiceResponse = match &self.inner {
            Inner::Grpc { traces, .. } => self.unary(traces, TRACES_EXPORT, body).await?,
            Inner::Http { client, traces, .. } => {
                ExportTraceServiceResponse::decode(self.post(client, traces, body).await?).unwrap_or_default()
            }
        };
        Ok(answer.partial_success.map_or(0, |p| p.rejected_spans.max(0) as u64))
    }

    async fn post(&self, client: &HttpClient, uri: &Uri, body: Payload) -> Result<Bytes, SendError> {
        let fail = |retryable: bool, message: String| SendError { retryable, retry_after: None, message };
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(header::USER_AGENT, concat!("container-tracer/", env!("CARGO_PKG_VERSION")));
        let body = if self.gzip {
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
            let zipped = body.parts().iter().try_for_each(|p| enc.write_all(p)).and_then(|()| enc.finish());
            Payload::from(zipped.map_err(|e| fail(false, format!("gzip: {e}")))?)
        } else {
            body
        };
        if self.gzip {
            builder = builder.header(header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in self.headers.iter() {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder.body(body.into_body()).map_err(|e| fail(false, format!("request: {e}")))?;
        let exchange = async {
            let response = client.request(request).await.map_err(|e| {
                let mut text = e.to_string();
                let mut next = std::error::Error::source(&e);
                while let Some(cause) = next {
                    text = format!("{text}: {cause}");
                    next = cause.source();
                }
                fail(!is_tls_failure(&e), format!("HTTP {uri}: {text}"))
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| fail(true, format!("HTTP {uri}: reading the answer: {e}")))?;
            if status.is_success() {
                return Ok(body);
            }
            let retryable = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            );
            let text: String = String::from_utf8_lossy(&body).chars().filter(|c| !c.is_control()).take(200).collect();
            Err(SendError { retryable, retry_after, message: format!("HTTP {uri}: {status} {text}") })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| fail(true, format!("HTTP {uri}: no answer within {:?}", self.timeout)))?
    }
}
