//! The access log and the per-request metrics: one record per public request (tunnel traffic,
//! not the relay's own `/_ponte/` endpoints), written when the response body is finished, so the
//! duration and the byte counts cover the whole exchange and not just the headers.
//!
//! Lines go to the `ponte::access` log target at INFO with one field per fact (tunnel, method,
//! path, status, error, duration_ms, bytes_in, bytes_out, delivery_id, forwarded_to,
//! forwarded_from, peer). The query string is never logged: it can carry a sender's secret (edge
//! auth by query parameter, signed URLs).
//!
//! A request another relay node passed here is logged here too (`forwarded_from`; `path` is then
//! the path sent to the agent, the public one being in the sending node's line), but counted in
//! the metrics only by the node the sender reached, so that a sum over the nodes counts each
//! public request once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::metrics::RelayMetrics;
use super::registry::TunnelState;
use crate::BoxError;
use crate::body::{self, Body};
use crate::protocol::PONTE_ERROR;

/// The log target of access lines: `RUST_LOG=ponte::access=off` silences them, and
/// `--log-level warn,ponte::access=info` keeps only them.
pub const TARGET: &str = crate::logging::ACCESS_TARGET;

/// Longest `Ponte-Error` value logged (the agent's answers carry it too; bound what it adds).
const MAX_ERROR_CODE: usize = 64;

/// Marks a response the relay answered with `202` after committing the request: the delivery id
/// for the access log (an upstream's own `Ponte-Delivery-Id` header is never taken for one).
#[derive(Debug, Clone)]
pub struct Queued(pub String);

/// Marks a response that another relay node answered: its id, for the access log.
#[derive(Debug, Clone)]
pub struct Forwarded(pub String);

/// Marks the answer to a request another relay node passed here: that node's id, the tunnel and
/// the path sent to the agent (without the query), for this node's access log.
#[derive(Clone)]
pub struct ForwardedFrom {
    /// The sending node's id.
    pub node: String,
    /// The tunnel it was served on.
    pub tunnel: Arc<TunnelState>,
    /// The path sent to the agent.
    pub path: String,
}

/// What the relay knows about a public request when it arrives.
pub struct Exchange {
    started: Instant,
    method: Method,
    path: String,
    peer: SocketAddr,
    bytes_in: Arc<AtomicU64>,
}

impl Exchange {
    /// Start observing a request; the counter is for [`Counted`] on its body.
    pub fn begin<B>(req: &http::Request<B>, peer: SocketAddr) -> Self {
        Exchange {
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            peer,
            bytes_in: Arc::default(),
        }
    }

    /// The counter of request body bytes.
    pub fn bytes_in(&self) -> Arc<AtomicU64> {
        self.bytes_in.clone()
    }

    /// Wrap the response so the exchange is logged and counted once its body is done.
    /// `tunnel` is the configured tunnel the request reached, if any.
    pub fn finish(
        self,
        resp: Response<Body>,
        tunnel: Option<Arc<TunnelState>>,
        log: bool,
        metrics: Option<Arc<RelayMetrics>>,
    ) -> Response<Body> {
        let error = resp
            .headers()
            .get(&PONTE_ERROR)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(MAX_ERROR_CODE).collect());
        let delivery_id = resp.extensions().get::<Queued>().map(|q| q.0.clone());
        let forwarded_to = resp.extensions().get::<Forwarded>().map(|f| f.0.clone());
        let mut exchange = self;
        let forwarded_from = resp.extensions().get::<ForwardedFrom>().map(|f| {
            exchange.path = f.path.clone();
            f.node.clone()
        });
        let record = Record {
            exchange,
            tunnel,
            status: resp.status().as_u16(),
            error,
            delivery_id,
            forwarded_to,
            forwarded_from,
            log,
            metrics,
        };
        resp.map(|inner| {
            body::boxed(Observed {
                inner,
                bytes_out: 0,
                record: Some(record),
            })
        })
    }
}

/// Everything the access line and the metrics need once the body is done.
struct Record {
    exchange: Exchange,
    tunnel: Option<Arc<TunnelState>>,
    status: u16,
    error: Option<String>,
    delivery_id: Option<String>,
    /// The node that answered, when the request was passed to another relay node.
    forwarded_to: Option<String>,
    /// The node that passed the request here.
    forwarded_from: Option<String>,
    log: bool,
    metrics: Option<Arc<RelayMetrics>>,
}

impl Record {
    fn emit(self, bytes_out: u64) {
        let elapsed = self.exchange.started.elapsed();
        let bytes_in = self.exchange.bytes_in.load(Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            let series = match &self.tunnel {
                Some(t) => m.tunnel(&t.name),
                None => m.unrouted(),
            };
            series.request(self.status, elapsed, bytes_in, bytes_out);
            if self.forwarded_to.is_some() {
                series.forwarded();
            }
        }
        if self.log {
            let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
            tracing::info!(
                target: TARGET,
                tunnel = self.tunnel.as_ref().map(|t| t.name.as_str()),
                method = %self.exchange.method,
                path = self.exchange.path.as_str(),
                status = self.status,
                error = self.error.as_deref(),
                duration_ms,
                bytes_in,
                bytes_out,
                delivery_id = self.delivery_id.as_deref(),
                forwarded_to = self.forwarded_to.as_deref(),
                forwarded_from = self.forwarded_from.as_deref(),
                peer = %self.exchange.peer.ip(),
                "request"
            );
        }
    }
}

/// A response body that counts what it sends and reports the exchange when it is dropped: by
/// then hyper has written all of it, or the sender went away.
struct Observed {
    inner: Body,
    bytes_out: u64,
    record: Option<Record>,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            self.bytes_out += data.len() as u64;
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

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.emit(self.bytes_out);
        }
    }
}

/// A request body that adds the bytes it yields to a shared counter (when observing is on).
pub struct Counted<B> {
    inner: B,
    seen: Option<Arc<AtomicU64>>,
}

impl<B> Counted<B> {
    /// Count `inner` into `seen`, or pass it through untouched with `None`.
    pub fn new(inner: B, seen: Option<Arc<AtomicU64>>) -> Self {
        Counted { inner, seen }
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let (Some(seen), Some(Ok(f))) = (&self.seen, &frame)
            && let Some(data) = f.data_ref()
        {
            seen.fetch_add(data.len() as u64, Ordering::Relaxed);
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
