//! The registry socket: one newline-terminated JSON event in, one JSON reply out, per connection.
//! The reply is sent after the event is applied, which is what makes registration synchronous.

use std::{
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tracer_api::{hook::MAX_MESSAGE_BYTES, HookReply, RegistryEvent};
use tracing::{debug, warn};

use super::{Applied, Registry};

/// Time a client has to send its message; a hook that connects and goes silent is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections handled at once; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 256;
/// Registrations applied at once, each on a blocking thread (pidfd, procfs, cgroup and state
/// file I/O, then the kernel writes of attaching): a burst of container starts never takes
/// the async workers that serve the REST API.
const MAX_APPLYING: usize = 16;
/// Containers being attached to the running sessions at once. Each waits on a blocking thread,
/// mostly for the one writer of a session's pid filter (group commit): the more wait, the more
/// one write of that filter carries. 200 containers starting at once with 4 sessions took 8 s
/// when attaching shared the 16 permits of applying, 10 s more before group commit.
const MAX_ATTACHING: usize = 128;
/// How long a new container's attachment to running sessions may hold the hook's answer by
/// default: the hook's own default deadline is 250 ms.
pub const DEFAULT_ATTACH_BUDGET: Duration = Duration::from_millis(200);

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Binding, or preparing the path, failed.
    #[error("cannot {op} registry socket {path}: {source}")]
    Setup {
        /// What was attempted.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Why an event was not applied; its text is the hook's reply.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    /// The daemon stops: its permits are closed.
    #[error("the daemon is shutting down")]
    ShuttingDown(#[source] tokio::sync::AcquireError),
    /// The blocking task died (a bug of ours, or the runtime shutting down).
    #[error("registration task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The registry refused the event.
    #[error(transparent)]
    Refused(#[from] super::RegistryError),
}

/// Binds the registry socket at `path`, replacing a stale one, readable and writable by the
/// owner (root) only.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let err = |op| move |source| SocketError::Setup { op, path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(err("create the directory of"))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err("remove stale")(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err("chmod"))?;
    Ok(listener)
}

/// Accepts connections until the task is dropped. A new container is attached to the running
/// sessions before its hook is answered, for at most `attach_budget`; past it the hook is
/// answered and attaching goes on (the kernel serialises every instance's pid filter update
/// behind an RCU grace period, tens of ms each, so many sessions can take longer).
pub async fn serve(listener: UnixListener, registry: Arc<Registry>, attach_budget: Duration) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let applying = Arc::new(Semaphore::new(MAX_APPLYING));
    let attaching = Arc::new(Semaphore::new(MAX_ATTACHING));
    let my_uid = rustix::process::geteuid().as_raw();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "registry socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (registry, permits) =
            (registry.clone(), Permits { applying: applying.clone(), attaching: attaching.clone() });
        tokio::spawn(async move {
            handle(stream, &registry, my_uid, &permits, attach_budget).await;
            drop(permit);
        });
    }
}

async fn handle(
    mut stream: UnixStream,
    registry: &Arc<Registry>,
    my_uid: u32,
    permits: &Permits,
    attach_budget: Duration,
) {
    // The socket is 0600 already; checking the peer as well keeps a mis-set mode from letting
    // an unprivileged process inject containers.
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || cred.uid() == my_uid => {}
        Ok(cred) => {
            warn!(uid = cred.uid(), "registry socket: refused a client that is neither root nor us");
            return;
        }
        Err(e) => {
            warn!(error = %e, "registry socket: cannot read peer credentials");
            return;
        }
    }
    let (read, mut write) = stream.split();
    let mut reader = BufReader::new(read.take(MAX_MESSAGE_BYTES as u64 + 1));
    let mut line = Vec::with_capacity(1024);
    let unreadable = |error: String| {
        registry.counters.hook_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        refuse(error)
    };
    let reply = match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => unreadable("no complete message within 5 s".into()),
        Ok(Err(e)) => unreadable(format!("read failed: {e}")),
        Ok(Ok(_)) if line.len() > MAX_MESSAGE_BYTES => {
            unreadable(format!("message larger than {MAX_MESSAGE_BYTES} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_slice::<RegistryEvent>(&line) {
            Err(e) => unreadable(format!("malformed message: {e}")),
            Ok(event) => {
                let id = event.container_id().to_owned();
                let kind = event.kind();
                let c = &registry.counters;
                let (applied_counter, refused_counter) = if kind == "created" {
                    (&c.hook_created, &c.hook_created_refused)
                } else {
                    (&c.hook_stopped, &c.hook_stopped_refused)
                };
                match apply(registry, event, permits, attach_budget).await {
                    Ok(applied) => {
                        applied_counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        debug!(container_id = %id, event = kind, ?applied, "hook event applied");
                        HookReply { ok: true, error: None }
                    }
                    Err(e) => {
                        refused_counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        refuse(e.to_string())
                    }
                }
            }
        },
    };
    if let Some(error) = &reply.error {
        warn!(reason = %error, "registry socket: event refused");
    }
    let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    // The hook may have given up already (deadline): a failed write is expected then.
    let _ = write.write_all(&out).await;
}

/// The two stages' bounds on blocking threads.
struct Permits {
    applying: Arc<Semaphore>,
    attaching: Arc<Semaphore>,
}

/// Applies `event` on a blocking thread, then attaches a new container to the running sessions
/// on another, waiting for that at most `budget` (counted from when attaching begins).
async fn apply(
    registry: &Arc<Registry>,
    event: RegistryEvent,
    permits: &Permits,
    budget: Duration,
) -> Result<Applied, ApplyError> {
    let permit = permits.applying.clone().acquire_owned().await.map_err(ApplyError::ShuttingDown)?;
    let reg = registry.clone();
    let staged = tokio::task::spawn_blocking(move || reg.apply_quietly(event)).await.map_err(ApplyError::Task)??;
    drop(permit);
    let (applied, Some(entry)) = staged else { return Ok(staged.0) };
    let (reg, started) = (registry.clone(), std::time::Instant::now());
    let id = entry.record.id.clone();
    let permit = permits.attaching.clone().acquire_owned().await.map_err(ApplyError::ShuttingDown)?;
    let attach = tokio::task::spawn_blocking(move || {
        reg.announce(&entry);
        drop(permit);
    });
    if tokio::time::timeout(budget, attach).await.is_err() {
        registry.counters.attach_late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(
            container_id = %id, budget_ms = budget.as_millis() as u64,
            "attaching to the running sessions goes on after the hook's answer; the latest may miss the container's first instructions"
        );
    } else {
        debug!(container_id = %id, took_us = started.elapsed().as_micros() as u64, "attached to the running sessions");
    }
    Ok(applied)
}

fn refuse(error: String) -> HookReply {
    HookReply { ok: false, error: Some(error) }
}
