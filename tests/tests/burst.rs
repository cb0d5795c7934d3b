//! A burst of container starts must not stall the API: registrations (pidfd, procfs and cgroup
//! reads, the state file, the pid filters of every matching running session) run off the async
//! workers, so `/healthz` and `/v1/pods` keep answering while hundreds arrive at once.
//! The latencies are printed here and reported by `scripts/bench.sh`; this test asserts what must
//! hold whatever the machine's speed: every registration is accepted, every poll answered, every
//! matching running session attached to every container.

use e2e::{
    poller::quantile,
    require,
    standin::{registration_burst, start_while_registering, StandIn},
    unique, Node,
};
use serde_json::json;

const CONTAINERS: usize = 200;
const SESSIONS: usize = 4;
/// Containers that register while a session over [`CONTAINERS`] others starts.
const DURING_START: usize = 50;

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn two_hundred_containers_registering_at_once_leave_the_api_answering_and_every_session_attached() {
    if !require(&["unshare"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let prefix = unique("burst");
    let sessions: Vec<String> = (0..SESSIONS)
        .map(|_| {
            let sid = node
                .create_session(&json!({"pod": format!("{prefix}-*"), "container": "*", "trace-hook": "trace_exec",
                                           "wait-for-containers": true}))
                .expect("session");
            node.run_session(&sid, true).expect("start");
            sid
        })
        .collect();
    let standins: Vec<StandIn> =
        (0..CONTAINERS).map(|i| StandIn::start(&format!("{prefix}-{i}")).expect("stand-in")).collect();
    let burst = registration_burst(&node, &standins, &prefix);
    let metrics = e2e::agent()
        .get(&format!("{}/metrics", node.url))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics");
    let late = metrics.lines().find(|l| l.starts_with("container_tracer_late_attachments_total")).unwrap_or("?");
    println!(
        "{CONTAINERS} registrations at once with {SESSIONS} matching running sessions: all answered in {:.0} ms \
         (p50 {:.1} ms, p99 {:.1} ms; {late}); /healthz {} polls p99 {:.1} ms max {:.1} ms; \
         /v1/pods {} polls p99 {:.1} ms max {:.1} ms",
        ms(burst.wall),
        ms(quantile(&burst.registrations, 0.5)),
        ms(quantile(&burst.registrations, 0.99)),
        burst.healthz.len(),
        ms(quantile(&burst.healthz, 0.99)),
        ms(quantile(&burst.healthz, 1.0)),
        burst.pods.len(),
        ms(quantile(&burst.pods, 0.99)),
        ms(quantile(&burst.pods, 1.0)),
    );
    assert!(burst.failures.is_empty(), "failed during the burst: {:?}", burst.failures);
    assert_eq!(burst.registrations.len(), CONTAINERS);
    assert!(!burst.healthz.is_empty() && !burst.pods.is_empty(), "the pollers got answers during the burst");
    let pods = node.pods().expect("pods");
    let listed = pods.as_object().expect("object").keys().filter(|k| k.starts_with(&prefix)).count();
    assert_eq!(listed, CONTAINERS, "every container listed");
    for sid in &sessions {
        let s = node.session(sid).expect("session");
        let attached = s["Containers"].as_object().map_or(0, |o| o.len());
        assert_eq!(attached, CONTAINERS, "session {sid} attached to every container: {s}");
    }
    drop(standins);
    assert!(
        e2e::wait_until(std::time::Duration::from_secs(10), || node
            .pods()
            .is_ok_and(|p| !p.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with(&prefix))))),
        "the exit watcher removed every stand-in"
    );
}

/// A start reads the threads of every container and writes the first pid filter without the
/// session's lock, after publishing the run: a container registering meanwhile is attached by its
/// registration or by the start, and in the filter either way; GET and stats keep answering.
#[test]
fn a_start_over_two_hundred_containers_filters_each_one_and_every_one_registering_meanwhile() {
    if !require(&["unshare"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let prefix = unique("start");
    let standins: Vec<StandIn> =
        (0..CONTAINERS).map(|i| StandIn::start(&format!("{prefix}-{i}")).expect("stand-in")).collect();
    let before = registration_burst(&node, &standins, &prefix);
    assert!(before.failures.is_empty(), "{:?}", before.failures);
    let sid = node
        .create_session(
            &serde_json::json!({"pod": format!("{prefix}-*"), "container": "*", "trace-hook": "trace_exec"}),
        )
        .expect("session");
    let late: Vec<StandIn> =
        (0..DURING_START).map(|i| StandIn::start(&format!("{prefix}-late-{i}")).expect("stand-in")).collect();
    let run = start_while_registering(&node, &sid, &late, &format!("{prefix}-late"));
    for p in &run.polled {
        println!(
            "during the start ({:.0} ms, {CONTAINERS} containers, {DURING_START} registering): GET {} {} answers, \
             p99 {:.1} ms, max {:.1} ms",
            ms(run.start),
            p.path,
            p.latencies.len(),
            ms(quantile(&p.latencies, 0.99)),
            ms(quantile(&p.latencies, 1.0)),
        );
        assert!(p.failures.is_empty(), "{} failed during the start: {:?}", p.path, p.failures);
        assert!(!p.latencies.is_empty(), "{} answered during the start", p.path);
    }
    let refused: Vec<&String> = run.registrations.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(refused.is_empty(), "registrations during the start: {refused:?}");
    let s = node.session(&sid).expect("session");
    assert_eq!(s["Running"], true, "{s}");
    let attached = s["Containers"].as_object().map_or(0, |o| o.len());
    assert_eq!(attached, CONTAINERS + DURING_START, "every container attached: {s}");
    let instance = s["Output"][0].as_str().and_then(|o| o.strip_prefix("ftrace instance ")).expect("instance name");
    let filter = std::fs::read_to_string(format!("/sys/kernel/tracing/instances/{instance}/set_event_pid"))
        .expect("set_event_pid");
    let filtered: std::collections::HashSet<u32> = filter.split_whitespace().filter_map(|t| t.parse().ok()).collect();
    let missing: Vec<&str> =
        standins.iter().chain(&late).filter(|st| !filtered.contains(&st.pid)).map(|st| st.id.as_str()).collect();
    assert!(missing.is_empty(), "{} containers' inits not in the pid filter: {missing:?}", missing.len());
    let (status, body) = node.call("DELETE", &format!("/v1/trace-session/{sid}"), None).expect("DELETE");
    assert_eq!(status, 200, "{body}");
    assert!(node.instances().is_empty(), "instance removed: {:?}", node.instances());
}
