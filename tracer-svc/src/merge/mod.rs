//! How the nodes' answers become one answer in the contract's shape (documented in
//! `docs/api.md`, "Through tracer-svc").

pub mod pods;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tracer_api::v1::{Provider, SessionInfo, SessionStats, Sessions, TraceHooks};

/// The union of the nodes' providers, in the order first seen; a provider's hooks are the
/// union of its hooks on every node (the first node's description of a hook wins).
pub fn trace_hooks(parts: impl IntoIterator<Item = TraceHooks>) -> TraceHooks {
    let mut order: Vec<String> = Vec::new();
    let mut providers: BTreeMap<String, Provider> = BTreeMap::new();
    for part in parts {
        for entry in part {
            for (name, provider) in entry {
                let merged = providers.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    Provider::default()
                });
                for (hook, h) in provider.tracers {
                    merged.tracers.entry(hook).or_insert(h);
                }
            }
        }
    }
    order.into_iter().filter_map(|n| providers.remove(&n).map(|p| BTreeMap::from([(n, p)]))).collect()
}

/// Lines (`Output`, `Error`) of one session from several nodes: as they are when every node
/// that has lines has the same ones, else each node's lines prefixed with `<node>: `.
fn lines(parts: &[(&str, &Option<Vec<String>>)]) -> Option<Vec<String>> {
    let present: Vec<(&str, &Vec<String>)> = parts.iter().filter_map(|(n, l)| l.as_ref().map(|l| (*n, l))).collect();
    let first = present.first()?;
    if present.iter().all(|(_, l)| *l == first.1) {
        return Some(first.1.clone());
    }
    Some(present.iter().flat_map(|(n, l)| l.iter().map(move |line| format!("{n}: {line}"))).collect())
}

/// One session as several nodes show it: `Node` is every node it is on, sorted and joined
/// with `,`, and `Nodes` lists them; `Containers` is the union; it is `Running` when it runs
/// on any node; what the session was created with comes from the first node.
pub fn session(mut infos: Vec<SessionInfo>) -> Option<SessionInfo> {
    infos.sort_by(|a, b| a.node.cmp(&b.node));
    let nodes: Vec<String> = infos.iter().map(|i| i.node.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let output = lines(&infos.iter().map(|i| (i.node.as_str(), &i.output)).collect::<Vec<_>>());
    let error = lines(&infos.iter().map(|i| (i.node.as_str(), &i.error)).collect::<Vec<_>>());
    let running = infos.iter().any(|i| i.running);
    let auto_trace = infos.iter().any(|i| i.auto_trace);
    let mut containers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in &infos {
        for (pod, names) in &i.containers {
            containers.entry(pod.clone()).or_default().extend(names.iter().cloned());
        }
    }
    let mut merged = infos.into_iter().next()?;
    merged.node = nodes.join(",");
    merged.nodes = Some(nodes);
    merged.output = output;
    merged.error = error;
    merged.running = running;
    merged.auto_trace = auto_trace;
    merged.containers = containers.into_iter().map(|(p, n)| (p, n.into_iter().collect())).collect();
    Some(merged)
}

/// The union of the nodes' sessions, those with one id merged by [`session`].
pub fn sessions(parts: impl IntoIterator<Item = Sessions>) -> Sessions {
    let mut by_id: BTreeMap<String, Vec<SessionInfo>> = BTreeMap::new();
    for part in parts {
        for (id, info) in part {
            by_id.entry(id).or_default().push(info);
        }
    }
    by_id.into_iter().filter_map(|(id, infos)| session(infos).map(|s| (id, s))).collect()
}

/// `/stats` through tracer-svc: the contract's keys summed over the nodes (`running` when any
/// node runs the session), and each node's own under `nodes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterStats {
    /// The sums.
    #[serde(flatten)]
    pub total: SessionStats,
    /// Node name to that node's statistics.
    pub nodes: BTreeMap<String, SessionStats>,
}

/// Sums the nodes' statistics of one session.
pub fn stats(parts: impl IntoIterator<Item = (String, SessionStats)>) -> ClusterStats {
    let mut out = ClusterStats::default();
    for (node, s) in parts {
        let t = &mut out.total;
        t.events_read += s.events_read;
        t.events_lost_kernel += s.events_lost_kernel;
        t.events_dropped += s.events_dropped;
        t.events_aged_out += s.events_aged_out;
        t.events_retained += s.events_retained;
        t.events_export_queued += s.events_export_queued;
        t.events_exported += s.events_exported;
        t.events_export_dropped += s.events_export_dropped;
        t.running |= s.running;
        out.nodes.insert(node, s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_api::v1::{pod_key, Container, Pods, TraceHook};

    fn container(ns: &str, pod: &str, name: &str) -> Container {
        Container {
            id: name.into(),
            parent: vec![1],
            pod: pod.into(),
            tasks: vec![2],
            namespace: ns.into(),
            container_id: format!("{ns}-{pod}-{name}"),
            runtime: None,
            created_unix_ns: 0,
            labels: None,
            owner: None,
        }
    }

    fn pods_of(list: &[(&str, &str, &str)], qualified: bool) -> Pods {
        let mut out = Pods::new();
        for (ns, pod, name) in list {
            out.entry(pod_key(ns, pod, qualified))
                .or_default()
                .containers
                .insert((*name).into(), container(ns, pod, name));
        }
        out
    }

    #[test]
    fn pods_add_up_and_a_name_in_two_namespaces_is_qualified_cluster_wide() {
        let a = pods_of(&[("team-a", "web", "nginx"), ("team-a", "db", "pg")], false);
        let b = pods_of(&[("team-b", "web", "nginx")], false);
        let c = pods_of(&[("team-c", "cache", "redis"), ("team-d", "cache", "redis")], true);
        // The same pod seen by two nodes (names clash outside Kubernetes): containers united.
        let d = pods_of(&[("team-a", "db", "backup")], false);
        let bodies: Vec<Vec<u8>> = [a, b, c, d].iter().map(|p| serde_json::to_vec(p).expect("json")).collect();
        let mut index = pods::PodsIndex::new();
        for body in &bodies {
            pods::add(&mut index, body).expect("a node's answer");
        }
        let merged: Pods = serde_json::from_slice(&index.to_json()).expect("merged is /v1/pods");
        let keys: Vec<&str> = merged.keys().map(String::as_str).collect();
        assert_eq!(keys, ["db", "team-a/web", "team-b/web", "team-c/cache", "team-d/cache"]);
        assert_eq!(merged["team-b/web"].containers["nginx"].namespace, "team-b");
        assert_eq!(merged["db"].containers.len(), 2, "pg and backup");
        assert_eq!(index.namespaces().len(), 4);
        index.retain(|ns| ns == "team-a");
        let scoped: Pods = serde_json::from_slice(&index.to_json()).expect("json");
        assert_eq!(
            scoped.keys().map(String::as_str).collect::<Vec<_>>(),
            ["db", "web"],
            "keys made over what is shown"
        );
        assert_eq!(pods::PodsIndex::new().to_json(), b"{}");
        let mut bad = pods::PodsIndex::new();
        assert!(pods::add(&mut bad, br#"{"x": {"Containers": 1}}"#).is_err());
        assert!(pods::add(&mut bad, b"[]").is_err());
    }

    fn hook(name: &str, text: &str) -> (String, TraceHook) {
        (name.into(), TraceHook { description: vec![text.into()], name: name.into() })
    }

    #[test]
    fn providers_are_united_in_first_seen_order() {
        let builtin = |hooks: Vec<(String, TraceHook)>| {
            BTreeMap::from([("builtin".to_owned(), Provider { tracers: hooks.into_iter().collect() })])
        };
        let ext = BTreeMap::from([("bcc".to_owned(), Provider { tracers: [hook("opensnoop", "x")].into() })]);
        let a = vec![builtin(vec![hook("trace_syscalls", "first")])];
        let b = vec![ext.clone(), builtin(vec![hook("trace_syscalls", "second"), hook("trace_events", "e")])];
        let merged = trace_hooks([a, b]);
        assert_eq!(merged.len(), 2);
        let names: Vec<&String> = merged.iter().flat_map(|m| m.keys()).collect();
        assert_eq!(names, ["builtin", "bcc"]);
        let b = &merged[0]["builtin"].tracers;
        assert_eq!(b["trace_syscalls"].description, ["first"]);
        assert!(b.contains_key("trace_events"));
    }

    fn info(node: &str, running: bool, pods: &[(&str, &[&str])], output: Option<Vec<&str>>) -> SessionInfo {
        SessionInfo {
            auto_trace: false,
            containers: pods.iter().map(|(p, c)| ((*p).into(), c.iter().map(|s| (*s).into()).collect())).collect(),
            context: "ctx".into(),
            error: None,
            id: "7".into(),
            node: node.into(),
            nodes: None,
            namespace: Some("team-a".into()),
            output: output.map(|o| o.into_iter().map(str::to_owned).collect()),
            running,
            trace_hook: "trace_syscalls".into(),
            trace_params: vec!["-s".into(), "openat".into()],
        }
    }

    #[test]
    fn one_session_on_two_nodes_lists_both_and_unites_its_containers() {
        let same = Some(vec!["ftrace instance container-tracer-7"]);
        let a = info("node-b", false, &[("web-1", &["nginx"])], same.clone());
        let b = info("node-a", true, &[("web-2", &["nginx", "sidecar"])], same);
        let m = session(vec![a.clone(), b.clone()]).expect("merged");
        assert_eq!(m.node, "node-a,node-b");
        assert_eq!(m.nodes.as_deref(), Some(&["node-a".to_owned(), "node-b".to_owned()][..]));
        assert!(m.running, "running on one node");
        assert_eq!(m.containers.len(), 2);
        assert_eq!(m.output.as_deref(), Some(&["ftrace instance container-tracer-7".to_owned()][..]));
        assert_eq!((m.id.as_str(), m.namespace.as_deref()), ("7", Some("team-a")));

        let differing = info("node-c", false, &[], Some(vec!["other"]));
        let m = session(vec![a, differing]).expect("merged");
        let out = m.output.expect("output");
        assert!(out.contains(&"node-b: ftrace instance container-tracer-7".to_owned()), "{out:?}");
        assert!(out.contains(&"node-c: other".to_owned()), "{out:?}");
        assert_eq!(m.error, None);
        assert!(session(Vec::new()).is_none());
    }

    #[test]
    fn stats_sum_and_keep_each_node() {
        let s =
            |read, running| SessionStats { events_read: read, events_lost_kernel: 1, running, ..Default::default() };
        let m = stats([("a".to_owned(), s(10, false)), ("b".to_owned(), s(5, true))]);
        assert_eq!((m.total.events_read, m.total.events_lost_kernel, m.total.running), (15, 2, true));
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(v["events_read"], 15);
        assert_eq!(v["nodes"]["a"]["events_read"], 10);
    }
}
