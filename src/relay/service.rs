//! Per-request entry point: find the one authority, route, and hand the request to the agent
//! login, the health check, the admin API and console, or [`super::tunnel_request`] for a tunnel.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::console::RelayBackend;
use super::error::ProxyError;
use super::routing::{self, Route};
use super::state::{ConnInfo, RelayState};
use super::stream::Target;
use super::{admin, connect, request, tunnel_request};
use crate::body::{self, Body};
use crate::inspect::console::{CONSOLE_PREFIX, Caller};
use crate::protocol::admin::ADMIN_PREFIX;
use crate::protocol::{CONNECT_PATH, HEALTH_PATH};

/// The console without its trailing slash (redirected to [`CONSOLE_PREFIX`]).
const CONSOLE_PATH: &str = "/_ponte/console";

/// Answer one request. Never fails: every error becomes a response in [`ProxyError::into_response`].
pub async fn handle(state: Arc<RelayState>, conn: ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match dispatch(&state, conn, request::public(req)).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(peer = %conn.peer, %method, %path, status = e.status().as_u16(), error = %e, "request refused");
            e.into_response()
        }
    }
}

async fn dispatch(
    state: &Arc<RelayState>,
    conn: ConnInfo,
    req: Request<request::PublicBody>,
) -> Result<Response<Body>, ProxyError> {
    let authority = request::authority(&req)?;
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match routing::route(&authority.canonical, &path, state.config.domain.as_deref()) {
        Route::Internal => match path.path() {
            CONNECT_PATH => connect::accept(state, conn, req, &authority).await,
            HEALTH_PATH => Ok(health(state)),
            p if p == CONSOLE_PATH || p.starts_with(CONSOLE_PREFIX) => {
                let caller = Caller {
                    peer: conn.peer,
                    tls: conn.tls,
                };
                Ok(state.console.handle(&RelayBackend(state), caller, req).await)
            }
            p if p.starts_with(ADMIN_PREFIX) => admin::handle(state, conn, req).await,
            _ => Err(ProxyError::NotFound(format!(
                "no relay endpoint at {}",
                path.path()
            ))),
        },
        Route::Tunnel { name, path, .. } => {
            let tunnel = state
                .registry
                .tunnel(&name)
                .cloned()
                .ok_or_else(|| ProxyError::NotFound(format!("no tunnel named `{name}`")))?;
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
