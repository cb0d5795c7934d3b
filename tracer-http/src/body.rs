//! Request and response bodies of the server loop: a request body with one deadline for all of
//! it, and a response body that marks its connection idle when it is done.

use std::{
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::connections::{Busy, ServerStats};

/// A request body that fails once its deadline passes, however the bytes trickle in.
#[derive(Debug)]
pub(crate) struct DeadlineBody<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    stats: Arc<ServerStats>,
}

/// The error a late body ends with: the handler answers 400 and the connection is closed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub(crate) struct BodyTimeout(Duration);

impl<B> DeadlineBody<B> {
    pub(crate) fn new(inner: B, timeout: Duration, stats: Arc<ServerStats>) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)), timeout, stats }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body holding its connection busy (never closed to make room) until it is
/// written to the end or dropped.
#[derive(Debug)]
pub(crate) struct GuardedBody {
    inner: axum::body::Body,
    _busy: Busy,
}

impl GuardedBody {
    pub(crate) fn new(inner: axum::body::Body, busy: Busy) -> Self {
        Self { inner, _busy: busy }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that never ends: one byte now and then, as a slowloris client sends it.
    struct Drip(Pin<Box<tokio::time::Interval>>);

    impl Body for Drip {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.as_mut().poll_tick(cx).map(|_| Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[tokio::test]
    async fn a_body_dripping_bytes_still_ends_at_its_deadline() {
        let stats = Arc::new(ServerStats::default());
        let drip = Drip(Box::pin(tokio::time::interval(Duration::from_millis(10))));
        let started = std::time::Instant::now();
        let body = DeadlineBody::new(drip, Duration::from_millis(200), stats.clone());
        let err = body.collect().await.expect_err("the deadline ends it");
        assert!(err.to_string().contains("did not arrive within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(stats.body_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_body_that_arrives_in_time_is_passed_through() {
        let stats = Arc::new(ServerStats::default());
        let full = http_body_util::Full::new(Bytes::from_static(b"{}"));
        let body = DeadlineBody::new(full, Duration::from_secs(5), stats.clone());
        assert_eq!(body.collect().await.expect("in time").to_bytes(), Bytes::from_static(b"{}"));
        assert_eq!(stats.body_timeouts.load(Ordering::Relaxed), 0);
    }
}
