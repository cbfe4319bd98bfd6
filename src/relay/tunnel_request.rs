//! One public request for a tunnel, from the dispatcher to the path that delivers it: edge auth,
//! the size pre-check, then the one decision how it is delivered: live over an agent session
//! ([`proxy`]), committed to the durable queue ([`queue::accept`]), or live with the queue as the
//! fallback when the tunnel fails before any answer ([`queue::live_or_queue`]). With `cluster:`,
//! a request for a tunnel with no session on this node goes to a node that has one
//! ([`forward::to_peer`], or [`queue::forward_or_queue`] for `fallback`).

use std::sync::Arc;

use http::header;
use http::uri::PathAndQuery;
use http::{Request, Response};

use super::error::ProxyError;
use super::registry::TunnelState;
use super::request::PublicBody;
use super::session::Session;
use super::state::{RelayState, TunnelQueue};
use super::stream::Target;
use super::{edge_auth, forward, proxy, queue, request};
use crate::body::Body;
use crate::config::relay::{DeliveryMode, TunnelConfig};

/// How long a request waits for an agent whose login was accepted but whose session is still
/// being set up (a few milliseconds on a healthy link).
const PENDING_LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Deliver `req` to `tunnel`.
pub async fn handle(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    req: Request<PublicBody>,
    mut target: Target,
) -> Result<Response<Body>, ProxyError> {
    // Every request that reached the tunnel, answered or refused: what the sender tried.
    tunnel.requests.record();
    if let Some(auth) = &tunnel.config.auth
        && let Some(query) = edge_auth::check(auth, req.headers(), target.path.query())?
    {
        target.path = with_query(target.path.path(), &query)?;
    }
    let limit = proxy::live_body_limit(state, tunnel);
    if declared_length(&req).is_some_and(|n| n > limit) {
        return Err(ProxyError::TooLarge { limit });
    }
    // Only the common live request runs in place; the other paths are boxed so that every
    // request's future (which hyper moves into place) stays the live path's size.
    match choose(state, tunnel, &req).await? {
        Delivery::Live(session) if request::is_websocket_upgrade(&req) => {
            Box::pin(proxy::websocket(state, tunnel, session, req, target)).await
        }
        Delivery::Live(session) => proxy::live(state, tunnel, session, req, target, limit).await,
        Delivery::Forward(cluster, holders) if request::is_websocket_upgrade(&req) => {
            Box::pin(forward::websocket_to_peer(
                state, &cluster, tunnel, &holders, req, target,
            ))
            .await
        }
        Delivery::Forward(cluster, holders) => {
            Box::pin(forward::to_peer(
                state, &cluster, tunnel, &holders, req, target, limit,
            ))
            .await
        }
        Delivery::ForwardOrQueue(queue, cluster, holders) => {
            Box::pin(queue::forward_or_queue(
                state, tunnel, &queue, &cluster, &holders, req, target,
            ))
            .await
        }
        Delivery::Queue(queue) => Box::pin(queue::accept(state, tunnel, &queue, req, target)).await,
        Delivery::LiveOrQueue(queue, session) => {
            Box::pin(queue::live_or_queue(state, tunnel, &queue, session, req, target)).await
        }
    }
}

/// How one request is delivered, with what it needs for that.
enum Delivery {
    /// Proxy it live on this session.
    Live(Arc<Session>),
    /// No session here: pass it to one of these other nodes, which hold sessions of the tunnel.
    Forward(Arc<crate::cluster::Cluster>, Arc<Vec<crate::cluster::Holder>>),
    /// No session here: try these other nodes live; if none answers, commit it and answer 202.
    ForwardOrQueue(
        Arc<TunnelQueue>,
        Arc<crate::cluster::Cluster>,
        Arc<Vec<crate::cluster::Holder>>,
    ),
    /// Commit it and answer 202.
    Queue(Arc<TunnelQueue>),
    /// Try live on this session; if the tunnel fails before any answer, commit it and answer 202.
    LiveOrQueue(Arc<TunnelQueue>, Arc<Session>),
}

/// Pick the delivery by the tunnel's mode, the request and whether an agent is up.
async fn choose(
    state: &RelayState,
    tunnel: &TunnelState,
    req: &Request<PublicBody>,
) -> Result<Delivery, ProxyError> {
    // A queued tunnel does not wait for a login in progress: it can commit the request instead.
    let session = tunnel.pick();
    if let Some(queue) = state.queues.as_ref().and_then(|q| q.tunnel(&tunnel.name)) {
        let mut decision = decide(&tunnel.config, queue, req, session.is_some());
        let limit = queue::body_limit(state, tunnel);
        if decision != Decision::Live && declared_length(req).is_some_and(|n| n > limit) {
            if decision != Decision::LiveOrQueue {
                return Err(ProxyError::TooLarge { limit });
            }
            // Too large to keep, but the agent is up: stream it live as `direct` would.
            decision = Decision::Live;
        }
        match (decision, session.clone()) {
            (Decision::Live, _) => {}
            (Decision::LiveOrQueue, Some(session)) => {
                return Ok(Delivery::LiveOrQueue(queue.clone(), session));
            }
            // Queued only because no agent is here: one on another node may take it live.
            (Decision::Queue, None)
                if decide(&tunnel.config, queue, req, true) == Decision::LiveOrQueue
                    && let Some(Delivery::Forward(cluster, holders)) =
                        Box::pin(elsewhere(state, tunnel)).await.ok() =>
            {
                return Ok(Delivery::ForwardOrQueue(queue.clone(), cluster, holders));
            }
            _ => return Ok(Delivery::Queue(queue.clone())),
        }
    }
    let session = match session {
        Some(s) => s,
        None => match tunnel.pick_or_wait(PENDING_LOGIN_WAIT).await {
            Some(s) => s,
            // Boxed, as the other rare paths (see `handle`): a database lookup.
            None => return Box::pin(elsewhere(state, tunnel)).await,
        },
    };
    Ok(Delivery::Live(session))
}

/// No session of the tunnel on this node: another node of the cluster may hold one.
async fn elsewhere(state: &RelayState, tunnel: &TunnelState) -> Result<Delivery, ProxyError> {
    let Some(cluster) = &state.cluster else {
        return Err(ProxyError::AgentOffline);
    };
    let holders = cluster.holders(tunnel.name.as_str()).await;
    if holders.is_empty() {
        return Err(ProxyError::AgentOffline);
    }
    Ok(Delivery::Forward(cluster.clone(), holders))
}

/// What the delivery mode says about one request of a tunnel with a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Proxy it live, as in `direct` mode.
    Live,
    /// Commit it and answer 202.
    Queue,
    /// Try live; if the tunnel fails before any answer, commit it and answer 202.
    LiveOrQueue,
}

/// Decide by delivery mode, method, and whether an agent is up.
fn decide<B>(config: &TunnelConfig, queue: &TunnelQueue, req: &Request<B>, agent_up: bool) -> Decision {
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

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn with_query(path: &str, query: &str) -> Result<PathAndQuery, ProxyError> {
    let text = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    text.parse()
        .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded".into()))
}
