//! Calls to one tracer-node: a pooled keep-alive HTTP/1 client (HTTPS where the node uses
//! TLS, its certificate verified), tracer-svc's own bearer token (never a caller's), one
//! deadline per call that covers waiting for a slot, connecting, the headers and (for a JSON
//! answer) the bounded body.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, header, Method, Request, StatusCode};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::sync::Semaphore;
use tracer_auth::TokenFile;

use crate::nodes::NodeEndpoint;

/// Why a node gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// Nothing within `--node-timeout`.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// The connection failed (refused, reset, TLS, the pool's slots all taken for too long).
    #[error("{0}")]
    Transport(String),
    /// The answer is larger than `--max-node-body-mb`.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// The answer is not what the node API answers.
    #[error("unexpected answer: {0}")]
    BadAnswer(String),
    /// An error status the request does not expect (the node's own `Error` text).
    #[error("{message} (HTTP {status})")]
    Status {
        /// The node's status.
        status: StatusCode,
        /// The node's `Error`, or the start of its body.
        message: String,
    },
}

impl NodeError {
    /// Whether the node said no in the API's terms (a 4xx with its reason), as opposed to not
    /// answering usably at all.
    pub fn client_error(&self) -> Option<(StatusCode, &str)> {
        match self {
            NodeError::Status { status, message } if status.is_client_error() => Some((*status, message)),
            _ => None,
        }
    }
}

/// A node's answer, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: Bytes,
}

impl Reply {
    /// The body as `T` when the status is a success; an error status as [`NodeError::Status`].
    pub fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, NodeError> {
        if !self.status.is_success() {
            return Err(self.into_error());
        }
        serde_json::from_slice(&self.body).map_err(|e| NodeError::BadAnswer(format!("not the API's JSON: {e}")))
    }

    /// The body when the status is a success; an error status as [`NodeError::Status`].
    pub fn success(self) -> Result<bytes::Bytes, NodeError> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(self.into_error())
        }
    }

    /// The node's `{"Error": ...}` text, or the start of its body.
    pub fn error_message(&self) -> String {
        error_message(&self.body)
    }

    /// The answer as an error.
    pub fn into_error(self) -> NodeError {
        NodeError::Status { status: self.status, message: self.error_message() }
    }
}

/// The `Error` of a node's error body, or the start of the body when it is not one.
pub fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<tracer_api::v1::ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned(),
    }
}

/// How calls to nodes are made.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The deadline of one call.
    pub timeout: Duration,
    /// Calls in flight at once, over all requests.
    pub max_in_flight: usize,
    /// Largest answer read, in bytes.
    pub max_body: usize,
    /// The token presented to nodes.
    pub token: Option<Arc<TokenFile>>,
    /// The CA bundle node certificates must chain to (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// The name node certificates are checked against, instead of the URL's host.
    pub server_name: Option<String>,
}

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS configuration.
    #[error(transparent)]
    Tls(#[from] tracer_tls::TlsError),
    /// The server name.
    #[error("{0:?} is not a DNS name or an IP address")]
    ServerName(String),
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client of every node.
#[derive(Debug)]
pub struct NodeClient {
    http: HttpClient,
    settings: ClientSettings,
    slots: Semaphore,
}

/// The error's chain of causes in one line (hyper's top-level text alone says "client error").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

impl NodeClient {
    /// A client with `settings`.
    pub fn new(settings: ClientSettings) -> Result<Self, ClientError> {
        let tls = tracer_tls::client_config(settings.ca_pem.as_deref(), true)?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.timeout));
        http.set_nodelay(true);
        // A node that vanished without a FIN (its host died) is found out, not waited on.
        http.set_keepalive(Some(Duration::from_secs(30)));
        http.enforce_http(false);
        let builder =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(Arc::unwrap_or_clone(tls)).https_or_http();
        let builder = match &settings.server_name {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| ClientError::ServerName(name.clone()))?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let http = Client::builder(TokioExecutor::new())
            // Below the nodes' own idle cut-off (their header timeout, 15 s by default), so a
            // pooled connection is not reused just as the node closes it.
            .pool_idle_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Self { http, slots: Semaphore::new(settings.max_in_flight.max(1)), settings })
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    fn request(
        &self,
        node: &NodeEndpoint,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, NodeError> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", node.url));
        if let Some(t) = &self.settings.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", t.first()));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        // Paths are built by us from validated ids, tokens checked printable when loaded.
        req.body(Full::new(body.unwrap_or_default()))
            .map_err(|e| NodeError::Transport(format!("bad request to the node: {e}")))
    }

    fn timed_out(&self) -> NodeError {
        NodeError::Timeout(u64::try_from(self.settings.timeout.as_millis()).unwrap_or(u64::MAX))
    }

    /// Sends a request and reads the whole answer, all within the deadline.
    pub async fn call(
        &self,
        node: &NodeEndpoint,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Reply, NodeError> {
        let req = self.request(node, method, path, body)?;
        let max = self.settings.max_body;
        let exchange = async {
            let _slot = self.slots.acquire().await.map_err(|e| NodeError::Transport(e.to_string()))?;
            let resp = self.http.request(req).await.map_err(|e| NodeError::Transport(describe(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), max).collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    NodeError::TooLarge(max)
                } else {
                    NodeError::Transport(describe(e.as_ref()))
                }
            })?;
            Ok(Reply { status, body: body.to_bytes() })
        };
        tokio::time::timeout(self.settings.timeout, exchange).await.map_err(|_| self.timed_out())?
    }

    /// Sends a GET and answers the status and the body still to read (an event stream); the
    /// deadline covers the headers only.
    pub async fn open(&self, node: &NodeEndpoint, path: &str) -> Result<(StatusCode, Incoming), NodeError> {
        let req = self.request(node, Method::GET, path, None)?;
        let exchange = async {
            let _slot = self.slots.acquire().await.map_err(|e| NodeError::Transport(e.to_string()))?;
            let resp = self.http.request(req).await.map_err(|e| NodeError::Transport(describe(&e)))?;
            Ok((resp.status(), resp.into_body()))
        };
        tokio::time::timeout(self.settings.timeout, exchange).await.map_err(|_| self.timed_out())?
    }
}
