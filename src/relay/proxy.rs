//! The live path: one public request as an HTTP/2 stream on an agent session, its body streamed
//! under flow control and the agent's response streamed back. Websocket upgrades become an
//! extended CONNECT (RFC 8441) on the tunnel.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use super::error::ProxyError;
use super::registry::TunnelState;
use super::request::PublicBody;
use super::session::{SendError, Session};
use super::state::RelayState;
use super::stream::{Target, relay_response};
use crate::body::{self, Body, BodyOutcome, GuardedBody};
use crate::protocol::PONTE_UPSTREAM_STATUS;
use crate::protocol::headers::remove_hop_by_hop;

/// The largest body a live request of this tunnel may have.
pub(super) fn live_body_limit(state: &RelayState, tunnel: &TunnelState) -> u64 {
    tunnel
        .config
        .max_body_bytes
        .unwrap_or(state.config.limits.max_body_bytes)
        .0
}

/// Proxy `req` live on `session` (or, if that session turns out dead before the request left,
/// another live session of `tunnel`), its body cut at `limit` bytes.
pub async fn live(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    session: Arc<Session>,
    req: Request<PublicBody>,
    target: Target,
    limit: u64,
) -> Result<Response<Body>, ProxyError> {
    let (parts, incoming) = req.into_parts();
    let uri = target.uri()?;
    let headers = target.headers(state, parts.headers);
    live_prepared(
        state,
        tunnel,
        session,
        parts.method,
        uri,
        headers,
        incoming,
        limit,
    )
    .await
}

/// [`live`] for a request whose stream URI and headers are already built (by this node, or by
/// the node that forwarded it here).
#[allow(clippy::too_many_arguments)]
pub async fn live_prepared<B>(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    session: Arc<Session>,
    method: Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    incoming: B,
    limit: u64,
) -> Result<Response<Body>, ProxyError>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::BoxError>,
{
    let (guarded, outcome) = GuardedBody::new(incoming, limit, state.config.limits.body_idle_timeout);
    let mut out = Request::new(body::boxed(guarded));
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_2;
    *out.headers_mut() = headers;

    let sent = std::time::Instant::now();
    let (resp, permit) = tunnel
        .send(session, out, state.config.limits.response_timeout)
        .await
        .map_err(|e| send_error(e, &outcome, limit))?;
    state.round_trip(&tunnel.name, sent);
    Ok(relay_response(resp, permit))
}

/// Map a failed stream to the sender's answer, preferring what the body guard saw: a body cut
/// for size is a 413, and a malformed one a 400, even if the agent saw only a reset stream.
fn send_error(e: SendError, outcome: &BodyOutcome, limit: u64) -> ProxyError {
    if let Some(e) = body_error(outcome, limit) {
        return e;
    }
    match e {
        SendError::Timeout => ProxyError::Timeout,
        SendError::Busy(n) => ProxyError::AgentFailed(format!("all {n} streams busy")),
        SendError::Failed(e) => ProxyError::AgentFailed(e.to_string()),
    }
}

/// What the body guard saw, if the sender's body was at fault.
pub(super) fn body_error(outcome: &BodyOutcome, limit: u64) -> Option<ProxyError> {
    if outcome.was_too_large() {
        return Some(ProxyError::TooLarge { limit });
    }
    if outcome.was_idle() {
        return Some(ProxyError::BodyStalled);
    }
    if outcome.was_broken() {
        return Some(ProxyError::BadRequest(
            "the request body is malformed or was cut off".into(),
        ));
    }
    None
}

/// A websocket: extended CONNECT on the tunnel (through the same send path as any request, so a
/// session found dead before the CONNECT left is replaced by another), `101` to the sender once
/// the agent's upstream accepted, then bytes copied both ways until either side closes.
pub async fn websocket(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    session: Arc<Session>,
    mut req: Request<PublicBody>,
    target: Target,
) -> Result<Response<Body>, ProxyError> {
    let public = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let uri = target.uri()?;
    let headers = target.headers(state, parts.headers);
    let peer = target.conn.peer;
    websocket_prepared(
        state,
        tunnel,
        session,
        public,
        uri,
        headers,
        peer,
        Switch::Upgrade,
    )
    .await
}

/// How the sender of a websocket is told it was accepted.
#[derive(Debug, Clone, Copy)]
pub enum Switch {
    /// HTTP/1.1 `101 Switching Protocols` (a public sender).
    Upgrade,
    /// HTTP/2 `200` to an extended CONNECT, the headers as the agent gave them (another relay
    /// node, which makes the `101` for its sender).
    ConnectOk,
}

/// [`websocket`] with the stream URI and headers already built (by this node, or by the node
/// that passed the websocket here).
#[allow(clippy::too_many_arguments)]
pub async fn websocket_prepared(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    session: Arc<Session>,
    public: hyper::upgrade::OnUpgrade,
    uri: http::Uri,
    headers: http::HeaderMap,
    peer: std::net::SocketAddr,
    switch: Switch,
) -> Result<Response<Body>, ProxyError> {
    let mut out = Request::new(body::empty());
    *out.method_mut() = Method::CONNECT;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_2;
    *out.headers_mut() = headers;
    out.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));

    let sent = std::time::Instant::now();
    let (mut resp, permit) = tunnel
        .send(session, out, state.config.limits.response_timeout)
        .await
        .map_err(|e| send_error(e, &BodyOutcome::default(), 0))?;
    state.round_trip(&tunnel.name, sent);
    if resp.status() != StatusCode::OK {
        // The upstream answered without upgrading: pass its answer on as a normal response.
        restore_upstream_status(&mut resp);
        return Ok(relay_response(resp, permit));
    }
    Ok(switched(state, public, resp, permit, peer, switch))
}

/// The other side (agent or relay node) accepted a websocket with `resp` (`200` to an extended
/// CONNECT): copy bytes between it and the sender's upgraded connection once both are ready,
/// holding `hold` (the stream's permit) meanwhile, and answer the sender as `switch` says.
pub fn switched<B, H>(
    state: &RelayState,
    public: hyper::upgrade::OnUpgrade,
    mut resp: Response<B>,
    hold: H,
    peer: std::net::SocketAddr,
    switch: Switch,
) -> Response<Body>
where
    H: Send + 'static,
{
    let other = hyper::upgrade::on(&mut resp);
    // The upgraded public connection leaves the accept loop's count; count it while it lives.
    let open = state.metrics.as_ref().map(|m| m.connection_opened());
    tokio::spawn(async move {
        let (_hold, _open) = (hold, open);
        match tokio::try_join!(public, other) {
            Ok((public, other)) => {
                let mut public = TokioIo::new(public);
                let mut other = TokioIo::new(other);
                if let Err(e) = tokio::io::copy_bidirectional(&mut public, &mut other).await {
                    tracing::debug!(%peer, error = %e, "websocket ended");
                }
            }
            Err(e) => tracing::debug!(%peer, error = %e, "websocket upgrade failed"),
        }
    });
    let mut headers = resp.headers().clone();
    remove_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    let mut out = Response::new(body::empty());
    *out.headers_mut() = headers;
    match switch {
        Switch::Upgrade => {
            *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            out.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            out.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        Switch::ConnectOk => *out.status_mut() = StatusCode::OK,
    }
    out
}

/// The status the upstream gave a websocket upgrade it declined, as the agent carried it in
/// `Ponte-Upstream-Status` (never a 1xx: only the agent's `200` means "upgraded").
fn restore_upstream_status<B>(resp: &mut Response<B>) {
    let Some(value) = resp.headers_mut().remove(&PONTE_UPSTREAM_STATUS) else {
        return;
    };
    let status = value
        .to_str()
        .ok()
        .and_then(|v| StatusCode::from_bytes(v.as_bytes()).ok())
        .filter(|s| !s.is_informational());
    if let Some(status) = status {
        *resp.status_mut() = status;
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::uri::PathAndQuery;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::request::Authority;
    use super::super::state::ConnInfo;
    use super::*;

    fn state() -> Arc<RelayState> {
        let cfg = crate::config::relay::RelayConfig::from_str_with_env(
            "tunnels:\n  t:\n    token: 0123456789abcdef0123\n",
            "relay.yaml",
            &|_| None,
        )
        .unwrap();
        Arc::new(RelayState::with_queues(cfg, None))
    }

    fn target() -> Target {
        Target {
            conn: ConnInfo {
                peer: "127.0.0.1:2".parse().unwrap(),
                tls: false,
            },
            authority: Authority {
                raw: "t.example".into(),
                canonical: "t.example".into(),
            },
            path: PathAndQuery::from_static("/ws"),
        }
    }

    #[tokio::test]
    async fn a_websocket_not_sent_on_a_dead_session_goes_to_a_live_one() {
        let state = state();
        let tunnel = state.registry.tunnels().next().unwrap().clone();
        let (dead, _live_conn) = tunnel.with_dead_and_live_session().await;

        // The public side: one in-memory HTTP/1.1 connection whose requests go to `websocket`
        // on the dead session, as if it had been picked just before it died.
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let svc_state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (state, tunnel, session) = (svc_state.clone(), tunnel.clone(), dead.clone());
                async move {
                    let req = super::super::request::public(req, None);
                    let resp = websocket(&state, &tunnel, session, req, target())
                        .await
                        .unwrap_or_else(|e| e.into_response());
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), svc)
                .with_upgrades()
                .await;
        });
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        let req = Request::get("/ws")
            .header(header::HOST, "t.example")
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .body(body::empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
        io.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        io.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
    }

    #[test]
    fn a_declined_upgrade_gets_the_upstreams_status_back() {
        let carried = |status: u16, marker: Option<&str>| {
            let mut resp = Response::new(());
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(m) = marker {
                resp.headers_mut()
                    .insert(&PONTE_UPSTREAM_STATUS, HeaderValue::from_str(m).unwrap());
            }
            restore_upstream_status(&mut resp);
            assert!(resp.headers().get(&PONTE_UPSTREAM_STATUS).is_none());
            resp.status().as_u16()
        };
        assert_eq!(carried(502, Some("200")), 200);
        assert_eq!(carried(401, Some("401")), 401);
        assert_eq!(carried(502, Some("204")), 204);
        // The agent's own answers carry no marker; a marker that is not a final status is ignored.
        assert_eq!(carried(504, None), 504);
        assert_eq!(carried(502, Some("101")), 502);
        assert_eq!(carried(502, Some("abc")), 502);
    }
}
