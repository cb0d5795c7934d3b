//! Harness of the end-to-end tests: real tracer-node processes, real runc/crun/podman
//! containers wired to the real runtime-hook, a busybox rootfs, and a real HTTP client.
//!
//! Tests that need root or a runtime call [`require`]: under `CI` a missing prerequisite fails
//! the test, elsewhere it is skipped with a message.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub mod bench;
pub mod bundle;
pub mod certs;
pub mod fuzz;
pub mod https;
pub mod kube;
pub mod node;
pub mod otlp;
pub mod podman;
pub mod poller;
pub mod runtime;
pub mod standin;
pub mod svc;
pub mod webhook;

pub use bundle::*;
pub use certs::*;
pub use node::*;
pub use otlp::*;
pub use podman::*;
pub use runtime::*;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Whether the tests run under CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Checks prerequisites: root and the named commands. Returns false (skip) outside CI when one
/// is missing; panics under CI.
pub fn require(commands: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    for c in commands {
        if which(c).is_none() {
            missing.push(format!("`{c}` on PATH"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("needs {} (run the README's test command, which installs them)", missing.join(", "));
    assert!(!in_ci(), "CI is set, so this test may not skip: it {msg}");
    eprintln!("SKIPPED: this test {msg}");
    false
}

/// The path of `cmd` on PATH.
pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}

/// The directory holding the workspace's built binaries (`target/<profile>`), found from the
/// test executable's own path (`target/<profile>/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps layout").to_path_buf()
}

/// A built workspace binary; the test command builds them before running the tests.
pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.is_file(), "{} is not built: run `cargo build --workspace` first (the test script does)", p.display());
    p
}

/// A name unique to this test process and call, for containers and directories.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// An HTTP client with timeouts on everything, that hands back non-2xx answers as responses.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `url` and parse the JSON body; non-2xx is an error with the body.
pub fn get_json(url: &str) -> Result<Value> {
    let mut resp = agent().get(url).call().with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.body_mut().read_to_string()?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON: {body}"))
}

/// GET `url` and answer the body as text, whatever the status.
pub fn get_text(url: &str) -> String {
    let mut resp = agent().get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    resp.body_mut().read_to_string().unwrap_or_default()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
