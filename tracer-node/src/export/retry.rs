//! Sending to the collector with retries.

use std::{
    sync::{atomic::Ordering, Mutex},
    time::{Duration, Instant},
};

use tracing::warn;

use super::{transport::SendError, WARN_EVERY};
use crate::metrics::Metrics;

/// Sends with retries (exponential backoff from 200 ms to 5 s, or the server's Retry-After)
/// until `deadline`.
pub(super) async fn send<F, Fut>(
    mut attempt: F,
    deadline: Instant,
    metrics: &Metrics,
    warned: &Mutex<Option<Instant>>,
    session: u64,
) -> Result<u64, SendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, SendError>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(rejected) => {
                metrics.export_request_successes.fetch_add(1, Ordering::Relaxed);
                return Ok(rejected);
            }
            Err(e) => {
                metrics.export_request_failures.fetch_add(1, Ordering::Relaxed);
                let wait = e.retry_after.unwrap_or(backoff).min(Duration::from_secs(30));
                if !e.retryable || Instant::now() + wait >= deadline {
                    return Err(e);
                }
                // Decided under the lock, logged after it (the requests in flight share it).
                let warn_now = {
                    let mut last = warned.lock().unwrap_or_else(|p| p.into_inner());
                    let due = last.is_none_or(|t| t.elapsed() >= WARN_EVERY);
                    if due {
                        *last = Some(Instant::now());
                    }
                    due
                };
                if warn_now {
                    warn!(session, error = %e, "OTLP export failed; retrying (new events queue meanwhile, bounded)");
                }
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
