//! A real tracer-node process per test, with its own socket, spool, state directory and port.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{agent, binary, get_json, unique, wait_until};

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

    /// This node's recording instances present in tracefs now (those of its sessions; the
    /// task tracker's two, always there, are [`Node::tracker_instances`]).
    pub fn instances(&self) -> Vec<String> {
        let tracker = self.tracker_instances();
        self.all_instances().into_iter().filter(|n| !tracker.contains(n)).collect()
    }

    /// The names of the task tracker's instances.
    pub fn tracker_instances(&self) -> [String; 2] {
        [format!("{}tasks", self.prefix), format!("{}cgroups", self.prefix)]
    }

    /// Every ftrace instance of this node present in tracefs now.
    pub fn all_instances(&self) -> Vec<String> {
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
        for name in self.all_instances() {
            let dir = Path::new("/sys/kernel/tracing/instances").join(name);
            let _ = fs::write(dir.join("tracing_on"), "0");
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
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

/// Resident memory of process `pid`, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}
