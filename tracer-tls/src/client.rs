//! The client side: a rustls configuration that trusts the system's roots plus, optionally, a
//! CA bundle of the operator's (a cluster CA, cert-manager's issuer), for the OTLP exporter and
//! tracer-svc's calls to the nodes.

use std::sync::Arc;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer},
    ClientConfig, RootCertStore,
};

use crate::TlsError;

/// The certificates of a PEM text (anything that is not a certificate is skipped).
pub fn pem_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

/// A client configuration trusting the system's roots and the certificates of `extra_ca_pem`.
/// With `only_extra`, the system's roots are left out: a private CA is the only one that may
/// vouch for the server (a node certificate signed by a public CA is not ours).
pub fn client_config(extra_ca_pem: Option<&[u8]>, only_extra: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if !(only_extra && extra_ca_pem.is_some()) {
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    }
    if let Some(pem) = extra_ca_pem {
        let certs = pem_certificates(pem);
        if certs.is_empty() {
            return Err(TlsError::Pem { path: "the CA bundle".into(), problem: "holds no certificate".into() });
        }
        roots.add_parsable_certificates(certs);
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
