//! containerd: a container whose spec comes from `deploy/containerd/make-base-spec.sh` (the
//! CRI `base_runtime_spec` wiring) registers through the hook, with containerd's shim as Parent.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use e2e::{binary, require, rootfs, unique, wait_until, Node};
use serde_json::{json, Value};

struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("ct-containerd-").tempdir().expect("tempdir");
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/containerd.sock\"\n",
            d.display()
        );
        std::fs::write(d.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { dir, child };
        assert!(
            wait_until(Duration::from_secs(20), || c.ctr(&["version"]).is_ok()),
            "containerd did not come up: {}",
            std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
        );
        c
    }

    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The shims outlive containerd; their containers were removed by the test.
    }
}

#[test]
fn containerd_base_spec_from_the_shipped_script_registers_pod_containers() {
    if !require(&["containerd", "ctr", "python3"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let containerd = Containerd::start();
    let spec_path = containerd.dir.path().join("base-spec.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/containerd/make-base-spec.sh");
    let out =
        Command::new(&script).arg(&spec_path).arg(binary("runtime-hook")).output().expect("run make-base-spec.sh");
    assert!(out.status.success(), "make-base-spec.sh: {}", String::from_utf8_lossy(&out.stderr));

    // What the CRI plugin does with the base spec: keep its hooks, fill in the rest. The
    // daemon's paths are this test's, hence the added flags.
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).expect("spec")).expect("spec JSON");
    for stage in ["createRuntime", "poststop"] {
        let hooks = spec["hooks"][stage].as_array_mut().expect("hook stage present");
        assert_eq!(hooks.len(), 1);
        let mut args = vec![json!("runtime-hook")];
        args.extend(node.hook_args(stage).into_iter().map(Value::from));
        hooks[0]["args"] = json!(args);
    }
    let pod = unique("ctd-pod");
    spec["root"] = json!({"path": rootfs(), "readonly": true});
    spec["process"]["args"] = json!(["/bin/sleep", "300"]);
    spec["annotations"] = json!({
        "io.kubernetes.cri.sandbox-name": pod,
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.container-type": "container",
    });
    let run_spec = containerd.dir.path().join("run.json");
    std::fs::write(&run_spec, serde_json::to_vec(&spec).expect("ser")).expect("write spec");

    let id = unique("ctd");
    containerd.ctr(&["run", "-d", "--config", &run_spec.display().to_string(), &id]).expect("ctr run");
    let c = node.container(&pod, "app").expect("pods").unwrap_or_else(|| panic!("not registered:\n{}", node.log()));
    assert_eq!(c["ContainerId"], id.as_str());
    let parent = c["Parent"][0].as_u64().expect("parent pid");
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).unwrap_or_default();
    assert!(comm.starts_with("containerd-shim"), "Parent is the shim, got {parent} ({comm:?})");

    containerd.ctr(&["task", "kill", "-s", "KILL", &id]).expect("kill");
    assert!(
        wait_until(Duration::from_secs(10), || containerd.ctr(&["container", "rm", &id]).is_ok()),
        "ctr container rm"
    );
    assert!(
        wait_until(Duration::from_secs(5), || node.container(&pod, "app").expect("pods").is_none()),
        "still listed:\n{}",
        node.log()
    );
}
