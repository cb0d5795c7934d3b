//! `GET /v1/pods`: the registry's workload containers grouped by pod, in the contract's shape.

use std::collections::{BTreeMap, BTreeSet};

use tracer_api::v1::{pod_key, Container, Pods};

use crate::{
    registry::{procfs::Procfs, Entry},
    tasks::TaskTracker,
};

/// Builds the answer from a registry snapshot. Each container's processes and its init's live
/// parent come from the task tracker, as of this call; a container it does not know exactly
/// yet (registered a moment ago, or being read again) is read from its cgroup and procfs.
pub fn build(entries: &[Entry], procfs: &Procfs, tracker: Option<&TaskTracker>) -> Pods {
    let mut workloads: Vec<&Entry> = entries.iter().filter(|e| e.is_workload()).collect();
    // Oldest first, so that the rare name collision below is resolved the same way every time.
    workloads.sort_by(|a, b| (a.record.created_unix_ns, &a.record.id).cmp(&(b.record.created_unix_ns, &b.record.id)));
    // Pod names present in more than one namespace are keyed `<namespace>/<pod>`.
    let mut namespaces_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in &workloads {
        namespaces_of.entry(&e.record.pod).or_default().insert(&e.record.namespace);
    }
    let mut known = tracker.map(|t| t.tasks(workloads.iter().map(|e| e.record.id.as_str()))).unwrap_or_default();
    let mut pods = Pods::new();
    for e in workloads {
        let rec = &e.record;
        let (tasks, parent) = match known.remove(rec.id.as_str()) {
            Some(t) => (t.pids, t.ppid),
            None => {
                (procfs.tasks(rec.pid, e.cgroup.as_deref()), procfs.stat(rec.pid).map(|s| s.ppid).unwrap_or(e.ppid))
            }
        };
        if tasks.is_empty() {
            // The init exited; its watcher is removing it right now.
            continue;
        }
        let qualified = namespaces_of.get(rec.pod.as_str()).is_some_and(|n| n.len() > 1);
        let pod = pods.entry(pod_key(&rec.namespace, &rec.pod, qualified)).or_default();
        // Names are unique within a pod under Kubernetes; two live plain containers can only
        // collide by a hand-made annotation, so the later one gets its id appended.
        let key = if pod.containers.contains_key(&rec.name) {
            format!("{}@{}", rec.name, short_id(&rec.id))
        } else {
            rec.name.clone()
        };
        pod.containers.insert(
            key,
            Container {
                id: rec.name.clone(),
                parent: vec![parent],
                pod: rec.pod.clone(),
                tasks,
                namespace: rec.namespace.clone(),
                container_id: rec.id.clone(),
                runtime: rec.runtime.clone(),
                created_unix_ns: rec.created_unix_ns,
                labels: tracer_spec::annotations::stamped_labels(&rec.annotations),
                owner: tracer_spec::annotations::stamped_owner(&rec.annotations).map(|(k, n)| format!("{k}/{n}")),
            },
        );
    }
    pods
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
