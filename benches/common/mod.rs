//! What the benchmarks share: test certificates, a counting upstream, an in-process agent, and
//! a load generator of keep-alive HTTP/1.1 TLS connections with its report line.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ponte::agent::AgentStatus;
use ponte::config::agent::AgentConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// `/proc/loadavg` (the machine is shared: other work skews the figures).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub struct LoadResult {
    pub ok: usize,
    pub failed: usize,
    pub latencies: Vec<Duration>,
}

pub fn report(what: &str, r: &LoadResult, secs: f64) {
    let mut l = r.latencies.clone();
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{what} {} in {secs} s = {:.0}/s (p50 {:.1} ms, p99 {:.1} ms, {} errors)",
        r.ok,
        r.ok as f64 / secs,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        r.failed
    );
}

/// `conns` keep-alive HTTP/1.1 TLS connections posting `body` to `/t/<tunnel>/hook` for the
/// phase's duration, spread over `addrs` in turn; a response with `expect` counts as ok.
pub async fn load(
    addrs: &[SocketAddr],
    tls: &Arc<rustls::ClientConfig>,
    tunnel: &str,
    body: &Bytes,
    (secs, conns): (f64, usize),
    expect: StatusCode,
) -> LoadResult {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..conns {
        let addr = addrs[conn % addrs.len()];
        let (tls, body, uri) = (tls.clone(), body.clone(), format!("/t/{tunnel}/hook"));
        tasks.spawn(async move {
            let mut r = LoadResult {
                ok: 0,
                failed: 0,
                latencies: Vec::new(),
            };
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .expect("tls");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            while Instant::now() < deadline {
                let req = Request::post(uri.as_str())
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .expect("request");
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status == expect {
                            r.ok += 1;
                            r.latencies.push(t.elapsed());
                        } else {
                            r.failed += 1;
                        }
                    }
                    Err(_) => {
                        r.failed += 1;
                        break;
                    }
                }
            }
            r
        });
    }
    let mut total = LoadResult {
        ok: 0,
        failed: 0,
        latencies: Vec::new(),
    };
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("load task");
        total.ok += r.ok;
        total.failed += r.failed;
        total.latencies.extend(r.latencies);
    }
    total
}

/// An in-process agent of `token` holding sessions to `relays` (its relay list).
pub async fn start_agent(
    relays: &[SocketAddr],
    ca: &std::path::Path,
    token: &str,
    upstream: SocketAddr,
    stop: CancellationToken,
) {
    let list: String = relays
        .iter()
        .map(|r| format!("\n  - https://127.0.0.1:{}", r.port()))
        .collect();
    let yaml = format!(
        "relay: {list}\ntoken: {token}\nca_file: {}\ningress:\n  - upstream: http://{upstream}\n",
        ca.display()
    );
    let cfg: AgentConfig =
        ponte::config::parse_with_env(&yaml, "bench agent", &|_| None).expect("agent config");
    let cfg = cfg
        .merge(Default::default(), "bench agent")
        .expect("agent config");
    let (tx, mut rx) = watch::channel(AgentStatus::Starting);
    tokio::spawn(ponte::agent::run(cfg, stop, tx, None));
    tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|s| s.is_connected()))
        .await
        .expect("agent connects in time")
        .expect("status");
}

/// Wait (at most 30 s) until the relay at `addr` answers `/_ponte/ready` with 200 (its store is
/// open and migrated), so a phase measures requests, not the relay's start.
pub async fn wait_ready(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) {
    let started = Instant::now();
    loop {
        let ready = async {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .ok()?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            let req = Request::get("/_ponte/ready")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .ok()?;
            let resp = sender.send_request(req).await.ok()?;
            (resp.status() == StatusCode::OK).then_some(())
        };
        if ready.await.is_some() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the relay at {addr} was not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal upstream: 200 for everything, counting requests.
pub async fn upstream(count: Arc<AtomicUsize>, stop: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            };
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let count = count.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        count.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A JSON webhook body of exactly `size` bytes.
pub fn json_body(size: usize) -> Bytes {
    let head = r#"{"event":"invoice.paid","id":"evt_0123456789","data":{"note":""#;
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

pub fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

pub fn client_tls(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    Arc::new(ponte::tls::client_config(Some(ca), &[b"http/1.1"]).expect("client tls"))
}
