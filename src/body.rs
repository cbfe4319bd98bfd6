//! Body types shared by relay and agent: one boxed body type, and a guard that bounds what a peer
//! may send (total size, and time between frames), so no body is ever buffered whole or waited on
//! forever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::BoxError;

/// The one body type both sides pass around: streamed, boxed, and `Send`.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes already in memory (error pages, small replies).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Box any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Why a guarded body stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// More bytes arrived than the limit allows.
    #[error("request body is larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The peer stopped sending in the middle of a body.
    #[error("no body data received for {0:?}")]
    Idle(Duration),
}

/// Shared record of how a guarded body ended, so the code that forwarded it can answer 413 or 408
/// even when the error surfaced somewhere else (e.g. as a reset HTTP/2 stream).
#[derive(Clone, Default, Debug)]
pub struct BodyOutcome(Arc<AtomicU8>);

impl BodyOutcome {
    const OK: u8 = 0;
    const TOO_LARGE: u8 = 1;
    const IDLE: u8 = 2;
    const BROKEN: u8 = 3;

    /// What went wrong with the body, if anything.
    pub fn failure(&self) -> Option<u8> {
        match self.0.load(Ordering::Acquire) {
            Self::OK => None,
            other => Some(other),
        }
    }

    /// True when the body was cut for being over the size limit.
    pub fn was_too_large(&self) -> bool {
        self.0.load(Ordering::Acquire) == Self::TOO_LARGE
    }

    /// True when the body was cut because the sender went quiet.
    pub fn was_idle(&self) -> bool {
        self.0.load(Ordering::Acquire) == Self::IDLE
    }

    /// True when the body itself failed (malformed chunked framing, a reset stream): the
    /// sender's fault, not the agent's.
    pub fn was_broken(&self) -> bool {
        self.0.load(Ordering::Acquire) == Self::BROKEN
    }

    fn set(&self, err: &BodyError) {
        let code = match err {
            BodyError::TooLarge { .. } => Self::TOO_LARGE,
            BodyError::Idle(_) => Self::IDLE,
        };
        self.0.store(code, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// Wraps a body with a byte limit and an idle timeout: the time the body's producer may
    /// keep its reader waiting for the next frame. Time the reader itself spends elsewhere (its
    /// own peer not reading, flow control) does not count.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        #[pin]
        idle: Sleep,
        idle_timeout: Duration,
        // True from the first poll after a frame until the next frame: the idle clock runs.
        waiting: bool,
        limit: u64,
        seen: u64,
        outcome: BodyOutcome,
    }
}

impl<B> GuardedBody<B> {
    /// Guard `inner`: at most `limit` bytes, and never more than `idle_timeout` between frames.
    pub fn new(inner: B, limit: u64, idle_timeout: Duration) -> (Self, BodyOutcome) {
        let outcome = BodyOutcome::default();
        let body = GuardedBody {
            inner,
            idle: tokio::time::sleep(idle_timeout),
            idle_timeout,
            waiting: false,
            limit,
            seen: 0,
            outcome: outcome.clone(),
        };
        (body, outcome)
    }

    /// Guard `inner` with the idle timeout only (response bodies, whose size is the sender's
    /// business): a producer that stalls for `idle_timeout` ends the body with an error, which
    /// resets its stream and frees what it held.
    pub fn idle_only(inner: B, idle_timeout: Duration) -> Self {
        Self::new(inner, u64::MAX, idle_timeout).0
    }
}

impl<B> HttpBody for GuardedBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if !*this.waiting {
            // The reader is back for more: from now on, waiting is the producer's doing.
            *this.waiting = true;
            let deadline = Instant::now() + *this.idle_timeout;
            this.idle.as_mut().reset(deadline);
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.waiting = false;
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if *this.seen > *this.limit {
                        let err = BodyError::TooLarge { limit: *this.limit };
                        this.outcome.set(&err);
                        return Poll::Ready(Some(Err(err.into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.outcome.0.store(BodyOutcome::BROKEN, Ordering::Release);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.idle.poll(cx));
                let err = BodyError::Idle(*this.idle_timeout);
                this.outcome.set(&err);
                Poll::Ready(Some(Err(err.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Read a whole body into memory, refusing more than `limit` bytes. Only for small bodies whose
/// size we bound (handshake replies, queued webhooks).
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, BoxError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let limited = http_body_util::Limited::new(body, limit);
    Ok(limited.collect().await?.to_bytes())
}

/// Most bytes of an unread request body read (and thrown away) after an early answer.
pub const DRAIN_MAX_BYTES: u64 = 64 * 1024;
/// Longest time spent reading them. Enough for a webhook of a few KB on a slow link; short
/// enough that an early answer never keeps a stream open for long.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

/// An HTTP/2 request body that, if dropped before its end (the request was answered without
/// reading it all: 404, 401, 503, an upstream that is down), is read to its end in the background,
/// up to [`DRAIN_MAX_BYTES`] within [`DRAIN_MAX_TIME`].
///
/// Why: an HTTP/2 server that drops an unfinished request body resets the stream with
/// `RST_STREAM(NO_ERROR)` once its answer is sent, and older libcurl (7.88 on Debian 12, and the PHP
/// senders built on it) then reports "Stream error in the HTTP/2 framing layer" instead of the
/// status. Keeping the stream open until the sender has finished its body avoids the reset.
pub struct DrainOnDrop<B: HttpBody + Unpin + Send + 'static> {
    inner: Option<B>,
    /// Drain on drop (HTTP/2 only: HTTP/1.1 servers deal with an unread body themselves).
    armed: bool,
}

impl<B: HttpBody + Unpin + Send + 'static> DrainOnDrop<B> {
    /// Wrap `inner`; it is drained on drop only when `armed`.
    pub fn new(inner: B, armed: bool) -> Self {
        DrainOnDrop {
            inner: Some(inner),
            armed,
        }
    }
}

impl<B: HttpBody + Unpin + Send + 'static> HttpBody for DrainOnDrop<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // Ended or failed: nothing left to drain.
            this.armed = false;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

impl<B: HttpBody + Unpin + Send + 'static> Drop for DrainOnDrop<B> {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else { return };
        if !self.armed || body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body, DRAIN_MAX_BYTES, DRAIN_MAX_TIME));
        }
    }
}

/// Read and discard `body` until it ends, fails, passes `max_bytes`, or `max_time` runs out.
async fn drain<B: HttpBody + Unpin>(mut body: B, max_bytes: u64, max_time: Duration) {
    let read = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += bytes::Buf::remaining(data) as u64;
                if seen > max_bytes {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(max_time, read).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn limit_cuts_the_body_and_records_it() {
        let (body, outcome) =
            GuardedBody::new(Full::new(Bytes::from(vec![0u8; 11])), 10, Duration::from_secs(5));
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("10-byte limit"), "{err}");
        assert!(outcome.was_too_large());
    }

    #[tokio::test]
    async fn a_body_at_the_limit_passes() {
        let (body, outcome) =
            GuardedBody::new(Full::new(Bytes::from(vec![0u8; 10])), 10, Duration::from_secs(5));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        assert_eq!(outcome.failure(), None);
    }

    #[tokio::test]
    async fn a_failing_body_is_recorded_as_broken() {
        let stream = futures_util::stream::iter([Err::<Frame<Bytes>, BoxError>("invalid chunk size".into())]);
        let (body, outcome) = GuardedBody::new(StreamBody::new(stream), 10, Duration::from_secs(5));
        assert!(body.collect().await.is_err());
        assert!(outcome.was_broken());
        assert!(!outcome.was_too_large() && !outcome.was_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_away_is_not_idle_time() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|f| (f, rx)) });
        let (body, outcome) = GuardedBody::new(StreamBody::new(stream), 100, Duration::from_secs(30));
        let mut body = Box::pin(body);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // The reader is held up (its own peer is slow) far longer than the idle timeout...
        tokio::time::sleep(Duration::from_secs(120)).await;
        // ...then asks for more, and the producer answers within the timeout.
        let later = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            later
                .send(Ok(Frame::data(Bytes::from_static(b"two"))))
                .await
                .unwrap();
        });
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "two");
        assert_eq!(outcome.failure(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_sender_times_out() {
        let stream = futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>();
        let (body, outcome) = GuardedBody::new(StreamBody::new(stream), 10, Duration::from_secs(30));
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("30s"), "{err}");
        assert!(outcome.was_idle());
    }

    type Chunks = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

    /// A body fed chunk by chunk through a channel of one slot: a send completes only once the
    /// chunk before it was read, and fails once nobody reads any more.
    fn fed() -> (
        Chunks,
        impl HttpBody<Data = Bytes, Error = BoxError> + Unpin + Send + 'static,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let chunks = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, StreamBody::new(chunks))
    }

    #[tokio::test]
    async fn an_unfinished_body_dropped_is_read_to_its_end() {
        let (tx, body) = fed();
        drop(DrainOnDrop::new(body, true));
        for _ in 0..4 {
            tx.send(Ok(Frame::data(Bytes::from(vec![0u8; 1000]))))
                .await
                .unwrap();
        }
        drop(tx);
    }

    #[tokio::test]
    async fn draining_stops_past_its_byte_limit_and_when_not_armed() {
        let (tx, body) = fed();
        drop(DrainOnDrop::new(body, true));
        let chunk = Bytes::from(vec![0u8; 16 * 1024]);
        let mut sent = 0u64;
        while tx.send(Ok(Frame::data(chunk.clone()))).await.is_ok() {
            sent += chunk.len() as u64;
            assert!(
                sent <= DRAIN_MAX_BYTES + 2 * chunk.len() as u64,
                "still draining at {sent}"
            );
        }
        let (tx, body) = fed();
        drop(DrainOnDrop::new(body, false));
        assert!(tx.is_closed());
    }
}
