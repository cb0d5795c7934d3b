//! Kernel tracing. All tracefs access goes through [`Tracefs`], which holds the tracefs root so
//! unit tests can aim it at a temp dir while integration tests use the real kernel.

pub mod barrier;
pub mod format;
pub mod instance;
pub mod pid_filter;
pub mod pipes;
pub mod predicate;
pub mod reader;
pub mod ring;
pub mod tracefs;

pub use instance::Instance;
pub use tracefs::{Tracefs, TracefsError, INSTANCE_PREFIX};
