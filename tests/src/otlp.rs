//! The independent OTLP receiver the export tests send to.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{in_ci, require};

/// The Python with `opentelemetry-proto` and `grpcio` that `scripts/test.sh` prepares.
pub fn otlp_python() -> PathBuf {
    std::env::var_os("TRACER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/container-tracer-pyenv/bin/python"))
}

/// Checks that the OTLP receiver can run (root, runc, its Python); like [`require`].
pub fn require_otlp() -> bool {
    require(&["runc"]) && require_python("import grpc, opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc")
}

/// Checks that the tests' Python (see [`otlp_python`]) runs `import` (e.g. `import jsonpatch`);
/// like [`require`]: a skip outside CI, a failure under it.
pub fn require_python(import: &str) -> bool {
    let py = otlp_python();
    let ok = Command::new(&py)
        .args(["-c", import])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let msg = format!("needs {} able to `{import}` (scripts/test.sh installs it)", py.display());
    assert!(!in_ci(), "CI is set, so this test may not skip: it {msg}");
    eprintln!("SKIPPED: this test {msg}");
    false
}

/// The independent OTLP receiver (`tests/otlp_receiver.py`): gRPC and HTTP/protobuf.
pub struct Receiver {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its OTLP/gRPC port.
    pub grpc_port: u16,
    /// Its OTLP/HTTP port.
    pub http_port: u16,
    count_only: bool,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Receiver {
    /// The receiver process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts a receiver on free ports.
    pub fn start() -> Result<Self> {
        Self::start_on(0, 0)
    }

    /// Starts a receiver on the given ports (0: any free one).
    pub fn start_on(grpc_port: u16, http_port: u16) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ct-otlp-").tempdir()?;
        let mut r = Receiver { dir, child: None, grpc_port, http_port, count_only: false, tls: None };
        r.spawn()?;
        Ok(r)
    }

    /// Starts a receiver that only counts what it receives (see [`Receiver::counts`]).
    pub fn start_counting() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ct-otlp-").tempdir()?;
        let mut r = Receiver { dir, child: None, grpc_port: 0, http_port: 0, count_only: true, tls: None };
        r.spawn()?;
        Ok(r)
    }

    /// Starts a receiver serving both protocols over TLS with `cert` / `key` (PEM).
    pub fn start_tls(cert: &Path, key: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ct-otlp-").tempdir()?;
        let tls = Some((cert.to_owned(), key.to_owned()));
        let mut r = Receiver { dir, child: None, grpc_port: 0, http_port: 0, count_only: false, tls };
        r.spawn()?;
        Ok(r)
    }

    /// Totals of a counting receiver: `logs`, `span_events`, `spans`, `requests`.
    pub fn counts(&self) -> Value {
        fs::read(self.dir.path().join("received.jsonl"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| json!({"logs": 0, "span_events": 0, "spans": 0, "requests": 0}))
    }

    fn spawn(&mut self) -> Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_receiver.py");
        let mut child =
            Command::new(otlp_python())
                .arg(script)
                .arg("--out")
                .arg(self.dir.path().join("received.jsonl"))
                .arg("--mode-file")
                .arg(self.dir.path().join("mode"))
                .args(["--grpc-port", &self.grpc_port.to_string(), "--http-port", &self.http_port.to_string()])
                .args(self.count_only.then_some("--count-only"))
                .args(self.tls.iter().flat_map(|(c, k)| {
                    [OsStr::new("--tls-cert"), c.as_os_str(), OsStr::new("--tls-key"), k.as_os_str()]
                }))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(fs::File::create(self.dir.path().join("receiver.log"))?)
                .spawn()
                .context("start the OTLP receiver")?;
        let stdout = child.stdout.take().context("receiver stdout")?;
        self.child = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).context("receiver not ready within 30 s")?;
        let port = |key: &str| -> Result<u16> {
            let v = line.split_whitespace().find_map(|w| w.strip_prefix(key)).context("READY line")?;
            Ok(v.parse()?)
        };
        if !line.starts_with("READY") {
            bail!("receiver did not start: {line:?} {}", fs::read_to_string(self.dir.path().join("receiver.log"))?);
        }
        self.grpc_port = port("grpc=")?;
        self.http_port = port("http=")?;
        Ok(())
    }

    /// Its OTLP/gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Its OTLP/HTTP base endpoint.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `ok`, `unavailable` or `hang`.
    pub fn set_mode(&self, mode: &str) {
        fs::write(self.dir.path().join("mode"), mode).expect("write receiver mode");
    }

    /// Kills it (the collector goes down).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Every resource received so far, one JSON value each.
    pub fn received(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.path().join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every log record received, with its resource.
    pub fn log_records(&self) -> Vec<(Value, Value)> {
        self.items("logs", "records")
    }

    /// Every span received, with its resource.
    pub fn spans(&self) -> Vec<(Value, Value)> {
        self.items("traces", "spans")
    }

    /// The `field` items of every `signal` request received, each with its resource.
    fn items(&self, signal: &str, field: &str) -> Vec<(Value, Value)> {
        self.received()
            .into_iter()
            .filter(|r| r["signal"] == signal)
            .flat_map(|r| {
                let res = r["resource"].clone();
                r[field].as_array().cloned().unwrap_or_default().into_iter().map(move |x| (res.clone(), x))
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}
