//! In-process harness: certificates made per test, a relay, agents and small upstreams, each on
//! port 0 on loopback and each with a handle to stop it. Real TLS, real sockets.
#![allow(dead_code)]

pub mod faults;
pub mod h2raw;
pub mod pages;
pub mod postgres;
pub mod process;
pub mod prometheus;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ponte::agent::AgentStatus;
use ponte::body::Body;
use ponte::config::agent::AgentConfig;
use ponte::config::relay::RelayConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(15);

/// A token long enough for the relay's check.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Run a future with the test deadline.
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A CA and a server certificate for `localhost`, `127.0.0.1` and `*.relay.test`, as PEM files.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn new() -> Self {
        Self::with_extra_names(&[])
    }

    /// [`Certs::new`], the server certificate also valid for `extra` (e.g. `127.0.0.2`).
    pub fn with_extra_names(extra: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A unique name per CA, so two test CAs are really unrelated issuers.
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Ponte Test CA {}", dir.path().display()),
        );
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let names: Vec<String> = ["localhost", "127.0.0.1", "relay.test", "*.relay.test"]
            .iter()
            .chain(extra)
            .map(|n| n.to_string())
            .collect();
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("cert");
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write pem");
            p
        };
        Certs {
            ca: write("ca.pem", ca.pem()),
            cert: write("cert.pem", cert.pem()),
            key: write("key.pem", key.serialize_pem()),
            dir,
        }
    }

    /// A rustls client config trusting the test CA (the same one the agent builds).
    pub fn client_tls(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        ponte::tls::client_config(Some(&self.ca), alpn).expect("client tls")
    }
}

/// A relay running in this process.
pub struct RelayHandle {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub join: JoinHandle<anyhow::Result<()>>,
}

impl RelayHandle {
    /// `https://127.0.0.1:PORT` (or http when started without TLS).
    pub fn url(&self, tls: bool) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if tls { "https" } else { "http" },
            self.addr.port()
        )
    }

    /// Stop and wait for the relay to finish draining.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within("relay shutdown", self.join)
            .await
            .expect("relay task")
            .expect("relay result");
    }
}

/// Relay YAML with TLS from `certs` and one tunnel `demo` with [`TOKEN`]; `extra` is appended at
/// the top level, `tunnel_extra` inside the `demo` tunnel (indented 4 spaces by the caller).
pub fn relay_yaml(certs: Option<&Certs>, extra: &str, tunnel_extra: &str) -> String {
    let tls = match certs {
        Some(c) => format!("tls:\n  cert: {}\n  key: {}\n", c.cert.display(), c.key.display()),
        None => String::new(),
    };
    format!("listen: 127.0.0.1:0\n{tls}{extra}\ntunnels:\n  demo:\n    token: {TOKEN}\n{tunnel_extra}")
}

/// Start a relay from YAML on a fresh port.
pub async fn start_relay(yaml: &str) -> RelayHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    start_relay_on(listener, yaml)
}

/// Start a relay from YAML on a given listener.
pub fn start_relay_on(listener: TcpListener, yaml: &str) -> RelayHandle {
    let cfg = RelayConfig::from_str_with_env(yaml, "relay.yaml", &|_| None).expect("relay config");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let join = tokio::spawn(ponte::relay::serve(listener, cfg, shutdown.clone()));
    RelayHandle { addr, shutdown, join }
}

/// An agent running in this process.
pub struct AgentHandle {
    pub status: watch::Receiver<AgentStatus>,
    pub shutdown: CancellationToken,
    pub join: JoinHandle<anyhow::Result<()>>,
}

impl AgentHandle {
    /// Wait until the agent reports a live session.
    pub async fn connected(&mut self) -> String {
        let s = within("agent to connect", self.status.wait_for(|s| s.is_connected()))
            .await
            .expect("status channel");
        match &*s {
            AgentStatus::Connected { public_url, .. } => public_url.clone(),
            other => panic!("unexpected status {other:?}"),
        }
    }

    /// Wait until the agent reports it is retrying, returning the error text.
    pub async fn retrying(&mut self) -> String {
        let s = within(
            "agent to retry",
            self.status
                .wait_for(|s| matches!(s, AgentStatus::Retrying { .. })),
        )
        .await
        .expect("status channel");
        match &*s {
            AgentStatus::Retrying { error, .. } => error.clone(),
            other => panic!("unexpected status {other:?}"),
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        within("agent shutdown", self.join)
            .await
            .expect("agent task")
            .expect("agent result");
    }
}

/// Agent YAML for `relay_url` with [`TOKEN`], trusting the test CA, fast reconnects, and `extra`
/// appended (e.g. an `ingress:` block).
pub fn agent_yaml(relay_url: &str, certs: Option<&Certs>, extra: &str) -> String {
    let ca = certs
        .map(|c| format!("ca_file: {}\n", c.ca.display()))
        .unwrap_or_default();
    format!(
        "relay: {relay_url}\ntoken: {TOKEN}\n{ca}reconnect:\n  initial: 50ms\n  max: 300ms\n  stable_after: 1s\n{extra}"
    )
}

/// Start an agent from YAML.
pub fn start_agent(yaml: &str) -> AgentHandle {
    let cfg: AgentConfig =
        ponte::config::parse_with_env(yaml, "agent.yaml", &|_| None).expect("agent config");
    let cfg = cfg
        .merge(Default::default(), "agent.yaml")
        .expect("agent config complete");
    let (tx, rx) = watch::channel(AgentStatus::Starting);
    let shutdown = CancellationToken::new();
    let join = tokio::spawn(ponte::agent::run(cfg, shutdown.clone(), tx, None));
    AgentHandle {
        status: rx,
        shutdown,
        join,
    }
}

/// A small HTTP/1.1 upstream whose behaviour is a closure; counts requests.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub shutdown: CancellationToken,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start an upstream answering with `handler`.
pub async fn start_upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let (h, s) = (hits.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = s.cancelled() => return,
                r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
            };
            let handler = handler.clone();
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, hits, shutdown }
}

/// An upstream that echoes the request: the body as is, and method, path+query and every request
/// header copied into `x-echo-*` response headers.
pub async fn echo_upstream() -> Upstream {
    start_upstream(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let mut resp = Response::builder()
            .header("x-echo-method", parts.method.as_str())
            .header(
                "x-echo-path",
                parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            );
        for (name, value) in parts.headers.iter() {
            resp = resp.header(format!("x-echo-h-{name}"), value);
        }
        // Stream the body straight back (never buffered whole).
        resp.body(ponte::body::boxed(body)).expect("response")
    })
    .await
}

/// Open TLS (ALPN http/1.1) to the relay from `from`, write `raw`, and return everything read
/// until the server closes or `limit` elapses.
pub async fn raw_exchange_at(
    addr: SocketAddr,
    from: std::net::IpAddr,
    certs: &Certs,
    raw: &[u8],
    limit: Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = h2raw::tcp_from(from, addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(certs.client_tls(&[b"http/1.1"])));
    let mut s = tls
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("tls");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// [`raw_exchange_at`] from 127.0.0.1 to an in-process relay.
pub async fn raw_exchange(relay: &RelayHandle, certs: &Certs, raw: &[u8], limit: Duration) -> String {
    raw_exchange_at(relay.addr, [127, 0, 0, 1].into(), certs, raw, limit).await
}

/// The first line of a raw HTTP/1.1 reply.
pub fn status_line(reply: &str) -> &str {
    reply.lines().next().unwrap_or("")
}

/// A plain response helper.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(ponte::body::full(body));
    *r.status_mut() = status;
    r
}

/// HTTPS/HTTP client trusting the test CA; HTTP/1.1 unless `h2`.
pub fn client(certs: Option<&Certs>, h2: bool) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Body> {
    let tls = match certs {
        Some(c) => c.client_tls(&[]),
        None => ponte::tls::client_config(None, &[]).expect("tls"),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut b = Client::builder(TokioExecutor::new());
    if h2 {
        b.http2_only(true);
    }
    b.build(connector)
}

/// A finished response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send a request and collect the reply.
pub async fn send(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    req: Request<Body>,
) -> Reply {
    let resp = within("response", client.request(req)).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = within("response body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A request with a full body.
pub fn request(method: &str, url: &str, body: impl Into<Bytes>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(ponte::body::boxed(Full::new(body.into())))
        .expect("request")
}

/// Read `VmHWM` (peak RSS) of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// Read `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("field")
}

/// The admin token the queue tests configure.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// One request an upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// What an upstream received: the request head and its whole body.
    pub fn new(parts: http::request::Parts, body: Bytes) -> Self {
        Recorded {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// Everything a recording upstream received, in arrival order.
pub type Log = Arc<std::sync::Mutex<Vec<Recorded>>>;

/// An upstream that records every request whole and answers with the status `respond` picks
/// (given the request and how many requests came before it).
pub async fn recording_upstream<F>(respond: F) -> (Upstream, Log)
where
    F: Fn(&Recorded, usize) -> StatusCode + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let respond = Arc::new(respond);
    let l = log.clone();
    let up = start_upstream(move |req: Request<Incoming>| {
        let (log, respond) = (l.clone(), respond.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let rec = Recorded::new(parts, body);
            let status = {
                let mut log = log.lock().unwrap();
                let status = respond(&rec, log.len());
                log.push(rec);
                status
            };
            let mut r = Response::new(ponte::body::full(format!("status {}", status.as_u16())));
            *r.status_mut() = status;
            r
        }
    })
    .await;
    (up, log)
}

/// Relay YAML with a SQLite store at `db`, [`ADMIN_TOKEN`], and the `demo` tunnel in `delivery`
/// mode with a tiny retry schedule; `tunnel_extra` goes inside `demo`'s `queue:` block (indented
/// 6 spaces by the caller), `extra` at the top level.
pub fn queue_yaml(
    certs: &Certs,
    db: &std::path::Path,
    delivery: &str,
    extra: &str,
    queue_extra: &str,
) -> String {
    relay_yaml(
        Some(certs),
        &format!(
            "store: sqlite://{}\nadmin_token: {ADMIN_TOKEN}\n{extra}",
            db.display()
        ),
        &format!(
            "    delivery: {delivery}\n    queue:\n      retry_schedule: [50ms, 100ms]\n      attempt_timeout: 2s\n{queue_extra}"
        ),
    )
}

/// An agent of the `demo` tunnel whose catch-all upstream is `upstream`.
pub fn start_agent_to(relay_url: &str, certs: &Certs, upstream: &str) -> AgentHandle {
    start_agent(&agent_yaml(
        relay_url,
        Some(certs),
        &format!("ingress:\n  - upstream: {upstream}\n"),
    ))
}

/// Call the relay's admin API with `token`.
pub async fn admin(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{base}/_ponte/admin/{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(client, req.body(ponte::body::empty()).expect("request")).await
}

/// Admin API JSON with the right token; panics unless 200.
pub async fn admin_json(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    base: &str,
    method: &str,
    path: &str,
) -> serde_json::Value {
    let r = admin(client, base, method, path, Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{method} {path}: {}", r.text());
    serde_json::from_slice(&r.body).expect("admin json")
}

/// Poll `check` every 20 ms until it returns `Some`, within the test deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A websocket echo upstream (text and binary messages sent back as they came).
pub async fn websocket_echo_upstream() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    addr
}

/// Open a websocket over TLS to the relay at `relay` for `/t/demo/ws` (an echo upstream behind
/// the tunnel), check that text and binary messages come back, and close it cleanly.
pub async fn websocket_echoes_through(relay: SocketAddr, certs: &Certs) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let tcp = tokio::net::TcpStream::connect(relay).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(certs.client_tls(&[b"http/1.1"])));
    let stream = tls
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("tls");
    let url = format!("wss://localhost:{}/t/demo/ws", relay.port());
    let (mut ws, resp) = within(
        "websocket handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("the websocket handshake");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("olá {i}"))).await.expect("send");
        let got = within("echo", ws.next())
            .await
            .expect("a message")
            .expect("a frame");
        assert_eq!(got.into_text().expect("text").as_str(), format!("olá {i}"));
    }
    ws.send(Message::binary(vec![0u8, 255, 1, 254]))
        .await
        .expect("send");
    let got = within("binary echo", ws.next())
        .await
        .expect("a message")
        .expect("a frame");
    assert_eq!(got.into_data().as_ref(), &[0u8, 255, 1, 254]);
    ws.close(None).await.expect("close");
    // The close handshake completes and the stream ends on both sides.
    while let Some(Ok(_)) = within("close", ws.next()).await {}
}
