//! A stop whose ftrace instance the kernel does not let go at once (`rmdir` answers EBUSY while
//! a per-CPU pipe is open) used to hold the session lock for seconds, and with it every `GET`,
//! `/stats` and `/metrics`. The kernel work of a stop is done without that lock now.

use std::{
    fs::File,
    os::unix::fs::OpenOptionsExt,
    time::{Duration, Instant},
};

use e2e::{agent, require, unique, wait_until, Node};
use serde_json::json;

#[test]
fn the_api_answers_while_a_stop_waits_for_the_kernel_to_let_go_of_the_instance() {
    if !require(&[]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let id = node
        .create_session(&json!({"pod": unique("nobody"), "container": "*", "trace-hook": "trace_exec",
                                "wait-for-containers": true}))
        .expect("session");
    node.run_session(&id, true).expect("start");
    let instances = node.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    // Held open here, the pipe keeps the instance busy: the stop's rmdir retries.
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(format!("/sys/kernel/tracing/instances/{}/per_cpu/cpu0/trace_pipe_raw", instances[0]))
        .expect("open the pipe");
    let stop = {
        let url = format!("{}/v1/trace-session/{id}", node.url);
        std::thread::spawn(move || {
            let mut resp = agent().put(&url).content_type("application/json").send(r#"{"Run": false}"#).expect("stop");
            (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
        })
    };
    let mut slowest = Duration::ZERO;
    let polling = Instant::now();
    while polling.elapsed() < Duration::from_millis(1500) {
        for path in [format!("/v1/trace-session/{id}"), format!("/v1/trace-session/{id}/stats"), "/metrics".into()] {
            let started = Instant::now();
            let resp = agent().get(&format!("{}{path}", node.url)).call().expect("answered");
            assert_eq!(resp.status(), 200, "{path}");
            slowest = slowest.max(started.elapsed());
        }
    }
    eprintln!("slowest GET, stats or metrics answer during a stop held by the kernel: {slowest:?}");
    assert!(slowest < Duration::from_millis(1000), "an answer waited {slowest:?} for the stop");
    // Still running: the instance is not gone yet.
    assert_eq!(node.session(&id).expect("session")["Running"], true);
    drop::<File>(pipe);
    let (status, body) = stop.join().expect("stop thread");
    assert_eq!(status, 200, "{body}");
    assert_eq!(node.session(&id).expect("session")["Running"], false);
    assert!(wait_until(Duration::from_secs(5), || node.instances().is_empty()), "{:?}", node.instances());
}
