//! Clients polling endpoints back to back while something else happens, each answer timed:
//! what the API's latency is during a burst, a start or a stop.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::agent;

/// What one poller saw: the latencies of its 200 answers (sorted) and every other outcome.
#[derive(Debug, Default)]
pub struct Polled {
    /// The path polled.
    pub path: String,
    /// Latencies of the 200 answers, sorted.
    pub latencies: Vec<Duration>,
    /// Non-200 answers and transport errors.
    pub failures: Vec<String>,
}

/// One thread per path, each polling `base + path` until [`Poller::finish`].
pub struct Poller {
    done: Arc<AtomicBool>,
    threads: Vec<(String, JoinHandle<Polled>)>,
}

impl Poller {
    /// Starts polling and returns once every poller is in flight.
    pub fn start(base: &str, paths: &[String]) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let threads = paths
            .iter()
            .map(|path| {
                let (done, url, path2) = (done.clone(), format!("{base}{path}"), path.clone());
                let h = std::thread::spawn(move || {
                    let agent = agent();
                    let mut out = Polled { path: path2.clone(), ..Polled::default() };
                    while !done.load(Ordering::Acquire) {
                        let t = Instant::now();
                        match agent.get(&url).call() {
                            Ok(mut r) if r.status() == 200 => {
                                let _ = r.body_mut().read_to_vec();
                                out.latencies.push(t.elapsed());
                            }
                            Ok(r) => out.failures.push(format!("{path2}: {}", r.status())),
                            Err(e) => out.failures.push(format!("{path2}: {e}")),
                        }
                    }
                    out.latencies.sort();
                    out
                });
                (path.clone(), h)
            })
            .collect();
        // Let every poller have a request in flight first.
        std::thread::sleep(Duration::from_millis(100));
        Self { done, threads }
    }

    /// Stops the pollers and answers what each saw, in the order of the paths.
    pub fn finish(self) -> Vec<Polled> {
        self.done.store(true, Ordering::Release);
        self.threads
            .into_iter()
            .map(|(path, h)| {
                h.join().unwrap_or_else(|_| Polled {
                    path,
                    failures: vec!["poller panicked".into()],
                    ..Polled::default()
                })
            })
            .collect()
    }
}

/// The `p` quantile (0..=1) of sorted durations; zero when there are none.
pub fn quantile(d: &[Duration], p: f64) -> Duration {
    if d.is_empty() {
        return Duration::ZERO;
    }
    d[((d.len() - 1) as f64 * p).round() as usize]
}
