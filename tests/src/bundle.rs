//! OCI bundles: the shared busybox rootfs, the base config from `runc spec`, hook entries and
//! Kubernetes annotations.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::Result;
use serde_json::{json, Value};

use crate::{bin_dir, binary, unique, Node};

/// A busybox rootfs shared by every test: built once at a fixed path (atomically, by rename)
/// and reused, so test runs leave one small directory behind rather than one per process.
pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        // In the build's target directory, not /tmp (tests leave nothing there), and not under a
        // symlinked path: runc refuses a rootfs reached through one.
        let target = bin_dir().parent().map(Path::to_path_buf).expect("target directory");
        let dir = fs::canonicalize(target).expect("target dir").join("ct-e2e-rootfs");
        if dir.join("bin/busybox").is_file() {
            return dir;
        }
        let tmp = dir.with_file_name(unique("ct-e2e-rootfs-tmp"));
        let bin = tmp.join("bin");
        fs::create_dir_all(&bin).expect("rootfs dir");
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("busybox-static installed");
        fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
        for applet in ["sh", "sleep", "cat", "ls", "echo", "true", "ps"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            fs::create_dir_all(tmp.join(d)).expect("rootfs subdir");
        }
        if fs::rename(&tmp, &dir).is_err() {
            // Another test process won the race: use its copy.
            let _ = fs::remove_dir_all(&tmp);
        }
        dir
    })
}

/// The base OCI config from `runc spec`, generated once per process.
fn base_spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("runc").arg("spec").current_dir(dir.path()).output().expect("runc spec");
        assert!(out.status.success(), "runc spec failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&fs::read(dir.path().join("config.json")).expect("config.json")).expect("spec JSON")
    })
}

/// A hook entry of a config.json.
pub fn hook_entry(args: Vec<String>) -> Value {
    let mut argv = vec!["runtime-hook".to_owned()];
    argv.extend(args);
    json!({ "path": binary("runtime-hook"), "args": argv, "timeout": 10 })
}

/// A bundle: a directory holding config.json for the shared busybox rootfs.
pub struct Bundle {
    /// The bundle directory.
    pub dir: tempfile::TempDir,
}

impl Bundle {
    /// A bundle running `args`, with `annotations` and `hooks` (an OCI `hooks` object).
    pub fn new(args: &[&str], annotations: &BTreeMap<String, String>, hooks: Value) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ct-bundle-").tempdir()?;
        let mut spec = base_spec().clone();
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(args);
        spec["root"] = json!({ "path": rootfs(), "readonly": true });
        spec["hostname"] = json!("busybox");
        spec["annotations"] = json!(annotations);
        spec["hooks"] = hooks;
        fs::write(dir.path().join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
        Ok(Bundle { dir })
    }

    /// Hooks registering at createRuntime and unregistering at poststop through `node`.
    pub fn hooks_for(node: &Node) -> Value {
        json!({
            "createRuntime": [hook_entry(node.hook_args("createRuntime"))],
            "poststop": [hook_entry(node.hook_args("poststop"))],
        })
    }

    /// The hooks with a createRuntime deadline of `ms` (the hook's default is 250 ms): for tests
    /// of what must happen before the hook's answer (an auto-trace start), on a machine however
    /// loaded, with the node's `--attach-budget-ms` set below it.
    pub fn hooks_with_deadline(node: &Node, ms: u64) -> Value {
        let mut hooks = Self::hooks_for(node);
        hooks["createRuntime"][0]["args"].as_array_mut().expect("args").push(json!(format!("--deadline-ms={ms}")));
        hooks
    }
}

/// containerd-style Kubernetes annotations.
pub fn containerd_annotations(pod: &str, namespace: &str, container: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("io.kubernetes.cri.sandbox-name".to_owned(), pod.to_owned()),
        ("io.kubernetes.cri.sandbox-namespace".to_owned(), namespace.to_owned()),
        ("io.kubernetes.cri.container-name".to_owned(), container.to_owned()),
        ("io.kubernetes.cri.container-type".to_owned(), "container".to_owned()),
    ])
}
