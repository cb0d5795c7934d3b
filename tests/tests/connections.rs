//! Connection floods against a real tracer-node: 2,000 idle connections, with the daemon's fd
//! limit at systemd's 1,024 (hard, so it cannot be raised) or with room to raise it, leave
//! `/healthz` and hook registration working, and the daemon never runs out of fds.

use std::{
    io::Read,
    net::TcpStream,
    time::{Duration, Instant},
};

use e2e::{agent, containerd_annotations, require, unique, Bundle, Node, Runtime};

const HELD: usize = 2000;

/// Lets this test process hold `HELD` connections whatever its soft limit.
fn raise_own_fd_limit() {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = l.maximum.unwrap_or(1 << 20);
    assert!(hard >= HELD as u64 + 512, "the test needs a hard fd limit above {}", HELD + 512);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: Some(hard), maximum: l.maximum },
    )
    .expect("raise the soft fd limit");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn soft_fd_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("nofile line");
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).expect("soft limit")
}

fn metric(node: &Node, name: &str) -> u64 {
    let text = agent().get(&format!("{}/metrics", node.url)).call().expect("metrics").body_mut().read_to_string();
    let text = text.expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// `/healthz` over new connections, `n` times: every answer 200, and the p99 latency.
fn healthz_p99(node: &Node, n: usize) -> Duration {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        // A fresh client each time: a new connection, as a kubelet probe makes.
        let resp = agent().get(&format!("{}/healthz", node.url)).call().expect("healthz answered");
        assert_eq!(resp.status(), 200);
        took.push(started.elapsed());
    }
    took.sort();
    took[(n * 99).div_ceil(100) - 1]
}

/// Holds `HELD` idle connections to `node` (the kernel completes them; the daemon decides what
/// to keep) and checks that the API and the registry socket still work.
fn flood(node: &Node, rt: &Runtime) -> Vec<TcpStream> {
    let held: Vec<TcpStream> = (0..HELD)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", node.port())).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    // Let the daemon accept them all.
    std::thread::sleep(Duration::from_millis(500));
    let p99 = healthz_p99(node, 100);
    eprintln!("healthz p99 with {HELD} idle connections held: {p99:?}");
    assert!(p99 < Duration::from_secs(2), "healthz p99 {p99:?}");

    // A container starts meanwhile: its hook registers it at once (no spool).
    let id = unique("ct-conns");
    let pod = unique("conns");
    let bundle = Bundle::new(&["sleep", "300"], &containerd_annotations(&pod, "ns", "app"), Bundle::hooks_for(node))
        .expect("bundle");
    rt.create(&id, &bundle).expect("create");
    let listed = node.container(&pod, "app").expect("pods");
    assert!(listed.is_some(), "not registered during the flood:\n{}", node.log());
    assert_eq!(std::fs::read_dir(node.spool()).map(|d| d.count()).unwrap_or(0), 0, "nothing spooled");
    rt.delete(&id).expect("delete");
    rt.keep(bundle);
    let log = node.log();
    assert!(!log.contains("Too many open files"), "the daemon ran out of fds:\n{log}");
    held
}

/// Connections of `held` the daemon has closed (they are non-blocking: an open idle one would
/// block, a closed one reads end-of-file or a reset).
fn closed(held: &[TcpStream]) -> usize {
    held.iter()
        .filter(|s| {
            let mut b = [0u8; 1];
            // `Read` is implemented for `&TcpStream`.
            match (&mut &**s).read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            }
        })
        .count()
}

#[test]
fn idle_connections_beyond_a_hard_fd_limit_of_1024_are_shed_and_the_daemon_keeps_working() {
    if !require(&["runc", "prlimit"]) {
        return;
    }
    raise_own_fd_limit();
    let node = Node::start_wrapped(&["prlimit", "--nofile=1024:1024"], &[], &[]).expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    assert_eq!(soft_fd_limit(node.pid()), 1024, "the hard limit keeps it");
    let held = flood(&node, &rt);
    let fds = open_fds(node.pid());
    assert!(fds < 1024 * 3 / 4, "the connection cap keeps fds in reserve: {fds} open");
    let shed = metric(&node, "container_tracer_http_connections_closed_total{reason=\"idle_at_cap\"}");
    assert!(shed >= (HELD - 256) as u64, "idle connections closed to make room: {shed}");
    assert!(closed(&held) >= HELD - 256, "the client sees them closed");
    eprintln!("hard limit 1024: {fds} fds open, {shed} idle connections closed at the cap");
}

#[test]
fn the_daemon_raises_its_soft_fd_limit_and_holds_2000_idle_connections() {
    if !require(&["runc", "prlimit"]) {
        return;
    }
    raise_own_fd_limit();
    let node = Node::start_wrapped(
        &["prlimit", "--nofile=1024:16384"],
        // Idle connections are held for the whole test, however slow the machine.
        &["--http-header-timeout-secs", "300"],
        &[],
    )
    .expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    assert_eq!(soft_fd_limit(node.pid()), 16384, "raised to the hard limit at start-up");
    let held = flood(&node, &rt);
    let open = metric(&node, "container_tracer_http_connections");
    assert!(open >= HELD as u64, "all held: {open}");
    assert_eq!(metric(&node, "container_tracer_http_connections_closed_total{reason=\"idle_at_cap\"}"), 0);
    assert_eq!(closed(&held), 0);
    eprintln!("soft limit raised to 16384: {} fds open, {open} connections", open_fds(node.pid()));
}
