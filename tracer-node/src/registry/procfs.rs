//! What the registry reads from the host's procfs and cgroup filesystem: a process's identity
//! (start time, parent), the cgroup a container lives in, and the processes in it.
//!
//! Only the registered containers' own files are read: the cost of `GET /v1/pods` grows with the
//! number of containers, never with the number of processes on the host.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use tracer_api::procfs::{parse_stat, Stat};

/// Errors reading a process's files.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process does not exist (any more).
    #[error("process {pid} does not exist")]
    Gone {
        /// The pid.
        pid: u32,
    },
    /// Its stat file could not be read or parsed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The host's procfs and cgroup roots.
#[derive(Debug, Clone)]
pub struct Procfs {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
}

impl Procfs {
    /// `proc_root` is the host procfs (`/proc`), `sysfs_root` the host sysfs (`/sys`).
    pub fn new(proc_root: impl Into<PathBuf>, sysfs_root: impl AsRef<Path>) -> Self {
        Self { proc_root: proc_root.into(), cgroup_root: sysfs_root.as_ref().join("fs/cgroup") }
    }

    /// The procfs root.
    pub fn root(&self) -> &Path {
        &self.proc_root
    }

    /// Parsed `/proc/<pid>/stat`.
    pub fn stat(&self, pid: u32) -> Result<Stat, ProcError> {
        let path = self.proc_root.join(pid.to_string()).join("stat");
        let text = fs::read_to_string(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ProcError::Gone { pid },
            _ => ProcError::Read { path: path.clone(), source },
        })?;
        parse_stat(&text).ok_or_else(|| ProcError::Read { path, source: io::Error::other("unparsable stat") })
    }

    /// One step up from thread `tid`: its process's leader when it is another thread, else its
    /// process's parent. `None` when the thread is gone.
    pub fn leader_or_parent(&self, tid: u32) -> Option<u32> {
        let status = fs::read_to_string(self.proc_root.join(tid.to_string()).join("status")).ok()?;
        let field = |key: &str| -> Option<u32> {
            status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok())
        };
        match field("Tgid:")? {
            leader if leader != tid => Some(leader),
            _ => field("PPid:"),
        }
    }

    /// The pid namespace of `pid` (`pid:[4026531836]`), or `None` when it cannot be read.
    pub fn pid_namespace(&self, pid: u32) -> Option<PathBuf> {
        fs::read_link(self.proc_root.join(pid.to_string()).join("ns/pid")).ok()
    }

    /// The pid namespace of this daemon, which must be the host's.
    pub fn own_pid_namespace(&self) -> Option<PathBuf> {
        fs::read_link(self.proc_root.join("self/ns/pid")).ok()
    }

    /// The container's own cgroup directory, or `None` when it has none we can recognise.
    ///
    /// Runtimes name a container's cgroup after its id (runc `/<id>`, containerd
    /// `.../<id>` or `cri-containerd-<id>.scope`, CRI-O `crio-<id>.scope`, podman
    /// `libpod-<id>`), so only a cgroup whose last component holds the id is taken: a process
    /// that merely sits in a shared cgroup (a service's, a sandbox's) must not make every other
    /// process there look like part of the container. On cgroup v2 the unified hierarchy; on
    /// v1/hybrid the unified one when the runtime used it, else `pids`, `memory`, `cpu`,
    /// `name=systemd`. A candidate is taken only if its `cgroup.procs` really lists the process.
    pub fn container_cgroup(&self, pid: u32, container_id: &str) -> Option<PathBuf> {
        let text = fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        let lines: Vec<(&str, &str, &str)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ':');
                Some((it.next()?, it.next()?, it.next()?))
            })
            .collect();
        let pure_v2 = self.cgroup_root.join("cgroup.controllers").exists();
        let mut candidates: Vec<PathBuf> = Vec::new();
        for (id, controllers, path) in &lines {
            if *id == "0" && controllers.is_empty() && *path != "/" {
                let mount = if pure_v2 { self.cgroup_root.clone() } else { self.cgroup_root.join("unified") };
                candidates.push(mount.join(path.trim_start_matches('/')));
            }
        }
        if !pure_v2 {
            for wanted in ["pids", "memory", "cpu", "name=systemd"] {
                for (_, controllers, path) in &lines {
                    if *path == "/" || !controllers.split(',').any(|c| c == wanted) {
                        continue;
                    }
                    let dir = wanted.strip_prefix("name=").unwrap_or(wanted);
                    for mount in [self.cgroup_root.join(dir), self.cgroup_root.join(controllers)] {
                        candidates.push(mount.join(path.trim_start_matches('/')));
                    }
                }
            }
        }
        let named = |d: &Path| d.file_name().is_some_and(|n| names_container(&n.to_string_lossy(), container_id));
        candidates.into_iter().find_map(|dir| {
            if !cgroup_pids(&dir).map(|p| p.contains(&pid)).unwrap_or(false) {
                return None;
            }
            if named(&dir) {
                return Some(dir);
            }
            // crun with the systemd driver on cgroup v2 puts the init in a sub-cgroup of the
            // container's scope (`container`, or the `run.oci.systemd.subgroup` annotation's
            // name): the scope, named after the container, is the container's cgroup.
            let scope = dir.parent()?;
            named(scope).then(|| scope.to_owned())
        })
    }

    /// A container cgroup directory as the kernel names it in cgroup events: relative to its
    /// hierarchy's root (`/system.slice/crun-ab12.scope`). `None` for a directory outside the
    /// cgroup filesystem or a hierarchy's root.
    pub fn cgroup_relative(&self, dir: &Path) -> Option<String> {
        let rel = dir.strip_prefix(&self.cgroup_root).ok()?;
        let rel = if self.cgroup_root.join("cgroup.controllers").exists() {
            rel
        } else {
            // cgroup v1 or hybrid: the first component is the hierarchy's mount (`pids`, `unified`).
            let mut parts = rel.components();
            parts.next()?;
            parts.as_path()
        };
        let rel = rel.to_str()?;
        (!rel.is_empty()).then(|| format!("/{rel}"))
    }

    /// Every process of a container, the init first, the rest in ascending order. With a cgroup,
    /// its processes and those of its child cgroups; without, the init and its descendants.
    /// Empty when the init is gone.
    pub fn tasks(&self, init: u32, cgroup: Option<&Path>) -> Vec<u32> {
        let mut pids = Vec::new();
        match cgroup {
            Some(dir) => collect_cgroup_pids(dir, &mut pids, 0),
            None => self.collect_descendants(init, &mut pids),
        }
        pids.sort_unstable();
        pids.dedup();
        match pids.iter().position(|p| *p == init) {
            Some(i) => {
                pids.remove(i);
                pids.insert(0, init);
            }
            // The cgroup no longer holds the init: trust the cgroup only while the init lives.
            None if self.stat(init).is_ok() => pids.insert(0, init),
            None => pids.clear(),
        }
        pids
    }

    /// Thread ids of process `pid` (just `pid` if its task list cannot be read).
    pub fn threads(&self, pid: u32) -> Vec<u32> {
        match fs::read_dir(self.proc_root.join(pid.to_string()).join("task")) {
            Ok(entries) => entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect(),
            Err(_) => vec![pid],
        }
    }

    /// The init and its descendants, through `task/<tid>/children` of every thread.
    fn collect_descendants(&self, init: u32, out: &mut Vec<u32>) {
        let mut stack = vec![init];
        // Bounded: a fork bomb in a container must not make one request walk forever.
        while let Some(pid) = stack.pop() {
            if out.len() >= MAX_TASKS {
                break;
            }
            let Ok(tasks) = fs::read_dir(self.proc_root.join(pid.to_string()).join("task")) else { continue };
            out.push(pid);
            for task in tasks.flatten() {
                if let Ok(children) = fs::read_to_string(task.path().join("children")) {
                    stack.extend(children.split_ascii_whitespace().filter_map(|c| c.parse::<u32>().ok()));
                }
            }
        }
    }
}

/// Whether a cgroup directory's name is the one a runtime gives container `id`: the id itself,
/// or `<prefix>-<id>`, `<prefix>:<id>`, `<prefix>_<id>`, each maybe with `.scope`. A bare
/// substring test took any cgroup whose name merely held the id's characters, e.g. a short id
/// `c1` inside a supervisor's hex-named cgroup `.../9ee3...8dc1...`, and listed every process of
/// that cgroup as the container's.
fn names_container(name: &str, id: &str) -> bool {
    if id.is_empty() {
        return false;
    }
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    stem == id || stem.strip_suffix(id).is_some_and(|prefix| prefix.ends_with(['-', ':', '_']))
}

/// Upper bound on the tasks listed for one container.
const MAX_TASKS: usize = 65_536;

/// Depth bound of nested cgroups walked under a container's cgroup.
const MAX_CGROUP_DEPTH: usize = 16;

fn cgroup_pids(dir: &Path) -> io::Result<Vec<u32>> {
    let text = fs::read_to_string(dir.join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn collect_cgroup_pids(dir: &Path, out: &mut Vec<u32>, depth: usize) {
    if let Ok(pids) = cgroup_pids(dir) {
        out.extend(pids);
    }
    if depth >= MAX_CGROUP_DEPTH || out.len() >= MAX_TASKS {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_cgroup_pids(&entry.path(), out, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_the_container_s_only_when_its_name_is_built_from_the_whole_id() {
        let id = "4f1c9a";
        for name in [id, "libpod-4f1c9a", "crio-4f1c9a.scope", "cri-containerd-4f1c9a.scope", "k8s:4f1c9a", "x_4f1c9a"]
        {
            assert!(names_container(name, id), "{name}");
        }
        for name in ["9ee38ba0734f1c9a0b", "libpod-4f1c9a0", "a4f1c9a", "4f1c9a.slice", "libpod-4f1c9a.scope.x"] {
            assert!(!names_container(name, id), "{name}");
        }
        assert!(!names_container("9ee38ba0073e8dcd05171480d06dc10b", "c1"));
        assert!(!names_container("anything", ""));
    }

    #[test]
    fn cgroup_of_a_fake_hybrid_host_prefers_unified_and_checks_membership() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = dir.path().join("proc");
        let sys = dir.path().join("sys");
        fs::create_dir_all(proc_root.join("42")).expect("mkdir");
        fs::write(proc_root.join("42/cgroup"), "8:pids:/x1\n4:memory:/odd/x1\n0::/x1\n").expect("write");
        let unified = sys.join("fs/cgroup/unified/x1");
        let pids = sys.join("fs/cgroup/pids/x1");
        fs::create_dir_all(&unified).expect("mkdir");
        fs::create_dir_all(pids.join("child")).expect("mkdir");
        fs::write(unified.join("cgroup.procs"), "7\n").expect("write");
        fs::write(pids.join("cgroup.procs"), "42\n43\n").expect("write");
        fs::write(pids.join("child/cgroup.procs"), "44\n").expect("write");
        let p = Procfs::new(&proc_root, &sys);
        // unified does not list pid 42, so pids is taken.
        assert_eq!(p.container_cgroup(42, "x1"), Some(pids.clone()));
        fs::write(unified.join("cgroup.procs"), "42\n").expect("write");
        assert_eq!(p.container_cgroup(42, "x1"), Some(unified.clone()));
        // A cgroup not named after the container (a shared one) is never taken.
        assert_eq!(p.container_cgroup(42, "other-id"), None);
        assert_eq!(p.tasks(42, Some(&pids)), vec![42, 43, 44]);
        assert_eq!(p.cgroup_relative(&pids).as_deref(), Some("/x1"), "the mount is not part of the name");
        assert_eq!(p.cgroup_relative(&sys.join("fs/cgroup/pids")), None);
        assert_eq!(p.cgroup_relative(dir.path()), None);
    }

    #[test]
    fn an_init_in_a_sub_cgroup_of_the_container_s_scope_has_the_scope_for_its_cgroup() {
        // crun, systemd driver, cgroup v2: `.../crun-<id>.scope/container`.
        let dir = tempfile::tempdir().expect("tempdir");
        let (proc_root, sys) = (dir.path().join("proc"), dir.path().join("sys"));
        fs::create_dir_all(proc_root.join("42")).expect("mkdir");
        let path = "system.slice/crun-ab12.scope/container";
        fs::write(proc_root.join("42/cgroup"), format!("0::/{path}\n")).expect("write");
        let root = sys.join("fs/cgroup");
        fs::create_dir_all(root.join(path)).expect("mkdir");
        fs::write(root.join("cgroup.controllers"), "pids\n").expect("write");
        fs::write(root.join(path).join("cgroup.procs"), "42\n43\n").expect("write");
        fs::write(root.join("system.slice/crun-ab12.scope/cgroup.procs"), "").expect("write");
        let p = Procfs::new(&proc_root, &sys);
        let scope = root.join("system.slice/crun-ab12.scope");
        assert_eq!(p.container_cgroup(42, "ab12"), Some(scope.clone()));
        assert_eq!(p.tasks(42, Some(&scope)), vec![42, 43]);
        assert_eq!(p.cgroup_relative(&scope).as_deref(), Some("/system.slice/crun-ab12.scope"));
        // A parent that is not named after the container is not taken either.
        assert_eq!(p.container_cgroup(42, "other"), None);
    }

    #[test]
    fn root_cgroup_is_no_container_cgroup_and_tasks_fall_back_to_descendants() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let p = Procfs::new("/proc", "/sys");
        let me = std::process::id();
        let tasks = p.tasks(me, None);
        assert_eq!(tasks[0], me);
        assert!(tasks.contains(&child.id()), "{tasks:?}");
        assert_eq!(p.stat(child.id()).expect("stat").ppid, me);
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(matches!(p.stat(child.id()), Err(ProcError::Gone { .. })));
        assert!(p.tasks(child.id(), None).is_empty());
    }
}
