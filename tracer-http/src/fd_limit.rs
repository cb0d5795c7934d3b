//! The process's file descriptor limit. systemd and most container runtimes start services
//! with a soft limit of 1,024 and a much higher hard limit: a daemon that holds many
//! connections raises its soft limit to the hard one at start-up, then sizes its caps below it.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The soft and hard limits after raising.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The limit in force (what `open` and `accept` fail with EMFILE beyond).
    pub soft: u64,
    /// The ceiling this process could raise it to.
    pub hard: u64,
    /// The soft limit before raising.
    pub was: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at `ceiling`, since a limit of
/// "infinity" would make fd tables huge) and reports the result. Failing to raise it is not an
/// error: the caller sizes its caps with what it has.
pub fn raise(ceiling: u64) -> FdLimit {
    let now = getrlimit(Resource::Nofile);
    let was = now.current.unwrap_or(u64::MAX);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let target = hard.min(ceiling).max(was.min(ceiling));
    if target > was && setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: now.maximum }).is_ok() {
        return FdLimit { soft: target, hard, was };
    }
    FdLimit { soft: was, hard, was }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one_or_kept() {
        let before = getrlimit(Resource::Nofile);
        let limit = raise(1 << 20);
        assert!(limit.soft >= limit.was);
        assert!(limit.soft <= limit.hard);
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.current, Some(limit.soft));
        // The hard limit is never touched.
        assert_eq!(after.maximum, before.maximum);
    }
}
