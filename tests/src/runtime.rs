//! runc and crun with a state root of their own, and the looping containers the tests trace.

use std::{
    fs,
    path::Path,
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{containerd_annotations, unique, Bundle, Node};

/// Runs `cmd` with stdout and stderr (merged, in `Output::stdout`) going through a file in
/// `scratch` rather than a pipe: a detached container's init inherits the runtime's stdio, and a
/// pipe would never reach EOF.
pub fn run_captured(cmd: &mut Command, scratch: &Path) -> Result<Output> {
    let log_path = scratch.join(format!("{}.out", unique("cmd")));
    let log = fs::File::create(&log_path)?;
    let status = cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).status()?;
    let text = fs::read(&log_path).unwrap_or_default();
    let _ = fs::remove_file(&log_path);
    Ok(Output { status, stdout: text, stderr: Vec::new() })
}

/// An OCI runtime (runc or crun) with its own state root, so tests never touch /run/runc.
pub struct Runtime {
    /// `runc` or `crun`.
    pub bin: &'static str,
    root: tempfile::TempDir,
    created: std::sync::Mutex<Vec<String>>,
    /// Bundles of running containers, removed once the containers are deleted (on drop).
    bundles: std::sync::Mutex<Vec<Bundle>>,
}

impl Runtime {
    /// A runtime with a fresh state root.
    pub fn new(bin: &'static str) -> Result<Self> {
        Ok(Runtime {
            bin,
            root: tempfile::Builder::new().prefix("ct-rt-").tempdir()?,
            created: Default::default(),
            bundles: Default::default(),
        })
    }

    /// Runs `<bin> --root <root> args...` (see [`run_captured`]).
    pub fn cmd(&self, args: &[&str]) -> Result<Output> {
        run_captured(Command::new(self.bin).arg("--root").arg(self.root.path()).args(args), self.root.path())
    }

    fn ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.cmd(args)?;
        if !out.status.success() {
            bail!(
                "{} {:?} failed: {}{}",
                self.bin,
                args,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// `create --bundle`: the container exists, its init waits for `start`.
    pub fn create(&self, id: &str, bundle: &Bundle) -> Result<()> {
        self.created.lock().expect("lock").push(id.to_owned());
        self.ok(&["create", "--bundle", &bundle.dir.path().display().to_string(), id]).map(drop)
    }

    /// `start`.
    pub fn start(&self, id: &str) -> Result<()> {
        self.ok(&["start", id]).map(drop)
    }

    /// `run` in the foreground until the container exits (it is deleted on exit).
    pub fn run(&self, id: &str, bundle: &Bundle) -> Result<Output> {
        self.ok(&["run", "--bundle", &bundle.dir.path().display().to_string(), id])
    }

    /// The init's host pid from `state`.
    pub fn pid(&self, id: &str) -> Result<u32> {
        let out = self.ok(&["state", id])?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        v["pid"].as_u64().map(|p| p as u32).context("state has no pid")
    }

    /// `kill <id> KILL`.
    pub fn kill(&self, id: &str) -> Result<()> {
        self.ok(&["kill", id, "KILL"]).map(drop)
    }

    /// `delete --force` (runs the poststop hooks).
    pub fn delete(&self, id: &str) -> Result<()> {
        self.ok(&["delete", "--force", id]).map(drop)
    }

    /// Keeps `bundle` until this runtime is dropped (after its containers are deleted).
    pub fn keep(&self, bundle: Bundle) {
        self.bundles.lock().expect("lock").push(bundle);
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for id in self.created.lock().map(|v| v.clone()).unwrap_or_default() {
            let _ = self.cmd(&["delete", "--force", &id]);
        }
    }
}

/// The script of a container that opens a file a few times a second, from its init and from a
/// forked `cat` per round.
pub const LOOP_SCRIPT: &str = "while true; do cat /etc/hostname > /dev/null; sleep 0.05; done";

/// Creates and starts (with `rt`) a container of `pod` (namespace `ns`, name `looper`) running
/// `sh -c script`, registered with `node`; answers its id and init pid.
pub fn looping_container(node: &Node, rt: &Runtime, pod: &str, script: &str) -> (String, u32) {
    let id = unique("ct-loop");
    let bundle =
        Bundle::new(&["sh", "-c", script], &containerd_annotations(pod, "ns", "looper"), Bundle::hooks_for(node))
            .expect("bundle");
    rt.create(&id, &bundle).expect("create");
    rt.start(&id).expect("start");
    let pid = rt.pid(&id).expect("pid");
    rt.keep(bundle);
    (id, pid)
}
