//! Stand-in containers: a busybox `sleep` as pid 1 of a pid namespace of its own, in a cgroup
//! named after its id. That is all the registry checks of a container's init, so hundreds of
//! them register through the real socket protocol far faster than runc could create them.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tracer_api::{hook::MESSAGE_VERSION, ContainerCreated, ContainerKind, RegistryEvent};

use crate::{poller::Poller, rootfs, wait_until, Node};

/// Root of the cgroup hierarchy stand-ins are put in (unified on v2 and on hybrid hosts, where
/// the registry looks first).
fn cgroup_root() -> PathBuf {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    }
}

/// One stand-in container; killed and its cgroup removed on drop.
pub struct StandIn {
    /// Its container id (also its cgroup's name).
    pub id: String,
    /// Host pid of its init.
    pub pid: u32,
    unshare: Child,
    cgroup: PathBuf,
}

impl StandIn {
    /// Starts stand-in `id`: `unshare --pid --fork --kill-child busybox sleep 600`, its init moved
    /// into a new cgroup `id`.
    pub fn start(id: &str) -> Result<Self> {
        let cgroup = cgroup_root().join(id);
        fs::create_dir(&cgroup).with_context(|| format!("mkdir {}", cgroup.display()))?;
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(rootfs().join("bin/busybox"))
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .spawn();
        let unshare = match unshare {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir(&cgroup);
                return Err(e).context("spawn unshare");
            }
        };
        let mut s = StandIn { id: id.to_owned(), pid: 0, unshare, cgroup };
        let children = format!("/proc/{0}/task/{0}/children", s.unshare.id());
        let found = wait_until(Duration::from_secs(5), || {
            match fs::read_to_string(&children).ok().and_then(|t| t.split_whitespace().next()?.parse().ok()) {
                Some(pid) => {
                    s.pid = pid;
                    true
                }
                None => false,
            }
        });
        if !found {
            bail!("unshare {} forked no init within 5 s", s.unshare.id());
        }
        fs::write(s.cgroup.join("cgroup.procs"), s.pid.to_string()).context("move the init into its cgroup")?;
        Ok(s)
    }

    /// The registration the hook would send for this stand-in as container `app` of `pod`.
    pub fn created(&self, pod: &str, namespace: &str) -> RegistryEvent {
        self.created_with(pod, namespace, Default::default())
    }

    /// The `created` message with these OCI annotations (what the webhook stamped, passed on
    /// by the runtime).
    pub fn created_with(
        &self,
        pod: &str,
        namespace: &str,
        annotations: std::collections::BTreeMap<String, String>,
    ) -> RegistryEvent {
        RegistryEvent::Created(ContainerCreated {
            version: MESSAGE_VERSION,
            id: self.id.clone(),
            pid: self.pid,
            pid_start_time: None,
            pod: pod.into(),
            namespace: namespace.into(),
            name: "app".into(),
            kind: ContainerKind::Container,
            runtime: Some("stand-in".into()),
            bundle: String::new(),
            annotations,
            created_unix_ns: 0,
        })
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        // `--kill-child`: the init dies with unshare.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // The kernel empties the cgroup once the init is reaped, a moment after unshare's exit.
        wait_until(Duration::from_secs(5), || fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists());
    }
}

/// Sends one registry message over `node`'s socket, as the hook does, and answers the reply
/// line; an error when the daemon refuses it.
pub fn register(node: &Node, event: &RegistryEvent) -> Result<String> {
    let mut s = UnixStream::connect(node.socket()).context("connect to the registry socket")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).context("read the reply")?;
    if !reply.contains("\"ok\":true") {
        bail!("registration refused: {reply}");
    }
    Ok(reply)
}

/// What a registration burst measured.
pub struct Burst {
    /// From the first registration sent to the last answered.
    pub wall: Duration,
    /// Each registration's round trip, sorted.
    pub registrations: Vec<Duration>,
    /// `/healthz` answers during the burst, sorted.
    pub healthz: Vec<Duration>,
    /// `/v1/pods` answers during the burst, sorted.
    pub pods: Vec<Duration>,
    /// Polls that failed (status, transport error), and registrations refused.
    pub failures: Vec<String>,
}

/// Registers every stand-in at once, a thread each, released together; `pod_prefix-<i>` is the
/// pod of the i-th. Answers the time from the release to the last answer, and each
/// registration's round trip or why it failed.
pub fn register_all(node: &Node, standins: &[StandIn], pod_prefix: &str) -> (Duration, Vec<Result<Duration, String>>) {
    let barrier = Arc::new(Barrier::new(standins.len() + 1));
    std::thread::scope(|s| {
        let senders: Vec<_> = standins
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let (barrier, event) = (barrier.clone(), st.created(&format!("{pod_prefix}-{i}"), "burst"));
                s.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    register(node, &event).map(|_| t.elapsed()).map_err(|e| format!("{}: {e:#}", st.id))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = senders.into_iter().map(|h| h.join().expect("sender thread")).collect();
        (start.elapsed(), results)
    })
}

/// Registers every stand-in at once (see [`register_all`]) while two clients poll `/healthz`
/// and `/v1/pods` back to back, until every registration is answered.
pub fn registration_burst(node: &Node, standins: &[StandIn], pod_prefix: &str) -> Burst {
    let poller = Poller::start(&node.url, &["/healthz".into(), "/v1/pods".into()]);
    let (wall, results) = register_all(node, standins, pod_prefix);
    let mut polled = poller.finish().into_iter();
    let (healthz, pods) = (polled.next().unwrap_or_default(), polled.next().unwrap_or_default());
    let mut failures = Vec::new();
    let mut registrations = Vec::new();
    for r in results {
        match r {
            Ok(d) => registrations.push(d),
            Err(e) => failures.push(e),
        }
    }
    failures.extend(healthz.failures);
    failures.extend(pods.failures);
    registrations.sort();
    Burst { wall, registrations, healthz: healthz.latencies, pods: pods.latencies, failures }
}

/// What a start measured while containers registered.
pub struct StartRun {
    /// The PUT `{"Run": true}` round trip.
    pub start: Duration,
    /// The registrations sent meanwhile, as [`register_all`] answers them.
    pub registrations: Vec<Result<Duration, String>>,
    /// GET of the session, its stats and `/healthz`, polled from before the start to after.
    pub polled: Vec<crate::poller::Polled>,
}

/// Starts session `sid` while `late` register at the same moment (pods `pod_prefix-<i>`) and
/// clients poll the session, its stats and `/healthz`.
pub fn start_while_registering(node: &Node, sid: &str, late: &[StandIn], pod_prefix: &str) -> StartRun {
    let paths = [format!("/v1/trace-session/{sid}"), format!("/v1/trace-session/{sid}/stats"), "/healthz".into()];
    let poller = Poller::start(&node.url, &paths);
    let (start, registrations) = std::thread::scope(|s| {
        let barrier = Arc::new(Barrier::new(2));
        let b2 = barrier.clone();
        let regs = s.spawn(move || {
            b2.wait();
            register_all(node, late, pod_prefix).1
        });
        barrier.wait();
        let t = Instant::now();
        node.run_session(sid, true).expect("start");
        let start = t.elapsed();
        (start, regs.join().expect("registrations"))
    });
    StartRun { start, registrations, polled: poller.finish() }
}
