//! Per-request entry point: find the one authority, route, and hand the request to the agent
//! login, the health and readiness checks, the metrics, the admin API and console, or
//! [`super::tunnel_request`] for a tunnel. Requests that are not for the relay's own endpoints
//! are logged and counted by [`super::access`].

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::access::{Exchange, ForwardedFrom};
use super::console::RelayBackend;
use super::error::ProxyError;
use super::metrics::Limit;
use super::registry::TunnelState;
use super::routing::{self, Route};
use super::state::{ConnInfo, RelayState};
use super::stream::Target;
use super::{admin, connect, forward, monitor, request, tunnel_request};
use crate::body::{self, Body};
use crate::inspect::console::{CONSOLE_PREFIX, Caller};
use crate::protocol::admin::ADMIN_PREFIX;
use crate::protocol::cluster::FORWARD_PATH;
use crate::protocol::{CONNECT_PATH, HEALTH_PATH, METRICS_PATH, READY_PATH};

/// The console without its trailing slash (redirected to [`CONSOLE_PREFIX`]).
const CONSOLE_PATH: &str = "/_ponte/console";

/// Answer one request. Never fails: every error becomes a response in [`ProxyError::into_response`].
pub async fn handle(state: Arc<RelayState>, conn: ConnInfo, req: Request<Incoming>) -> Response<Body> {
    if !state.observing() {
        let (resp, _) = answer(&state, conn, request::public(req, None)).await;
        return resp;
    }
    let exchange = Exchange::begin(&req, conn.peer);
    let (resp, reached) = answer(&state, conn, request::public(req, Some(exchange.bytes_in()))).await;
    match reached {
        // Logged here, counted by the node the sender reached (see `access`).
        Reached::Internal => match resp.extensions().get::<ForwardedFrom>() {
            Some(from) => {
                let tunnel = from.tunnel.clone();
                exchange.finish(resp, Some(tunnel), state.config.access_log, None)
            }
            None => resp,
        },
        Reached::Tunnel(t) => exchange.finish(resp, Some(t), state.config.access_log, state.metrics.clone()),
        Reached::Nothing => exchange.finish(resp, None, state.config.access_log, state.metrics.clone()),
    }
}

/// What a request reached: the relay's own endpoints are not tunnel traffic and are not
/// access-logged (agent logins have their own lines).
enum Reached {
    /// `/_ponte/…` on the relay's own host.
    Internal,
    /// A configured tunnel.
    Tunnel(Arc<TunnelState>),
    /// No configured tunnel (unknown name, no route, or refused before routing).
    Nothing,
}

async fn answer(
    state: &Arc<RelayState>,
    conn: ConnInfo,
    req: Request<request::PublicBody>,
) -> (Response<Body>, Reached) {
    let mut reached = Reached::Nothing;
    let method = req.method().clone();
    let resp = match dispatch(state, conn, req, &mut reached).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(peer = %conn.peer, %method, status = e.status().as_u16(), error = %e, "request refused");
            if let Some(m) = &state.metrics
                && let Some(limit) = limit_of(&e)
            {
                m.limit_hit(limit);
            }
            e.into_response()
        }
    };
    (resp, reached)
}

/// The limit behind a refusal, if it was one.
fn limit_of(e: &ProxyError) -> Option<Limit> {
    match e {
        ProxyError::TooLarge { .. } => Some(Limit::MaxBodyBytes),
        ProxyError::HeadersTooLarge => Some(Limit::MaxHeaderBytes),
        ProxyError::BodyStalled => Some(Limit::BodyIdleTimeout),
        ProxyError::Throttled => Some(Limit::MaxFailedLogins),
        _ => None,
    }
}

async fn dispatch(
    state: &Arc<RelayState>,
    conn: ConnInfo,
    req: Request<request::PublicBody>,
    reached: &mut Reached,
) -> Result<Response<Body>, ProxyError> {
    request::check_header_size(&req, state.config.limits.max_header_bytes.0)?;
    let authority = request::authority(&req)?;
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match routing::route(&authority.canonical, &path, state.config.domain.as_deref()) {
        Route::Internal => {
            *reached = Reached::Internal;
            let path = path.path().to_owned();
            // Boxed: the console, admin API and agent login make a future several times the
            // size of a tunnel request's, and hyper moves every request's future into place.
            Box::pin(internal(state, conn, req, &authority, &path)).await
        }
        Route::Tunnel { name, path, .. } => {
            let tunnel = state
                .registry
                .tunnel(&name)
                .cloned()
                .ok_or_else(|| ProxyError::NotFound(format!("no tunnel named `{name}`")))?;
            *reached = Reached::Tunnel(tunnel.clone());
            let target = Target {
                conn,
                authority,
                path,
            };
            tunnel_request::handle(state, &tunnel, req, target).await
        }
        Route::NotFound => Err(ProxyError::NotFound(
            "use https://<tunnel>.<domain>/ or /t/<tunnel>/".into(),
        )),
    }
}

/// The relay's own endpoints under `/_ponte/`.
async fn internal(
    state: &Arc<RelayState>,
    conn: ConnInfo,
    req: Request<request::PublicBody>,
    authority: &request::Authority,
    path: &str,
) -> Result<Response<Body>, ProxyError> {
    match path {
        CONNECT_PATH => connect::accept(state, conn, req, authority).await,
        FORWARD_PATH => forward::accept(state, conn, req).await,
        HEALTH_PATH => Ok(health(state)),
        READY_PATH => Ok(monitor::ready(state)),
        METRICS_PATH => monitor::public_metrics(state, conn, &req).await,
        p if p == CONSOLE_PATH || p.starts_with(CONSOLE_PREFIX) => {
            let caller = Caller {
                peer: conn.peer,
                tls: conn.tls,
            };
            Ok(state.console.handle(&RelayBackend(state), caller, req).await)
        }
        p if p.starts_with(ADMIN_PREFIX) => admin::handle(state, conn, req).await,
        _ => Err(ProxyError::NotFound(format!("no relay endpoint at {path}"))),
    }
}

fn health(state: &RelayState) -> Response<Body> {
    // Counts only: tunnel names are not advertised to anonymous callers.
    let agents: usize = state.registry.tunnels().map(|t| t.connected_count()).sum();
    let body = serde_json::json!({ "status": "ok", "version": crate::VERSION, "agents": agents });
    let mut resp = Response::new(body::full(body.to_string()));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
