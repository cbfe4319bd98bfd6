//! Per-request entry point: find the one authority, route, and hand the request to the agent
//! login, the health check, or the tunnel proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use super::error::ProxyError;
use super::queue::Queues;
use super::registry::Registry;
use super::routing::{self, Route};
use super::{admin, connect, proxy, request};
use crate::body::{self, Body};
use crate::config::relay::RelayConfig;
use crate::protocol::admin::ADMIN_PREFIX;
use crate::protocol::{CONNECT_PATH, HEALTH_PATH};

/// Everything a request handler needs, shared by all connections.
pub struct RelayState {
    /// The configuration.
    pub config: RelayConfig,
    /// Tunnels and their sessions.
    pub registry: Registry,
    /// Cancelled once public connections have drained, to close agent sessions last.
    pub sessions_shutdown: CancellationToken,
    /// The durable queue, when `store:` is configured.
    pub queues: Option<Arc<Queues>>,
}

impl RelayState {
    /// Build the shared state, with the durable queue (if any) already opened by the caller.
    pub fn with_queues(config: RelayConfig, queues: Option<Arc<Queues>>) -> Self {
        RelayState {
            registry: Registry::new(&config),
            config,
            sessions_shutdown: CancellationToken::new(),
            queues,
        }
    }
}

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Answer one request. Never fails: every error becomes a response in [`ProxyError::into_response`].
pub async fn handle(state: Arc<RelayState>, conn: ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match dispatch(&state, conn, req).await {
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
    req: Request<Incoming>,
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
            proxy::forward(state, &tunnel, conn, req, &authority, path).await
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
