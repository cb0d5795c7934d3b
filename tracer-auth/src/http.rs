//! Who may call a v1 API server (tracer-node's, and tracer-svc's, which must authorize its
//! callers exactly as a node would). The API hands out every system call of every container, so
//! everything but the health endpoints (and `/metrics`, unless asked) needs a valid bearer
//! token when an auth mode is configured. A missing or bad token is a 401 with
//! `WWW-Authenticate: Bearer`; the token itself is never logged.
//!
//! With `--auth-kubernetes` the token's user is also authorized per request, with the pod's or
//! session's namespace (see `docs/api.md` for the attributes): the middleware puts the
//! [`Caller`] in the request, and each handler asks it about what it is about to show or do.

use std::{collections::BTreeSet, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use tracing::debug;

use crate::{bearer, Attributes, KubernetesAuth, TokenFile, Unauthenticated, User};

/// Why a request is refused; each server maps it into its own API error.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No valid credentials (401).
    #[error(transparent)]
    Unauthenticated(#[from] Unauthenticated),
    /// Authenticated, but not allowed (403): the message names what is missing.
    #[error("{0}")]
    Forbidden(String),
    /// The API server could not be asked (503).
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for Refusal {
    /// The contract's `{"Error": ...}`, with the `WWW-Authenticate` challenge on a 401.
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, Json(serde_json::json!({ "Error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// No authentication: a loopback address, or `--insecure-no-auth`.
    #[default]
    Open,
    /// Bearer tokens from `--auth-token-file`.
    Tokens(Arc<TokenFile>),
    /// TokenReview and SubjectAccessReview (`--auth-kubernetes`).
    Kubernetes(Arc<KubernetesAuth>),
}

/// Why the auth mode the flags ask for cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The token file is unusable (a configuration error).
    #[error(transparent)]
    TokenFile(#[from] crate::TokenFileError),
    /// No Kubernetes API to check tokens with.
    #[error(transparent)]
    Kubernetes(#[from] crate::KubernetesAuthError),
}

impl Auth {
    /// The mode of a server's flags: bearer tokens from `token_file`, else the Kubernetes API
    /// when `kubernetes`, else none (the servers refuse none on a non-loopback address unless
    /// told so).
    pub async fn from_flags(token_file: Option<&std::path::Path>, kubernetes: bool) -> Result<Self, AuthSetupError> {
        Ok(match token_file {
            Some(path) => Auth::Tokens(TokenFile::open(path)?),
            None if kubernetes => Auth::Kubernetes(Arc::new(KubernetesAuth::from_environment().await?)),
            None => Auth::Open,
        })
    }

    /// Warns about what serving `address` this way exposes: no authentication off loopback
    /// (`open_warning`, which `/readyz` repeats; answered true then), or tokens in clear text.
    pub fn warn_exposure(&self, address: std::net::SocketAddr, tls: bool, open_warning: &str) -> bool {
        let loopback = address.ip().is_loopback();
        let open = matches!(self, Auth::Open);
        if open && !loopback {
            tracing::warn!(%address, "{open_warning}");
        }
        if !tls && !open && !loopback {
            tracing::warn!(%address, "bearer tokens cross the network in clear text: give --tls-cert and --tls-key");
        }
        open && !loopback
    }

    /// The task that re-reads the token file when it changes (none for the other modes).
    pub fn watch(&self) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Auth::Tokens(t) => Some(crate::reload::watch(t)),
            Auth::Open | Auth::Kubernetes(_) => None,
        }
    }
}

/// Who is calling, as the handlers see it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Anyone allowed in may do anything (no auth, or a token file).
    Trusted,
    /// A Kubernetes user, authorized per request.
    User(User, Arc<KubernetesAuth>),
}

impl Caller {
    /// Whether the caller may `verb` the `resource` (`/subresource`) in `namespace` (`None`:
    /// in every namespace, or a resource of no namespace). A 403 names what is missing.
    pub async fn check(
        &self,
        verb: &'static str,
        resource: &'static str,
        subresource: Option<&'static str>,
        namespace: Option<&str>,
    ) -> Result<(), Refusal> {
        let Caller::User(user, kube) = self else { return Ok(()) };
        let attrs = Attributes::Resource { verb, resource, subresource, namespace: namespace.map(str::to_owned) };
        let decision = kube.authorize(user, &attrs).await.map_err(|e| Refusal::Unavailable(e.to_string()))?;
        if decision.allowed {
            return Ok(());
        }
        let what = match subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "in every namespace (cluster-wide)".to_owned(),
        };
        let reason = if decision.reason.is_empty() { String::new() } else { format!(" ({})", decision.reason) };
        Err(Refusal::Forbidden(format!(
            "{} may not {verb} {what}.{} {scope}{reason}",
            user.name,
            crate::kubernetes::GROUP
        )))
    }

    /// The namespaces among `namespaces` where the caller may `verb` the `resource`: `None` when
    /// it may in every namespace (one cluster-wide check, then per namespace only if refused).
    pub async fn namespaces_allowed<'a>(
        &self,
        verb: &'static str,
        resource: &'static str,
        subresource: Option<&'static str>,
        namespaces: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<BTreeSet<String>>, Refusal> {
        if self.check(verb, resource, subresource, None).await.is_ok() {
            return Ok(None);
        }
        let mut allowed = BTreeSet::new();
        for ns in namespaces.into_iter().collect::<BTreeSet<_>>() {
            match self.check(verb, resource, subresource, Some(ns)).await {
                Ok(()) => {
                    allowed.insert(ns.to_owned());
                }
                Err(Refusal::Forbidden(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(allowed))
    }
}

/// The auth settings of the router.
#[derive(Debug, Clone, Default)]
pub struct AuthPolicy {
    /// The mode.
    pub auth: Auth,
    /// Whether `/metrics` needs authentication too.
    pub protect_metrics: bool,
}

impl AuthPolicy {
    fn is_open(&self, path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && !self.protect_metrics)
    }
}

/// The middleware: lets a request through (with its [`Caller`]) or answers 401.
pub async fn authenticate(State(policy): State<Arc<AuthPolicy>>, mut req: Request, next: Next) -> Response {
    if policy.is_open(req.uri().path()) {
        req.extensions_mut().insert(Caller::Trusted);
        return next.run(req).await;
    }
    // Owned: the request (its body is not Sync) must not be borrowed across an await.
    let token = bearer(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())).map(str::to_owned);
    let path = req.uri().path().to_owned();
    let caller = match &policy.auth {
        Auth::Open => Ok(Caller::Trusted),
        Auth::Tokens(tokens) => token.and_then(|t| tokens.check(&t)).map(|()| Caller::Trusted).map_err(Into::into),
        Auth::Kubernetes(kube) => match token {
            Err(why) => Err(why.into()),
            Ok(t) => match kube.authenticate(&t).await {
                Ok(Some(user)) => Ok(Caller::User(user, kube.clone())),
                Ok(None) => Err(Refusal::Unauthenticated(Unauthenticated::BadToken)),
                Err(e) => Err(Refusal::Unavailable(e.to_string())),
            },
        },
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            debug!(%path, reason = %e, "request refused: not authenticated");
            return e.into_response();
        }
    };
    // `/metrics` behind auth is a path, not a resource, as kube-rbac-proxy checks it.
    if path == "/metrics" {
        if let Caller::User(user, kube) = &caller {
            let attrs = Attributes::Path { verb: "get", path: "/metrics" };
            match kube.authorize(user, &attrs).await {
                Ok(d) if d.allowed => {}
                Ok(_) => return Refusal::Forbidden(format!("{} may not get /metrics", user.name)).into_response(),
                Err(e) => return Refusal::Unavailable(e.to_string()).into_response(),
            }
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}
