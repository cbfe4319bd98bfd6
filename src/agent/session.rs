//! Serve one upgraded relay connection as its HTTP/2 server until it ends or the agent stops.
//! On stop: GOAWAY, then keep polling so in-flight streams finish within the grace period.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;

use super::ingress::Ingress;
use crate::config::agent::AgentConfig;
use crate::protocol::tunnel::{CONNECTION_WINDOW, MAX_FRAME, MAX_HEADER_LIST, MAX_SEND_BUF, STREAM_WINDOW};

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The relay closed it or it failed; reconnect.
    Lost(SessionLost),
    /// The agent is stopping and the session drained (or the grace period ran out).
    Stopped,
}

/// Why a session with the relay ended without the agent asking.
#[derive(Debug, thiserror::Error)]
pub enum SessionLost {
    /// The relay ended the connection cleanly (it stopped, or replaced this session).
    #[error("the relay closed the connection")]
    Closed,
    /// PINGs went unanswered: the network dropped silently (NAT, sleep, Wi-Fi).
    #[error("the relay stopped answering keepalive pings")]
    KeepaliveTimeout(#[source] hyper::Error),
    /// The connection failed.
    #[error("{}", describe(.0))]
    Failed(#[source] hyper::Error),
}

/// Serve the relay's streams on `conn`.
pub async fn serve(
    conn: Upgraded,
    ingress: Arc<Ingress>,
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let svc = service_fn(move |req| {
        let ingress = ingress.clone();
        async move { Ok::<_, std::convert::Infallible>(ingress.serve(req).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(config.keepalive.interval)
        .keep_alive_timeout(config.keepalive.timeout)
        .max_concurrent_streams(config.max_streams)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(MAX_SEND_BUF)
        // Websockets arrive as extended CONNECT (RFC 8441).
        .enable_connect_protocol();
    let connection = builder.serve_connection(conn, svc);
    tokio::pin!(connection);
    tokio::select! {
        res = connection.as_mut() => SessionEnd::Lost(match res {
            Ok(()) => SessionLost::Closed,
            Err(e) if e.is_timeout() => SessionLost::KeepaliveTimeout(e),
            Err(e) => SessionLost::Failed(e),
        }),
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            drain(connection, config.grace_period).await;
            SessionEnd::Stopped
        }
    }
}

async fn drain<F: std::future::Future>(connection: std::pin::Pin<&mut F>, grace: Duration) {
    if tokio::time::timeout(grace, connection).await.is_err() {
        tracing::warn!(?grace, "grace period over; closing with requests still in flight");
    }
}

fn describe(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    if let Some(src) = std::error::Error::source(e) {
        text = format!("{text}: {src}");
    }
    text
}
