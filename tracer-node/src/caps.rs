//! Start-up check of the capabilities tracer-node needs, so a misconfigured DaemonSet fails at
//! once with a message naming what is missing instead of failing later per request.

use caps::{CapSet, Capability};

/// A needed capability and why.
pub const NEEDED: &[(Capability, &str)] = &[
    (Capability::CAP_SYS_ADMIN, "mount tracefs and create ftrace instances"),
    (Capability::CAP_DAC_OVERRIDE, "write tracefs control files and the root-only registry socket and spool"),
    (Capability::CAP_SYS_PTRACE, "read other processes' /proc entries and open pidfds across users"),
];

/// Missing capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// The effective set lacks some.
    #[error("missing capabilities: {0} (run as root, or grant them to the container)")]
    Missing(String),
    /// The capability sets could not be read.
    #[error("cannot read the process capabilities: {0}")]
    Read(String),
}

/// Checks that every needed capability is effective.
pub fn check() -> Result<(), CapsError> {
    let effective = caps::read(None, CapSet::Effective).map_err(|e| CapsError::Read(e.to_string()))?;
    let missing: Vec<String> =
        NEEDED.iter().filter(|(c, _)| !effective.contains(c)).map(|(c, why)| format!("{c} (to {why})")).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapsError::Missing(missing.join(", ")))
    }
}
