//! Forward one public request over an agent session: edge auth, size limits, the request as an
//! HTTP/2 stream with its body streamed under flow control, and the response streamed back.
//! Websocket upgrades become an extended CONNECT (RFC 8441) on the tunnel.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;

use super::edge_auth;
use super::error::ProxyError;
use super::queue::{self, Decision};
use super::registry::TunnelState;
use super::request::{self, Authority};
use super::service::{ConnInfo, RelayState};
use super::session::{SendError, Session};
use crate::BoxError;
use crate::body::{self, Body, BodyOutcome, GuardedBody};
use crate::protocol::headers::remove_hop_by_hop;
use crate::protocol::{PONTE_ATTEMPT, PONTE_DELIVERY_ID};

/// How long a request waits for an agent whose login was accepted but whose session is still
/// being set up (a few milliseconds on a healthy link).
const PENDING_LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Proxy `req` to `tunnel`.
pub async fn forward(
    state: &Arc<RelayState>,
    tunnel: &Arc<TunnelState>,
    conn: ConnInfo,
    req: Request<Incoming>,
    authority: &Authority,
    mut path: PathAndQuery,
) -> Result<Response<Body>, ProxyError> {
    let cfg = &tunnel.config;
    if let Some(auth) = &cfg.auth
        && let Some(query) = edge_auth::check(auth, req.headers(), path.query())?
    {
        path = with_query(path.path(), &query)?;
    }
    let limit = cfg.max_body_bytes.unwrap_or(state.config.limits.max_body_bytes).0;
    if declared_length(&req).is_some_and(|n| n > limit) {
        return Err(ProxyError::TooLarge { limit });
    }
    // A queued tunnel does not wait for a login in progress: it can commit the request instead.
    let session = tunnel.pick();
    if let Some(queue) = state.queues.as_ref().and_then(|q| q.tunnel(&tunnel.name)) {
        let mut decision = queue::decide(cfg, queue, &req, session.is_some());
        let limit = queue::body_limit(state, tunnel);
        if decision != Decision::Live && declared_length(&req).is_some_and(|n| n > limit) {
            if decision != Decision::LiveOrQueue {
                return Err(ProxyError::TooLarge { limit });
            }
            // Too large to keep, but the agent is up: stream it live as `direct` would.
            decision = Decision::Live;
        }
        if decision != Decision::Live {
            return match (decision, session) {
                (Decision::LiveOrQueue, Some(session)) => {
                    queue::live_or_queue(state, tunnel, queue, session, conn, req, authority, path).await
                }
                _ => queue::accept(state, tunnel, queue, conn, req, authority, path).await,
            };
        }
    }
    let session = match session {
        Some(s) => s,
        None => tunnel
            .pick_or_wait(PENDING_LOGIN_WAIT)
            .await
            .ok_or(ProxyError::AgentOffline)?,
    };
    if request::is_websocket_upgrade(&req) {
        return websocket(state, &session, conn, req, authority, path).await;
    }

    let (parts, incoming) = req.into_parts();
    let (guarded, outcome) = GuardedBody::new(incoming, limit, state.config.limits.body_idle_timeout);
    let mut out = Request::new(body::boxed(guarded));
    *out.method_mut() = parts.method;
    *out.uri_mut() = tunnel_uri(conn, authority, path)?;
    *out.version_mut() = Version::HTTP_2;
    *out.headers_mut() = tunnel_headers(state, conn, authority, parts.headers);

    let (resp, permit) = tunnel
        .send(session, out, state.config.limits.response_timeout)
        .await
        .map_err(|e| send_error(e, &outcome, limit))?;
    Ok(relay_response(resp, permit))
}

/// The agent's response as the sender gets it: hop-by-hop headers removed, HTTP/1.1 framing,
/// and the stream permit held until the body is finished.
pub(super) fn relay_response(resp: Response<Incoming>, permit: OwnedSemaphorePermit) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        body::boxed(HoldPermit {
            inner: body,
            _permit: permit,
        }),
    )
}

/// The URI of the stream on the tunnel: the public scheme and host, the forwarded path.
pub(super) fn tunnel_uri(
    conn: ConnInfo,
    authority: &Authority,
    path: PathAndQuery,
) -> Result<Uri, ProxyError> {
    let host = if authority.raw.is_empty() {
        "unknown"
    } else {
        authority.raw.as_str()
    };
    Uri::builder()
        .scheme(if conn.tls { "https" } else { "http" })
        .authority(host)
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded".into()))
}

pub(super) fn tunnel_headers(
    state: &RelayState,
    conn: ConnInfo,
    authority: &Authority,
    mut headers: http::HeaderMap,
) -> http::HeaderMap {
    remove_hop_by_hop(&mut headers);
    // HTTP/2 carries the host in :authority.
    headers.remove(header::HOST);
    // Only the relay sets these: a forged delivery id could make a receiver drop a real webhook.
    headers.remove(&PONTE_DELIVERY_ID);
    headers.remove(&PONTE_ATTEMPT);
    request::add_forwarded(
        &mut headers,
        conn.peer,
        conn.tls,
        &authority.raw,
        state.config.trust_forwarded_headers,
    );
    headers
}

/// Map a failed stream to the sender's answer, preferring what the body guard saw: a body cut
/// for size is a 413 even if the agent saw only a reset stream.
fn send_error(e: SendError, outcome: &BodyOutcome, limit: u64) -> ProxyError {
    if outcome.was_too_large() {
        return ProxyError::TooLarge { limit };
    }
    if outcome.was_idle() {
        return ProxyError::BodyStalled;
    }
    match e {
        SendError::Timeout => ProxyError::Timeout,
        SendError::Busy(n) => ProxyError::AgentFailed(format!("all {n} streams busy")),
        SendError::Failed(e) => ProxyError::AgentFailed(e.to_string()),
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

/// A websocket: extended CONNECT on the tunnel, `101` to the sender once the agent's upstream
/// accepted, then bytes copied both ways until either side closes.
async fn websocket(
    state: &Arc<RelayState>,
    session: &Arc<Session>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
    authority: &Authority,
    path: PathAndQuery,
) -> Result<Response<Body>, ProxyError> {
    let public_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let mut out = Request::new(body::empty());
    *out.method_mut() = Method::CONNECT;
    *out.uri_mut() = tunnel_uri(conn, authority, path)?;
    *out.version_mut() = Version::HTTP_2;
    *out.headers_mut() = tunnel_headers(state, conn, authority, parts.headers);
    out.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));

    let (mut resp, permit) = session
        .send(out, state.config.limits.response_timeout)
        .await
        .map_err(|e| send_error(e, &BodyOutcome::default(), 0))?;
    if resp.status() != StatusCode::OK {
        // The upstream refused the upgrade: pass its answer on as a normal response.
        return Ok(relay_response(resp, permit));
    }
    let agent_upgrade = hyper::upgrade::on(&mut resp);
    let peer = conn.peer;
    tokio::spawn(async move {
        let _permit = permit;
        match tokio::try_join!(public_upgrade, agent_upgrade) {
            Ok((public, agent)) => {
                let mut public = TokioIo::new(public);
                let mut agent = TokioIo::new(agent);
                if let Err(e) = tokio::io::copy_bidirectional(&mut public, &mut agent).await {
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
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *out.headers_mut() = headers;
    out.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Ok(out)
}

pin_project_lite::pin_project! {
    /// A response body that keeps the session's stream permit until it is dropped.
    struct HoldPermit<B> {
        #[pin]
        inner: B,
        _permit: OwnedSemaphorePermit,
    }
}

impl<B> HttpBody for HoldPermit<B>
where
    B: HttpBody<Data = bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx).map_err(Into::into)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
