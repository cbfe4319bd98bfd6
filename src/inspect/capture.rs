//! What the inspector shows: a bounded ring of recent exchanges, filled by one wrapper around
//! every origin of the agent ([`CaptureLayer`]). Bodies are copied as they stream past, up to a
//! cap each, so nothing is ever buffered whole or held back; the exchange itself is unchanged.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::body_view::{BODY_CAP, BodyEnd, Captured};
use super::metrics::AgentMetrics;
use crate::BoxError;
use crate::agent::{Origin, OriginLayer};
use crate::body::{self, Body};

/// Exchanges kept; the oldest goes when a new one arrives.
pub const RING: usize = 100;

/// Marks a request sent by the inspector's replay: the id of the exchange it repeats.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOf(pub u64);

/// Put in the response by the capture: the id the exchange was recorded under.
#[derive(Debug, Clone, Copy)]
pub struct CapturedAs(pub u64);

/// The recent exchanges, shared by the capture and the inspector's pages.
pub struct Recorder {
    ring: Mutex<VecDeque<Arc<Exchange>>>,
    next_id: AtomicU64,
    metrics: Arc<AgentMetrics>,
}

impl Recorder {
    /// An empty ring whose exchanges are also counted in `metrics`.
    pub fn new(metrics: Arc<AgentMetrics>) -> Arc<Self> {
        Arc::new(Recorder {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            next_id: AtomicU64::new(1),
            metrics,
        })
    }

    /// The layer that wraps every origin of the ingress table.
    pub fn layer(self: &Arc<Self>) -> CaptureLayer {
        CaptureLayer(self.clone())
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Arc<Exchange>> {
        lock(&self.ring).iter().rev().cloned().collect()
    }

    /// One exchange, while it is still in the ring.
    pub fn get(&self, id: u64) -> Option<Arc<Exchange>> {
        lock(&self.ring).iter().find(|e| e.id == id).cloned()
    }

    fn start(&self, req: &Request<Body>, origin: String) -> Arc<Exchange> {
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(String::from)
            })
            .unwrap_or_default();
        let exchange = Arc::new(Exchange {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            replay_of: req.extensions().get::<ReplayOf>().map(|r| r.0),
            at: SystemTime::now(),
            started: Instant::now(),
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "/".into()),
            host,
            origin,
            request_headers: req.headers().clone(),
            state: Mutex::new(ExchangeState::default()),
        });
        let mut ring = lock(&self.ring);
        if ring.len() >= RING {
            ring.pop_front();
        }
        ring.push_back(exchange.clone());
        exchange
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One request and its response, as far as they have got.
pub struct Exchange {
    /// Its number in this agent's run (1, 2, …).
    pub id: u64,
    /// The exchange this one replays, if it is a replay.
    pub replay_of: Option<u64>,
    /// When the request reached the agent.
    pub at: SystemTime,
    started: Instant,
    /// Request method.
    pub method: String,
    /// The request URI as the agent received it (public host, path and query).
    pub uri: String,
    /// Path and query.
    pub path: String,
    /// The public host the request was for.
    pub host: String,
    /// The origin that answered (`http://localhost:8000`).
    pub origin: String,
    /// Request headers as the agent received them.
    pub request_headers: HeaderMap,
    state: Mutex<ExchangeState>,
}

/// The parts of an exchange that arrive while it runs.
#[derive(Default, Clone)]
pub struct ExchangeState {
    /// The request body so far.
    pub request_body: Captured,
    /// Status, headers and time to the response head, once the origin answered.
    pub response: Option<ResponseHead>,
    /// The response body so far.
    pub response_body: Captured,
    /// Time from the request to the end of the response body.
    pub duration: Option<Duration>,
}

/// A response head.
#[derive(Clone)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Time from the request to these headers.
    pub after: Duration,
}

impl Exchange {
    /// A copy of the parts that change while the exchange runs.
    pub fn state(&self) -> ExchangeState {
        lock(&self.state).clone()
    }
}

// === the capture ===

/// Wraps each origin in [`CapturingOrigin`].
pub struct CaptureLayer(Arc<Recorder>);

impl OriginLayer for CaptureLayer {
    fn wrap(&self, inner: Arc<dyn Origin>) -> Arc<dyn Origin> {
        Arc::new(CapturingOrigin {
            inner,
            recorder: self.0.clone(),
        })
    }
}

/// An origin that records every exchange it serves, then lets it through unchanged.
pub struct CapturingOrigin {
    inner: Arc<dyn Origin>,
    recorder: Arc<Recorder>,
}

impl Origin for CapturingOrigin {
    fn serve(self: Arc<Self>, req: Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(async move {
            let exchange = self.recorder.start(&req, self.inner.describe());
            let metrics = self.recorder.metrics.clone();
            let req = req.map(|b| {
                body::boxed(TeeBody {
                    inner: b,
                    exchange: exchange.clone(),
                    side: Side::Request,
                    metrics: metrics.clone(),
                    ended: false,
                })
            });
            let mut resp = self.inner.clone().serve(req).await;
            let status = resp.status().as_u16();
            metrics.response(status);
            lock(&exchange.state).response = Some(ResponseHead {
                status,
                headers: resp.headers().clone(),
                after: exchange.started.elapsed(),
            });
            resp.extensions_mut().insert(CapturedAs(exchange.id));
            resp.map(|b| {
                body::boxed(TeeBody {
                    inner: b,
                    exchange,
                    side: Side::Response,
                    metrics,
                    ended: false,
                })
            })
        })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

pin_project_lite::pin_project! {
    /// Passes a body through, copying its first bytes into the exchange. When the response body
    /// ends (or is dropped) the exchange's duration is recorded.
    struct TeeBody {
        #[pin]
        inner: Body,
        exchange: Arc<Exchange>,
        side: Side,
        metrics: Arc<AgentMetrics>,
        ended: bool,
    }

    impl PinnedDrop for TeeBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.ended {
                // hyper never polls a body that says it is empty (a GET, a 204), nor past the
                // end its length announced: such a body ended well all the same.
                let end = if this.inner.is_end_stream() { BodyEnd::Complete } else { BodyEnd::Cut };
                finish(this.exchange, *this.side, this.metrics, end);
            }
        }
    }
}

fn finish(exchange: &Exchange, side: Side, metrics: &AgentMetrics, end: BodyEnd) {
    let mut state = lock(&exchange.state);
    let captured = match side {
        Side::Request => &mut state.request_body,
        Side::Response => &mut state.response_body,
    };
    captured.end = Some(end);
    if side == Side::Response {
        let took = exchange.started.elapsed();
        state.duration = Some(took);
        metrics.finished(took);
    }
}

impl HttpBody for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.metrics.bytes(*this.side == Side::Request, data.len());
                    let mut state = lock(&this.exchange.state);
                    let captured = match this.side {
                        Side::Request => &mut state.request_body,
                        Side::Response => &mut state.response_body,
                    };
                    let room = BODY_CAP.saturating_sub(captured.bytes.len());
                    captured.bytes.extend_from_slice(&data[..data.len().min(room)]);
                    captured.total += data.len() as u64;
                }
            }
            Some(Err(_)) => {
                *this.ended = true;
                finish(this.exchange, *this.side, this.metrics, BodyEnd::Cut);
            }
            None => {
                *this.ended = true;
                finish(this.exchange, *this.side, this.metrics, BodyEnd::Complete);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
