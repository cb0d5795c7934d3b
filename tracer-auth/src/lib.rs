//! Authentication and authorization shared by container-tracer's v1 API servers (tracer-node
//! and tracer-svc): the bearer token of a request, checked against tokens read from a file
//! that is watched and reloaded when it changes, or by the Kubernetes API server; the request's
//! caller, authorized per namespace; the axum middleware that does both.
//!
//! Tokens are secrets: they are never logged, and they are compared in time that does not
//! depend on where a guess first differs.

pub mod http;
pub mod kubernetes;
pub mod reload;
mod token_file;

pub use kubernetes::{Attributes, Decision, KubernetesAuth, KubernetesAuthError, User};
pub use token_file::{TokenFile, TokenFileError};

/// Why a request is not authenticated (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    /// No `Authorization` header.
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    /// An `Authorization` header that is not a bearer token.
    #[error("the Authorization header must be Bearer <token>")]
    NotBearer,
    /// A bearer token that is not valid.
    #[error("the bearer token is not valid")]
    BadToken,
}

/// The token of an `Authorization` header value (`Bearer <token>`, the scheme in any case).
pub fn bearer(header: Option<&[u8]>) -> Result<&str, Unauthenticated> {
    let value = header.ok_or(Unauthenticated::Missing)?;
    let value = std::str::from_utf8(value).map_err(|_| Unauthenticated::NotBearer)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(Unauthenticated::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Unauthenticated::NotBearer);
    }
    Ok(token)
}

/// Equality of two secrets in time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_taken_from_the_header() {
        assert_eq!(bearer(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(Unauthenticated::Missing));
        assert_eq!(bearer(Some(b"Basic YWJj")), Err(Unauthenticated::NotBearer));
        assert_eq!(bearer(Some(b"Bearer ")), Err(Unauthenticated::NotBearer));
        assert_eq!(bearer(Some(b"\xff")), Err(Unauthenticated::NotBearer));
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
