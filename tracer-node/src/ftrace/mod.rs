//! Kernel tracing. All tracefs access goes through [`Tracefs`], which holds the tracefs root so
//! unit tests can aim it at a temp dir while integration tests use the real kernel.

pub mod tracefs;

pub use tracefs::{Tracefs, TracefsError};
