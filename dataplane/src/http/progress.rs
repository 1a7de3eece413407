//! A request's progress, for Envoy's stream idle timeout: a stream that moves no body data in
//! either direction for the timeout (an announced body that never comes, a client that never
//! reads its response, an upstream that never answers) is ended, so that it cannot hold its
//! buffers, its upstream connection and its place forever.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;

/// A client's request body as the request path sees it: counted as progress as it arrives.
pub type Inbound = Tracked<Incoming>;

/// When one request last moved, and whether it was timed out.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the last frame either way.
    last: AtomicU64,
    request_ended: AtomicBool,
    timed_out: AtomicBool,
    cancel: Notify,
    /// The response body waiting on its upstream, woken by a time-out.
    waiting: Mutex<Option<Waker>>,
}

impl Progress {
    /// A request that starts now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            request_ended: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            cancel: Notify::new(),
            waiting: Mutex::new(None),
        })
    }

    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the request started.
    pub fn age(&self) -> Duration {
        self.start.elapsed()
    }

    /// How long since the request last moved.
    pub fn idle(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }

    /// Whether the whole request body has arrived.
    pub fn request_ended(&self) -> bool {
        self.request_ended.load(Ordering::Relaxed)
    }

    /// Ends the request: one still being routed is answered 408 (body incomplete) or 504, a
    /// response being sent fails at its next frame.
    pub fn time_out(&self) {
        self.timed_out.store(true, Ordering::Relaxed);
        // A stored permit: the request path may not be waiting yet.
        self.cancel.notify_one();
        if let Some(w) = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.wake();
        }
    }

    fn wake_on_time_out(&self, waker: &Waker) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if !waiting.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *waiting = Some(waker.clone());
        }
    }

    /// Whether [`Self::time_out`] was called.
    pub fn is_timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Resolves when the request is timed out.
    pub async fn timed_out(&self) {
        self.cancel.notified().await
    }
}

/// The stream was idle for longer than the stream idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout")]
pub struct StreamIdleTimeout;

/// The client's request body, whose frames count as its request's progress.
pub struct Tracked<B> {
    inner: B,
    progress: Arc<Progress>,
}

impl<B: Body> Tracked<B> {
    /// Tracks `inner` as the body of the request `progress` follows.
    pub fn new(inner: B, progress: Arc<Progress>) -> Self {
        // A request without a body (most of them) is complete with its head.
        if inner.is_end_stream() {
            progress.request_ended.store(true, Ordering::Relaxed);
        }
        Self { inner, progress }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.progress.touch(),
            Poll::Ready(None) => this.progress.request_ended.store(true, Ordering::Relaxed),
            _ => {}
        }
        if this.inner.is_end_stream() {
            this.progress.request_ended.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response sent to the client: its frames are progress, and once the request is timed
/// out it fails (hyper then resets the stream, or closes an HTTP/1.1 connection), also while
/// it waits on an upstream that sends nothing. `G` is held until the response is sent or
/// abandoned (the connection's record of the request).
pub struct Sending<B, G = ()> {
    inner: B,
    progress: Arc<Progress>,
    /// False for the answer to a timed-out request (the 408 or 504 itself).
    armed: bool,
    _guard: G,
}

impl<B, G> Sending<B, G> {
    /// Tracks `inner` as the response of the request `progress` follows.
    pub fn new(inner: B, progress: Arc<Progress>, guard: G) -> Self {
        // The response head is progress too.
        progress.touch();
        let armed = !progress.is_timed_out();
        Self { inner, progress, armed, _guard: guard }
    }
}

impl<B, G> Body for Sending<B, G>
where
    B: Body + Unpin,
    G: Unpin,
    B::Error: From<StreamIdleTimeout>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        if this.armed && this.progress.is_timed_out() {
            return Poll::Ready(Some(Err(StreamIdleTimeout.into())));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.progress.touch(),
            Poll::Pending if this.armed => this.progress.wake_on_time_out(cx.waker()),
            _ => {}
        }
        polled
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
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    #[tokio::test]
    async fn frames_are_progress_and_a_timed_out_response_fails_at_its_next_frame() {
        let p = Progress::new();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(p.idle() >= Duration::from_millis(30));
        let frames = futures::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from("a"))),
            Ok(Frame::data(Bytes::from("b"))),
        ]);
        let mut body = Sending::new(StreamBody::new(frames), p.clone(), ());
        body.frame().await.unwrap().unwrap();
        assert!(p.idle() < Duration::from_millis(30), "a frame is progress");
        p.time_out();
        assert!(body.frame().await.unwrap().is_err(), "no further frame once timed out");
        // The stored permit reaches a request path that starts waiting only now.
        tokio::time::timeout(Duration::from_secs(1), p.timed_out()).await.unwrap();
        // The answer to the timed-out request itself is sent whole.
        let mut answer =
            Sending::new(Full::new(Bytes::from("stream timeout")).map_err(|e| -> BoxError { match e {} }), p, ());
        assert_eq!(answer.frame().await.unwrap().unwrap().into_data().unwrap(), "stream timeout");
    }

    #[tokio::test]
    async fn the_request_body_records_its_end() {
        let p = Progress::new();
        let mut body = Tracked::new(Full::new(Bytes::from("x")).map_err(|e| -> BoxError { match e {} }), p.clone());
        assert!(!p.request_ended());
        body.frame().await.unwrap().unwrap();
        assert!(p.request_ended());
    }
}
