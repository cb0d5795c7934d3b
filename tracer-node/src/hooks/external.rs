//! External hook providers, compatible with the original container-tracer: every directory
//! under `--trace-hooks` holding an executable `manager` or `manager.*` is a provider answering
//! `--get-all`, `--describe NAME`, `--clear` and `--run NAME --args "..."` (first stdout line:
//! where the trace goes; stops on SIGINT). Run without a shell, with a time limit on every call
//! but `--run`, and their stderr kept for the session's `Error`.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, Command},
};
use tracing::{info, warn};

/// Time limit of `--get-all`, `--describe` and `--clear`, and of `--run` printing its first line.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a running hook has to exit after SIGINT before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most output kept from one call.
const MAX_OUTPUT: usize = 64 * 1024;
/// Most stderr lines kept for a session's `Error`.
const MAX_ERROR_LINES: usize = 100;

/// Errors of a provider call.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    /// The manager could not be started.
    #[error("cannot run {manager}: {source}")]
    Spawn {
        /// The manager executable.
        manager: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The call took too long and was killed.
    #[error("{manager} {call} did not finish within {timeout:?}")]
    Timeout {
        /// The manager executable.
        manager: PathBuf,
        /// The call.
        call: String,
        /// The limit.
        timeout: Duration,
    },
    /// The call failed.
    #[error("{manager} {call} failed: {stderr}")]
    Failed {
        /// The manager executable.
        manager: PathBuf,
        /// The call.
        call: String,
        /// Its error output.
        stderr: String,
    },
}

/// Environment handed to every manager call.
#[derive(Debug, Clone)]
pub struct ProviderEnv {
    /// `TRACER_PROCFS_PATH`.
    pub procfs: PathBuf,
    /// `TRACER_SYSFS_PATH`.
    pub sysfs: PathBuf,
}

/// One discovered provider.
#[derive(Debug)]
pub struct ExternalProvider {
    /// Provider key in `GET /v1/trace-hooks`: `trace-hooks/<directory name>`.
    pub name: String,
    /// The manager executable.
    pub manager: PathBuf,
    /// Hook name to description lines.
    pub hooks: BTreeMap<String, Vec<String>>,
    env: ProviderEnv,
}

fn find_manager(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n == "manager" || n.starts_with("manager.")
        })
        .map(|e| e.path())
        .filter(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .collect();
    found.sort();
    found.into_iter().next()
}

impl ExternalProvider {
    /// Discovers the providers under `root`. A broken one is logged and skipped.
    pub async fn discover(root: &Path, env: &ProviderEnv) -> Vec<Arc<ExternalProvider>> {
        let Ok(entries) = std::fs::read_dir(root) else {
            warn!(dir = %root.display(), "trace hooks directory cannot be read; no external providers");
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        let mut out = Vec::new();
        for dir in dirs {
            let Some(manager) = find_manager(&dir) else { continue };
            let name = format!(
                "trace-hooks/{}",
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            );
            let mut p = ExternalProvider { name, manager, hooks: BTreeMap::new(), env: env.clone() };
            match p.load().await {
                Ok(()) => {
                    info!(provider = %p.name, hooks = p.hooks.len(), "external trace hook provider loaded");
                    out.push(Arc::new(p));
                }
                Err(e) => warn!(provider = %p.name, error = %e, "skipping broken trace hook provider"),
            }
        }
        out
    }

    async fn load(&mut self) -> Result<(), ExternalError> {
        let all = self.call(&["--get-all"]).await?;
        for hook in all.split_whitespace() {
            match self.call(&["--describe", hook]).await {
                Ok(text) => {
                    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
                    self.hooks.insert(hook.to_owned(), lines);
                }
                Err(e) => warn!(provider = %self.name, hook, error = %e, "skipping hook that cannot describe itself"),
            }
        }
        Ok(())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.manager);
        cmd.env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("TRACER_PROCFS_PATH", &self.env.procfs)
            .env("TRACER_SYSFS_PATH", &self.env.sysfs)
            .current_dir(self.manager.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// One bounded call; returns stdout.
    async fn call(&self, args: &[&str]) -> Result<String, ExternalError> {
        let call = args.join(" ");
        let child = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ExternalError::Spawn { manager: self.manager.clone(), source })?;
        let out = tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output()).await.map_err(|_| {
            ExternalError::Timeout { manager: self.manager.clone(), call: call.clone(), timeout: CALL_TIMEOUT }
        })?;
        let out = out.map_err(|source| ExternalError::Spawn { manager: self.manager.clone(), source })?;
        let text = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)]).into_owned();
        if !out.status.success() {
            return Err(ExternalError::Failed {
                manager: self.manager.clone(),
                call,
                stderr: text(&out.stderr).trim().to_owned(),
            });
        }
        Ok(text(&out.stdout))
    }

    /// `--clear`: resets the provider's tracing subsystem.
    pub async fn clear(&self) {
        if let Err(e) = self.call(&["--clear"]).await {
            warn!(provider = %self.name, error = %e, "provider --clear failed");
        }
    }

    /// `--run HOOK --args "ARGS --pid PID..."`: starts the hook and waits for the first stdout
    /// line. The pids are also in `TRACER_PIDS`, the session in `TRACER_SESSION_ID`.
    pub async fn run(
        &self,
        hook: &str,
        args: &[String],
        pids: &[u32],
        session: u64,
    ) -> Result<RunningExternal, Vec<String>> {
        let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut joined = args.join(" ");
        if !pid_list.is_empty() {
            joined = format!("{joined} --pid {}", pid_list.join(" ")).trim().to_owned();
        }
        let mut child = self
            .command()
            .args(["--run", hook, "--args", &joined])
            .env("TRACER_PIDS", pid_list.join(" "))
            .env("TRACER_SESSION_ID", session.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| vec![format!("cannot run {}: {e}", self.manager.display())])?;
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let sink = stderr_lines.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err.take(MAX_OUTPUT as u64)).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let mut v = sink.lock().unwrap_or_else(|p| p.into_inner());
                    if v.len() < MAX_ERROR_LINES && !l.trim().is_empty() {
                        v.push(l);
                    }
                }
            });
        }
        let stdout = child.stdout.take();
        let first = async {
            let mut lines = BufReader::new(stdout?.take(MAX_OUTPUT as u64)).lines();
            lines.next_line().await.ok().flatten()
        };
        match tokio::time::timeout(CALL_TIMEOUT, first).await {
            Ok(Some(line)) if !line.trim().is_empty() => {
                Ok(RunningExternal { child, output: line.trim().to_owned(), stderr: stderr_lines })
            }
            outcome => {
                let _ = child.kill().await;
                // Let the stderr reader collect what the hook said before it died.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut lines = stderr_lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if lines.is_empty() {
                    lines.push(match outcome {
                        Err(_) => format!("{hook} printed nothing within {CALL_TIMEOUT:?}"),
                        _ => format!("{hook} exited without printing where its trace goes"),
                    });
                }
                Err(lines)
            }
        }
    }
}

/// A running external hook.
#[derive(Debug)]
pub struct RunningExternal {
    child: Child,
    /// The first stdout line (the trace file).
    pub output: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl RunningExternal {
    /// Whether the hook has exited on its own.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// What the hook wrote on stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the hook: SIGINT, then SIGKILL after a grace period.
    pub async fn stop(mut self) -> Vec<String> {
        if let Some(pid) = self.child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await.is_err() {
            warn!("external hook ignored SIGINT; killing it");
            let _ = self.child.kill().await;
        }
        self.stderr()
    }
}
