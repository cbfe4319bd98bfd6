//! The entry of the durable queue: which requests are queued (delivery mode, method), reading
//! a queued request whole under the queue's body limit, committing it, and the `202` the sender
//! gets only after the commit.
//!
//! In `fallback` mode a queueable request is read whole first, so that if the live attempt fails
//! before any answer (the agent vanished between two PINGs) it can still be queued instead of
//! being lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;

use super::error::ProxyError;
use super::proxy::{relay_response, tunnel_headers, tunnel_uri};
use super::registry::TunnelState;
use super::request::{self, Authority};
use super::service::{ConnInfo, RelayState};
use super::session::{SendError, Session};
use crate::body::{self, Body, GuardedBody};
use crate::config::relay::{DeliveryMode, RelayConfig, TunnelConfig, TunnelName};
use crate::protocol::PONTE_DELIVERY_ID;
use crate::store::{NewDelivery, Store};

/// The store and the per-tunnel queue state of a relay with `store:` configured.
pub struct Queues {
    /// The durable store.
    pub store: Arc<dyn Store>,
    tunnels: HashMap<TunnelName, Arc<TunnelQueue>>,
}

/// Queue state of one tunnel, shared by the request path and its delivery worker.
#[derive(Default)]
pub struct TunnelQueue {
    /// Wakes the delivery worker (a request was committed).
    pub wake: Notify,
    /// The tunnel has pending deliveries (kept by the worker, set on every commit).
    backlog: AtomicBool,
}

impl TunnelQueue {
    /// Record whether deliveries are pending.
    pub fn set_backlog(&self, pending: bool) {
        self.backlog.store(pending, Ordering::Release);
    }
    fn has_backlog(&self) -> bool {
        self.backlog.load(Ordering::Acquire)
    }
}

impl Queues {
    /// Queue state for every tunnel. `direct` tunnels get one too: a tunnel switched from
    /// `queue` to `direct` may still have deliveries stored, and they must not be stranded.
    pub fn new(store: Arc<dyn Store>, config: &RelayConfig) -> Self {
        let tunnels = config
            .tunnels
            .keys()
            // Assume a backlog until the worker's first claim says otherwise (after a restart).
            .map(|name| {
                let q = TunnelQueue::default();
                q.set_backlog(true);
                (name.clone(), Arc::new(q))
            })
            .collect();
        Queues { store, tunnels }
    }

    /// The queue of a tunnel, if it has one.
    pub fn tunnel(&self, name: &TunnelName) -> Option<&Arc<TunnelQueue>> {
        self.tunnels.get(name)
    }
}

/// What to do with one public request of a queued tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Proxy it live, as in `direct` mode.
    Live,
    /// Commit it and answer 202.
    Queue,
    /// Try live; if the tunnel fails before any answer, commit it and answer 202.
    LiveOrQueue,
}

/// Decide by delivery mode, method, and whether an agent is up.
pub fn decide<B>(config: &TunnelConfig, queue: &TunnelQueue, req: &Request<B>, agent_up: bool) -> Decision {
    let queueable = config
        .queue
        .methods
        .iter()
        .any(|m| m.as_str().eq_ignore_ascii_case(req.method().as_str()))
        && !request::is_websocket_upgrade(req);
    match config.delivery {
        DeliveryMode::Direct => Decision::Live,
        _ if !queueable => Decision::Live,
        DeliveryMode::Queue => Decision::Queue,
        DeliveryMode::Fallback if !agent_up => Decision::Queue,
        // Live requests must not overtake a backlog that has to go out in order.
        DeliveryMode::Fallback if config.queue.ordered && queue.has_backlog() => Decision::Queue,
        DeliveryMode::Fallback => Decision::LiveOrQueue,
    }
}

/// The largest body a queued request of this tunnel may have.
pub fn body_limit(state: &RelayState, tunnel: &TunnelState) -> u64 {
    let live = tunnel
        .config
        .max_body_bytes
        .unwrap_or(state.config.limits.max_body_bytes)
        .0;
    tunnel.config.queue.max_body_bytes.0.min(live)
}

/// Read the request whole, commit it, answer 202.
pub async fn accept(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    queue: &Arc<TunnelQueue>,
    conn: ConnInfo,
    req: Request<Incoming>,
    authority: &Authority,
    path: PathAndQuery,
) -> Result<Response<Body>, ProxyError> {
    let new = read_request(state, tunnel, conn, req, authority, path).await?;
    commit(state, queue, new).await
}

/// Read the request whole; try it live on `session`; if the tunnel fails before any answer,
/// commit it and answer 202 instead.
#[allow(clippy::too_many_arguments)]
pub async fn live_or_queue(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    queue: &Arc<TunnelQueue>,
    session: Arc<Session>,
    conn: ConnInfo,
    req: Request<Incoming>,
    authority: &Authority,
    path: PathAndQuery,
) -> Result<Response<Body>, ProxyError> {
    let new = read_request(state, tunnel, conn, req, authority, path).await?;
    if !session.has_free_stream() {
        // Every stream of the agent is busy: queue now rather than hold the sender until one
        // frees up (which could take the whole response timeout).
        tracing::debug!(tunnel = %tunnel.name, "agent saturated; queueing the request");
        return commit(state, queue, new).await;
    }
    let live = to_request(&new)?;
    match tunnel
        .send(session, live, state.config.limits.response_timeout)
        .await
    {
        Ok((resp, permit)) => Ok(relay_response(resp, permit)),
        Err(SendError::Timeout) => Err(ProxyError::Timeout),
        Err(e @ (SendError::Busy(_) | SendError::Failed(_))) => {
            tracing::info!(tunnel = %tunnel.name, error = %e, "live attempt failed before an answer; queueing the request");
            commit(state, queue, new).await
        }
    }
}

async fn commit(
    state: &RelayState,
    queue: &TunnelQueue,
    new: NewDelivery,
) -> Result<Response<Body>, ProxyError> {
    let queues = state
        .queues
        .as_ref()
        .ok_or_else(|| ProxyError::Unavailable("no store is configured".into()))?;
    let tunnel = new.tunnel.clone();
    let done = queues.store.enqueue(new).await.map_err(|e| {
        tracing::warn!(%tunnel, error = %e, "request not queued");
        ProxyError::from(e)
    })?;
    queue.set_backlog(true);
    queue.wake.notify_one();
    tracing::debug!(%tunnel, id = %done.id, "request queued");
    Ok(accepted(&done.id))
}

/// The sender's answer once the request is on disk.
fn accepted(id: &str) -> Response<Body> {
    let body = serde_json::json!({ "status": "queued", "delivery_id": id });
    let mut resp = Response::new(body::full(body.to_string()));
    *resp.status_mut() = StatusCode::ACCEPTED;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(PONTE_DELIVERY_ID.clone(), v);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The request as it will be sent on the tunnel, with its body read whole under the limit.
async fn read_request(
    state: &RelayState,
    tunnel: &TunnelState,
    conn: ConnInfo,
    req: Request<Incoming>,
    authority: &Authority,
    path: PathAndQuery,
) -> Result<NewDelivery, ProxyError> {
    let limit = body_limit(state, tunnel);
    let (parts, body) = req.into_parts();
    let body = read_body(body, limit, state.config.limits.body_idle_timeout).await?;
    let uri = tunnel_uri(conn, authority, path)?;
    Ok(NewDelivery {
        tunnel: tunnel.name.to_string(),
        method: parts.method.to_string(),
        uri: uri.to_string(),
        headers: tunnel_headers(state, conn, authority, parts.headers),
        body,
    })
}

async fn read_body(body: Incoming, limit: u64, idle: Duration) -> Result<Bytes, ProxyError> {
    let (guarded, outcome) = GuardedBody::new(body, limit, idle);
    match guarded.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) if outcome.was_too_large() => Err(ProxyError::TooLarge { limit }),
        Err(_) if outcome.was_idle() => Err(ProxyError::BodyStalled),
        Err(e) => Err(ProxyError::BadRequest(format!(
            "the request body was cut off ({e})"
        ))),
    }
}

/// Build the tunnel request for a stored or just-read delivery.
pub fn to_request(new: &NewDelivery) -> Result<Request<Body>, ProxyError> {
    stream_request(&new.method, &new.uri, new.headers.clone(), new.body.clone())
}

/// An HTTP/2 request on the tunnel from its stored parts.
pub fn stream_request(
    method: &str,
    uri: &str,
    headers: http::HeaderMap,
    body: Bytes,
) -> Result<Request<Body>, ProxyError> {
    let bad = || ProxyError::BadRequest("the request target cannot be forwarded".into());
    let mut req = Request::new(body::full(body));
    *req.method_mut() = http::Method::from_bytes(method.as_bytes()).map_err(|_| bad())?;
    *req.uri_mut() = uri.parse().map_err(|_| bad())?;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = headers;
    Ok(req)
}
