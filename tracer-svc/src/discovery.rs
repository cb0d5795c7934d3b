//! The nodes, from the tracer-node Service's EndpointSlices, watched (never polled) with
//! kube-rs: `watcher` lists them, then follows the watch; `reflector` keeps the set. Each ready
//! endpoint with the slice's API port is a node; nodes join, turn not-ready and leave as the
//! watch reports them. A broken watch re-lists with backoff, and the known nodes stay in use
//! until the new list is complete (the reflector swaps its store at the end of a list).

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    runtime::{reflector, watcher, WatchStreamExt},
    Api,
};
use tracing::{info, warn};

use crate::{
    metrics::Metrics,
    nodes::{Membership, NodeEndpoint},
};

/// What is watched.
#[derive(Debug, Clone)]
pub struct Target {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service (`kubernetes.io/service-name` of its slices).
    pub service: String,
    /// The name of the port that serves the node API.
    pub port_name: String,
    /// Whether nodes are reached over HTTPS.
    pub tls: bool,
}

/// The nodes the slices name: every ready endpoint's first address, with the slice's port
/// named `port_name` (else its first port). An endpoint whose `ready` is unset counts as ready,
/// as the API documents.
pub fn nodes_of(slices: &[Arc<EndpointSlice>], target: &Target) -> Vec<NodeEndpoint> {
    let mut out = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports.iter().find(|p| p.name.as_deref() == Some(target.port_name.as_str())).or(ports.first());
        let Some(port) = port.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else { continue };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let Some(address) = ep.addresses.first() else { continue };
            if !ready {
                continue;
            }
            let name = ep.node_name.as_deref().or(ep.target_ref.as_ref().and_then(|t| t.name.as_deref()));
            out.push(NodeEndpoint::discovered(name, address, port, target.tls));
        }
    }
    out
}

/// Watches the slices until the task is aborted, keeping `membership` current.
pub fn spawn(
    client: kube::Client,
    target: Target,
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<EndpointSlice> = Api::namespaced(client, &target.namespace);
        let selector = format!("kubernetes.io/service-name={}", target.service);
        // The API server ends a watch after this many seconds; the watcher resumes it from the
        // last resourceVersion (no re-list unless that version is gone).
        let config = watcher::Config::default().labels(&selector).timeout(290);
        let (reader, writer) = reflector::store();
        let mut events = reflector(writer, watcher(api, config)).default_backoff().boxed();
        info!(namespace = %target.namespace, selector = %selector, "watching the tracer-node EndpointSlices");
        while let Some(event) = events.next().await {
            let initial_list_done = match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(watcher::Event::InitDone) => true,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => false,
                Err(e) => {
                    metrics.discovery_errors.inc();
                    warn!(error = %e, known = membership.current().len(), "the EndpointSlice watch failed; keeping the known nodes and retrying");
                    continue;
                }
            };
            // The reflector's store is complete from the first list's end; until then (and
            // during a re-list) the known nodes stay as they are.
            if !initial_list_done && !membership.is_synced() {
                continue;
            }
            let nodes = nodes_of(&reader.state(), &target);
            let count = nodes.len();
            if membership.replace(nodes) {
                let names: Vec<String> = membership.current().iter().map(|n| n.name.clone()).collect();
                info!(nodes = count, names = ?names, "tracer-nodes changed");
            }
            // Ready only with the list in place, so /readyz never shows a synced empty list.
            membership.mark_synced();
        }
        warn!("the EndpointSlice watch ended");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn slice(
        kind: &str,
        ports: Vec<(&str, i32)>,
        endpoints: Vec<(&str, Option<bool>, Option<&str>)>,
    ) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            address_type: kind.into(),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(n, p)| EndpointPort { name: Some(n.into()), port: Some(p), ..Default::default() })
                    .collect(),
            ),
            endpoints: endpoints
                .into_iter()
                .map(|(a, ready, node)| Endpoint {
                    addresses: vec![a.into()],
                    conditions: Some(EndpointConditions { ready, ..Default::default() }),
                    node_name: node.map(Into::into),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn ready_endpoints_with_the_api_port_are_the_nodes() {
        let target = Target { namespace: "ct".into(), service: "svc".into(), port_name: "api".into(), tls: false };
        let slices = [
            slice(
                "IPv4",
                vec![("metrics", 9090), ("api", 8080)],
                vec![
                    ("10.0.0.1", Some(true), Some("worker-1")),
                    ("10.0.0.2", Some(false), Some("worker-2")),
                    ("10.0.0.3", None, None),
                ],
            ),
            slice("IPv6", vec![("other", 81)], vec![("fd00::4", Some(true), Some("worker-4"))]),
            slice("FQDN", vec![("api", 80)], vec![("node.example", Some(true), None)]),
        ];
        let nodes = nodes_of(&slices, &target);
        let urls: Vec<(&str, &str)> = nodes.iter().map(|n| (n.name.as_str(), n.url.as_str())).collect();
        assert_eq!(
            urls,
            [
                ("worker-1", "http://10.0.0.1:8080"),
                ("10.0.0.3:8080", "http://10.0.0.3:8080"),
                ("worker-4", "http://[fd00::4]:81"),
            ]
        );
    }
}
