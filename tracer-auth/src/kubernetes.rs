//! Bearer tokens checked by the Kubernetes API server, as the kubelet and kube-rbac-proxy do:
//! a `TokenReview` says who the token belongs to, a `SubjectAccessReview` whether that user may
//! do what the request does. Requests map to attributes of a virtual API group, so ordinary
//! RBAC grants them: a ClusterRole for every namespace, a RoleBinding for one.
//!
//! Answers are cached briefly, in bounded maps, so a repeated request costs no API call.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::api::{Api, PostParams};
use tracing::warn;

/// The virtual API group of the attributes checked.
pub const GROUP: &str = "container-tracer.io";

/// Time an API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long answers are kept: authenticated users and allowed requests for a minute, refusals
/// for 10 s (so a new RoleBinding takes effect soon), as the kubelet's webhook authorizer.
const KEEP_ALLOWED: Duration = Duration::from_secs(60);
const KEEP_DENIED: Duration = Duration::from_secs(10);
/// Entries kept per cache at most.
const MAX_ENTRIES: usize = 4096;

/// Why the API server could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesAuthError {
    /// No kubeconfig and not in a cluster.
    #[error("no Kubernetes API to check tokens with (not in a cluster, no usable KUBECONFIG): {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// A review failed (API down, refused, timed out).
    #[error("the Kubernetes API could not {what}: {reason}")]
    Review {
        /// Which review.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    /// User name (`system:serviceaccount:ns:name` for a service account).
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// What a request does, in the virtual group's terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attributes {
    /// A resource request (`pods`, `trace-hooks`, `trace-sessions`, `trace-sessions/events`).
    Resource {
        /// `get`, `list`, `create`, `update`, `delete`.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// The subresource, if any.
        subresource: Option<&'static str>,
        /// The namespace; `None` asks for all namespaces (or a cluster-scoped resource).
        namespace: Option<String>,
    },
    /// A path outside the API (`/metrics`).
    Path {
        /// `get`.
        verb: &'static str,
        /// The path.
        path: &'static str,
    },
}

/// The answer to one access check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether it is allowed.
    pub allowed: bool,
    /// The authorizer's reason, when it gave one.
    pub reason: String,
}

#[derive(Debug)]
struct Cache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }

    fn get(&self, k: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(k).filter(|(_, until)| Instant::now() < *until).map(|(v, _)| v.clone())
    }

    fn put(&self, k: K, v: V, keep: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= MAX_ENTRIES {
                // Still full of live answers: start over rather than grow.
                entries.clear();
            }
        }
        entries.insert(k, (v, Instant::now() + keep));
    }
}

/// Checks tokens and requests with the API server.
pub struct KubernetesAuth {
    client: kube::Client,
    users: Cache<String, Option<User>>,
    decisions: Cache<(User, Attributes), Decision>,
}

impl std::fmt::Debug for KubernetesAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesAuth").finish_non_exhaustive()
    }
}

impl KubernetesAuth {
    /// A client from the environment: the in-cluster service account, or `KUBECONFIG`.
    pub async fn from_environment() -> Result<Self, KubernetesAuthError> {
        let mut config = kube::Config::infer().await?;
        config.connect_timeout = Some(CALL_TIMEOUT);
        config.read_timeout = Some(CALL_TIMEOUT);
        config.write_timeout = Some(CALL_TIMEOUT);
        let client = kube::Client::try_from(config).map_err(KubernetesAuthError::Client)?;
        Ok(Self::with_client(client))
    }

    /// With a given client.
    pub fn with_client(client: kube::Client) -> Self {
        Self { client, users: Cache::new(), decisions: Cache::new() }
    }

    /// POSTs a review (a create that stores nothing) and answers it with its status.
    async fn review<K>(&self, what: &'static str, review: &K) -> Result<K, KubernetesAuthError>
    where
        K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
    {
        let api: Api<K> = Api::all(self.client.clone());
        tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), review))
            .await
            .map_err(|_| KubernetesAuthError::Review { what, reason: "timed out".into() })?
            .map_err(|e| KubernetesAuthError::Review { what, reason: e.to_string() })
    }

    /// Who `token` belongs to; `None` when the API server says it is not valid.
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>, KubernetesAuthError> {
        if let Some(u) = self.users.get(&token.to_owned()) {
            return Ok(u);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), ..Default::default() },
            ..Default::default()
        };
        let answer = self.review("review the token", &review).await?;
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(u)) => Some(User {
                name: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
            }),
            _ => None,
        };
        let keep = if user.is_some() { KEEP_ALLOWED } else { KEEP_DENIED };
        self.users.put(token.to_owned(), user.clone(), keep);
        Ok(user)
    }

    /// Whether `user` may do `attrs`.
    pub async fn authorize(&self, user: &User, attrs: &Attributes) -> Result<Decision, KubernetesAuthError> {
        let key = (user.clone(), attrs.clone());
        if let Some(d) = self.decisions.get(&key) {
            return Ok(d);
        }
        let (resource_attributes, non_resource_attributes) = match attrs {
            Attributes::Resource { verb, resource, subresource, namespace } => (
                Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    verb: Some((*verb).into()),
                    resource: Some((*resource).into()),
                    subresource: subresource.map(Into::into),
                    namespace: namespace.clone(),
                    ..Default::default()
                }),
                None,
            ),
            Attributes::Path { verb, path } => {
                (None, Some(NonResourceAttributes { verb: Some((*verb).into()), path: Some((*path).into()) }))
            }
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(user.groups.clone()),
                resource_attributes,
                non_resource_attributes,
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = self.review("review the access", &review).await?;
        let status = answer.status.unwrap_or_default();
        if let Some(e) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
            warn!(user = %user.name, error = %e, "the authorizer reported an evaluation error");
        }
        let decision = Decision { allowed: status.allowed, reason: status.reason.unwrap_or_default() };
        let keep = if decision.allowed { KEEP_ALLOWED } else { KEEP_DENIED };
        self.decisions.put(key, decision.clone(), keep);
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_expire_and_stay_bounded() {
        let c: Cache<u32, u32> = Cache::new();
        c.put(1, 10, Duration::from_secs(60));
        c.put(2, 20, Duration::ZERO);
        assert_eq!(c.get(&1), Some(10));
        assert_eq!(c.get(&2), None, "expired");
        for i in 0..(3 * MAX_ENTRIES as u32) {
            c.put(i, i, Duration::from_secs(60));
        }
        assert!(c.entries.lock().expect("lock").len() <= MAX_ENTRIES);
    }
}
