//! Queue benchmark: webhooks accepted *and durably committed* per second with the agent offline
//! (1 KiB JSON bodies over 64 keep-alive TLS connections), the drain rate once the agent
//! connects, and `direct` mode in the same run for comparison; for the SQLite store, then the
//! PostgreSQL store with one relay node, then three relay nodes on that one PostgreSQL database
//! (a cluster: the load spread over the three, then an agent keeping two sessions drains), so
//! their figures come from the same run.
//!
//! Everything runs in this one process on one tokio runtime (relay, agent, upstream and the load
//! generator share the machine's cores), with the SQLite store on the real disk
//! (`CARGO_TARGET_TMPDIR`, `synchronous=FULL`). PostgreSQL is `--store postgres://…` (or
//! `PONTE_BENCH_STORE`; give it an empty database), else a cluster the benchmark starts on
//! 127.0.0.1 in /tmp (`synchronous_commit=on`, `fsync=on`), else skipped with the reason.
//!
//! `cargo bench --bench queue` runs the full benchmark (PONTE_BENCH_SECS, default 5, and
//! PONTE_BENCH_CONNS, default 64, adjust it). Under `cargo test` it runs a short smoke pass.

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
use ponte::config::relay::RelayConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[path = "../tests/support/postgres.rs"]
mod pg_cluster;

const QUEUE_TOKEN: &str = "bench-queue-token-0123456789";
const LIVE_TOKEN: &str = "bench-live-token-0123456789";

struct Settings {
    secs: f64,
    conns: usize,
    drain_limit: Duration,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(default)
    };
    let settings = if full {
        Settings {
            secs: env("PONTE_BENCH_SECS", 5.0),
            conns: env("PONTE_BENCH_CONNS", 64.0) as usize,
            drain_limit: Duration::from_secs(300),
        }
    } else {
        Settings {
            secs: 0.3,
            conns: 4,
            drain_limit: Duration::from_secs(30),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(settings, full));
}

async fn run(s: Settings, full: bool) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (ca, cert, key) = certificates(dir.path());
    let tls_keys = format!("tls:\n  cert: {}\n  key: {}\n", cert.display(), key.display());
    let db = dir.path().join("bench.db");
    let delivered = Arc::new(AtomicUsize::new(0));
    let stop_upstream = CancellationToken::new();
    let upstream = upstream(delivered.clone(), stop_upstream.clone()).await;
    let body = json_body(1024);
    let tls = client_tls(&ca);
    let postgres = postgres_store();

    println!(
        "queue benchmark: {} connections, {} s per phase, {}-byte JSON bodies; SQLite synchronous=FULL at {}{}",
        s.conns,
        s.secs,
        body.len(),
        db.display(),
        match &postgres {
            Some(pg) => format!("; PostgreSQL synchronous_commit=on at {}", pg.shown()),
            None => String::new(),
        }
    );
    println!("load average before: {}", load_average());

    // SQLite: the store alone, then through the relay with the agent offline, then the drain.
    let sqlite_url = ponte::config::relay::StoreUrl::Sqlite(dir.path().join("store-only.db"));
    let sqlite_alone = store_only("SQLite", &sqlite_url, &body, &s).await;
    let yaml = relay_config(&tls_keys, &format!("sqlite://{}", db.display()));
    let sqlite = queue_phases("SQLite", &yaml, &ca, &tls, &body, &s, upstream, &delivered).await;

    // PostgreSQL, the same phases.
    let mut pg_figures = None;
    if let Some(pg) = &postgres {
        let url = ponte::config::relay::StoreUrl::parse(&pg.url()).expect("PostgreSQL URL");
        let alone = store_only("PostgreSQL", &url, &body, &s).await;
        let yaml = relay_config(&tls_keys, &pg.url());
        let phases = queue_phases("PostgreSQL", &yaml, &ca, &tls, &body, &s, upstream, &delivered).await;
        phases.shutdown.cancel();
        // Three nodes on the same database (the one node's backlog is drained by now).
        let three = three_node_phases(&tls_keys, &pg.url(), &ca, &tls, &body, &s, upstream, &delivered).await;
        pg_figures = Some((alone, phases, three));
    }

    // Direct mode through the SQLite relay, agent connected.
    let live_stop = CancellationToken::new();
    start_agent(&[sqlite.relay], &ca, LIVE_TOKEN, upstream, live_stop.clone()).await;
    let live = load(&[sqlite.relay], &tls, "live", &body, &s, StatusCode::OK).await;
    report("direct, agent connected: proxied", &live, s.secs);
    live_stop.cancel();
    sqlite.shutdown.cancel();
    stop_upstream.cancel();

    println!("load average after: {}", load_average());
    println!(
        "summary, accepted and committed webhooks/s (through the relay, agent offline): SQLite {:.0}/s (store alone {:.0}/s){}",
        sqlite.queued.ok as f64 / s.secs,
        sqlite_alone,
        match &pg_figures {
            Some((alone, p, three)) => format!(
                ", PostgreSQL one node {:.0}/s (store alone {alone:.0}/s), PostgreSQL three nodes {:.0}/s",
                p.queued.ok as f64 / s.secs,
                three.queued.ok as f64 / s.secs
            ),
            None => ", PostgreSQL not measured".into(),
        }
    );

    if !full {
        let mut runs = vec![("SQLite", &sqlite)];
        if let Some((_, p, three)) = &pg_figures {
            runs.push(("PostgreSQL", p));
            runs.push(("PostgreSQL, three nodes", three));
        }
        for (name, r) in runs {
            assert!(
                r.queued.ok > 0 && r.queued.failed == 0,
                "smoke run, {name}: nothing was accepted"
            );
            assert_eq!(
                r.drained, r.queued.ok,
                "smoke run, {name}: the backlog did not drain"
            );
        }
        assert!(live.ok > 0 && live.failed == 0, "smoke run: nothing was proxied");
    }
}

fn relay_config(tls_keys: &str, store: &str) -> RelayConfig {
    let yaml = format!(
        "listen: 127.0.0.1:0\n{tls_keys}store: \"{store}\"\ntunnels:\n  queued:\n    token: {QUEUE_TOKEN}\n    delivery: queue\n    queue:\n      concurrency: 32\n  live:\n    token: {LIVE_TOKEN}\n"
    );
    RelayConfig::from_str_with_env(&yaml, "bench relay", &|_| None).expect("relay config")
}

/// What the queue phases of one store measured, and the relay they ran on (still running).
struct QueuePhases {
    relay: SocketAddr,
    shutdown: CancellationToken,
    queued: LoadResult,
    drained: usize,
}

/// Through a relay on `cfg`'s store: webhooks accepted with the agent offline (every 202 is a
/// durable commit), then the drain once the agent connects.
#[allow(clippy::too_many_arguments)]
async fn queue_phases(
    name: &str,
    cfg: &RelayConfig,
    ca: &std::path::Path,
    tls: &Arc<rustls::ClientConfig>,
    body: &Bytes,
    s: &Settings,
    upstream: SocketAddr,
    delivered: &AtomicUsize,
) -> QueuePhases {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let relay = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(ponte::relay::serve(listener, cfg.clone(), shutdown.clone()));
    wait_ready(relay, tls).await;
    let queued = load(&[relay], tls, "queued", body, s, StatusCode::ACCEPTED).await;
    report(
        &format!("{name}: queue, agent offline: accepted"),
        &queued,
        s.secs,
    );

    let started = Instant::now();
    let before = delivered.load(Ordering::SeqCst);
    let agent_stop = CancellationToken::new();
    start_agent(&[relay], ca, QUEUE_TOKEN, upstream, agent_stop.clone()).await;
    while delivered.load(Ordering::SeqCst) - before < queued.ok && started.elapsed() < s.drain_limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = delivered.load(Ordering::SeqCst) - before;
    let drain_secs = started.elapsed().as_secs_f64();
    println!(
        "{name}: queue, agent connects: drained {drained} of {} in {drain_secs:.2} s = {:.0} deliveries/s",
        queued.ok,
        drained as f64 / drain_secs
    );
    agent_stop.cancel();
    QueuePhases {
        relay,
        shutdown,
        queued,
        drained,
    }
}

/// The shared secret of the benchmark's three nodes.
const CLUSTER_SECRET: &str = "bench-cluster-secret-0123456789";

/// Three relay nodes (a cluster on the PostgreSQL store `store`, all in this process): webhooks
/// accepted with the agent offline, the load spread over the three (every 202 is a durable
/// commit), then the drain once an agent with two sessions connects. Stops the nodes.
#[allow(clippy::too_many_arguments)]
async fn three_node_phases(
    tls_keys: &str,
    store: &str,
    ca: &std::path::Path,
    tls: &Arc<rustls::ClientConfig>,
    body: &Bytes,
    s: &Settings,
    upstream: SocketAddr,
    delivered: &AtomicUsize,
) -> QueuePhases {
    let shutdown = CancellationToken::new();
    let mut addrs = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let yaml = format!(
            "listen: 127.0.0.1:0\n{tls_keys}store: \"{store}\"\ncluster:\n  node_id: {id}\n  advertise: https://127.0.0.1:{}\n  secret: {CLUSTER_SECRET}\n  ca_file: {}\ntunnels:\n  queued:\n    token: {QUEUE_TOKEN}\n    delivery: queue\n    queue:\n      concurrency: 32\n",
            addr.port(),
            ca.display()
        );
        let cfg = RelayConfig::from_str_with_env(&yaml, "bench node", &|_| None).expect("node config");
        tokio::spawn(ponte::relay::serve(listener, cfg, shutdown.clone()));
        addrs.push(addr);
    }
    for addr in &addrs {
        wait_ready(*addr, tls).await;
    }
    let name = "PostgreSQL, three nodes";
    let queued = load(&addrs, tls, "queued", body, s, StatusCode::ACCEPTED).await;
    report(
        &format!("{name}: queue, agent offline: accepted (connections spread over the nodes)"),
        &queued,
        s.secs,
    );
    let started = Instant::now();
    let before = delivered.load(Ordering::SeqCst);
    let agent_stop = CancellationToken::new();
    start_agent(&addrs, ca, QUEUE_TOKEN, upstream, agent_stop.clone()).await;
    while delivered.load(Ordering::SeqCst) - before < queued.ok && started.elapsed() < s.drain_limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = delivered.load(Ordering::SeqCst) - before;
    let drain_secs = started.elapsed().as_secs_f64();
    println!(
        "{name}: queue, agent with two sessions connects: drained {drained} of {} in {drain_secs:.2} s = {:.0} deliveries/s",
        queued.ok,
        drained as f64 / drain_secs
    );
    agent_stop.cancel();
    shutdown.cancel();
    QueuePhases {
        relay: addrs[0],
        shutdown,
        queued,
        drained,
    }
}

/// `conns` tasks committing requests straight to a store for the phase's duration; returns
/// commits per second.
async fn store_only(name: &str, url: &ponte::config::relay::StoreUrl, body: &Bytes, s: &Settings) -> f64 {
    let store = ponte::store::open(url, Default::default()).await.expect("store");
    let deadline = Instant::now() + Duration::from_secs_f64(s.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..s.conns {
        let (store, body) = (store.clone(), body.clone());
        tasks.spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                let mut headers = http::HeaderMap::new();
                headers.insert("content-type", http::HeaderValue::from_static("application/json"));
                // A tunnel no relay serves: these rows are never drained.
                let new = ponte::store::NewDelivery {
                    tunnel: "bench-store-only".into(),
                    method: "POST".into(),
                    uri: "https://localhost/hook".into(),
                    headers,
                    body: body.clone(),
                };
                store.enqueue(new).await.expect("enqueue");
                n += 1;
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.expect("task");
    }
    let rate = total as f64 / s.secs;
    println!(
        "{name}: store alone ({} concurrent callers, no HTTP): {total} commits in {} s = {rate:.0}/s",
        s.conns, s.secs
    );
    rate
}

/// The PostgreSQL store to measure: `--store URL` or `PONTE_BENCH_STORE`, else a cluster this
/// process starts (none when PostgreSQL is not installed: that part is skipped, with the reason).
enum PostgresStore {
    Given(String),
    Own {
        url: String,
        _cluster: pg_cluster::Cluster,
    },
}

impl PostgresStore {
    fn url(&self) -> String {
        match self {
            PostgresStore::Given(url) | PostgresStore::Own { url, .. } => url.clone(),
        }
    }

    fn shown(&self) -> String {
        match self {
            PostgresStore::Given(url) => ponte::config::postgres::mask_password(url),
            PostgresStore::Own { .. } => "a cluster started for the benchmark on 127.0.0.1".into(),
        }
    }
}

fn postgres_store() -> Option<PostgresStore> {
    let args: Vec<String> = std::env::args().collect();
    let given = args
        .iter()
        .position(|a| a == "--store")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("PONTE_BENCH_STORE").ok());
    if let Some(url) = given {
        return Some(PostgresStore::Given(url));
    }
    match pg_cluster::Cluster::start() {
        Ok(cluster) => {
            let url = cluster.database("sslmode=disable");
            Some(PostgresStore::Own {
                url,
                _cluster: cluster,
            })
        }
        Err(why) => {
            pg_cluster::skip(&why);
            None
        }
    }
}

/// `/proc/loadavg` (the machine is shared: other work skews the figures).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

struct LoadResult {
    ok: usize,
    failed: usize,
    latencies: Vec<Duration>,
}

fn report(what: &str, r: &LoadResult, secs: f64) {
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

/// Wait (at most 30 s) until the relay at `addr` answers `/_ponte/ready` with 200 (its store is
/// open and migrated), so a phase measures requests, not the relay's start.
async fn wait_ready(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) {
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

/// `conns` keep-alive HTTP/1.1 TLS connections posting `body` to `/t/<tunnel>/hook` for the
/// phase's duration, spread over `addrs` in turn; a response with `expect` counts as ok.
async fn load(
    addrs: &[SocketAddr],
    tls: &Arc<rustls::ClientConfig>,
    tunnel: &str,
    body: &Bytes,
    s: &Settings,
    expect: StatusCode,
) -> LoadResult {
    let deadline = Instant::now() + Duration::from_secs_f64(s.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..s.conns {
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

/// An agent of `token` with `relays` as its relay list (two sessions on distinct nodes when
/// there are several); returns once one session is up.
async fn start_agent(
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

/// A minimal upstream: 200 for everything, counting requests.
async fn upstream(count: Arc<AtomicUsize>, stop: CancellationToken) -> SocketAddr {
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
fn json_body(size: usize) -> Bytes {
    let head = r#"{"event":"invoice.paid","id":"evt_0123456789","data":{"note":""#;
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
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

fn client_tls(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    Arc::new(ponte::tls::client_config(Some(ca), &[b"http/1.1"]).expect("client tls"))
}
