//! How many REST API connections this daemon can hold: the fd soft limit (raised to the hard
//! one at start-up) minus what the rest of the daemon needs at its configured limits. 1,100
//! idle connections under systemd's default limit of 1,024 once left no fd for the registry
//! socket (hooks spooled, replay failed): the connection cap keeps those fds in reserve.

use std::time::Duration;

use tracer_http::{fd_limit::FdLimit, Limits};

/// Fds of the registry socket: its connections and the files of registrations being applied.
const REGISTRY_FDS: u64 = 256 + 16 * 4;
/// One pidfd per live container for the exit watcher (kubelet's largest pod counts, each with a
/// sandbox and a few containers).
const CONTAINER_FDS: u64 = 1024;
/// Spool and state files, OTLP connections, tracefs files being programmed, stdio, epoll,
/// inotify and the runtime's own.
const OTHER_FDS: u64 = 128;
/// Per running session and CPU: the `trace_pipe_raw` and the reader's eventfd.
const SESSION_FDS_PER_CPU: u64 = 2;
/// Per running session: its instance's files open while it is programmed or read.
const SESSION_FDS: u64 = 8;

/// The server limits for `max_connections` and the timeouts, within `fd`.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    /// What the server loop gets.
    pub limits: Limits,
    /// Fds kept for everything but connections.
    pub reserve: u64,
    /// Whether the fd limit was too low for the reserve (the cap is then a quarter of it).
    pub starved: bool,
}

/// Sizes the connection cap.
pub fn size(config: &crate::Config, fd: FdLimit, cpus: u64) -> Sizing {
    let running = config.max_running_sessions;
    let reserve = REGISTRY_FDS
        + CONTAINER_FDS
        + OTHER_FDS
        + running.saturating_mul(cpus.saturating_mul(SESSION_FDS_PER_CPU) + SESSION_FDS);
    let room = fd.soft.saturating_sub(reserve);
    // A limit below the reserve still serves a quarter of it as connections, so the API stays
    // reachable; the rest of the daemon keeps three quarters.
    let floor = fd.soft / 4;
    let starved = room < floor;
    let cap = config.max_connections.min(room.max(floor)).max(1);
    let secs = Duration::from_secs;
    let limits = Limits {
        max_connections: usize::try_from(cap).unwrap_or(usize::MAX),
        header_timeout: secs(config.http_header_timeout_secs),
        body_timeout: secs(config.http_body_timeout_secs),
        write_timeout: secs(config.http_write_timeout_secs),
        ..Limits::default()
    };
    Sizing { limits, reserve, starved }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> crate::Config {
        crate::Config::parse_from(std::iter::once("tracer-node").chain(args.iter().copied()))
    }

    #[test]
    fn the_cap_leaves_the_reserve_free_below_the_fd_limit() {
        let fd = |soft| FdLimit { soft, hard: soft, was: 1024 };
        // A raised limit: the configured cap.
        let s = size(&config(&[]), fd(524_288), 2);
        assert_eq!(s.limits.max_connections, 4096);
        assert!(!s.starved);
        // 20,000: still the configured cap, and what is left is the reserve at least.
        let s = size(&config(&[]), fd(20_000), 64);
        assert_eq!(s.limits.max_connections, 4096);
        assert!(20_000 - 4096 >= s.reserve);
        // A limit that fits the reserve and a few connections.
        let s = size(&config(&["--max-running-sessions", "4"]), fd(2048), 2);
        assert_eq!(s.limits.max_connections as u64, 2048 - s.reserve);
        // systemd's 1,024 and no way up: a quarter, and a warning.
        let s = size(&config(&[]), fd(1024), 2);
        assert_eq!(s.limits.max_connections, 256);
        assert!(s.starved);
    }

    #[test]
    fn the_timeouts_are_the_flags() {
        let s = size(
            &config(&["--http-header-timeout-secs", "3", "--http-body-timeout-secs", "4"]),
            FdLimit { soft: 65_536, hard: 65_536, was: 65_536 },
            2,
        );
        assert_eq!(s.limits.header_timeout, Duration::from_secs(3));
        assert_eq!(s.limits.body_timeout, Duration::from_secs(4));
        assert_eq!(s.limits.write_timeout, Duration::from_secs(30));
    }
}
