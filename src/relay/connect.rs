//! Agent login: check the `Upgrade: ponte-h2` handshake and the token, answer `101`, then become
//! the HTTP/2 *client* on the upgraded connection and register the session.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::error::ProxyError;
use super::metrics::LoginRefusal;
use super::registry::TunnelState;
use super::request::{Authority, PublicBody};
use super::session::Session;
use super::state::{ConnInfo, RelayState};
use crate::body::{self, Body};
use crate::config::relay::TokenHash;
use crate::protocol::tunnel::{CONNECTION_WINDOW, MAX_FRAME, MAX_HEADER_LIST, MAX_SEND_BUF, STREAM_WINDOW};
use crate::protocol::{
    MAX_AGENT_SLOTS, PONTE_AGENT_ID, PONTE_AGENT_SLOT, PONTE_ERROR, PONTE_NODE, PONTE_PUBLIC_URL,
    PONTE_TUNNEL, PONTE_TUNNEL_AGENTS, PONTE_VERSION, UPGRADE_TOKEN,
};

/// Longest agent version kept from the handshake (it is shown to operators).
const MAX_VERSION_LEN: usize = 64;

/// Handle `GET /_ponte/v1/connect`.
pub async fn accept(
    state: &Arc<RelayState>,
    conn: ConnInfo,
    mut req: Request<PublicBody>,
    authority: &Authority,
) -> Result<Response<Body>, ProxyError> {
    if !is_ponte_upgrade(&req) {
        return Ok(refusal(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade-required",
            "this endpoint is for Ponte agents (GET with Upgrade: ponte-h2 over HTTP/1.1)",
        ));
    }
    let ip = conn.peer.ip();
    let refused = |why| {
        if let Some(m) = &state.metrics {
            m.login_refused(why);
        }
    };
    if state.registry.login_throttled(ip) {
        refused(LoginRefusal::Throttled);
        return Err(ProxyError::Throttled);
    }
    let Some(token) = bearer_token(&req) else {
        refused(LoginRefusal::TokenMissing);
        state.registry.record_failed_login(ip);
        return Ok(refusal(
            StatusCode::UNAUTHORIZED,
            "token-missing",
            "no token was sent; pass --token or set PONTE_TOKEN",
        ));
    };
    let Some(tunnel) = state.registry.tunnel_for_token(&TokenHash::of(&token)) else {
        refused(LoginRefusal::TokenRejected);
        state.registry.record_failed_login(ip);
        tracing::warn!(peer = %conn.peer, "agent login refused: unknown token");
        return Ok(refusal(
            StatusCode::FORBIDDEN,
            "token-rejected",
            "the relay does not accept this token; check the token you were given for this tunnel",
        ));
    };
    let agent_id = req
        .headers()
        .get(&PONTE_AGENT_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // Which of the agent's HA sessions this is; older agents send none and have one. Folded into
    // the slots an agent may have, so one agent id holds a bounded number of sessions.
    let agent_slot = req
        .headers()
        .get(&PONTE_AGENT_SLOT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0)
        % MAX_AGENT_SLOTS;

    let version = req
        .headers()
        .get(&PONTE_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= MAX_VERSION_LEN && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned);
    let Some(pending) = tunnel.try_login(&agent_id, state.config.limits.max_agents_per_tunnel) else {
        refused(LoginRefusal::TooManyAgents);
        tracing::warn!(tunnel = %tunnel.name, peer = %conn.peer, "agent refused: tunnel has its maximum of agent connections");
        return Ok(refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-agents",
            "this tunnel already has its maximum number of agent connections (limits.max_agents_per_tunnel)",
        ));
    };
    // One token, several agents: requests are split between them. Right for redundancy, a
    // silent mistake when each was meant to serve its own upstream, so say it on both sides.
    let agents = pending.agents();
    if agents > 1 {
        tracing::warn!(tunnel = %tunnel.name, peer = %conn.peer, agent = %agent_id, agents, "another agent joined this tunnel: its requests are now split between {agents} agents (give each its own tunnel if they serve different upstreams)");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The connection's slot moves to the session, which holds it for as long as it lives.
    let slot = req.extensions_mut().remove::<super::slots::ConnSlot>();
    let public_url = public_url(state, conn, authority, &tunnel);
    let node = HeaderValue::from_str(&state.node_id).ok();
    let state = state.clone();
    let peer = conn.peer;
    let session_tunnel = tunnel.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                if let Some(slot) = &slot {
                    slot.promote_to_agent();
                }
                let agent = Agent {
                    id: agent_id,
                    slot: agent_slot,
                    version,
                    peer,
                };
                run_session(state, session_tunnel, agent, upgraded, pending).await;
                drop(slot);
            }
            Err(e) => tracing::warn!(%peer, error = %e, "agent upgrade failed"),
        }
    });

    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_TOKEN));
    if let Ok(v) = HeaderValue::from_str(tunnel.name.as_str()) {
        h.insert(PONTE_TUNNEL.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&public_url) {
        h.insert(PONTE_PUBLIC_URL.clone(), v);
    }
    h.insert(PONTE_TUNNEL_AGENTS.clone(), HeaderValue::from(agents));
    if let Some(v) = node {
        h.insert(PONTE_NODE.clone(), v);
    }
    Ok(resp)
}

/// Who logged in: the agent's instance id, session slot and version, and where it connected from.
struct Agent {
    id: String,
    slot: u32,
    version: Option<String>,
    peer: std::net::SocketAddr,
}

/// Serve one agent connection as its HTTP/2 client until it ends, is evicted, or the relay stops.
async fn run_session(
    state: Arc<RelayState>,
    tunnel: Arc<TunnelState>,
    agent: Agent,
    upgraded: hyper::upgrade::Upgraded,
    pending: super::registry::PendingLogin,
) {
    let Agent {
        id: agent_id,
        slot,
        version,
        peer,
    } = agent;
    // hyper hands the upgraded connection over and the accept loop stops counting it: count it
    // here for as long as the session lives.
    let _open = state.metrics.as_ref().map(|m| m.connection_opened());
    let keepalive = state.config.keepalive;
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(keepalive.interval)
        .keep_alive_timeout(keepalive.timeout)
        // The relay is the client: without this, hyper only pings while streams are open and a
        // blackholed idle tunnel would go unnoticed.
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(MAX_SEND_BUF)
        .handshake::<_, Body>(upgraded)
        .await;
    let (sender, connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "agent HTTP/2 handshake failed");
            return;
        }
    };
    let id = state.registry.next_session_id();
    let session = Arc::new(
        Session::new(
            id,
            agent_id.clone(),
            peer,
            sender,
            state.config.limits.max_streams_per_agent,
        )
        .with_version(version.clone())
        .with_slot(slot),
    );
    tunnel.register(session.clone());
    drop(pending);
    tracing::info!(
        tunnel = %tunnel.name,
        session = id,
        %peer,
        agent = %agent_id,
        slot,
        version = version.as_deref().unwrap_or("unknown"),
        "agent connected"
    );
    let reason = tokio::select! {
        res = connection => match res {
            Ok(()) => "agent closed the connection".to_string(),
            Err(e) => format!("connection error: {e}"),
        },
        _ = session.closed() => if state.sessions_shutdown.is_cancelled() {
            "relay shutting down".to_string()
        } else {
            "replaced by a newer session of the same agent".to_string()
        },
        _ = state.sessions_shutdown.cancelled() => "relay shutting down".to_string(),
    };
    tunnel.deregister(id);
    tracing::info!(tunnel = %tunnel.name, session = id, %peer, %reason, "agent disconnected");
}

fn is_ponte_upgrade<B>(req: &Request<B>) -> bool {
    crate::protocol::headers::is_upgrade_to(req, UPGRADE_TOKEN)
}

fn bearer_token<B>(req: &Request<B>) -> Option<String> {
    super::bearer::presented(req)
        .filter(|token| !token.is_empty())
        .map(str::to_string)
}

/// A refused login: the status and one line the agent prints as is.
fn refusal(status: StatusCode, code: &'static str, reason: &str) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("{reason}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(PONTE_ERROR.clone(), HeaderValue::from_static(code));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::UPGRADE_REQUIRED {
        h.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_TOKEN));
    }
    resp
}

/// Where the public reaches this tunnel, as told to the agent.
fn public_url(state: &RelayState, conn: ConnInfo, authority: &Authority, tunnel: &TunnelState) -> String {
    let scheme = if conn.tls { "https" } else { "http" };
    if let Some(base) = &state.config.public_url {
        return format!("{}/t/{}/", base.as_str().trim_end_matches('/'), tunnel.name);
    }
    if let Some(domain) = &state.config.domain {
        let port = authority
            .raw
            .rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()) && !authority.raw.ends_with(']'))
            .map(|(_, p)| format!(":{p}"))
            .unwrap_or_default();
        return format!("{scheme}://{}.{domain}{port}/", tunnel.name);
    }
    format!("{scheme}://{}/t/{}/", authority.raw, tunnel.name)
}
