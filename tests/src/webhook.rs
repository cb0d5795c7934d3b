//! A real `webhook` process serving HTTPS with a certificate laid out as a Kubernetes Secret
//! volume (`tls.crt -> ..data/tls.crt`, `..data -> ..<stamp>`), so a rotation is the same atomic
//! `..data` swap the kubelet makes.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{binary, https::https, test_certificates, wait_until};

/// A running webhook; killed on drop with its directory.
pub struct Webhook {
    /// Its files: certificates, the Secret-like volume, the log.
    pub dir: tempfile::TempDir,
    /// The HTTPS port on 127.0.0.1.
    pub port: u16,
    /// The CA of the certificate served first.
    pub ca: PathBuf,
    child: Child,
    generation: u32,
}

/// What the tests inject: an agent, an init container and a volume.
pub const SIDECAR_TEMPLATE: &str = r#"containers:
  - name: tracer-agent
    image: registry.example/tracer-agent:1
    volumeMounts:
      - name: tracer-run
        mountPath: /run/tracer
initContainers:
  - name: tracer-init
    image: busybox
    command: ["true"]
volumes:
  - name: tracer-run
    emptyDir: {}
"#;

impl Webhook {
    /// Starts the webhook with the test sidecar template and `extra` flags; waits for `/healthz`.
    pub fn start(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ct-webhook-").tempdir()?;
        let (ca, _, _) = Self::certificates(dir.path(), 1)?;
        let secret = dir.path().join("secret");
        std::os::unix::fs::symlink("..gen1", secret.join("..data"))?;
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), secret.join(f))?;
        }
        let template = dir.path().join("sidecar.yaml");
        std::fs::write(&template, SIDECAR_TEMPLATE)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.path().join("webhook.log"))?;
        let child = Command::new(binary("webhook"))
            .arg("--address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-cert")
            .arg(secret.join("tls.crt"))
            .arg("--tls-key")
            .arg(secret.join("tls.key"))
            .arg("--sidecar-template")
            .arg(&template)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start the webhook (built by the test command)")?;
        let w = Webhook { dir, port, ca, child, generation: 1 };
        let up =
            wait_until(Duration::from_secs(20), || https(w.port, &[&w.ca], "GET", "/healthz", &[], b"").status == 200);
        anyhow::ensure!(up, "webhook not ready: {}", w.log());
        Ok(w)
    }

    /// Makes certificate generation `n` in `..gen<n>` of the Secret-like directory.
    fn certificates(dir: &Path, n: u32) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let made = dir.join(format!("made{n}"));
        std::fs::create_dir_all(&made)?;
        let (ca, cert, key) = test_certificates(&made)?;
        let gen = dir.join("secret").join(format!("..gen{n}"));
        std::fs::create_dir_all(&gen)?;
        std::fs::copy(&cert, gen.join("tls.crt"))?;
        std::fs::copy(&key, gen.join("tls.key"))?;
        Ok((ca, gen.join("tls.crt"), gen.join("tls.key")))
    }

    /// Rotates the certificate as the kubelet updates a Secret volume: a new `..<stamp>`
    /// directory, then `..data` swapped to it by one rename. Answers the new CA and leaf (PEM).
    pub fn rotate(&mut self) -> Result<(PathBuf, PathBuf)> {
        self.generation += 1;
        let n = self.generation;
        let (ca, cert, _) = Self::certificates(self.dir.path(), n)?;
        let secret = self.dir.path().join("secret");
        std::os::unix::fs::symlink(format!("..gen{n}"), secret.join("..data_tmp"))?;
        std::fs::rename(secret.join("..data_tmp"), secret.join("..data"))?;
        Ok((ca, cert))
    }

    /// POSTs `body` to `/mutate?timeout=10s` as the API server does; the status and the body.
    pub fn review(&self, body: &[u8]) -> (u16, Vec<u8>) {
        let a =
            https(self.port, &[&self.ca], "POST", "/mutate?timeout=10s", &[("Content-Type", "application/json")], body);
        (a.status, a.body)
    }

    /// The webhook's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("webhook.log")).unwrap_or_default()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
