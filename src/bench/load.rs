//! Load generation and the benchmark's upstream: plain HTTP/1.1 keep-alive connections driven
//! back to back, so the figures compare the tunnel with a direct connection on equal terms.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body};

/// Size of the large response.
pub const BIG: usize = 1024 * 1024;

/// Latency percentiles of one run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LatencyStats {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Requests and bytes of one phase.
#[derive(Debug, Clone, Copy)]
pub struct LoadResult {
    /// Completed requests.
    pub requests: u64,
    /// Response body bytes received.
    pub bytes: u64,
    /// How long the phase took.
    pub elapsed: Duration,
}

impl LoadResult {
    /// Requests per second.
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// MiB of response bodies per second.
    pub fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }
}

/// The upstream: `GET /big` → 1 MiB, anything else → `ok`.
pub async fn start_upstream(shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let big = Bytes::from(vec![b'x'; BIG]);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
            };
            let _ = stream.set_nodelay(true);
            let big = big.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = if req.uri().path().ends_with("/big") {
                        big.clone()
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    async move { Ok::<_, std::convert::Infallible>(Response::new(body::full(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Where the load goes: an address, a path prefix, and TLS when the server speaks it.
#[derive(Clone)]
pub struct Endpoint {
    /// The server's address.
    pub addr: SocketAddr,
    /// Put before every path (`/t/bench` for the relay's path routing).
    pub prefix: String,
    /// TLS (server name `localhost`), or plain TCP.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl Endpoint {
    /// Plain HTTP to `addr`, paths as given.
    pub fn plain(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            prefix: String::new(),
            tls: None,
        }
    }

    /// The same server, with `prefix` before every path.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// HTTPS (HTTP/1.1 by ALPN), trusting `ca`.
    pub fn with_tls(mut self, ca: &std::path::Path) -> anyhow::Result<Self> {
        let cfg = crate::tls::client_config(Some(ca), &[b"http/1.1"])?;
        self.tls = Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)));
        Ok(self)
    }

    fn path(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }
}

/// A stream the load generator speaks HTTP/1.1 on.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

async fn connect(ep: &Endpoint) -> anyhow::Result<SendRequest<Body>> {
    let addr = ep.addr;
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let io: Pin<Box<dyn Io>> = match &ep.tls {
        Some(tls) => Box::pin(tls.connect("localhost".try_into()?, stream).await?),
        None => Box::pin(stream),
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(sender: &mut SendRequest<Body>, addr: SocketAddr, path: &str) -> anyhow::Result<u64> {
    sender.ready().await?;
    let req = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(body::empty())?;
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "{path}: status {}", resp.status());
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

/// A few requests so connection set-up is not measured.
pub async fn warm_up(ep: &Endpoint) -> anyhow::Result<()> {
    let mut s = connect(ep).await?;
    for _ in 0..100 {
        get(&mut s, ep.addr, &ep.path("/")).await?;
    }
    Ok(())
}

/// Requests to `path` (after the endpoint's prefix) on `connections` keep-alive connections for
/// `duration`, back to back.
pub async fn drive(
    ep: &Endpoint,
    path: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let requests = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let path = ep.path(path);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (requests, bytes, path, ep) = (requests.clone(), bytes.clone(), path.clone(), ep.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&ep).await?;
            while Instant::now() < deadline {
                let n = get(&mut s, ep.addr, &path).await?;
                requests.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(n, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(LoadResult {
        requests: requests.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// Small requests on `connections` keep-alive connections for `duration`.
pub async fn small(ep: &Endpoint, connections: usize, duration: Duration) -> anyhow::Result<LoadResult> {
    drive(ep, "/", connections, duration).await
}

/// 1 MiB responses on 4 connections for `duration`.
pub async fn big(ep: &Endpoint, duration: Duration) -> anyhow::Result<LoadResult> {
    drive(ep, "/big", 4, duration).await
}

/// Requests/s to `path` on `connections` keep-alive connections for `duration`.
pub async fn rate(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    Ok(drive(&Endpoint::plain(addr), path, connections, duration)
        .await?
        .per_second())
}

/// Sequential small requests on one connection.
pub async fn latency(ep: &Endpoint, requests: usize) -> anyhow::Result<LatencyStats> {
    latency_on(ep, "/", requests).await
}

/// Sequential requests to `path` on one connection.
pub async fn latency_of(addr: SocketAddr, path: &str, requests: usize) -> anyhow::Result<LatencyStats> {
    latency_on(&Endpoint::plain(addr), path, requests).await
}

async fn latency_on(ep: &Endpoint, path: &str, requests: usize) -> anyhow::Result<LatencyStats> {
    let mut s = connect(ep).await?;
    let path = ep.path(path);
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        get(&mut s, ep.addr, &path).await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok(LatencyStats {
        p50: at(0.50),
        p99: at(0.99),
    })
}
