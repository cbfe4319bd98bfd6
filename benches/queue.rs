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
use http::StatusCode;
use ponte::config::relay::RelayConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod common;
#[path = "../tests/support/postgres.rs"]
mod pg_cluster;

use common::*;

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
    let rig = Rig {
        ca: &ca,
        tls: &tls,
        body: &body,
        s: &s,
        upstream,
        delivered: &delivered,
    };
    let sqlite = queue_phases("SQLite", &yaml, &rig).await;

    // PostgreSQL, the same phases.
    let mut pg_figures = None;
    if let Some(pg) = &postgres {
        let url = ponte::config::relay::StoreUrl::parse(&pg.url()).expect("PostgreSQL URL");
        let alone = store_only("PostgreSQL", &url, &body, &s).await;
        let yaml = relay_config(&tls_keys, &pg.url());
        let phases = queue_phases("PostgreSQL", &yaml, &rig).await;
        phases.shutdown.cancel();
        // Three nodes on the same database (the one node's backlog is drained by now).
        let three = three_node_phases(&tls_keys, &pg.url(), &rig).await;
        pg_figures = Some((alone, phases, three));
    }

    // Direct mode through the SQLite relay, agent connected.
    let live_stop = CancellationToken::new();
    start_agent(&[sqlite.relay], &ca, LIVE_TOKEN, upstream, live_stop.clone()).await;
    let live = load(
        &[sqlite.relay],
        &tls,
        "live",
        &body,
        (s.secs, s.conns),
        StatusCode::OK,
    )
    .await;
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

/// What every phase of the benchmark shares: the CA and client TLS, the webhook body, the
/// settings, the upstream and its count of deliveries.
struct Rig<'a> {
    ca: &'a std::path::Path,
    tls: &'a Arc<rustls::ClientConfig>,
    body: &'a Bytes,
    s: &'a Settings,
    upstream: SocketAddr,
    delivered: &'a AtomicUsize,
}

/// Through a relay on `cfg`'s store: webhooks accepted with the agent offline (every 202 is a
/// durable commit), then the drain once the agent connects.
async fn queue_phases(name: &str, cfg: &RelayConfig, rig: &Rig<'_>) -> QueuePhases {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let relay = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(ponte::relay::serve(listener, cfg.clone(), shutdown.clone()));
    wait_ready(relay, rig.tls).await;
    let (queued, drained) = accept_then_drain(name, &[relay], rig).await;
    QueuePhases {
        relay,
        shutdown,
        queued,
        drained,
    }
}

/// Webhooks accepted with the agent offline, the connections spread over `nodes` (every 202 is a
/// durable commit), then the drain once an agent holding sessions to them connects: the accepted
/// load and how many were delivered.
async fn accept_then_drain(name: &str, nodes: &[SocketAddr], rig: &Rig<'_>) -> (LoadResult, usize) {
    let Rig {
        ca,
        tls,
        body,
        s,
        upstream,
        delivered,
    } = *rig;
    let queued = load(
        nodes,
        tls,
        "queued",
        body,
        (s.secs, s.conns),
        StatusCode::ACCEPTED,
    )
    .await;
    report(
        &format!("{name}: queue, agent offline: accepted ({} node(s))", nodes.len()),
        &queued,
        s.secs,
    );
    let started = Instant::now();
    let before = delivered.load(Ordering::SeqCst);
    let agent_stop = CancellationToken::new();
    start_agent(nodes, ca, QUEUE_TOKEN, upstream, agent_stop.clone()).await;
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
    (queued, drained)
}

/// The shared secret of the benchmark's three nodes.
const CLUSTER_SECRET: &str = "bench-cluster-secret-0123456789";

/// Three relay nodes (a cluster on the PostgreSQL store `store`, all in this process): webhooks
/// accepted with the agent offline, the load spread over the three (every 202 is a durable
/// commit), then the drain once an agent with two sessions connects. Stops the nodes.
async fn three_node_phases(tls_keys: &str, store: &str, rig: &Rig<'_>) -> QueuePhases {
    let shutdown = CancellationToken::new();
    let mut addrs = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let yaml = format!(
            "listen: 127.0.0.1:0\n{tls_keys}store: \"{store}\"\ncluster:\n  node_id: {id}\n  advertise: https://127.0.0.1:{}\n  secret: {CLUSTER_SECRET}\n  ca_file: {}\ntunnels:\n  queued:\n    token: {QUEUE_TOKEN}\n    delivery: queue\n    queue:\n      concurrency: 32\n",
            addr.port(),
            rig.ca.display()
        );
        let cfg = RelayConfig::from_str_with_env(&yaml, "bench node", &|_| None).expect("node config");
        tokio::spawn(ponte::relay::serve(listener, cfg, shutdown.clone()));
        addrs.push(addr);
    }
    for addr in &addrs {
        wait_ready(*addr, rig.tls).await;
    }
    let (queued, drained) = accept_then_drain("PostgreSQL, three nodes", &addrs, rig).await;
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
