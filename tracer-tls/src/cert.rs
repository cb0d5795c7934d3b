//! A server certificate and key from PEM files, swapped in when the files change.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use tracing::{error, info};

/// Why the certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not usable PEM (no certificate, no or an unsupported key).
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The key does not belong to the certificate, or rustls refused the configuration.
    #[error("the TLS configuration is unusable: {0}")]
    Config(#[from] rustls::Error),
}

/// What identifies a version of the two files (through symlinks, as Secret volumes use).
type Stamp = [(Option<SystemTime>, u64, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // Followed through symlinks: a Secret volume swaps its `..data` link, the paths stay.
    let one = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len(), m.ino()));
    Some([one(cert)?, one(key)?])
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source });
    let pem = |path: &Path, problem: String| TlsError::Pem { path: path.to_owned(), problem };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(pem(cert, "holds no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| pem(key, format!("no private key: {e}")))?;
    let signing = any_supported_type(&key_der).map_err(|e| pem(key, format!("unsupported key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match()?;
    Ok(Arc::new(certified))
}

/// The certificate in use, and where it comes from.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<Stamp>)>,
}

impl ReloadingCert {
    /// Reads `cert` (PEM chain, leaf first) and `key` (PEM private key); fails when they are
    /// unusable or do not belong together.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let loaded = load(cert, key)?;
        info!(cert = %cert.display(), "TLS certificate loaded");
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new((loaded, stamp(cert, key))),
        }))
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Reads the files again if they changed. Unusable new files (a renewal half-written, a key
    /// that does not match yet) keep the previous certificate, loudly; the next change retries.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.cert, &self.key);
        if now.is_none() || now == self.current.read().unwrap_or_else(|p| p.into_inner()).1 {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(loaded) => {
                info!(cert = %self.cert.display(), "TLS certificate reloaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (loaded, now);
            }
            Err(e) => {
                error!(error = %e, "cannot reload the TLS certificate; serving the previous one");
                // Remember this version so the error is logged once per change, not per poll.
                self.current.write().unwrap_or_else(|p| p.into_inner()).1 = now;
            }
        }
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1) serving this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl tracer_auth::reload::Reload for ReloadingCert {
    fn reload_if_changed(&self) {
        ReloadingCert::reload_if_changed(self);
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, made by the openssl CLI (which the test script
    /// installs).
    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (cert, key)
    }

    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_renewal_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path(), "first");
        let c = ReloadingCert::open(&cert, &key).expect("open");
        let first = c.current().cert[0].clone();
        c.server_config().expect("rustls config");

        let (next_cert, next_key) = self_signed(dir.path(), "second");
        std::fs::rename(&next_cert, &cert).expect("cert");
        // Only the certificate renewed so far: the key does not match it; keep serving the old.
        c.reload_if_changed();
        assert_eq!(c.current().cert[0], first, "a mismatched pair is not taken");
        std::fs::rename(&next_key, &key).expect("key");
        c.reload_if_changed();
        assert_ne!(c.current().cert[0], first, "the renewed pair is served");

        std::fs::write(&cert, "garbage").expect("write");
        c.reload_if_changed();
        assert_ne!(c.current().cert[0], first, "still the renewed one");
    }

    /// A Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`, renewed by
    /// pointing `..data` at a new directory in one rename.
    #[test]
    fn a_secret_volume_swap_is_picked_up() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let v = dir.path();
        let gen = |n: &str| {
            let d = v.join(format!("..{n}"));
            std::fs::create_dir(&d).expect("dir");
            let (c, k) = self_signed(&d, "pair");
            std::fs::rename(c, d.join("tls.crt")).expect("crt");
            std::fs::rename(k, d.join("tls.key")).expect("key");
        };
        gen("2026_01");
        symlink("..2026_01", v.join("..data")).expect("link");
        symlink("..data/tls.crt", v.join("tls.crt")).expect("link");
        symlink("..data/tls.key", v.join("tls.key")).expect("link");
        let c = ReloadingCert::open(&v.join("tls.crt"), &v.join("tls.key")).expect("open");
        let first = c.current().cert[0].clone();
        for (n, old) in [("2026_02", "2026_01"), ("2026_03", "2026_02")] {
            gen(n);
            symlink(format!("..{n}"), v.join("..data_tmp")).expect("link");
            std::fs::rename(v.join("..data_tmp"), v.join("..data")).expect("swap");
            std::fs::remove_dir_all(v.join(format!("..{old}"))).expect("old");
            let before = c.current().cert[0].clone();
            c.reload_if_changed();
            assert_ne!(c.current().cert[0], before, "swap to {n} picked up");
        }
        assert_ne!(c.current().cert[0], first);
    }

    #[test]
    fn unusable_files_are_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path(), "a");
        let (_, other_key) = self_signed(dir.path(), "b");
        assert!(matches!(ReloadingCert::open(&cert, &other_key), Err(TlsError::Config(_))), "key of another cert");
        assert!(matches!(ReloadingCert::open(&dir.path().join("none"), &key), Err(TlsError::Read { .. })));
        std::fs::write(dir.path().join("empty.pem"), "").expect("write");
        assert!(matches!(ReloadingCert::open(&dir.path().join("empty.pem"), &key), Err(TlsError::Pem { .. })));
        assert!(matches!(ReloadingCert::open(&cert, &cert), Err(TlsError::Pem { .. })), "a certificate is no key");
    }
}
