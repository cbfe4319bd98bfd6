//! Cross-node benchmark: two relay nodes on one PostgreSQL (a throwaway cluster started in /tmp,
//! or `--store URL` / `PONTE_BENCH_STORE`, an empty database), the agent of a `direct` tunnel on
//! node A. The same load goes to node A (the agent's own node) and to node B (which passes every
//! request to A over its pooled, authenticated HTTP/2 connection): latency (p50/p99) on one
//! keep-alive TLS connection, and requests/s at 64 connections, each both ways, alternated.
//!
//! Everything runs in this one process on one tokio runtime (both nodes, the agent, the upstream
//! and the load generator share the machine's cores), so the figures are a floor of what
//! separate machines do; the load average is printed before and after.
//!
//! `cargo bench --bench cluster` runs it in full (PONTE_BENCH_SECS, default 5, and
//! PONTE_BENCH_CONNS, default 64, adjust it). Under `cargo test` it runs a short smoke pass.

mod common;
#[path = "../tests/support/postgres.rs"]
mod pg_cluster;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use ponte::config::relay::RelayConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-live-token-0123456789";
const SECRET: &str = "bench-cluster-secret-0123456789";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(default)
    };
    let (secs, conns) = if full {
        (
            env("PONTE_BENCH_SECS", 5.0),
            env("PONTE_BENCH_CONNS", 64.0) as usize,
        )
    } else {
        (0.3, 4)
    };
    let store = match given_store() {
        Some(url) => Store::Given(url),
        None => match pg_cluster::Cluster::start() {
            Ok(cluster) => Store::Own {
                url: cluster.database("sslmode=disable"),
                _cluster: cluster,
            },
            Err(why) => return pg_cluster::skip(&why),
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(store.url(), secs, conns, full));
}

/// The database the nodes share.
enum Store {
    Given(String),
    /// A cluster started here (stopped when dropped).
    Own {
        url: String,
        _cluster: pg_cluster::Cluster,
    },
}

impl Store {
    fn url(&self) -> &str {
        match self {
            Store::Given(url) | Store::Own { url, .. } => url,
        }
    }
}

/// `--store URL` or `PONTE_BENCH_STORE`.
fn given_store() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--store")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("PONTE_BENCH_STORE").ok())
}

/// A node of the cluster on a port of its own: its address and its stop switch.
async fn start_node(id: &str, store: &str, tls_keys: &str, ca: &Path) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let yaml = format!(
        "listen: 127.0.0.1:0\n{tls_keys}store: \"{store}\"\ncluster:\n  node_id: {id}\n  advertise: https://127.0.0.1:{}\n  secret: {SECRET}\n  ca_file: {}\ntunnels:\n  live:\n    token: {TOKEN}\n",
        addr.port(),
        ca.display()
    );
    let cfg = RelayConfig::from_str_with_env(&yaml, "bench node", &|_| None).expect("node config");
    let stop = CancellationToken::new();
    tokio::spawn(ponte::relay::serve(listener, cfg, stop.clone()));
    (addr, stop)
}

async fn run(store: &str, secs: f64, conns: usize, full: bool) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (ca, cert, key) = certificates(dir.path());
    let tls_keys = format!("tls:\n  cert: {}\n  key: {}\n", cert.display(), key.display());
    let tls = client_tls(&ca);
    let body = json_body(1024);
    let stop_upstream = CancellationToken::new();
    let upstream = upstream(Arc::new(AtomicUsize::new(0)), stop_upstream.clone()).await;
    let (a, stop_a) = start_node("a", store, &tls_keys, &ca).await;
    let (b, stop_b) = start_node("b", store, &tls_keys, &ca).await;
    let stop_agent = CancellationToken::new();
    start_agent(&[a], &ca, TOKEN, upstream, stop_agent.clone()).await;

    // Node B forwards once node A's entry is written and B's one-second cache has passed.
    let started = Instant::now();
    loop {
        let probe = load(&[b], &tls, "live", &body, (0.05, 1), StatusCode::OK).await;
        if probe.ok > 0 && probe.failed == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "node B never forwarded to node A"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!(
        "cross-node benchmark: 2 nodes and 1 agent in one process, 1 KiB JSON POSTs on keep-alive TLS connections, {secs} s per phase"
    );
    println!("load average before: {}", load_average());
    // Warm both paths (connections, the node-to-node pool), then measure alternately.
    for node in [a, b] {
        load(
            &[node],
            &tls,
            "live",
            &body,
            (secs.min(1.0), conns),
            StatusCode::OK,
        )
        .await;
    }
    let mut results = Vec::new();
    for (what, shape) in [
        ("1 connection", (secs, 1)),
        (&*format!("{conns} connections"), (secs, conns)),
    ] {
        let local = load(&[a], &tls, "live", &body, shape, StatusCode::OK).await;
        report(&format!("{what}, to the node with the agent:"), &local, secs);
        let forwarded = load(&[b], &tls, "live", &body, shape, StatusCode::OK).await;
        report(&format!("{what}, through the other node:  "), &forwarded, secs);
        results.push((what.to_string(), local, forwarded));
    }
    println!("load average after: {}", load_average());
    let (_, local, forwarded) = &results[0];
    let (p50_l, p99_l) = percentiles(&local.latencies);
    let (p50_f, p99_f) = percentiles(&forwarded.latencies);
    let (_, many_l, many_f) = &results[1];
    println!(
        "summary: cross-node overhead at 1 connection p50 +{:.0} µs ({:.0} → {:.0} µs), p99 +{:.0} µs ({:.0} → {:.0} µs); at {conns} connections {:.0}/s to the agent's node, {:.0}/s through the other",
        us(p50_f.saturating_sub(p50_l)),
        us(p50_l),
        us(p50_f),
        us(p99_f.saturating_sub(p99_l)),
        us(p99_l),
        us(p99_f),
        many_l.ok as f64 / secs,
        many_f.ok as f64 / secs,
    );

    stop_agent.cancel();
    stop_a.cancel();
    stop_b.cancel();
    stop_upstream.cancel();
    if !full {
        for (what, local, forwarded) in &results {
            assert!(
                local.ok > 0 && local.failed == 0 && forwarded.ok > 0 && forwarded.failed == 0,
                "smoke run, {what}: local {} ok {} failed, forwarded {} ok {} failed",
                local.ok,
                local.failed,
                forwarded.ok,
                forwarded.failed
            );
        }
    }
}

/// p50 and p99 of `samples`.
fn percentiles(samples: &[Duration]) -> (Duration, Duration) {
    let mut l = samples.to_vec();
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (pct(0.50), pct(0.99))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
