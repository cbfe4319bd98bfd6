//! The accept loop and each client connection: a connection slot (with a share kept for agent
//! logins), the TLS handshake under a deadline, HTTP/1.1 or HTTP/2 (ALPN, or the prior-knowledge
//! preface on plain TCP), header and idle timeouts on both, rapid-reset budgets, the response
//! body idle timeout, and graceful drain on shutdown.

mod activity;
mod goaway;
mod resets;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::activity::{Activity, Idle, Tracked};
use self::resets::{ConnResets, ResetBudgets};
use super::error::ProxyError;
use super::slots::{ConnSlot, Slots};
use super::state::{ConnInfo, RelayState};
use super::{proxy_protocol, request, service};
use crate::body::{self, GuardedBody};
use crate::config::relay::Limits;
use crate::protocol::CONNECT_PATH;

/// Concurrent streams one public HTTP/2 connection may open.
const PUBLIC_MAX_STREAMS: u32 = 100;
/// The HTTP/2 client preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Time a connection closed for idleness or abuse gets to finish its close before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// At most one warning per this interval for refused connections: under a flood, the log must
/// not become the next thing that fills up.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the accept loop shares with every connection.
struct Guards {
    slots: Slots,
    resets: Arc<ResetBudgets>,
    last_warning: Mutex<Option<Instant>>,
}

impl Guards {
    fn should_warn(&self) -> bool {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(t) if t.elapsed() < WARN_EVERY => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }
}

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
    let limits = &state.config.limits;
    let guards = Arc::new(Guards {
        slots: Slots::new(limits),
        resets: ResetBudgets::new(limits, state.config.trust_forwarded_headers),
        last_warning: Mutex::new(None),
    });
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
        let Some(slot) = guards.slots.acquire() else {
            if guards.should_warn() {
                tracing::warn!(%peer, max = limits.max_connections, "connection limit reached; refusing (limits.max_connections); repeats are logged at debug level for 10 s");
            } else {
                tracing::debug!(%peer, "connection limit reached; refusing");
            }
            if let Some(m) = &state.metrics {
                m.connection_refused();
            }
            continue;
        };
        let (state, guards, shutdown, tls) = (state.clone(), guards.clone(), shutdown.clone(), tls.clone());
        tracker.spawn(async move {
            let Some((stream, peer)) = client_of(stream, peer, &state).await else { return };
            if guards.resets.address_blocked(peer.ip()) {
                if guards.should_warn() {
                    tracing::warn!(%peer, "refusing connections from an address that cancelled too many requests (limits.max_resets_per_address); repeats are logged at debug level for 10 s");
                } else {
                    tracing::debug!(%peer, "refusing a connection: address over its reset budget");
                }
                return;
            }
            let conn = Conn {
                peer,
                slot,
                resets: guards.resets.connection(peer.ip()),
                state: state.clone(),
                shutdown,
            };
            let _open = state.metrics.as_ref().map(|m| m.connection_opened());
            let span = tracing::debug_span!("conn", %peer);
            conn.serve(stream, tls).instrument(span).await;
        });
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

/// The connection and its client's address: from a `proxy_protocol:` load balancer, the one in
/// its PROXY header (`None`: the header was malformed or late, and the connection is dropped).
async fn client_of(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &RelayState,
) -> Option<(TcpStream, SocketAddr)> {
    let from = &state.config.proxy_protocol;
    if !proxy_protocol::trusted(peer.ip(), from) {
        return Some((stream, peer));
    }
    match proxy_protocol::read(&mut stream, state.config.limits.header_read_timeout).await {
        Ok(client) => Some((stream, client.unwrap_or(peer))),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "closing a connection from a proxy_protocol load balancer; set `send-proxy-v2` on its server lines");
            None
        }
    }
}

/// One client connection.
struct Conn {
    peer: SocketAddr,
    slot: ConnSlot,
    resets: ConnResets,
    state: Arc<RelayState>,
    shutdown: CancellationToken,
}

/// How the driver of a connection stopped.
enum End<T> {
    /// hyper finished (the client closed, an error, or a graceful close completed).
    Finished(T),
    /// Over its reset budget: cut with GOAWAY (ENHANCE_YOUR_CALM).
    Abusive,
    /// Idle, and the graceful close did not finish in time: cut.
    Idle,
    /// No complete request head in time (silent, or slowloris): cut.
    Silent,
}

impl Conn {
    async fn serve(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let _ = stream.set_nodelay(true);
        let limits = &self.state.config.limits;
        match tls {
            Some(acceptor) => {
                let accepted =
                    tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await;
                let stream = match accepted {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                self.serve_http(stream, true, h2).await
            }
            None => {
                let h2 = match tokio::time::timeout(limits.header_read_timeout, sniff_h2(&stream)).await {
                    Ok(Ok(h2)) => h2,
                    Ok(Err(_)) | Err(_) => return,
                };
                self.serve_http(stream, false, h2).await
            }
        }
    }

    async fn serve_http<I>(self, io: I, tls: bool, h2: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if h2 && self.slot.is_reserved() {
            // Agents log in over HTTP/1.1: an HTTP/2 connection can never use the reserve.
            return tracing::debug!(peer = %self.peer, "HTTP/2 connection refused: every public slot is taken");
        }
        let Conn {
            peer,
            slot,
            resets,
            state,
            shutdown,
        } = self;
        let conn = ConnInfo { peer, tls };
        let limits = state.config.limits.clone();
        let activity = Activity::new(resets);
        let metrics = state.metrics.clone();
        let svc = {
            let activity = activity.clone();
            service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                let guard = activity.begin();
                let state = state.clone();
                let slot = slot.clone();
                async move {
                    let resp = if slot.is_reserved() && req.uri().path() != CONNECT_PATH {
                        slots_taken()
                    } else {
                        // The agent login takes the slot over for its session.
                        req.extensions_mut().insert(slot);
                        service::handle(state.clone(), conn, req).await
                    };
                    // A stalled agent response must not hold its stream (and the sender) forever.
                    let idle = state.config.limits.response_body_idle_timeout;
                    let resp = resp.map(|b| {
                        body::boxed(Tracked::new(body::boxed(GuardedBody::idle_only(b, idle)), guard))
                    });
                    Ok::<_, std::convert::Infallible>(resp)
                }
            })
        };
        if h2 {
            let (io, cutter) = goaway::wrap(io);
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                // Other relay nodes pass websockets on as extended CONNECT (RFC 8441);
                // `request::authority` refuses CONNECT anywhere else.
                .enable_connect_protocol()
                .max_concurrent_streams(PUBLIC_MAX_STREAMS)
                .max_header_list_size(
                    (limits
                        .max_header_bytes
                        .0
                        .saturating_mul(request::H2_HEADER_BACKSTOP))
                    .min(u32::MAX as u64) as u32,
                );
            let end = {
                let conn_fut = std::pin::pin!(builder.serve_connection(TokioIo::new(io), svc));
                drive(conn_fut, &shutdown, &activity, &limits, |c| c.graceful_shutdown()).await
            };
            // hyper is stopped here; the connection is ours to finish.
            match end {
                End::Finished(Ok(())) => {}
                End::Finished(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
                End::Abusive => {
                    tracing::debug!(%peer, "client cancelled too many requests; GOAWAY (ENHANCE_YOUR_CALM)");
                    cutter
                        .goaway(
                            goaway::ENHANCE_YOUR_CALM,
                            b"too_many_cancelled_requests",
                            CLOSE_GRACE,
                        )
                        .await
                }
                End::Idle | End::Silent => cutter.close(CLOSE_GRACE).await,
            }
        } else {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(limits.max_header_bytes.0 as usize)
                .max_headers(100);
            let conn_fut = std::pin::pin!(builder.serve_connection(TokioIo::new(io), svc).with_upgrades());
            if let End::Finished(Err(e)) =
                drive(conn_fut, &shutdown, &activity, &limits, |c| c.graceful_shutdown()).await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                // hyper answered 431 itself (HTTP/1.1); HTTP/2's is the relay's (`request::check_header_size`).
                if e.is_parse_too_large()
                    && let Some(m) = &metrics
                {
                    m.limit_hit(super::metrics::Limit::MaxHeaderBytes);
                }
            }
        }
    }
}

/// The answer on a connection that got one of the slots kept for agent logins.
fn slots_taken() -> http::Response<body::Body> {
    let mut resp =
        ProxyError::Unavailable("every connection slot for public clients is taken".into()).into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
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

/// Drive a hyper connection until it ends. On shutdown start its graceful close (GOAWAY, or
/// finish the current HTTP/1.1 exchange) and keep driving it until in-flight requests are done.
/// When it goes idle after a request, close it gracefully within [`CLOSE_GRACE`]; when its first
/// request head does not arrive in time, or it goes over its reset budget, stop at once.
async fn drive<F, T>(
    mut conn: std::pin::Pin<&mut F>,
    shutdown: &CancellationToken,
    activity: &Activity,
    limits: &Limits,
    graceful: impl FnOnce(std::pin::Pin<&mut F>),
) -> End<T>
where
    F: std::future::Future<Output = T>,
{
    tokio::select! {
        res = conn.as_mut() => End::Finished(res),
        _ = shutdown.cancelled() => {
            graceful(conn.as_mut());
            End::Finished(conn.await)
        }
        _ = activity.resets().exceeded() => End::Abusive,
        why = activity.idle(limits.header_read_timeout, limits.idle_timeout) => {
            tracing::debug!(?why, "closing an idle connection");
            if why == Idle::NoRequest {
                return End::Silent;
            }
            graceful(conn.as_mut());
            match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
                Ok(res) => End::Finished(res),
                Err(_) => End::Idle,
            }
        }
    }
}
