//! Requests across relay nodes. A public request for a tunnel whose agents are all on other nodes
//! is passed to one of them ([`to_peer`]) over the pooled HTTP/2 connection to that node, with the
//! stream URI and headers this node built (routing, edge auth and `X-Forwarded-*` done once,
//! here), the cluster secret, and the body streamed. The receiving node ([`accept`]) serves it on
//! one of its own sessions only, never forwarding again, so a request cannot loop; its answer
//! (status, headers including `Ponte-Error`, body) streams back unchanged.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response, Uri, Version};

use super::access::Forwarded;
use super::bearer::{self, Refused};
use super::error::ProxyError;
use super::metrics::LoginRefusal;
use super::proxy;
use super::registry::TunnelState;
use super::request::PublicBody;
use super::state::{ConnInfo, RelayState};
use super::stream::Target;
use crate::body::{self, Body, GuardedBody};
use crate::cluster::peers::PeerError;
use crate::cluster::{Cluster, Holder};
use crate::config::relay::TunnelName;
use crate::protocol::cluster::{FORWARD_PATH, PONTE_CLUSTER_SECRET, PONTE_FORWARD_TUNNEL, PONTE_FORWARD_URI};
use crate::protocol::headers::remove_hop_by_hop;

/// How long the receiving node waits for an agent login in progress (as for its own requests).
const PENDING_LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Pass `req` to the first of `holders` that takes it, its body streamed; a node that cannot be
/// reached before any of the request left is skipped for the next. `Err(AgentOffline)` when none
/// could be reached.
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
    let uri = target.uri()?.to_string();
    let headers = target.headers(state, parts.headers);
    let (guarded, outcome) = GuardedBody::new(incoming, limit, state.config.limits.body_idle_timeout);
    let out = prepare(cluster, tunnel, parts.method, &uri, headers, body::boxed(guarded))?;
    match send(state, cluster, tunnel, holders, out).await {
        Ok(resp) => Ok(resp),
        Err(Unanswered::Timeout) => Err(ProxyError::Timeout),
        Err(Unanswered::NotSent) => Err(ProxyError::AgentOffline),
        Err(Unanswered::Failed(why)) => {
            Err(proxy::body_error(&outcome, limit).unwrap_or(ProxyError::AgentFailed(why)))
        }
        Err(Unanswered::Refused(why)) => Err(ProxyError::Unavailable(why)),
    }
}

/// Why no node answered a forwarded request.
pub enum Unanswered {
    /// No node could be reached; nothing of the request left this node.
    NotSent,
    /// A node took the request, then failed before any answer.
    Failed(String),
    /// No answer within `limits.response_timeout`.
    Timeout,
    /// The node refused to serve it (a cluster misconfiguration: a different secret, no
    /// `cluster:` or no such tunnel there); its answer is not the sender's business.
    Refused(String),
}

/// The request to a peer: the stream's URI and headers as this node built them, the tunnel, the
/// cluster secret, and `body`.
pub fn prepare(
    cluster: &Cluster,
    tunnel: &TunnelState,
    method: http::Method,
    stream_uri: &str,
    mut headers: http::HeaderMap,
    body: Body,
) -> Result<Request<Body>, ProxyError> {
    let bad = || ProxyError::BadRequest("the request target cannot be forwarded".into());
    headers.insert(
        PONTE_FORWARD_URI.clone(),
        HeaderValue::from_str(stream_uri).map_err(|_| bad())?,
    );
    headers.insert(
        PONTE_FORWARD_TUNNEL.clone(),
        HeaderValue::from_str(tunnel.name.as_str()).map_err(|_| bad())?,
    );
    let mut secret = HeaderValue::from_str(cluster.secret())
        .map_err(|_| ProxyError::Unavailable("cluster.secret is not a valid header value".into()))?;
    secret.set_sensitive(true);
    headers.insert(PONTE_CLUSTER_SECRET.clone(), secret);
    let mut out = Request::new(body);
    *out.method_mut() = method;
    *out.version_mut() = Version::HTTP_2;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Send a [`prepare`]d request to the first of `holders` that takes it, starting at a random one
/// so that several holders share the load.
pub async fn send(
    state: &RelayState,
    cluster: &Cluster,
    tunnel: &TunnelState,
    holders: &[Holder],
    mut out: Request<Body>,
) -> Result<Response<Body>, Unanswered> {
    let start = rand::random::<u32>() as usize % holders.len().max(1);
    let ordered = holders.iter().cycle().skip(start).take(holders.len());
    for holder in ordered {
        let Ok(uri) = format!("{}{FORWARD_PATH}", holder.advertise).parse::<Uri>() else {
            tracing::warn!(node = %holder.node_id, advertise = %holder.advertise, "relay node has an unusable advertise URL; skipping it");
            continue;
        };
        *out.uri_mut() = uri;
        let sent = tokio::time::timeout(
            state.config.limits.response_timeout,
            cluster.peers().send(&holder.advertise, out),
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
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                parts.version = Version::HTTP_11;
                parts.extensions.insert(Forwarded(holder.node_id.clone()));
                return Ok(Response::from_parts(parts, body::boxed(body)));
            }
            Ok(Err(PeerError::NotSent(back, why))) => {
                tracing::info!(tunnel = %tunnel.name, node = %holder.node_id, error = %why, "relay node holding the tunnel is unreachable; trying the next");
                out = *back;
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

/// Did the node refuse the request itself (the cluster secret, its login budget, no cluster or no
/// such tunnel there), rather than answer it from its agent?
fn refused<B>(resp: &Response<B>) -> bool {
    let refusals = [
        ProxyError::ClusterSecretMissing,
        ProxyError::ClusterSecretRejected,
        ProxyError::Throttled,
        ProxyError::NotFound(String::new()),
    ];
    let code = error_code(resp);
    refusals
        .iter()
        .any(|e| code == Some(e.code()) && resp.status() == e.status())
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
    let session = tunnel
        .pick_or_wait(PENDING_LOGIN_WAIT)
        .await
        .ok_or(ProxyError::AgentOffline)?;
    let (mut parts, incoming) = req.into_parts();
    for name in [&PONTE_CLUSTER_SECRET, &PONTE_FORWARD_TUNNEL, &PONTE_FORWARD_URI] {
        parts.headers.remove(name);
    }
    remove_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::HOST);
    let limit = proxy::live_body_limit(state, &tunnel);
    proxy::live_prepared(
        state,
        &tunnel,
        session,
        parts.method,
        uri,
        parts.headers,
        incoming,
        limit,
    )
    .await
}
