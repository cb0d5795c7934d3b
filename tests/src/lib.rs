//! Harness of the end-to-end tests: real tracer-node processes, real runc/crun/podman
//! containers wired to the real runtime-hook, a busybox rootfs, and a real HTTP client.
//!
//! Tests that need root or a runtime call [`require`]: under `CI` a missing prerequisite fails
//! the test, elsewhere it is skipped with a message.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

pub mod bench;
pub mod standin;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

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

/// A running tracer-node with its own socket, spool, state directory and port.
pub struct Node {
    /// Its directories (socket, spool, state, log).
    pub dir: tempfile::TempDir,
    /// The API base URL.
    pub url: String,
    /// Prefix of this node's ftrace instances (unique, so parallel tests never touch each
    /// other's instances).
    pub prefix: String,
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// A command that execs tracer-node (e.g. `prlimit --nofile=1024:1024`).
    wrapper: Vec<String>,
}

impl Node {
    /// Starts tracer-node in a new temp dir and waits until it is ready.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Starts tracer-node with extra flags.
    pub fn start_with(extra: &[&str]) -> Result<Self> {
        Self::start_with_env(extra, &[])
    }

    /// Starts tracer-node with extra flags and environment variables (for it alone).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start_wrapped(&[], extra, env)
    }

    /// Starts tracer-node through `wrapper`, a command that execs it with its arguments (so
    /// the daemon keeps the wrapper's pid), such as `prlimit --nofile=1024:1024`.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ct-node-").tempdir()?;
        let port = free_port()?;
        let prefix = format!("{}-", unique("ct-test"));
        let extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let wrapper = wrapper.iter().map(|s| (*s).to_owned()).collect();
        let mut node =
            Node { url: format!("http://127.0.0.1:{port}"), dir, prefix, child: None, port, extra, env, wrapper };
        node.spawn()?;
        Ok(node)
    }

    /// This node's ftrace instances present in tracefs now.
    pub fn instances(&self) -> Vec<String> {
        fs::read_dir("/sys/kernel/tracing/instances")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends `method path` with an optional JSON body; returns the status and the parsed body
    /// (`Value::Null` when it is not JSON).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.url);
        let agent = agent();
        let mut resp = match (method, body) {
            ("GET", _) => agent.get(&url).call()?,
            ("DELETE", _) => agent.delete(&url).call()?,
            ("POST", b) => agent.post(&url).content_type("application/json").send(b.unwrap_or(""))?,
            ("PUT", b) => agent.put(&url).content_type("application/json").send(b.unwrap_or(""))?,
            _ => bail!("unsupported method {method}"),
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(512 * 1024 * 1024).read_to_string()?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Creates a session and returns its id.
    pub fn create_session(&self, body: &Value) -> Result<String> {
        let (status, v) = self.call("POST", "/v1/trace-session", Some(&body.to_string()))?;
        if status != 200 {
            bail!("POST /v1/trace-session: {status} {v}");
        }
        v.as_object().and_then(|o| o.keys().next().cloned()).context("no session id in answer")
    }

    /// Starts (`true`) or stops a session.
    pub fn run_session(&self, id: &str, run: bool) -> Result<()> {
        let (status, v) =
            self.call("PUT", &format!("/v1/trace-session/{id}"), Some(&json!({ "Run": run }).to_string()))?;
        if status != 200 {
            bail!("PUT /v1/trace-session/{id} Run={run}: {status} {v}");
        }
        Ok(())
    }

    /// The session as `GET /v1/trace-session/<id>` shows it.
    pub fn session(&self, id: &str) -> Result<Value> {
        let v = get_json(&format!("{}/v1/trace-session/{id}", self.url))?;
        Ok(v[id].clone())
    }

    /// The session's retained events (`GET .../events`).
    pub fn events(&self, id: &str) -> Result<Vec<Value>> {
        let mut resp = agent().get(&format!("{}/v1/trace-session/{id}/events", self.url)).call()?;
        if resp.status() != 200 {
            bail!("GET events: {}", resp.status());
        }
        let text = resp.body_mut().with_config().limit(1024 * 1024 * 1024).read_to_string()?;
        text.lines().map(|l| serde_json::from_str(l).with_context(|| format!("event line {l:?}"))).collect()
    }

    /// Registry socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("registry.sock")
    }

    /// Spool directory.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Log file (appended to across restarts).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("node.log"))?;
        let mut command = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary("tracer-node"));
                c
            }
            None => Command::new(binary("tracer-node")),
        };
        let child = command
            .args(["--address", &format!("127.0.0.1:{}", self.port)])
            .arg("--registry-socket")
            .arg(self.socket())
            .arg("--spool-dir")
            .arg(self.spool())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["--instance-prefix", &self.prefix])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,tracer_node=debug")
            // Export only where a test asks for it, whatever the caller's environment says.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
            .env_remove("TRACER_JEAGER_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn tracer-node")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.extra.iter().any(|a| a == "--tls-cert") {
                // Over TLS the plain client cannot ask /readyz; the port is bound once ready.
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return Ok(());
                }
            } else if let Ok(resp) = agent().get(&format!("{}/readyz", self.url)).call() {
                if resp.status() == 200 {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("tracer-node exited with {status} at start-up:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("tracer-node not ready within 20 s:\n{}", self.log())
    }

    /// The API port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("node running")
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal tracer-node");
    }

    /// Stops the daemon: SIGTERM (graceful: it stops its sessions) or SIGKILL, and waits for
    /// it (a graceful stop that takes over 10 s becomes a SIGKILL).
    pub fn stop(&mut self, graceful: bool) {
        if let Some(mut child) = self.child.take() {
            let sig = if graceful { rustix::process::Signal::TERM } else { rustix::process::Signal::KILL };
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, sig);
            }
            if !wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some()) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Starts the daemon again with the same directories and port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop(true);
        self.spawn()
    }

    /// Starts a stopped daemon again.
    pub fn start_again(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "node still running");
        self.spawn()
    }

    /// `GET /v1/pods` as JSON.
    pub fn pods(&self) -> Result<Value> {
        get_json(&format!("{}/v1/pods", self.url))
    }

    /// The container named `name` of pod key `pod`, if listed.
    pub fn container(&self, pod: &str, name: &str) -> Result<Option<Value>> {
        Ok(self.pods()?.get(pod).and_then(|p| p["Containers"].get(name)).cloned())
    }

    /// Every `ContainerId` listed in `/v1/pods`.
    pub fn container_ids(&self) -> Result<Vec<String>> {
        let pods = self.pods()?;
        let mut ids: Vec<String> = pods
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .flat_map(|p| p["Containers"].as_object().into_iter().flat_map(|c| c.values()))
            .filter_map(|c| c["ContainerId"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Hook arguments (after argv[0]) aimed at this node.
    pub fn hook_args(&self, stage: &str) -> Vec<String> {
        vec![
            "--socket".into(),
            self.socket().display().to_string(),
            "--spool-dir".into(),
            self.spool().display().to_string(),
            stage.into(),
        ]
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop(true);
        // Whatever a failed test left behind: this node's instances only.
        for name in self.instances() {
            let dir = Path::new("/sys/kernel/tracing/instances").join(name);
            let _ = fs::write(dir.join("tracing_on"), "0");
            let _ = fs::remove_dir(dir);
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Reader threads (`ftrace-cpuN`) of process `pid` now.
pub fn reader_threads(pid: u32) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("ftrace-cpu")))
        .count()
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

/// The Python with `opentelemetry-proto` and `grpcio` that `scripts/test.sh` prepares.
pub fn otlp_python() -> PathBuf {
    std::env::var_os("TRACER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/container-tracer-pyenv/bin/python"))
}

/// Checks that the OTLP receiver can run (root, runc, its Python); like [`require`].
pub fn require_otlp() -> bool {
    if !require(&["runc"]) {
        return false;
    }
    let py = otlp_python();
    let ok = Command::new(&py)
        .args(["-c", "import grpc, opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let msg = format!("needs {} with opentelemetry-proto and grpcio (scripts/test.sh installs them)", py.display());
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
        self.received()
            .into_iter()
            .filter(|r| r["signal"] == "logs")
            .flat_map(|r| {
                let res = r["resource"].clone();
                r["records"].as_array().cloned().unwrap_or_default().into_iter().map(move |x| (res.clone(), x))
            })
            .collect()
    }

    /// Every span received, with its resource.
    pub fn spans(&self) -> Vec<(Value, Value)> {
        self.received()
            .into_iter()
            .filter(|r| r["signal"] == "traces")
            .flat_map(|r| {
                let res = r["resource"].clone();
                r["spans"].as_array().cloned().unwrap_or_default().into_iter().map(move |x| (res.clone(), x))
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throw-away CA and a `localhost` / `127.0.0.1` server certificate it signed, made with the
/// `openssl` command in `dir`: (CA, server certificate, server key).
pub fn test_certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().context("run openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=container-tracer test CA",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ])?;
    Ok((dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key")))
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
