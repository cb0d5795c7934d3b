//! The table of open connections: which ones are idle (no request in progress) and for how
//! long, so that at the cap the idle-longest one is closed to make room.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use tokio::sync::Notify;

/// `Conn::state` of a connection chosen for closing: no request may start on it any more.
const EVICTED: u32 = u32::MAX;

/// Counters of one server, for `/metrics`.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now (a gauge).
    pub open: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Idle connections closed at the cap to admit a new one.
    pub evicted: AtomicU64,
    /// New connections refused at the cap (every connection had a request in progress).
    pub refused: AtomicU64,
    /// Connections closed for not sending their headers in time (or idle for that long).
    pub header_timeouts: AtomicU64,
    /// Requests whose body did not arrive in time.
    pub body_timeouts: AtomicU64,
    /// Connections dropped for not reading their answer.
    pub write_timeouts: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
}

/// One open connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Requests in progress (0 or 1: HTTP/1 serves one at a time), or `EVICTED`.
    state: AtomicU32,
    /// When the connection last became idle, in ms since the table's epoch.
    idle_since_ms: AtomicU64,
    /// Signalled once when the connection is chosen for closing.
    pub(crate) evicted: Notify,
}

/// The open connections of one server. The lock is held for in-memory work only.
#[derive(Debug)]
pub(crate) struct Connections {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    pub(crate) stats: Arc<ServerStats>,
}

/// Removes its connection from the table when the connection's task ends.
#[derive(Debug)]
pub(crate) struct Registration {
    table: Arc<Connections>,
    id: u64,
    pub(crate) conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&self.id);
        self.table.stats.open.store(open.len() as u64, Ordering::Relaxed);
    }
}

/// What became of a new connection at the cap.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Admitted (perhaps after closing an idle one).
    Admitted(Registration),
    /// Every connection has a request in progress.
    Full,
}

impl Connections {
    pub(crate) fn new(stats: Arc<ServerStats>) -> Arc<Self> {
        Arc::new(Self { epoch: Instant::now(), next_id: AtomicU64::new(0), open: Mutex::default(), stats })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits a new connection, closing the idle-longest one first when `max` are open.
    pub(crate) fn admit(self: &Arc<Self>, max: usize) -> Admission {
        let now = self.now_ms();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= max {
            // A linear scan, only at the cap: cheaper than keeping an order on every request.
            let mut idle: Vec<(u64, u64)> = open
                .iter()
                .filter(|(_, c)| c.state.load(Ordering::Acquire) == 0)
                .map(|(id, c)| (c.idle_since_ms.load(Ordering::Relaxed), *id))
                .collect();
            idle.sort_unstable();
            // The one whose request starts between the scan and the swap is skipped.
            let victim = idle.into_iter().find(|(_, id)| {
                open[id].state.compare_exchange(0, EVICTED, Ordering::AcqRel, Ordering::Acquire).is_ok()
            });
            let Some((_, id)) = victim else { return Admission::Full };
            if let Some(conn) = open.remove(&id) {
                conn.evicted.notify_one();
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn =
            Arc::new(Conn { state: AtomicU32::new(0), idle_since_ms: AtomicU64::new(now), evicted: Notify::new() });
        open.insert(id, conn.clone());
        self.stats.open.store(open.len() as u64, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Admission::Admitted(Registration { table: self.clone(), id, conn })
    }

    /// Chooses every open connection for closing (the end of the shutdown grace period).
    pub(crate) fn evict_all(&self) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for conn in open.values() {
            conn.state.store(EVICTED, Ordering::Release);
            conn.evicted.notify_one();
        }
    }
}

impl Registration {
    /// Marks a request as started; `None` when the connection is being closed.
    pub(crate) fn begin(&self) -> Option<Busy> {
        self.conn.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| (s != EVICTED).then(|| s + 1)).ok()?;
        Some(Busy { table: self.table.clone(), conn: self.conn.clone() })
    }
}

/// A request in progress; dropped when its answer has been written (or abandoned).
#[derive(Debug)]
pub(crate) struct Busy {
    table: Arc<Connections>,
    conn: Arc<Conn>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn.idle_since_ms.store(self.table.now_ms(), Ordering::Relaxed);
        // Never below zero, and an evicted connection stays evicted.
        let _ = self
            .conn
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| (s != EVICTED && s > 0).then(|| s - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> Registration {
        match a {
            Admission::Admitted(r) => r,
            Admission::Full => panic!("refused"),
        }
    }

    #[test]
    fn at_the_cap_the_idle_longest_connection_makes_room_and_busy_ones_never_do() {
        let table = Connections::new(Arc::default());
        let first = admitted(table.admit(2));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = admitted(table.admit(2));
        let busy_second = second.begin().expect("not evicted");
        // Both open, the second busy: the first (idle) one goes.
        let third = admitted(table.admit(2));
        assert!(first.begin().is_none(), "the idle connection is chosen for closing");
        assert_eq!(table.stats.evicted.load(Ordering::Relaxed), 1);
        // Second and third busy: nothing can make room.
        let _busy_third = third.begin().expect("third not evicted");
        assert!(matches!(table.admit(2), Admission::Full));
        // The second finishes its request: it is idle again and makes room.
        drop(busy_second);
        let _fourth = admitted(table.admit(2));
        assert!(second.begin().is_none());
        drop((first, second));
        assert_eq!(table.stats.open.load(Ordering::Relaxed), 2);
    }
}
