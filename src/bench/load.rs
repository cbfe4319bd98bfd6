//! Load generation and the benchmark's upstream: plain HTTP/1.1 keep-alive connections driven
//! back to back, so the figures compare the tunnel with a direct connection on equal terms.

use std::net::SocketAddr;
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

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Body>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
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
pub async fn warm_up(addr: SocketAddr, prefix: &str) -> anyhow::Result<()> {
    let mut s = connect(addr).await?;
    for _ in 0..100 {
        get(&mut s, addr, &format!("{prefix}/")).await?;
    }
    Ok(())
}

async fn drive(
    addr: SocketAddr,
    path: String,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let requests = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (requests, bytes, path) = (requests.clone(), bytes.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(addr).await?;
            while Instant::now() < deadline {
                let n = get(&mut s, addr, &path).await?;
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
    })
}

/// Small requests on `connections` keep-alive connections for `duration`.
pub async fn requests_per_second(
    addr: SocketAddr,
    prefix: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    rate(addr, &format!("{prefix}/"), connections, duration).await
}

/// Requests/s to `path` on `connections` keep-alive connections for `duration`.
pub async fn rate(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let r = drive(addr, path.to_string(), connections, duration).await?;
    Ok(r.requests as f64 / started.elapsed().as_secs_f64())
}

/// [`requests_per_second`], also returning how many requests completed.
pub async fn requests_counted(
    addr: SocketAddr,
    prefix: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let r = drive(addr, format!("{prefix}/"), connections, duration).await?;
    Ok((r.requests as f64 / started.elapsed().as_secs_f64(), r.requests))
}

/// 1 MiB responses on 4 connections for `duration`.
pub async fn mib_per_second(addr: SocketAddr, prefix: &str, duration: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let r = drive(addr, format!("{prefix}/big"), 4, duration).await?;
    Ok(r.bytes as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64())
}

/// Sequential requests on one connection.
pub async fn latency(addr: SocketAddr, prefix: &str, requests: usize) -> anyhow::Result<LatencyStats> {
    latency_of(addr, &format!("{prefix}/"), requests).await
}

/// Sequential requests to `path` on one connection.
pub async fn latency_of(addr: SocketAddr, path: &str, requests: usize) -> anyhow::Result<LatencyStats> {
    let mut s = connect(addr).await?;
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        get(&mut s, addr, path).await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok(LatencyStats {
        p50: at(0.50),
        p99: at(0.99),
    })
}
