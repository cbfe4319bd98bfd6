//! The accept loop: connection cap, TLS handshake under a deadline, HTTP/1.1 or HTTP/2 (ALPN, or
//! the prior-knowledge preface on plain TCP), and graceful drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::service;
use super::state::{ConnInfo, RelayState};

/// Concurrent streams one public HTTP/2 connection may open.
const PUBLIC_MAX_STREAMS: u32 = 100;
/// The HTTP/2 client preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accept until `shutdown`, then drain within the grace period and close agent sessions last.
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<RelayState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), tunnels = state.config.tunnels.len(), "relay listening");
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(state.config.limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            res = listener.accept() => match res {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = state.config.limits.max_connections, "connection limit reached; refusing");
            if let Some(m) = &state.metrics {
                m.connection_refused();
            }
            continue;
        };
        let open = state.metrics.as_ref().map(|m| m.connection_opened());
        let state = state.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let span = tracing::debug_span!("conn", %peer);
        tracker.spawn(
            async move {
                let (_slot, _open) = (slot, open);
                serve_connection(stream, peer, tls, state, shutdown).await;
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracker.close();
    let grace = state.config.grace_period;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(?grace, "grace period over; closing remaining connections");
    }
    state.sessions_shutdown.cancel();
    state.registry.close_all();
    tracing::info!("relay stopped");
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<TlsAcceptor>,
    state: Arc<RelayState>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let limits = &state.config.limits;
    match tls {
        Some(acceptor) => {
            let accepted = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await;
            let stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_http(stream, ConnInfo { peer, tls: true }, h2, state, shutdown).await;
        }
        None => {
            let h2 = match tokio::time::timeout(limits.header_read_timeout, sniff_h2(&stream)).await {
                Ok(Ok(h2)) => h2,
                Ok(Err(_)) | Err(_) => return,
            };
            serve_http(stream, ConnInfo { peer, tls: false }, h2, state, shutdown).await;
        }
    }
}

/// Plain TCP: HTTP/2 with prior knowledge starts with the fixed preface; anything else is HTTP/1.
async fn sniff_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial match: wait for more bytes rather than guessing.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve_http<I>(io: I, conn: ConnInfo, h2: bool, state: Arc<RelayState>, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = state.config.limits.clone();
    let svc_state = state.clone();
    let svc = service_fn(move |req| {
        let state = svc_state.clone();
        async move { Ok::<_, std::convert::Infallible>(service::handle(state, conn, req).await) }
    });
    let io = TokioIo::new(io);
    let result = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(PUBLIC_MAX_STREAMS)
            .max_header_list_size(limits.max_header_bytes.0.min(u32::MAX as u64) as u32);
        let conn_fut = std::pin::pin!(builder.serve_connection(io, svc));
        until_drained(conn_fut, &shutdown, |c| c.graceful_shutdown()).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_bytes.0 as usize)
            .max_headers(100);
        let conn_fut = std::pin::pin!(builder.serve_connection(io, svc).with_upgrades());
        until_drained(conn_fut, &shutdown, |c| c.graceful_shutdown()).await
    };
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
        // hyper answered 431 itself (HTTP/1.1); HTTP/2's 431 is sent by the h2 layer unseen.
        if e.is_parse_too_large()
            && let Some(m) = &state.metrics
        {
            m.limit_hit(super::metrics::Limit::MaxHeaderBytes);
        }
    }
}

/// Drive a hyper connection; on shutdown start its graceful close (GOAWAY, or finish the current
/// HTTP/1.1 exchange) and keep driving it until in-flight requests are done.
async fn until_drained<F, T>(
    mut conn: std::pin::Pin<&mut F>,
    shutdown: &CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut F>),
) -> T
where
    F: std::future::Future<Output = T>,
{
    tokio::select! {
        res = conn.as_mut() => res,
        _ = shutdown.cancelled() => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}
