//! A thread of ours that never runs again, whose id holds an instance's pid filter while
//! recording is turned on.
//!
//! Forks are recorded only while recording is on, and the kernel traces every thread when
//! `set_event_pid` is empty. Turning recording on after the filter is written leaves a gap
//! where a container process can fork, and the child run and exit, with no fork event: its
//! events are recorded (event-fork put it in the filter) but can be tied to no container.
//! With the sentinel in the filter, recording goes on first (recording nothing), then the
//! containers' threads are added: every later fork is recorded.

use std::sync::OnceLock;

static SENTINEL: OnceLock<Option<u32>> = OnceLock::new();

/// The sentinel's thread id (the thread is started on first use and parks forever). `None`
/// when no thread could be started.
pub fn tid() -> Option<u32> {
    *SENTINEL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ftrace-sentinel".into())
            .spawn(move || {
                let _ = tx.send(rustix::thread::gettid().as_raw_nonzero().get() as u32);
                // A spurious wake-up makes a system call of this thread, which the readers drop.
                loop {
                    std::thread::park();
                }
            })
            .ok()?;
        rx.recv().ok()
    })
}
