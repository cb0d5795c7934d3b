//! The AdmissionReview exchange: parse what the API server posts, answer with the same `uid`,
//! `allowed`, and the patch as base64 JSON Patch.
//!
//! The request is read with `kube::core::admission`'s types. The answer is written with a type
//! of ours: kube-core serializes the patch bytes as a JSON array of numbers, which Go happens to
//! decode too, but the API documents (and every other webhook sends) a base64 string, a quarter
//! of the size.

use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    admission::{AdmissionRequest, AdmissionReview, Operation},
    DynamicObject,
};
use serde::Serialize;

use crate::mutate::{self, Context, Settings};

/// The only version the webhook speaks (`admissionReviewVersions: ["v1"]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is no AdmissionReview we can answer (a 400: there is no `uid` to answer to).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON of an AdmissionReview's shape.
    #[error("not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    /// Another version or kind.
    #[error("expected kind AdmissionReview of {API_VERSION}, got {kind:?} of {api_version:?}")]
    Version {
        /// The `apiVersion` sent.
        api_version: String,
        /// The `kind` sent.
        kind: String,
    },
    /// No `request`.
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// The answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    api_version: &'static str,
    kind: &'static str,
    /// The response.
    pub response: Response,
}

/// `response` of the answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The request's uid.
    pub uid: String,
    /// Whether the pod is admitted.
    pub allowed: bool,
    /// Why not, when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// `JSONPatch` with a patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Base64 of the JSON Patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Shown to the client (kubectl prints them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The status of a denial.
#[derive(Debug, Serialize)]
pub struct Status {
    /// HTTP-like code (403).
    pub code: u16,
    /// The reason, naming the annotation.
    pub message: String,
}

/// Answers the AdmissionReview in `body`.
pub fn review(body: &[u8], settings: &Settings) -> Result<Review, ReviewError> {
    // Read straight into a Pod, the one kind this webhook is for (a third of a review's time
    // went to reading a generic object and converting it); anything else (another kind, a Pod
    // that does not parse) takes the generic path.
    if let Ok(review) = serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        check_version(&review.types)?;
        let request: AdmissionRequest<Pod> = review.try_into().map_err(|_| ReviewError::NoRequest)?;
        return Ok(answer(&request, request.object.as_ref().map(Ok), settings));
    }
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        // An AdmissionReview whose object does not parse (a metadata field of the wrong type):
        // answered, denied, to its uid, rather than with a 400 the API server cannot place.
        Err(e) => {
            return uid_only(body)
                .map(|uid| wrap(deny(allowed(uid), format!("the object is unusable: {e}"))))
                .ok_or(e.into())
        }
    };
    check_version(&review.types)?;
    let request: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| ReviewError::NoRequest)?;
    let pod: Option<Result<Pod, String>> = request
        .object
        .as_ref()
        .map(|o| serde_json::to_value(o).and_then(serde_json::from_value).map_err(|e| e.to_string()));
    Ok(answer(&request, pod.as_ref().map(|r| r.as_ref().map_err(Clone::clone)), settings))
}

fn check_version(types: &kube::core::TypeMeta) -> Result<(), ReviewError> {
    if types.api_version != API_VERSION || types.kind != "AdmissionReview" {
        return Err(ReviewError::Version { api_version: types.api_version.clone(), kind: types.kind.clone() });
    }
    Ok(())
}

/// The answer to `request`, whose object is `pod` (or why it is no Pod).
fn answer<T: kube::Resource>(
    request: &AdmissionRequest<T>,
    pod: Option<Result<&Pod, String>>,
    settings: &Settings,
) -> Review {
    let mut response = allowed(request.uid.clone());
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    // Anything but a Pod CREATE (a misconfigured webhook, a subresource) is let through as is.
    if !is_pod || request.operation != Operation::Create || request.sub_resource.is_some() {
        return wrap(response);
    }
    let pod = match pod {
        None => return wrap(response),
        Some(Err(e)) => return wrap(deny(response, format!("the object is not a valid Pod: {e}"))),
        Some(Ok(p)) => p,
    };
    match mutate::mutate(pod, Context { namespace: request.namespace.as_deref() }, settings) {
        Ok(m) => {
            response.warnings = m.warnings;
            if !m.patch.is_empty() {
                use base64::Engine as _;
                // Serializing plain data: it cannot fail.
                let json = serde_json::to_vec(&json_patch::Patch(m.patch)).unwrap_or_default();
                response.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
                response.patch_type = Some("JSONPatch");
            }
            wrap(response)
        }
        Err(denial) => wrap(deny(response, denial.to_string())),
    }
}

/// The uid of a v1 AdmissionReview whose object does not parse.
fn uid_only(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Bare {
        api_version: String,
        kind: String,
        request: Option<BareRequest>,
    }
    #[derive(serde::Deserialize)]
    struct BareRequest {
        uid: String,
    }
    let bare: Bare = serde_json::from_slice(body).ok()?;
    (bare.api_version == API_VERSION && bare.kind == "AdmissionReview").then_some(bare.request?.uid)
}

fn allowed(uid: String) -> Response {
    Response { uid, allowed: true, status: None, patch_type: None, patch: None, warnings: vec![] }
}

fn deny(mut r: Response, message: String) -> Response {
    r.allowed = false;
    r.status = Some(Status { code: 403, message: format!("container-tracer: {message}") });
    r
}

fn wrap(response: Response) -> Review {
    Review { api_version: API_VERSION, kind: "AdmissionReview", response }
}
