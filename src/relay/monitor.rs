//! What watches the relay from outside: `/_ponte/ready` for load balancers and orchestrators,
//! Prometheus metrics at `/_ponte/metrics` on the public port (only with `metrics_token`, as a
//! bearer token), and the `metrics_listen` address, which serves `/metrics` and `/ready` with no
//! token and keeps answering while the relay drains (its `/ready` says 503 then).

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::bearer::{self, Refused};
use super::error::ProxyError;
use super::metrics::CONTENT_TYPE;
use super::state::{ConnInfo, RelayState};
use crate::body::{self, Body};
use crate::protocol::{METRICS_PATH, READY_PATH};

/// Connections the metrics address serves at once (scrapers and probes; a few are plenty).
const MAX_CONNECTIONS: usize = 64;
/// Time a scraper has to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /_ponte/ready`: 200 while the relay takes requests (its listener, store and configuration
/// are up before any request is answered), 503 once it drains.
pub fn ready(state: &RelayState) -> Response<Body> {
    let store_down = state.queues.as_ref().is_some_and(|q| q.store_problem().is_some());
    let (status, text) = if state.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if store_down {
        // The cause (which may name the database's host) stays in the relay's log.
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
    } else {
        (StatusCode::OK, "ready\n")
    };
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `GET /_ponte/metrics` on the public port: off (404) without `metrics_token`; otherwise that
/// token as a bearer token, compared in constant time, with failed tries counted against the
/// address's login budget like the admin API's.
pub async fn public_metrics<B>(
    state: &Arc<RelayState>,
    conn: ConnInfo,
    req: &Request<B>,
) -> Result<Response<Body>, ProxyError> {
    let Some(expected) = &state.config.metrics_token else {
        return Err(ProxyError::MetricsDisabled);
    };
    bearer::check(state, conn, req, expected.expose(), "metrics").map_err(|refused| match refused {
        Refused::Throttled => ProxyError::Throttled,
        Refused::Missing => ProxyError::MetricsTokenMissing,
        Refused::Rejected => ProxyError::MetricsTokenRejected,
    })?;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ProxyError::MethodNotAllowed);
    }
    Ok(metrics(state).await)
}

/// The metrics as Prometheus text, with the gauges read from the relay's state brought up to date.
async fn metrics(state: &RelayState) -> Response<Body> {
    let Some(m) = &state.metrics else {
        return ProxyError::MetricsDisabled.into_response();
    };
    let stats = match &state.queues {
        Some(q) => match q.store.stats().await {
            Ok(stats) => Some(stats),
            Err(e) => {
                // Serve the rest; the queue gauges keep their last values.
                tracing::warn!(error = %e, "queue counts for the metrics could not be read");
                None
            }
        },
        None => None,
    };
    m.refresh(&state.registry, stats.as_ref());
    let mut resp = Response::new(body::full(m.encode()));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

/// Serve `/metrics` and `/ready` (also under their `/_ponte/` names) on `listener` without a
/// token, until `stop`. Meant for loopback or a private network: bind it there.
pub async fn serve(listener: TcpListener, state: Arc<RelayState>, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            res = listener.accept() => match res {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics connection refused: too many open");
            continue;
        };
        let (state, stop) = (state.clone(), stop.clone());
        tracker.spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(private(&state, &req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// One request on the metrics address.
async fn private<B>(state: &RelayState, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ProxyError::MethodNotAllowed.into_response();
    }
    match req.uri().path() {
        "/metrics" | METRICS_PATH => metrics(state).await,
        "/ready" | READY_PATH => ready(state),
        other => ProxyError::NotFound(format!(
            "no endpoint at {other} on the metrics address (try /metrics or /ready)"
        ))
        .into_response(),
    }
}
