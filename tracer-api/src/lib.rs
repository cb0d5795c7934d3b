//! Wire types shared by every container-tracer binary: the v1 REST API shapes
//! (`docs/api.md`) and the message the runtime hook sends to tracer-node.
//!
//! Serde only, no runtime: the hook links this crate and must stay small and fast to exec.

pub mod hook;
pub mod procfs;
pub mod v1;

pub use hook::{ContainerCreated, ContainerKind, ContainerStopped, HookReply, RegistryEvent, SpooledEvent};
