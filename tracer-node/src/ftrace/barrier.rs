//! How far the per-CPU readers of one instance have got, so that one reader can wait until the
//! others have consumed everything the kernel recorded before a given event.
//!
//! The kernel orders events per CPU only. A process forked on CPU 0 may run, exec and exit on
//! CPU 1, and CPU 1's reader may meet the child's events before CPU 0's reader has read the
//! fork. A reader that needs what another CPU recorded earlier (the fork, to tie a child that
//! is gone to its container) asks the others to catch up: each answers either by consuming
//! events past the given timestamp, or by draining its buffer empty after the request was made
//! (which needs no clock at all: whatever was recorded before the request is then read).
//!
//! A reader publishes its progress before it waits, so two readers waiting on each other
//! always let the one with the earlier events go on; every wait is bounded anyway.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use rustix::event::{eventfd, EventfdFlags};

/// One reader's published progress, and the eventfd that wakes it from its poll.
#[derive(Debug)]
struct Slot {
    /// Every event of this CPU with a timestamp up to this one has been consumed.
    consumed_ts: AtomicU64,
    /// The latest request that this reader has answered by draining its buffer empty.
    drained: AtomicU64,
    /// Every event of this CPU up to this timestamp has been handed to its consumers (not
    /// only read: `consumed_ts` is published before a page's events are routed).
    delivered_ts: AtomicU64,
    waker: OwnedFd,
}

/// Shared by the readers of one instance.
#[derive(Debug)]
pub(crate) struct Barrier {
    slots: Vec<Slot>,
    requests: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Barrier {
    /// A barrier for `readers` readers.
    pub(crate) fn new(readers: usize) -> std::io::Result<Arc<Self>> {
        let slots = (0..readers)
            .map(|_| {
                let waker = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
                Ok(Slot {
                    consumed_ts: AtomicU64::new(0),
                    drained: AtomicU64::new(0),
                    delivered_ts: AtomicU64::new(0),
                    waker,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Arc::new(Self {
            slots,
            requests: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            changed: Condvar::new(),
        }))
    }

    /// The fd reader `me` polls beside its pipe.
    pub(super) fn waker(&self, me: usize) -> impl AsFd + '_ {
        self.slots[me].waker.as_fd()
    }

    /// Clears reader `me`'s wake-up.
    pub(super) fn clear(&self, me: usize) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.slots[me].waker, &mut buf);
    }

    /// Wakes every reader (to stop, or to answer a request).
    pub(super) fn wake_all(&self, except: Option<usize>) {
        for (i, s) in self.slots.iter().enumerate() {
            if Some(i) != except {
                let _ = rustix::io::write(&s.waker, &1u64.to_ne_bytes());
            }
        }
    }

    /// The newest request; a reader reads it before it starts draining.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Reader `me` drained its buffer empty after request `epoch` was made.
    pub(super) fn drained(&self, me: usize, epoch: u64) {
        self.slots[me].drained.fetch_max(epoch, Ordering::SeqCst);
        self.notify();
    }

    /// Waits, at most `timeout`, until every reader has delivered what its CPU recorded up to
    /// `ts`: by passing it, or by draining its buffer empty after this call asked. For a
    /// caller outside the readers (a session that stops at `ts`). False when the time ran out.
    pub(crate) fn wait_delivered(&self, ts: u64, timeout: Duration) -> bool {
        let epoch = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake_all(None);
        self.wait(timeout, || {
            self.slots
                .iter()
                .all(|s| s.delivered_ts.load(Ordering::SeqCst) >= ts || s.drained.load(Ordering::SeqCst) >= epoch)
        })
    }

    /// Waits until `done` holds or `timeout` passed; re-checked at every reader's news.
    fn wait(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = loop {
            if done() {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            guard = self.changed.wait_timeout(guard, left).unwrap_or_else(|p| p.into_inner()).0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.changed.notify_all();
        }
    }
}

/// A reader's handle on its instance's barrier, given to its page consumer.
#[derive(Debug, Clone)]
pub struct Progress {
    barrier: Arc<Barrier>,
    me: usize,
}

impl Progress {
    pub(crate) fn new(barrier: Arc<Barrier>, me: usize) -> Self {
        Self { barrier, me }
    }

    /// Publishes that every event of this reader's CPU up to `ts` has been consumed.
    pub fn consumed(&self, ts: u64) {
        self.barrier.slots[self.me].consumed_ts.fetch_max(ts, Ordering::SeqCst);
        self.barrier.notify();
    }

    /// Waits, at most `timeout`, until every other reader has consumed what its CPU recorded
    /// before the event at `ts` of this one. False when the time ran out.
    pub fn wait_for_others(&self, ts: u64, timeout: Duration) -> bool {
        let b = &*self.barrier;
        let epoch = b.requests.fetch_add(1, Ordering::SeqCst) + 1;
        b.wake_all(Some(self.me));
        let caught_up = || {
            b.slots.iter().enumerate().all(|(i, s)| {
                i == self.me || s.consumed_ts.load(Ordering::SeqCst) >= ts || s.drained.load(Ordering::SeqCst) >= epoch
            })
        };
        b.wait(timeout, caught_up)
    }

    /// Publishes that every event of this reader's CPU up to `ts` has been delivered.
    pub fn delivered(&self, ts: u64) {
        self.barrier.slots[self.me].delivered_ts.fetch_max(ts, Ordering::SeqCst);
        self.barrier.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_when_every_other_reader_passed_the_timestamp_or_drained() {
        let b = Barrier::new(3).expect("eventfds");
        let (p0, p1, p2) = (Progress::new(b.clone(), 0), Progress::new(b.clone(), 1), Progress::new(b.clone(), 2));
        p1.consumed(500);
        assert!(!p0.wait_for_others(100, Duration::from_millis(20)), "reader 2 has not answered");
        let waiter = std::thread::spawn(move || p0.wait_for_others(100, Duration::from_secs(10)));
        // Reader 2 is idle: it answers the request by draining (nothing) after it was made.
        while b.requests() < 2 {
            std::thread::yield_now();
        }
        b.drained(2, b.requests());
        assert!(waiter.join().expect("waiter"), "reader 1 passed 100, reader 2 drained");
        // A drain that began before a request does not answer it.
        let before = b.requests();
        let p0 = Progress::new(b.clone(), 0);
        let waiter = std::thread::spawn(move || p0.wait_for_others(1000, Duration::from_millis(50)));
        b.drained(2, before);
        p1.consumed(2000);
        assert!(!waiter.join().expect("waiter"), "reader 2's drain predates the request");
        p2.consumed(1000);
        assert!(Progress::new(b, 0).wait_for_others(1000, Duration::from_millis(1)));
    }
}
