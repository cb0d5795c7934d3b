//! The runtime-hook → tracer-node message, also the format of spooled events.
//!
//! Protocol on the registry socket: the hook writes one JSON [`RegistryEvent`] followed by `\n`,
//! tracer-node answers one JSON [`HookReply`] followed by `\n` once the event is applied, so a
//! container is visible in `GET /v1/pods` by the time its createRuntime/prestart hook returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest message either side accepts on the registry socket, and the largest spool file replayed.
/// Kubernetes caps a pod's annotations at 256 KiB; this leaves room for the rest of the record.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Default path of tracer-node's registry socket, shared by the hook and the daemon.
pub const DEFAULT_SOCKET: &str = "/run/container-tracer/registry.sock";

/// Default spool directory: written by the hook when delivery fails, replayed by tracer-node.
pub const DEFAULT_SPOOL_DIR: &str = "/run/container-tracer/spool";

/// Version of the message format; tracer-node rejects other versions with a clear reason.
pub const MESSAGE_VERSION: u32 = 1;

/// What a hook tells tracer-node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistryEvent {
    /// A container was created (createRuntime / prestart stage): register it.
    Created(ContainerCreated),
    /// A container stopped (poststop stage): unregister it.
    Stopped(ContainerStopped),
}

impl RegistryEvent {
    /// The runtime's id of the container the event is about.
    pub fn container_id(&self) -> &str {
        match self {
            RegistryEvent::Created(c) => &c.id,
            RegistryEvent::Stopped(s) => &s.id,
        }
    }

    /// Short name of the event kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryEvent::Created(_) => "created",
            RegistryEvent::Stopped(_) => "stopped",
        }
    }
}

/// Whether a container runs a workload or only holds a pod's namespaces (the pause container).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerKind {
    /// A workload container, listed in `GET /v1/pods`.
    #[default]
    Container,
    /// A pod sandbox (pause) container: recorded, not listed as a workload.
    Sandbox,
}

/// A newly created container, as the hook saw it in the runtime's state and annotations.
/// Unknown fields are refused: a field this daemon does not know is a message it does not speak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerCreated {
    /// Message format version, [`MESSAGE_VERSION`].
    pub version: u32,
    /// The runtime's container id.
    pub id: String,
    /// Host pid of the container's init process.
    pub pid: u32,
    /// Start time of the init (field 22 of `/proc/<pid>/stat`, clock ticks since boot), read by
    /// the hook so that a spooled event replayed later never attaches to a reused pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start_time: Option<u64>,
    /// Pod name (Kubernetes) or the fallback documented in the README.
    pub pod: String,
    /// Pod namespace; empty outside Kubernetes.
    pub namespace: String,
    /// Container name.
    pub name: String,
    /// Workload or sandbox.
    #[serde(default)]
    pub kind: ContainerKind,
    /// The OCI runtime that ran the hook (`runc`, `crun`), when it could be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The container's bundle directory.
    #[serde(default)]
    pub bundle: String,
    /// The container's OCI annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When the hook ran, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
}

/// A container that stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStopped {
    /// Message format version, [`MESSAGE_VERSION`].
    pub version: u32,
    /// The runtime's container id.
    pub id: String,
    /// When the hook ran, nanoseconds since the Unix epoch.
    pub stopped_unix_ns: u64,
}

/// tracer-node's answer to one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookReply {
    /// The event was applied (or was a harmless no-op, such as a stop of an unknown container).
    pub ok: bool,
    /// Why the event was refused, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A spool file: an event the hook could not deliver, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpooledEvent {
    /// Why delivery failed (daemon down, timed out, ...), logged again at replay.
    pub reason: String,
    /// The undelivered event.
    pub event: RegistryEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created() -> ContainerCreated {
        ContainerCreated {
            version: MESSAGE_VERSION,
            id: "c1".into(),
            pid: 42,
            pid_start_time: Some(7),
            pod: "p".into(),
            namespace: "ns".into(),
            name: "c".into(),
            kind: ContainerKind::Sandbox,
            runtime: Some("runc".into()),
            bundle: "/b".into(),
            annotations: BTreeMap::from([("a".into(), "b".into())]),
            created_unix_ns: 1,
        }
    }

    #[test]
    fn events_are_tagged_and_round_trip() {
        let ev = RegistryEvent::Created(created());
        let text = serde_json::to_string(&ev).expect("ser");
        assert!(text.starts_with(r#"{"event":"created""#), "{text}");
        assert_eq!(serde_json::from_str::<RegistryEvent>(&text).expect("de"), ev);
        let stop = RegistryEvent::Stopped(ContainerStopped { version: 1, id: "c1".into(), stopped_unix_ns: 2 });
        let text = serde_json::to_string(&stop).expect("ser");
        assert_eq!(serde_json::from_str::<RegistryEvent>(&text).expect("de"), stop);
        assert_eq!(stop.container_id(), "c1");
    }

    #[test]
    fn unknown_fields_are_rejected_in_every_event() {
        let mut v = serde_json::to_value(RegistryEvent::Created(created())).expect("ser");
        serde_json::from_value::<RegistryEvent>(v.clone()).expect("the plain event parses");
        v["pid_namespace_is_host"] = true.into();
        let err = serde_json::from_value::<RegistryEvent>(v).expect_err("unknown field in created");
        assert!(err.to_string().contains("unknown field"), "{err}");
        let stop = r#"{"event":"stopped","version":1,"id":"c1","stopped_unix_ns":2,"force":true}"#;
        assert!(serde_json::from_str::<RegistryEvent>(stop).is_err(), "unknown field in stopped");
    }

    #[test]
    fn unknown_event_kinds_are_rejected() {
        assert!(serde_json::from_str::<RegistryEvent>(r#"{"event":"exploded","id":"x"}"#).is_err());
    }
}
