//! What a trace asks for, checked the same way by every binary: the built-in hooks' argument
//! grammar ([`args`]), the kernel filter grammar ([`filter`]) and the `container-tracer.io/`
//! pod annotations ([`annotations`]), label selectors ([`selector`]), session ids and scopes
//! ([`session`]). tracer-node adds what only its kernel can tell; the
//! admission webhook refuses at admission what the node would refuse.

pub mod annotations;
pub mod args;
pub mod filter;
pub mod selector;
pub mod session;
