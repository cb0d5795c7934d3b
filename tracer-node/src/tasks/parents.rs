//! The parents of the containers' inits, watched through pidfds: when one exits, its
//! containers' inits were reparented, and `/v1/pods` shows their new parent (the runtime's
//! process that started a container often leaves right after).

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Arc,
};

use rustix::{
    event::epoll,
    process::{pidfd_open, Pid, PidfdFlags},
};

/// One watched parent.
#[derive(Debug)]
struct Watched {
    pidfd: OwnedFd,
    children: HashSet<Arc<str>>,
}

/// The epoll set of parent pidfds.
#[derive(Debug)]
pub struct Parents {
    epoll: OwnedFd,
    by_pid: HashMap<u32, Watched>,
    of: HashMap<Arc<str>, u32>,
    /// Containers whose parent could not be watched (already gone): read again.
    gone: Vec<Arc<str>>,
}

impl Parents {
    /// An empty set.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            by_pid: HashMap::new(),
            of: HashMap::new(),
            gone: Vec::new(),
        })
    }

    /// Watches `ppid` as the parent of container `id`'s init.
    pub fn watch(&mut self, id: &Arc<str>, ppid: u32) {
        if self.of.get(id) == Some(&ppid) {
            return;
        }
        self.forget(id);
        // pid 0 (no parent in view) is not watched.
        let Some(pid) = i32::try_from(ppid).ok().and_then(Pid::from_raw) else { return };
        if let Some(w) = self.by_pid.get_mut(&ppid) {
            w.children.insert(id.clone());
            self.of.insert(id.clone(), ppid);
            return;
        }
        match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(pidfd) => {
                if epoll::add(&self.epoll, &pidfd, epoll::EventData::new_u64(u64::from(ppid)), epoll::EventFlags::IN)
                    .is_err()
                {
                    return;
                }
                self.by_pid.insert(ppid, Watched { pidfd, children: HashSet::from([id.clone()]) });
                self.of.insert(id.clone(), ppid);
            }
            // Gone already: the init has a new parent to read.
            Err(_) => self.gone.push(id.clone()),
        }
    }

    /// Stops watching the parent of `id`.
    pub fn forget(&mut self, id: &str) {
        let Some(ppid) = self.of.remove(id) else { return };
        let Some(w) = self.by_pid.get_mut(&ppid) else { return };
        w.children.remove(id);
        if w.children.is_empty() {
            if let Some(w) = self.by_pid.remove(&ppid) {
                let _ = epoll::delete(&self.epoll, &w.pidfd);
            }
        }
    }

    /// The containers whose init's parent exited since the last call (without waiting).
    pub fn exited(&mut self) -> Vec<Arc<str>> {
        let mut out = std::mem::take(&mut self.gone);
        let mut events: Vec<epoll::Event> = Vec::with_capacity(16);
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        if epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&zero)).is_err() {
            return out;
        }
        for ev in &events {
            let ppid = ev.data.u64() as u32;
            if let Some(w) = self.by_pid.remove(&ppid) {
                let _ = epoll::delete(&self.epoll, &w.pidfd);
                for id in w.children {
                    self.of.remove(&id);
                    out.push(id);
                }
            }
        }
        out
    }
}

impl AsFd for Parents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_s_exit_names_its_containers_once() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn");
        let mut p = Parents::new().expect("epoll");
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        p.watch(&a, child.id());
        p.watch(&b, child.id());
        assert!(p.exited().is_empty());
        child.kill().expect("kill");
        child.wait().expect("wait");
        let mut gone = p.exited();
        gone.sort();
        assert_eq!(gone, vec![a.clone(), b.clone()]);
        assert!(p.exited().is_empty());
        // A parent already gone is reported at once; one forgotten is not reported.
        p.watch(&a, child.id());
        assert_eq!(p.exited(), vec![a.clone()]);
        let mut other = std::process::Command::new("sleep").arg("30").spawn().expect("spawn");
        p.watch(&b, other.id());
        p.forget("b");
        other.kill().expect("kill");
        other.wait().expect("wait");
        assert!(p.exited().is_empty());
    }
}
