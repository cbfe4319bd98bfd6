//! The floor under Ponte's request path, for the performance notes: the same architecture (a
//! public HTTP/1.1 server, one reversed HTTP/2 connection to an agent, an HTTP/1.1 client to the
//! upstream) built from hyper alone, with none of Ponte's work per request (no TLS, routing, auth,
//! limits, access log or metrics). Whatever this gets in `wrk` is the most a hyper-based tunnel
//! can get on the same machine.
//!
//! ```text
//! hyper_floor relay PUBLIC_ADDR AGENT_ADDR     # waits for the agent on AGENT_ADDR
//! hyper_floor relay-h2 PUBLIC_ADDR AGENT_ADDR  # the same with the h2 crate as the HTTP/2 client
//! hyper_floor agent AGENT_ADDR UPSTREAM_ADDR   # dials the relay, serves its streams
//! hyper_floor relay-tls PUBLIC_ADDR AGENT_ADDR CERT KEY   # the agent hop over TLS
//! hyper_floor agent-tls AGENT_ADDR UPSTREAM_ADDR CA       # dials it with TLS (name `localhost`)
//! ```
//! The TLS variants use Ponte's own rustls set-up (`ponte::tls`), so the floor's idle memory with
//! TLS is what any agent that dials over TLS with these crates starts from.
//! `relay-h2` drives the agent connection with the h2 crate directly instead of hyper's HTTP/2
//! client (no dispatch task and channel hop per request); it forwards bodiless requests only,
//! which is what the floor is measured with. Runs on tokio's multi-thread runtime, as Ponte does.

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
    let path = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("usage: hyper_floor relay-tls|agent-tls ADDR ADDR FILE.."))
    };
    match args.first().map(String::as_str) {
        Some("relay") => relay(addr(1)?, addr(2)?, None).await,
        Some("relay-h2") => relay_h2(addr(1)?, addr(2)?).await,
        Some("agent") => agent(addr(1)?, addr(2)?, None).await,
        Some("relay-tls") => {
            let tls = ponte::tls::server_config(path(3)?.as_ref(), path(4)?.as_ref())?;
            relay(addr(1)?, addr(2)?, Some(tls)).await
        }
        Some("agent-tls") => {
            let cfg = ponte::tls::client_config(Some(path(3)?.as_ref()), &[b"h2"])?;
            agent(addr(1)?, addr(2)?, Some(std::sync::Arc::new(cfg))).await
        }
        _ => anyhow::bail!("usage: hyper_floor relay|agent ADDR ADDR"),
    }
}

/// Accept the agent's connection, hold it as an HTTP/2 client, and pass every public request on
/// it as a stream.
async fn relay(
    public: SocketAddr,
    agent_addr: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    let agents = TcpListener::bind(agent_addr).await?;
    let (agent, _) = agents.accept().await?;
    agent.set_nodelay(true)?;
    let sender = match tls {
        Some(tls) => h2_client(tokio_rustls::TlsAcceptor::from(tls).accept(agent).await?).await?,
        None => h2_client(agent).await?,
    };
    serve_public(public, move |req: Request<Incoming>| {
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
            match sender.send_request(Request::from_parts(parts, body)).await {
                Ok(resp) => resp.map(|b| b.boxed()),
                Err(_) => Response::builder().status(502).body(empty()).unwrap_or_default(),
            }
        }
    })
    .await
}

/// Hold `io` as an HTTP/2 client, its connection driven on a task of its own.
async fn h2_client<T>(io: T) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Incoming>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Incoming>(TokioIo::new(io))
        .await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Serve HTTP/1.1 on `public`, each request answered by `handle`.
async fn serve_public<F, Fut, B>(public: SocketAddr, handle: F) -> anyhow::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(public).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// [`relay`] with the h2 crate as the HTTP/2 client: each public request becomes a stream sent
/// from the request's own task, and the answer's body is read from the stream as it comes.
async fn relay_h2(public: SocketAddr, agent_addr: SocketAddr) -> anyhow::Result<()> {
    let agents = TcpListener::bind(agent_addr).await?;
    let (agent, _) = agents.accept().await?;
    agent.set_nodelay(true)?;
    let (sender, conn) = h2::client::handshake(agent).await?;
    tokio::spawn(conn);
    serve_public(public, move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            match h2_exchange(sender, req).await {
                Ok(resp) => resp,
                Err(_) => Response::builder()
                    .status(502)
                    .body(h2_empty())
                    .unwrap_or_default(),
            }
        }
    })
    .await
}

type H2Body = BoxBody<Bytes, h2::Error>;

async fn h2_exchange(
    sender: h2::client::SendRequest<Bytes>,
    req: Request<Incoming>,
) -> Result<Response<H2Body>, h2::Error> {
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let out = Request::builder()
        .method(req.method().clone())
        .uri(format!("http://agent{path}"))
        .body(())
        .unwrap_or_default();
    let mut sender = sender.ready().await?;
    let (answer, _) = sender.send_request(out, true)?;
    let (parts, recv) = answer.await?.into_parts();
    let frames = futures_util::stream::unfold(recv, |mut recv| async move {
        let chunk = recv.data().await?;
        if let Ok(bytes) = &chunk {
            let _ = recv.flow_control().release_capacity(bytes.len());
        }
        Some((chunk.map(hyper::body::Frame::data), recv))
    });
    Ok(Response::from_parts(
        parts,
        http_body_util::StreamBody::new(frames).boxed(),
    ))
}

fn h2_empty() -> H2Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Dial the relay, serve its HTTP/2 streams, and send each to the upstream over pooled
/// HTTP/1.1 connections.
async fn agent(
    relay: SocketAddr,
    upstream: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> anyhow::Result<()> {
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
    let mut server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    server.timer(TokioTimer::new());
    match tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await?;
            server.serve_connection(TokioIo::new(stream), svc).await?
        }
        None => server.serve_connection(TokioIo::new(stream), svc).await?,
    }
    Ok(())
}

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}
