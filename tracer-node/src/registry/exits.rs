//! Event-driven removal of containers whose init exits without a poststop (kill -9, runtime
//! crash): one thread waits in epoll on the pidfd of every registered init. A pidfd becomes
//! readable when its process exits, so nothing is polled and the cost is one fd per container.
//!
//! The thread is started only once its owner is fully built ([`ExitWatcher::spawn`] takes the
//! owner's `Weak` after `Arc::new`): a watcher started from inside `Arc::new_cyclic` could run
//! before the owner existed, find nothing to upgrade and return — silently, in about one start
//! in eight. A watcher that stops for any reason but its owner's drop marks itself dead, which
//! `/readyz`, `/metrics` and the log report.

use std::{
    collections::HashMap,
    io,
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
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
    alive: AtomicBool,
}

/// How often the thread checks that its owner still exists (it stops when the owner is dropped).
const OWNER_CHECK: Duration = Duration::from_secs(1);

impl ExitWatcher {
    /// An epoll set with no thread yet; call [`ExitWatcher::spawn`] once the owner exists.
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            pidfds: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(false),
        }))
    }

    /// Starts the watcher thread, reporting exits to `owner` while it lives. `owner` must
    /// already be upgradable: a dead `Weak` is refused rather than letting the thread end at once.
    pub fn spawn<T: OnExit>(self: &Arc<Self>, owner: Weak<T>) -> io::Result<()> {
        if owner.strong_count() == 0 {
            return Err(io::Error::other("the exit watcher's owner does not exist yet"));
        }
        self.alive.store(true, Ordering::Release);
        let me = Arc::downgrade(self);
        std::thread::Builder::new().name("exit-watcher".into()).spawn(move || run(me, owner)).map(drop).inspect_err(
            |_| {
                self.alive.store(false, Ordering::Release);
            },
        )
    }

    /// Whether the thread is running: false before [`ExitWatcher::spawn`] and after a failure.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
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
        let Some(watcher) = me.upgrade() else { return };
        // The owner gone means the daemon (or a test's registry) is shutting down: a clean end.
        let Some(owner) = owner.upgrade() else {
            watcher.alive.store(false, Ordering::Release);
            return;
        };
        events.clear();
        match epoll::wait(&watcher.epoll, rustix::buffer::spare_capacity(&mut events), Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                watcher.alive.store(false, Ordering::Release);
                error!(error = %e, "exit watcher failed; exits are now seen at poststop only (readyz reports it)");
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
