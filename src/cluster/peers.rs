//! HTTP/2 connections to the other nodes, one per node, made on first use and reused by every
//! request forwarded there (HTTP/2 multiplexes them). TLS when the node's advertise URL is
//! https, trusting the web's roots plus `cluster.ca_file`; plain HTTP/2 (prior knowledge) for
//! http.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::Body;
use crate::protocol::tunnel::{CONNECTION_WINDOW, MAX_FRAME, MAX_SEND_BUF, STREAM_WINDOW};

/// Longest time to set up a connection to another node (TCP, TLS and HTTP/2).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// PING interval on an idle node-to-node connection, and how long an answer may take.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// A node that could not be reached is not dialed again for this long: requests skip it at once,
/// so a node whose host vanished costs one [`CONNECT_TIMEOUT`], not one per request. A node that
/// has restarted since (another `started_at` in its row) is dialed at once.
pub const SKIP_UNREACHABLE: Duration = Duration::from_secs(2);
/// At most one error line per this interval about nodes refusing forwarded requests.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a request could not be passed to a node.
#[derive(Debug)]
pub enum PeerError {
    /// Nothing of the request left this node (no connection, or it closed first): the request
    /// is handed back, to be tried on another node.
    NotSent(Box<Request<Body>>, String),
    /// The request left, then the connection failed before any answer.
    Failed(String),
}

/// The pooled connections.
pub struct Peers {
    tls: TlsConnector,
    conns: Mutex<HashMap<String, SendRequest<Body>>>,
    /// Nodes that could not be reached: until when they are skipped, and which run of the node
    /// (its `started_at`) that was.
    unreachable: Mutex<HashMap<String, (std::time::Instant, i64)>>,
    last_warning: Mutex<Option<std::time::Instant>>,
}

impl Peers {
    /// Trust the web's roots plus `ca_file` for https nodes.
    pub fn new(ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let config = crate::tls::client_config(ca_file, &[b"h2"]).context("cluster.ca_file")?;
        Ok(Peers {
            tls: TlsConnector::from(Arc::new(config)),
            conns: Mutex::default(),
            unreachable: Mutex::default(),
            last_warning: Mutex::default(),
        })
    }

    /// Log a node's refusal of a forwarded request (a cluster misconfiguration) as an error, at
    /// most once per [`WARN_EVERY`]; repeats go to the debug level.
    pub fn warn_refusal(&self, why: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            tracing::debug!("{why}");
        } else {
            *last = Some(std::time::Instant::now());
            tracing::error!("{why}; repeats are logged at debug level for 10 s");
        }
    }

    /// Send `req` (its URI already pointing at `advertise`) to the node at `advertise`, in its run
    /// that started at `started_at`.
    pub async fn send(
        &self,
        advertise: &str,
        started_at: i64,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PeerError> {
        if let Some(sender) = self.pooled(advertise) {
            // A pooled connection the node is closing (idle timeout, restart) hands the request
            // back: try once more on a fresh connection before giving up on the node.
            match self.try_send(advertise, sender, req).await {
                Err(PeerError::NotSent(req, why)) => {
                    tracing::debug!(node = %advertise, error = %why, "pooled connection to another relay node is closing; reconnecting");
                    return self.send_fresh(advertise, started_at, *req).await;
                }
                other => return other,
            }
        }
        self.send_fresh(advertise, started_at, req).await
    }

    async fn send_fresh(
        &self,
        advertise: &str,
        started_at: i64,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PeerError> {
        let skipped = {
            let mut unreachable = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
            match unreachable.get(advertise) {
                Some((until, run)) if *until > std::time::Instant::now() && *run == started_at => true,
                Some(_) => {
                    unreachable.remove(advertise);
                    false
                }
                None => false,
            }
        };
        if skipped {
            return Err(PeerError::NotSent(
                Box::new(req),
                format!(
                    "unreachable a moment ago; not dialed again for {}s",
                    SKIP_UNREACHABLE.as_secs()
                ),
            ));
        }
        match self.connect(advertise).await {
            Ok(sender) => self.try_send(advertise, sender, req).await,
            Err(e) => {
                self.unreachable.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    advertise.to_string(),
                    (std::time::Instant::now() + SKIP_UNREACHABLE, started_at),
                );
                Err(PeerError::NotSent(Box::new(req), format!("{e:#}")))
            }
        }
    }

    async fn try_send(
        &self,
        advertise: &str,
        mut sender: SendRequest<Body>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PeerError> {
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => {
                let why = e.error().to_string();
                self.forget(advertise);
                match e.take_message() {
                    Some(req) => Err(PeerError::NotSent(Box::new(req), why)),
                    None => Err(PeerError::Failed(why)),
                }
            }
        }
    }

    fn pooled(&self, advertise: &str) -> Option<SendRequest<Body>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        match conns.get(advertise) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                conns.remove(advertise);
                None
            }
            None => None,
        }
    }

    fn forget(&self, advertise: &str) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.get(advertise).is_some_and(|s| s.is_closed()) {
            conns.remove(advertise);
        }
    }

    async fn connect(&self, advertise: &str) -> anyhow::Result<SendRequest<Body>> {
        let url = url::Url::parse(advertise).with_context(|| format!("`{advertise}` is not a URL"))?;
        let host = url
            .host_str()
            .with_context(|| format!("`{advertise}` names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url
            .port_or_known_default()
            .with_context(|| format!("`{advertise}` names no port"))?;
        let tls = url.scheme() == "https";
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .with_context(|| format!("cannot connect to {host}:{port}"))?;
            let _ = tcp.set_nodelay(true);
            if tls {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .with_context(|| format!("`{host}` is not a TLS server name"))?;
                let stream = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS with {host}:{port} failed (check cluster.ca_file)"))?;
                handshake(stream).await
            } else {
                handshake(tcp).await
            }
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no connection to {advertise} within {}s",
                CONNECT_TIMEOUT.as_secs()
            )
        })??;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(advertise.to_string(), sender.clone());
        Ok(sender)
    }
}

async fn handshake<I>(io: I) -> anyhow::Result<SendRequest<Body>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(MAX_SEND_BUF)
        .handshake::<_, Body>(TokioIo::new(io))
        .await
        .context("HTTP/2 handshake with the node failed")?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection to another relay node ended");
        }
    });
    Ok(sender)
}
