//! Serve one upgraded relay connection as its HTTP/2 server until it ends or the agent stops.
//! On stop: GOAWAY, then keep polling so in-flight streams finish within the grace period.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;

use super::ingress::Ingress;
use crate::body::{self, GuardedBody};
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
    let body_idle = config.upstream_body_idle_timeout;
    let svc = service_fn(move |req| {
        let ingress = ingress.clone();
        async move {
            let resp = ingress.serve(req.map(body::boxed)).await;
            // An upstream that stalls mid-body must not hold one of the tunnel's streams forever.
            let resp = resp.map(|b| body::boxed(GuardedBody::idle_only(b, body_idle)));
            Ok::<_, std::convert::Infallible>(resp)
        }
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
        // Streams the relay reset before this agent accepted them: h2's default cap (20) is
        // meant for an anonymous peer; here every public sender's cancellation arrives through
        // the one authenticated relay, and tripping any cap drops the tunnel for all senders
        // (`ENHANCE_YOUR_CALM`). No fixed cap is safe: h2 reads every frame waiting on the
        // socket before this agent accepts the next stream, so when the agent is starved of CPU
        // a burst can hold tens of thousands (10,000 was seen tripped on a loaded 2-core
        // machine). The relay bounds resets per public client (`limits.max_resets_*`), and the
        // socket buffer bounds a burst. (`None` would mean h2's default of 20, not "no cap".)
        .max_pending_accept_reset_streams(usize::MAX)
        // h2 counts the resets it generates itself over the whole life of a connection and
        // never forgets them: on a tunnel that stays up for weeks, any cap is a countdown to a
        // dropped tunnel. The peer is the authenticated relay, not an anonymous client.
        .max_local_error_reset_streams(None)
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
