//! podman wired to the runtime hook through the `hooks.d` files the repository ships.

use std::{
    fs,
    path::Path,
    process::{Command, Output},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{binary, rootfs, run_captured, Node};

/// podman with its own storage, a containers.conf of its own (cgroupfs, file events, no netns),
/// and the hooks.d files shipped in `deploy/hooks.d`, re-aimed at `node` and the built hook.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// Sets podman up for `node`.
    pub fn new(node: &Node) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ct-podman-").tempdir()?;
        let hooks = dir.path().join("hooks.d");
        fs::create_dir_all(&hooks)?;
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hooks.d");
        for entry in fs::read_dir(&shipped).with_context(|| format!("read {}", shipped.display()))? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let mut hook: Value = serde_json::from_slice(&fs::read(&path)?)?;
            // Keep the shipped `when` and `stages`; only the binary and the daemon's paths change.
            let stage = hook["hook"]["args"]
                .as_array()
                .and_then(|a| a.last())
                .and_then(Value::as_str)
                .context("stage arg")?
                .to_owned();
            hook["hook"]["path"] = json!(binary("runtime-hook"));
            let mut args = vec!["runtime-hook".to_owned()];
            args.extend(node.hook_args(&stage));
            hook["hook"]["args"] = json!(args);
            fs::write(hooks.join(path.file_name().context("name")?), serde_json::to_vec_pretty(&hook)?)?;
        }
        let conf = format!(
            "[containers]\ndefault_ulimits=[\"nofile=4096:4096\",\"nproc=4096:4096\"]\nnetns=\"none\"\n\
             [engine]\ncgroup_manager=\"cgroupfs\"\nevents_logger=\"file\"\nhooks_dir=[\"{}\"]\n",
            hooks.display()
        );
        fs::write(dir.path().join("containers.conf"), conf)?;
        Ok(Podman { dir })
    }

    /// Runs `podman <global flags> args...` (see [`run_captured`]); failure is an error.
    pub fn cmd(&self, args: &[&str]) -> Result<Output> {
        let d = self.dir.path();
        let out = run_captured(
            Command::new("podman")
                .env("CONTAINERS_CONF", d.join("containers.conf"))
                .arg("--root")
                .arg(d.join("root"))
                .arg("--runroot")
                .arg(d.join("runroot"))
                .args(["--storage-driver", "vfs"])
                .args(args),
            d,
        )?;
        if !out.status.success() {
            bail!("podman {args:?} failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(out)
    }

    /// `podman run -d` of `command` in the busybox rootfs with `annotations`; returns the id.
    pub fn run_detached(&self, name: &str, annotations: &[(&str, &str)], command: &[&str]) -> Result<String> {
        let mut args = vec!["run".to_owned(), "-d".into(), "--name".into(), name.into()];
        for (k, v) in annotations {
            args.push("--annotation".into());
            args.push(format!("{k}={v}"));
        }
        args.push("--rootfs".into());
        args.push(rootfs().display().to_string());
        args.extend(command.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.cmd(&refs)?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().last().map(|l| l.trim().to_owned()).context("podman printed no id")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "--force", "--all", "--time", "0"]);
    }
}
