//! Requests across relay nodes. A public request for a tunnel whose agents are all on other nodes
//! is passed to one of them ([`to_peer`]) over the pooled HTTP/2 connection to that node, with the
//! stream URI and headers this node built (routing, edge auth and `X-Forwarded-*` done once,
//! here), the cluster secret, and the body streamed. The receiving node ([`accept`]) serves it on
//! one of its own sessions only, never forwarding again, so a request cannot loop; its answer
//! (status, headers including `Ponte-Error`, body) streams back unchanged.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;

use super::access::{Forwarded, ForwardedFrom};
use super::bearer::{self, Refused};
use super::error::ProxyError;
use super::metrics::LoginRefusal;
use super::proxy::{self, Switch};
use super::registry::TunnelState;
use super::request::PublicBody;
use super::state::{ConnInfo, RelayState};
use super::stream::Target;
use crate::body::{self, Body, GuardedBody};
use crate::cluster::peers::PeerError;
use crate::cluster::{Cluster, Holder};
use crate::config::relay::TunnelName;
use crate::protocol::cluster::{
    FORWARD_PATH, PONTE_CLUSTER_SECRET, PONTE_FORWARD_NODE, PONTE_FORWARD_TUNNEL, PONTE_FORWARD_URI,
};
use crate::protocol::headers::{is_extended_connect, remove_hop_by_hop};

/// How long the receiving node waits for an agent login in progress (as for its own requests).
const PENDING_LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest sending node id taken into the access log.
const MAX_NODE_ID_LOGGED: usize = 128;

/// Bodies up to this size are read whole before the request is forwarded, so that a node which no
/// longer holds the tunnel (its agent moved within the last second) hands it on to another node
/// instead of failing it. Webhooks are almost always smaller; a larger body streams, sent once.
const KEPT_BODY: u64 = 256 * 1024;

/// Pass `req` to the first of `holders` that takes it. A node that cannot be reached, or that no
/// longer holds the tunnel, is skipped for the next; when all of them were, the agent is moving:
/// the request is served here if it arrived here, or sent to the holders the database names now.
/// `Err(AgentOffline)` when no node took it.
pub async fn to_peer(
    state: &Arc<RelayState>,
    cluster: &Cluster,
    tunnel: &Arc<TunnelState>,
    holders: &[Holder],
    req: Request<PublicBody>,
    target: Target,
    limit: u64,
) -> Result<Response<Body>, ProxyError> {
    let (parts, incoming) = req.into_parts();
    let uri = target.uri()?;
    let headers = target.headers(state, parts.headers);
    let (guarded, outcome) = GuardedBody::new(incoming, limit, state.config.limits.body_idle_timeout);
    let body = if guarded.size_hint().upper().is_some_and(|n| n <= KEPT_BODY) {
        match guarded.collect().await {
            Ok(collected) => OutBody::Kept(collected.to_bytes()),
            Err(e) => {
                return Err(proxy::body_error(&outcome, limit)
                    .unwrap_or_else(|| ProxyError::BadRequest(format!("the request body failed: {e}"))));
            }
        }
    } else {
        OutBody::Once(Some(body::boxed(guarded)))
    };
    let mut out = prepare(cluster, tunnel, parts.method, &uri.to_string(), headers, body)?;
    let mut tried = Vec::new();
    let mut sent = send(state, cluster, tunnel, holders, &mut out, &mut tried).await;
    if matches!(sent, Err(Unanswered::NotSent)) && out.can_send() {
        if let Some(session) = tunnel.pick_or_wait(PENDING_LOGIN_WAIT).await {
            let (method, headers, body) = out.into_local();
            return proxy::live_prepared(state, tunnel, session, method, uri, headers, body, limit).await;
        }
        cluster.forget_holders(tunnel.name.as_str());
        let now = cluster.holders(tunnel.name.as_str()).await;
        sent = send(state, cluster, tunnel, &now, &mut out, &mut tried).await;
    }
    match sent {
        Ok(resp) => Ok(resp),
        Err(Unanswered::Timeout) => Err(ProxyError::Timeout),
        Err(Unanswered::NotSent) => Err(ProxyError::AgentOffline),
        Err(Unanswered::Failed(why)) => {
            Err(proxy::body_error(&outcome, limit).unwrap_or(ProxyError::AgentFailed(why)))
        }
        Err(Unanswered::Refused(why)) => Err(ProxyError::Unavailable(why)),
    }
}

/// A websocket for a tunnel whose agents are on other nodes: an extended CONNECT to the first
/// holder that takes it (one that no longer holds the tunnel passes it on, as for any request),
/// `101` to the sender once the agent's upstream accepted, then bytes copied both ways.
pub async fn websocket_to_peer(
    state: &Arc<RelayState>,
    cluster: &Cluster,
    tunnel: &Arc<TunnelState>,
    holders: &[Holder],
    mut req: Request<PublicBody>,
    target: Target,
) -> Result<Response<Body>, ProxyError> {
    let public = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let uri = target.uri()?.to_string();
    let headers = target.headers(state, parts.headers);
    let mut out = prepare(
        cluster,
        tunnel,
        http::Method::CONNECT,
        &uri,
        headers,
        OutBody::Kept(bytes::Bytes::new()),
    )?;
    out.protocol = Some(hyper::ext::Protocol::from_static("websocket"));
    let resp = match send(state, cluster, tunnel, holders, &mut out, &mut Vec::new()).await {
        Ok(resp) => resp,
        Err(Unanswered::Timeout) => return Err(ProxyError::Timeout),
        Err(Unanswered::NotSent) => return Err(ProxyError::AgentOffline),
        Err(Unanswered::Failed(why)) => return Err(ProxyError::AgentFailed(why)),
        Err(Unanswered::Refused(why)) => return Err(ProxyError::Unavailable(why)),
    };
    if resp.status() != http::StatusCode::OK {
        // The upstream declined the upgrade (or the node failed to reach its agent): its answer.
        return Ok(resp);
    }
    let node = resp.extensions().get::<Forwarded>().cloned();
    let mut switched = proxy::switched(state, public, resp, (), target.conn.peer, Switch::Upgrade);
    if let Some(node) = node {
        switched.extensions_mut().insert(node);
    }
    Ok(switched)
}

/// Why no node answered a forwarded request.
pub enum Unanswered {
    /// No node took the request: none could be reached, or those reached no longer hold the
    /// tunnel's agent.
    NotSent,
    /// A node took the request, then failed before any answer.
    Failed(String),
    /// No answer within `limits.response_timeout`.
    Timeout,
    /// The node refused to serve it (a cluster misconfiguration: a different secret, no
    /// `cluster:` or no such tunnel there); its answer is not the sender's business.
    Refused(String),
}

/// A request on its way to other nodes: method and headers (the stream URI, tunnel and cluster
/// secret among them), and a body that can be sent again if it was kept.
pub struct Outgoing {
    method: http::Method,
    headers: http::HeaderMap,
    body: OutBody,
    /// `websocket` for an extended CONNECT.
    protocol: Option<hyper::ext::Protocol>,
}

/// The body of an [`Outgoing`] request.
pub enum OutBody {
    /// Read whole: can be sent to one node after another.
    Kept(bytes::Bytes),
    /// Streamed: sent once (handed back only by a node that took none of it).
    Once(Option<Body>),
}

impl Outgoing {
    /// The request for the node at `uri`; `None` once a streamed body has left.
    fn request(&mut self, uri: Uri) -> Option<Request<Body>> {
        let body = match &mut self.body {
            OutBody::Kept(bytes) => body::full(bytes.clone()),
            OutBody::Once(body) => body.take()?,
        };
        let mut out = Request::new(body);
        *out.method_mut() = self.method.clone();
        *out.uri_mut() = uri;
        *out.version_mut() = Version::HTTP_2;
        *out.headers_mut() = self.headers.clone();
        if let Some(protocol) = &self.protocol {
            out.extensions_mut().insert(protocol.clone());
        }
        Some(out)
    }

    /// A node took none of `req`: keep its body for the next.
    fn give_back(&mut self, req: Request<Body>) {
        if let OutBody::Once(slot) = &mut self.body {
            *slot = Some(req.into_body());
        }
    }

    /// Can the request still be sent (to another node, or on a session here)?
    fn can_send(&self) -> bool {
        match &self.body {
            OutBody::Kept(_) => true,
            OutBody::Once(body) => body.is_some(),
        }
    }

    /// Method, headers (without the node-to-node ones) and body, to serve it on this node.
    fn into_local(mut self) -> (http::Method, http::HeaderMap, Body) {
        remove_node_headers(&mut self.headers);
        let body = match self.body {
            OutBody::Kept(bytes) => body::full(bytes),
            OutBody::Once(body) => body.unwrap_or_else(body::empty),
        };
        (self.method, self.headers, body)
    }
}

/// The request to other nodes: the stream's URI and headers as this node built them, the
/// tunnel, the cluster secret, and `body`.
pub fn prepare(
    cluster: &Cluster,
    tunnel: &TunnelState,
    method: http::Method,
    stream_uri: &str,
    mut headers: http::HeaderMap,
    body: OutBody,
) -> Result<Outgoing, ProxyError> {
    let bad = || ProxyError::BadRequest("the request target cannot be forwarded".into());
    headers.insert(
        PONTE_FORWARD_URI.clone(),
        HeaderValue::from_str(stream_uri).map_err(|_| bad())?,
    );
    headers.insert(
        PONTE_FORWARD_TUNNEL.clone(),
        HeaderValue::from_str(tunnel.name.as_str()).map_err(|_| bad())?,
    );
    if let Ok(node) = HeaderValue::from_str(&cluster.node_id) {
        headers.insert(PONTE_FORWARD_NODE.clone(), node);
    }
    let mut secret = HeaderValue::from_str(cluster.secret())
        .map_err(|_| ProxyError::Unavailable("cluster.secret is not a valid header value".into()))?;
    secret.set_sensitive(true);
    headers.insert(PONTE_CLUSTER_SECRET.clone(), secret);
    Ok(Outgoing {
        method,
        headers,
        body,
        protocol: None,
    })
}

/// Send a [`prepare`]d request to the first of `holders` not in `tried` that takes it, starting
/// at a random one so that several holders share the load; every node sent to is added to
/// `tried` (as that run of it: a node restarted since counts as another). A node that no longer
/// holds the tunnel passes it on to the next if the body was kept.
pub async fn send(
    state: &RelayState,
    cluster: &Cluster,
    tunnel: &TunnelState,
    holders: &[Holder],
    out: &mut Outgoing,
    tried: &mut Vec<(String, i64)>,
) -> Result<Response<Body>, Unanswered> {
    let start = rand::random::<u32>() as usize % holders.len().max(1);
    let ordered = holders.iter().cycle().skip(start).take(holders.len());
    for holder in ordered {
        let run = (holder.node_id.clone(), holder.started_at);
        if tried.contains(&run) {
            continue;
        }
        let Ok(uri) = format!("{}{FORWARD_PATH}", holder.advertise).parse::<Uri>() else {
            tracing::warn!(node = %holder.node_id, advertise = %holder.advertise, "relay node has an unusable advertise URL; skipping it");
            continue;
        };
        let Some(req) = out.request(uri) else { break };
        tried.push(run);
        let sent = tokio::time::timeout(
            state.config.limits.response_timeout,
            cluster.peers().send(&holder.advertise, holder.started_at, req),
        )
        .await;
        match sent {
            Err(_) => return Err(Unanswered::Timeout),
            Ok(Ok(resp)) if refused(&resp) => {
                let why = format!(
                    "relay node {} refused a forwarded request ({} {}); check that every node has the same cluster.secret and tunnels",
                    holder.node_id,
                    resp.status().as_u16(),
                    error_code(&resp).unwrap_or("")
                );
                cluster.peers().warn_refusal(&why);
                return Err(Unanswered::Refused(why));
            }
            Ok(Ok(resp)) if is(&resp, &ProxyError::NotHeldHere) => {
                // Its agent left within the last second (our holder list is cached for that
                // long): look again on the next request, and try the next node for this one.
                tracing::debug!(tunnel = %tunnel.name, node = %holder.node_id, "relay node no longer holds the tunnel's agent; trying the next");
                cluster.forget_holders(tunnel.name.as_str());
            }
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                parts.version = Version::HTTP_11;
                parts.extensions.insert(Forwarded(holder.node_id.clone()));
                return Ok(Response::from_parts(parts, body::boxed(body)));
            }
            Ok(Err(PeerError::NotSent(back, why))) => {
                tracing::info!(tunnel = %tunnel.name, node = %holder.node_id, error = %why, "relay node holding the tunnel is unreachable; trying the next");
                out.give_back(*back);
            }
            Ok(Err(PeerError::Failed(why))) => {
                tracing::info!(tunnel = %tunnel.name, node = %holder.node_id, error = %why, "relay node failed before answering a forwarded request");
                return Err(Unanswered::Failed(format!(
                    "relay node {}: {why}",
                    holder.node_id
                )));
            }
        }
    }
    Err(Unanswered::NotSent)
}

/// Drop the node-to-node headers: they are not the upstream's business.
fn remove_node_headers(headers: &mut http::HeaderMap) {
    for name in [
        &PONTE_CLUSTER_SECRET,
        &PONTE_FORWARD_TUNNEL,
        &PONTE_FORWARD_URI,
        &PONTE_FORWARD_NODE,
    ] {
        headers.remove(name);
    }
}

/// Did the node refuse the request itself (the cluster secret, its login budget, no cluster or no
/// such tunnel there), rather than answer it from its agent?
fn refused<B>(resp: &Response<B>) -> bool {
    let refusals = [
        ProxyError::ClusterSecretMissing,
        ProxyError::ClusterSecretRejected,
        ProxyError::Throttled,
        ProxyError::NotFound(String::new()),
    ];
    refusals.iter().any(|e| is(resp, e))
}

/// Is `resp` this node-made answer (status and `Ponte-Error`)?
fn is<B>(resp: &Response<B>, e: &ProxyError) -> bool {
    error_code(resp) == Some(e.code()) && resp.status() == e.status()
}

/// The `Ponte-Error` of an answer, if any.
fn error_code<B>(resp: &Response<B>) -> Option<&str> {
    resp.headers()
        .get(&crate::protocol::PONTE_ERROR)
        .and_then(|v| v.to_str().ok())
}

/// Serve a request another node forwarded: check the cluster secret, then send it on a session of
/// this node (never on to another node).
pub async fn accept(
    state: &Arc<RelayState>,
    conn: ConnInfo,
    req: Request<PublicBody>,
) -> Result<Response<Body>, ProxyError> {
    let Some(cluster) = &state.cluster else {
        return Err(ProxyError::NotFound(format!(
            "no relay endpoint at {FORWARD_PATH} (this relay has no `cluster:`)"
        )));
    };
    let presented = req
        .headers()
        .get(&PONTE_CLUSTER_SECRET)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let refused = |why| {
        if let Some(m) = &state.metrics {
            m.login_refused(why);
        }
    };
    match bearer::check_presented(state, conn, presented, cluster.secret(), "cluster forward") {
        Ok(()) => {}
        Err(Refused::Throttled) => {
            refused(LoginRefusal::Throttled);
            return Err(ProxyError::Throttled);
        }
        Err(Refused::Missing) => {
            refused(LoginRefusal::TokenMissing);
            state.registry.record_failed_login(conn.peer.ip());
            return Err(ProxyError::ClusterSecretMissing);
        }
        Err(Refused::Rejected) => {
            refused(LoginRefusal::TokenRejected);
            return Err(ProxyError::ClusterSecretRejected);
        }
    }
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let bad = |what: &str| ProxyError::BadRequest(format!("a forwarded request needs {what}"));
    let name = header(&PONTE_FORWARD_TUNNEL)
        .and_then(|n| TunnelName::parse(&n).ok())
        .ok_or_else(|| bad("a valid Ponte-Forward-Tunnel"))?;
    let uri: Uri = header(&PONTE_FORWARD_URI)
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| bad("a valid Ponte-Forward-Uri"))?;
    let tunnel = state
        .registry
        .tunnel(&name)
        .cloned()
        .ok_or_else(|| ProxyError::NotFound(format!("no tunnel named `{name}` on this node")))?;
    // From here on the answer, success or not, goes into this node's access log.
    let from = ForwardedFrom {
        node: header(&PONTE_FORWARD_NODE)
            .filter(|n| n.len() <= MAX_NODE_ID_LOGGED)
            .unwrap_or_else(|| "unknown".into()),
        tunnel: tunnel.clone(),
        path: uri.path().to_owned(),
    };
    let mut resp = serve_here(state, &tunnel, req, uri, conn.peer)
        .await
        .unwrap_or_else(ProxyError::into_response);
    resp.extensions_mut().insert(from);
    Ok(resp)
}

/// Serve a forwarded request on one of this node's own sessions of `tunnel`.
async fn serve_here(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    req: Request<PublicBody>,
    uri: Uri,
    peer: std::net::SocketAddr,
) -> Result<Response<Body>, ProxyError> {
    let session = tunnel
        .pick_or_wait(PENDING_LOGIN_WAIT)
        .await
        .ok_or(ProxyError::NotHeldHere)?;
    let websocket = is_extended_connect(&req, "websocket");
    let mut req = req;
    let public = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    remove_node_headers(&mut parts.headers);
    remove_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::HOST);
    if let Some(public) = public {
        return proxy::websocket_prepared(
            state,
            tunnel,
            session,
            public,
            uri,
            parts.headers,
            peer,
            Switch::ConnectOk,
        )
        .await;
    }
    let limit = proxy::live_body_limit(state, tunnel);
    proxy::live_prepared(
        state,
        tunnel,
        session,
        parts.method,
        uri,
        parts.headers,
        incoming,
        limit,
    )
    .await
}
