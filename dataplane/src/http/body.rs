//! Request bodies stream from client to upstream as they arrive; nothing waits for the end of a
//! body. So that a retry or a mirror can resend what was sent, the proxy records a bounded copy
//! of what it forwarded ([`Replay`]), as Envoy does: once a body outgrows the per-request limit
//! (Envoy's default buffer limit, 1 MiB) or the proxy-wide [`BufferBudget`] is spent, recording
//! stops, the request keeps streaming, and it is no longer retried or mirrored
//! (`retry_or_shadow_abandoned`). Memory per request is therefore bounded by the limit, and in
//! total by the budget, however large or slow the bodies are.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::{
    HeaderMap,
    body::{Body, Frame, SizeHint},
};
use tokio::sync::Notify;

use super::progress::Inbound;

/// Error type of request bodies sent upstream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Envoy's default per-request buffer limit: the most of one request body kept for a retry or
/// a mirror.
pub const REPLAY_LIMIT: usize = 1024 * 1024;
/// Default proxy-wide budget for recorded request bodies.
pub const DEFAULT_BUFFER_BUDGET: usize = 64 * 1024 * 1024;

/// The bytes all requests together may hold for retries and mirrors.
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicUsize::new(0) })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(n).filter(|t| *t <= self.limit))
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A request body as sent upstream.
pub enum RequestBody {
    /// Known to be empty, or a body the proxy made itself (a mirror's copy).
    Bytes(Option<Bytes>, Option<HeaderMap>),
    /// The client's body, streamed as is (paths that never resend).
    Direct(Inbound),
    /// The client's body through a [`Replay`] recording.
    Replay(ReplayReader),
}

impl RequestBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self::Bytes(None, None)
    }

    /// A body of `b`.
    pub fn bytes(b: Bytes) -> Self {
        Self::Bytes(Some(b).filter(|b| !b.is_empty()), None)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Bytes(data, trailers) => {
                Poll::Ready(data.take().map(Frame::data).or_else(|| trailers.take().map(Frame::trailers)).map(Ok))
            }
            Self::Direct(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Replay(r) => r.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Bytes(d, t) => d.is_none() && t.is_none(),
            Self::Direct(b) => b.is_end_stream(),
            Self::Replay(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Bytes(d, _) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Direct(b) => b.size_hint(),
            Self::Replay(r) => r.size_hint(),
        }
    }
}

/// What a recording holds, shared by the request path and the body being sent now.
struct State {
    /// The client's body; `None` once it ended.
    source: Option<Inbound>,
    /// The body's declared size, for the readers' size hints.
    hint: SizeHint,
    /// Data forwarded so far, while recording.
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    /// Bytes in `chunks` (taken from the budget).
    recorded: usize,
    /// Recording was abandoned: the body cannot be sent again.
    abandoned: bool,
    /// The client's body ended (cleanly).
    ended: bool,
    /// The client's body failed (reset, malformed): nothing can be sent again.
    failed: bool,
    /// Only the newest reader may read: an earlier try's body, still held by its upstream
    /// connection, fails instead of taking data the retry needs.
    generation: u64,
    budget: Arc<BufferBudget>,
    limit: usize,
}

impl State {
    fn abandon(&mut self) {
        self.abandoned = true;
        self.chunks = Vec::new();
        self.budget.give(std::mem::take(&mut self.recorded));
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.budget.give(self.recorded);
    }
}

/// The client's body, with a bounded record of what was forwarded so it can be sent again.
#[derive(Clone)]
pub struct Replay {
    state: Arc<Mutex<State>>,
    /// Wakes a mirror waiting for the body to end.
    done: Arc<Notify>,
}

/// Why a body could not be sent again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    /// It outgrew the per-request limit or the proxy's budget (`retry_or_shadow_abandoned`).
    #[error("request body too large to resend")]
    Abandoned,
    /// The client's body failed, or did not end in time.
    #[error("request body incomplete")]
    Incomplete,
}

impl Replay {
    /// Records `body`, keeping at most `limit` bytes of it from `budget`.
    pub fn new(body: Inbound, limit: usize, budget: Arc<BufferBudget>) -> Self {
        let state = State {
            hint: body.size_hint(),
            source: Some(body),
            chunks: Vec::new(),
            trailers: None,
            recorded: 0,
            abandoned: false,
            ended: false,
            failed: false,
            generation: 0,
            budget,
            limit,
        };
        Self { state: Arc::new(Mutex::new(state)), done: Arc::new(Notify::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A body that sends what was recorded, then the rest of the client's body; earlier
    /// readers stop. `Err` when what was already forwarded is no longer all held.
    pub fn reader(&self) -> Result<ReplayReader, ReplayError> {
        let mut s = self.lock();
        if s.failed {
            return Err(ReplayError::Incomplete);
        }
        if s.abandoned {
            return Err(ReplayError::Abandoned);
        }
        s.generation += 1;
        Ok(ReplayReader { state: self.state.clone(), done: self.done.clone(), generation: s.generation, next: 0 })
    }

    /// The whole body once the client has sent it (for a mirror), or why it cannot be had.
    pub async fn complete(&self) -> Result<(Bytes, Option<HeaderMap>), ReplayError> {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                if s.abandoned {
                    return Err(ReplayError::Abandoned);
                }
                if s.failed {
                    return Err(ReplayError::Incomplete);
                }
                if s.ended {
                    let mut all = BytesMut::with_capacity(s.recorded);
                    s.chunks.iter().for_each(|c| all.extend_from_slice(c));
                    return Ok((all.freeze(), s.trailers.clone()));
                }
            }
            notified.await;
        }
    }

    /// Stops recording: nothing will be resent (the response is on its way). Frees the copy.
    pub fn release(&self) {
        let mut s = self.lock();
        if !s.abandoned {
            s.abandon();
        }
        drop(s);
        self.done.notify_waiters();
    }
}

/// One try's view of a [`Replay`].
pub struct ReplayReader {
    state: Arc<Mutex<State>>,
    done: Arc<Notify>,
    generation: u64,
    /// Index of the next recorded chunk to send.
    next: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("request body taken over by a retry")]
struct Superseded;

impl ReplayReader {
    fn size_hint(&self) -> SizeHint {
        self.state.lock().map(|s| s.hint).unwrap_or_default()
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        if s.generation != self.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(chunk) = s.chunks.get(self.next) {
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        let Some(source) = s.source.as_mut() else {
            // Ended earlier: the trailers, once, then the end.
            let trailers = (self.next == s.chunks.len()).then(|| s.trailers.clone()).flatten();
            self.next = usize::MAX;
            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
        };
        let polled = Pin::new(source).poll_frame(cx);
        let mut finished = false;
        let out = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                s.source = None;
                self.next = usize::MAX;
                finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.failed = true;
                s.source = None;
                s.abandon();
                finished = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !s.abandoned {
                        let fits = s.recorded + data.len() <= s.limit && s.budget.take(data.len());
                        if fits {
                            s.recorded += data.len();
                            s.chunks.push(data.clone());
                            self.next = s.chunks.len();
                        } else {
                            s.abandon();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    self.next = usize::MAX;
                }
                // A sender that knows the length stops polling at the last byte: the end is
                // known now, not at a next poll that may never come.
                if s.source.as_ref().is_some_and(Body::is_end_stream) {
                    s.ended = true;
                    s.source = None;
                    finished = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        };
        drop(guard);
        if finished {
            self.done.notify_waiters();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    //! The body's behaviour over a real hyper connection (an `Incoming` cannot be made
    //! otherwise): a client streams chunks to a server whose handler records them.

    use std::time::Duration;

    use http_body_util::{BodyExt, StreamBody};
    use hyper::{Request, Response, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    type Frames = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

    /// A request whose body the test feeds frame by frame, and the server side's `Incoming`.
    async fn incoming() -> (Frames, Inbound) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (got_tx, got_rx) = oneshot::channel();
        let got_tx = Arc::new(Mutex::new(Some(got_tx)));
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let tx = got_tx.lock().unwrap().take();
                async move {
                    if let Some(tx) = tx {
                        let _ = tx.send(req.into_body());
                    }
                    // Keep the connection (and so the body) alive while the test reads it.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, std::convert::Infallible>(Response::new(String::new()))
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(server_io), svc).await;
        });
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io)).await.unwrap();
        tokio::spawn(conn);
        let (tx, rx) = mpsc::channel(16);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        // hyper sends HTTP/1.1 trailers only when the head announces them.
        let req = Request::post("/")
            .header("transfer-encoding", "chunked")
            .header("te", "trailers")
            .header("trailer", "grpc-status")
            .body(body)
            .unwrap();
        tokio::spawn(async move {
            let _ = sender.send_request(req).await;
        });
        (tx, Inbound::new(got_rx.await.unwrap(), super::super::progress::Progress::new()))
    }

    async fn next_data(body: &mut RequestBody) -> Option<Bytes> {
        let f = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("a frame in time")?;
        Some(f.unwrap().into_data().unwrap())
    }

    #[tokio::test]
    async fn data_is_forwarded_before_the_body_ends_and_a_retry_replays_then_continues() {
        let (tx, body) = incoming().await;
        let budget = BufferBudget::new(1 << 20);
        let replay = Replay::new(body, 1024, budget.clone());
        let mut first = RequestBody::Replay(replay.reader().unwrap());
        tx.send(Ok(Frame::data(Bytes::from_static(b"one")))).await.unwrap();
        // Streaming: the first chunk is out while the client is still sending.
        assert_eq!(next_data(&mut first).await.unwrap(), "one");
        assert_eq!(budget.used(), 3);
        // A retry: what was forwarded comes first, then the rest of the client's body.
        let mut second = RequestBody::Replay(replay.reader().unwrap());
        assert!(first.frame().await.unwrap().is_err(), "the superseded try must stop");
        assert_eq!(next_data(&mut second).await.unwrap(), "one");
        tx.send(Ok(Frame::data(Bytes::from_static(b"two")))).await.unwrap();
        assert_eq!(next_data(&mut second).await.unwrap(), "two");
        drop(tx);
        assert!(second.frame().await.is_none(), "the client's end is the body's end");
        assert_eq!(replay.complete().await.unwrap().0, "onetwo");
        drop((first, second, replay));
        assert_eq!(budget.used(), 0, "the copy is returned to the budget");
    }

    #[tokio::test]
    async fn past_the_limit_the_body_still_streams_but_cannot_be_resent() {
        let (tx, body) = incoming().await;
        let budget = BufferBudget::new(1 << 20);
        let replay = Replay::new(body, 4, budget.clone());
        let mut first = RequestBody::Replay(replay.reader().unwrap());
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc")))).await.unwrap();
        assert_eq!(next_data(&mut first).await.unwrap(), "abc");
        tx.send(Ok(Frame::data(Bytes::from_static(b"def")))).await.unwrap();
        assert_eq!(next_data(&mut first).await.unwrap(), "def");
        assert_eq!(budget.used(), 0, "the copy is freed when recording stops");
        assert_eq!(replay.reader().err(), Some(ReplayError::Abandoned));
        assert_eq!(replay.complete().await.err(), Some(ReplayError::Abandoned));
        drop(tx);
        assert!(first.frame().await.is_none());
    }

    #[tokio::test]
    async fn the_proxy_wide_budget_bounds_all_recordings_together() {
        let budget = BufferBudget::new(5);
        let (tx_a, a) = incoming().await;
        let (tx_b, b) = incoming().await;
        let (ra, rb) = (Replay::new(a, 1024, budget.clone()), Replay::new(b, 1024, budget.clone()));
        let (mut a, mut b) = (RequestBody::Replay(ra.reader().unwrap()), RequestBody::Replay(rb.reader().unwrap()));
        tx_a.send(Ok(Frame::data(Bytes::from_static(b"1234")))).await.unwrap();
        assert_eq!(next_data(&mut a).await.unwrap(), "1234");
        tx_b.send(Ok(Frame::data(Bytes::from_static(b"5678")))).await.unwrap();
        assert_eq!(next_data(&mut b).await.unwrap(), "5678", "over budget, the body still streams");
        assert_eq!(budget.used(), 4);
        assert!(ra.reader().is_ok());
        assert_eq!(rb.reader().err(), Some(ReplayError::Abandoned));
    }

    #[tokio::test]
    async fn a_mirror_gets_the_whole_body_with_its_trailers_once_the_client_is_done() {
        let (tx, body) = incoming().await;
        let replay = Replay::new(body, 1024, BufferBudget::new(1024));
        let mut first = RequestBody::Replay(replay.reader().unwrap());
        let mirror = tokio::spawn({
            let replay = replay.clone();
            async move { replay.complete().await }
        });
        tx.send(Ok(Frame::data(Bytes::from_static(b"grpc")))).await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(tx);
        assert_eq!(next_data(&mut first).await.unwrap(), "grpc");
        let t = first.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert!(first.frame().await.is_none());
        let (data, trailers) = tokio::time::timeout(Duration::from_secs(5), mirror).await.unwrap().unwrap().unwrap();
        assert_eq!(data, "grpc");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_released_recording_frees_its_copy_and_stops_a_waiting_mirror() {
        let (tx, body) = incoming().await;
        let budget = BufferBudget::new(1024);
        let replay = Replay::new(body, 1024, budget.clone());
        let mut first = RequestBody::Replay(replay.reader().unwrap());
        tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        assert_eq!(next_data(&mut first).await.unwrap(), "x");
        let mirror = tokio::spawn({
            let replay = replay.clone();
            async move { replay.complete().await }
        });
        tokio::task::yield_now().await;
        replay.release();
        assert_eq!(budget.used(), 0);
        let got = tokio::time::timeout(Duration::from_secs(5), mirror).await.unwrap().unwrap();
        assert_eq!(got.err(), Some(ReplayError::Abandoned));
    }
}
