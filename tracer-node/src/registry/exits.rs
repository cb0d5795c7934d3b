//! Event-driven removal of containers whose init exits without a poststop (kill -9, runtime
//! crash): one thread waits in epoll on the pidfd of every registered init. A pidfd becomes
//! readable when its process exits, so nothing is polled and the cost is one fd per container.

use std::{
    collections::HashMap,
    io,
    os::fd::OwnedFd,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use rustix::event::{epoll, Timespec};
use tracing::{debug, error};

/// Called with the generation of an exited registration.
pub trait OnExit: Send + Sync + 'static {
    /// The init of registration `generation` exited.
    fn exited(&self, generation: u64);
}

/// The epoll set of init pidfds.
#[derive(Debug)]
pub struct ExitWatcher {
    epoll: OwnedFd,
    pidfds: Mutex<HashMap<u64, OwnedFd>>,
}

/// How often the thread checks that its owner still exists (it stops when the owner is dropped).
const OWNER_CHECK: Duration = Duration::from_secs(1);

impl ExitWatcher {
    /// Starts the watcher thread, reporting exits to `owner` while it lives.
    pub fn start<T: OnExit>(owner: Weak<T>) -> io::Result<Arc<Self>> {
        let watcher =
            Arc::new(Self { epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?, pidfds: Mutex::new(HashMap::new()) });
        let me = Arc::downgrade(&watcher);
        std::thread::Builder::new().name("exit-watcher".into()).spawn(move || run(me, owner))?;
        Ok(watcher)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OwnedFd>> {
        self.pidfds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches `pidfd` under `generation`. If the process already exited, the event fires at once.
    pub fn watch(&self, generation: u64, pidfd: OwnedFd) -> io::Result<()> {
        let mut map = self.lock();
        epoll::add(&self.epoll, &pidfd, epoll::EventData::new_u64(generation), epoll::EventFlags::IN)?;
        map.insert(generation, pidfd);
        Ok(())
    }

    /// Stops watching `generation` (the container was removed another way).
    pub fn unwatch(&self, generation: u64) {
        if let Some(fd) = self.lock().remove(&generation) {
            let _ = epoll::delete(&self.epoll, &fd);
        }
    }
}

fn run<T: OnExit>(me: Weak<ExitWatcher>, owner: Weak<T>) {
    let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
    let timeout = Timespec::try_from(OWNER_CHECK).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
    loop {
        let (Some(watcher), Some(owner)) = (me.upgrade(), owner.upgrade()) else { return };
        events.clear();
        match epoll::wait(&watcher.epoll, rustix::buffer::spare_capacity(&mut events), Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                error!(error = %e, "exit watcher failed; exits are now seen at poststop only");
                return;
            }
        }
        for ev in &events {
            let generation = ev.data.u64();
            watcher.unwatch(generation);
            debug!(generation, "container init exited");
            owner.exited(generation);
        }
    }
}
