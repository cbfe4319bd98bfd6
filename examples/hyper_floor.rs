//! The floor under Ponte's request path, for the performance notes: the same architecture (a
//! public HTTP/1.1 server, one reversed HTTP/2 connection to an agent, an HTTP/1.1 client to the
//! upstream) built from hyper alone, with none of Ponte's work per request (no TLS, routing, auth,
//! limits, access log or metrics). Whatever this gets in `wrk` is the most a hyper-based tunnel
//! can get on the same machine.
//!
//! ```text
//! hyper_floor relay PUBLIC_ADDR AGENT_ADDR     # waits for the agent on AGENT_ADDR
//! hyper_floor agent AGENT_ADDR UPSTREAM_ADDR   # dials the relay, serves its streams
//! ```
//! Runs on tokio's multi-thread runtime, as Ponte does.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, hyper::Error>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |i: usize| -> anyhow::Result<SocketAddr> {
        let text = args
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("usage: hyper_floor relay|agent ADDR ADDR"))?;
        Ok(text.parse()?)
    };
    match args.first().map(String::as_str) {
        Some("relay") => relay(addr(1)?, addr(2)?).await,
        Some("agent") => agent(addr(1)?, addr(2)?).await,
        _ => anyhow::bail!("usage: hyper_floor relay|agent ADDR ADDR"),
    }
}

/// Accept the agent's connection, hold it as an HTTP/2 client, and pass every public request on
/// it as a stream.
async fn relay(public: SocketAddr, agent_addr: SocketAddr) -> anyhow::Result<()> {
    let agents = TcpListener::bind(agent_addr).await?;
    let (agent, _) = agents.accept().await?;
    agent.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Incoming>(TokioIo::new(agent))
        .await?;
    tokio::spawn(conn);
    let listener = TcpListener::bind(public).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let sender = sender.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let mut sender = sender.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    parts.version = http::Version::HTTP_2;
                    parts.uri = Uri::builder()
                        .scheme("http")
                        .authority("agent")
                        .path_and_query(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                        .build()
                        .unwrap_or_default();
                    parts.headers.remove(http::header::CONNECTION);
                    parts.headers.remove(http::header::HOST);
                    let resp = match sender.send_request(Request::from_parts(parts, body)).await {
                        Ok(resp) => resp.map(|b| b.boxed()),
                        Err(_) => Response::builder().status(502).body(empty()).unwrap_or_default(),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Dial the relay, serve its HTTP/2 streams, and send each to the upstream over pooled
/// HTTP/1.1 connections.
async fn agent(relay: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let stream = TcpStream::connect(relay).await?;
    stream.set_nodelay(true)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let svc = service_fn(move |req: Request<Incoming>| {
        let client = client.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            parts.version = http::Version::HTTP_11;
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(upstream.to_string())
                .path_and_query(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                .build()
                .unwrap_or_default();
            let resp = match client.request(Request::from_parts(parts, body)).await {
                Ok(resp) => resp.map(|b| b.boxed()),
                Err(_) => Response::builder().status(502).body(empty()).unwrap_or_default(),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await?;
    Ok(())
}

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}
