//! The entry of the durable queue: reading a queued request whole under the queue's body limit,
//! committing it, and the `202` the sender gets only after the commit. Which requests come here
//! is decided in [`super::tunnel_request`].
//!
//! In `fallback` mode a queueable request is read whole first, so that if the live attempt fails
//! before any answer (the agent vanished between two PINGs) it can still be queued instead of
//! being lost.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::error::ProxyError;
use super::registry::TunnelState;
use super::request::PublicBody;
use super::session::{SendError, Session};
use super::state::{RelayState, TunnelQueue};
use super::stream::{Target, relay_response, stream_request};
use crate::body::{self, Body, GuardedBody};
use crate::protocol::PONTE_DELIVERY_ID;
use crate::store::NewDelivery;

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
    req: Request<PublicBody>,
    target: Target,
) -> Result<Response<Body>, ProxyError> {
    let new = read_request(state, tunnel, req, target).await?;
    commit(state, queue, new).await
}

/// Read the request whole; try it live on `session`; if the tunnel fails before any answer,
/// commit it and answer 202 instead.
pub async fn live_or_queue(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    queue: &Arc<TunnelQueue>,
    session: Arc<Session>,
    req: Request<PublicBody>,
    target: Target,
) -> Result<Response<Body>, ProxyError> {
    let new = read_request(state, tunnel, req, target).await?;
    if !session.has_free_stream() {
        // Every stream of the agent is busy: queue now rather than hold the sender until one
        // frees up (which could take the whole response timeout).
        tracing::debug!(tunnel = %tunnel.name, "agent saturated; queueing the request");
        return commit(state, queue, new).await;
    }
    let live = to_request(&new)?;
    let sent = std::time::Instant::now();
    match tunnel
        .send(session, live, state.config.limits.response_timeout)
        .await
    {
        Ok((resp, permit)) => {
            state.round_trip(&tunnel.name, sent);
            Ok(relay_response(resp, permit))
        }
        Err(SendError::Timeout) => Err(ProxyError::Timeout),
        Err(e @ (SendError::Busy(_) | SendError::Failed(_))) => {
            tracing::info!(tunnel = %tunnel.name, error = %e, "live attempt failed before an answer; queueing the request");
            commit(state, queue, new).await
        }
    }
}

/// Read the request whole; try it live through another node that holds the tunnel's agent; if
/// none answers, commit it and answer 202 instead (`fallback` with no agent on this node).
pub async fn forward_or_queue(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    queue: &Arc<TunnelQueue>,
    cluster: &crate::cluster::Cluster,
    holders: &[crate::cluster::Holder],
    req: Request<PublicBody>,
    target: Target,
) -> Result<Response<Body>, ProxyError> {
    let new = read_request(state, tunnel, req, target).await?;
    let method = http::Method::from_bytes(new.method.as_bytes())
        .map_err(|_| ProxyError::BadRequest("the request method cannot be forwarded".into()))?;
    let mut out = super::forward::prepare(
        cluster,
        tunnel,
        method,
        &new.uri,
        new.headers.clone(),
        super::forward::OutBody::Kept(new.body.clone()),
    )?;
    match super::forward::send(state, cluster, tunnel, holders, &mut out, &mut Vec::new()).await {
        // The other node's own session failed (or was gone) before any answer: as on one node,
        // the request is kept rather than lost.
        Ok(resp) if tunnel_failed(&resp) => {
            tracing::info!(tunnel = %tunnel.name, "the other relay node's agent did not answer; queueing the request");
            commit(state, queue, new).await
        }
        Ok(resp) => Ok(resp),
        Err(super::forward::Unanswered::Timeout) => Err(ProxyError::Timeout),
        Err(
            super::forward::Unanswered::NotSent
            | super::forward::Unanswered::Failed(_)
            | super::forward::Unanswered::Refused(_),
        ) => {
            tracing::info!(tunnel = %tunnel.name, "no relay node answered; queueing the request");
            commit(state, queue, new).await
        }
    }
}

/// Did the answering node fail to reach its agent (rather than relay the upstream's answer)?
fn tunnel_failed<B>(resp: &Response<B>) -> bool {
    let code = resp
        .headers()
        .get(&crate::protocol::PONTE_ERROR)
        .and_then(|v| v.to_str().ok());
    let ours = |e: ProxyError| code == Some(e.code()) && resp.status() == e.status();
    ours(ProxyError::AgentOffline) || ours(ProxyError::AgentFailed(String::new()))
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
    resp.extensions_mut()
        .insert(super::access::Queued(id.to_string()));
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
    req: Request<PublicBody>,
    target: Target,
) -> Result<NewDelivery, ProxyError> {
    let limit = body_limit(state, tunnel);
    let (parts, body) = req.into_parts();
    let body = read_body(body, limit, state.config.limits.body_idle_timeout).await?;
    Ok(NewDelivery {
        tunnel: tunnel.name.to_string(),
        method: parts.method.to_string(),
        uri: target.uri()?.to_string(),
        headers: target.headers(state, parts.headers),
        body,
    })
}

async fn read_body(body: PublicBody, limit: u64, idle: Duration) -> Result<Bytes, ProxyError> {
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

/// Build the tunnel request for a just-read delivery.
fn to_request(new: &NewDelivery) -> Result<Request<Body>, ProxyError> {
    stream_request(&new.method, &new.uri, new.headers.clone(), new.body.clone())
}
