//! `ponte bench`: start a relay and an agent as real processes plus a small upstream on loopback,
//! and measure the tunnel next to a direct connection to the same upstream, in one run:
//! requests/s at 64 connections, latency at 1 connection, 1 MiB transfers, idle RSS of both
//! processes, and the relay's memory per idle agent connection. A second relay and agent with the
//! access log and metrics off measure what watching the relay costs: requests/s with them on and
//! off, alternating, in the same run.
//!
//! Targets live here, not in timed tests: the report prints each figure with its target.

mod hooks;
mod load;
mod procs;

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use load::{LatencyStats, LoadResult};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Length of each throughput phase.
    pub duration: Duration,
    /// Connections for the requests/s phase.
    pub connections: usize,
    /// Requests for the latency phase.
    pub latency_requests: usize,
    /// Idle agent connections opened to measure relay memory per agent.
    pub idle_agents: usize,
    /// Print JSON instead of a table.
    pub json: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            duration: Duration::from_secs(5),
            connections: 64,
            latency_requests: 5000,
            idle_agents: 500,
            json: false,
        }
    }
}

/// Every figure of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Requests/s through the tunnel (access log and metrics on).
    pub tunnel_rps: f64,
    /// Requests/s straight to the upstream.
    pub direct_rps: f64,
    /// Latency through the tunnel, 1 connection.
    pub tunnel_latency: LatencyStats,
    /// Latency straight to the upstream, 1 connection.
    pub direct_latency: LatencyStats,
    /// MiB/s of 1 MiB responses through the tunnel.
    pub tunnel_mib_s: f64,
    /// MiB/s of 1 MiB responses straight from the upstream.
    pub direct_mib_s: f64,
    /// Relay RSS with one idle agent (KiB).
    pub relay_idle_rss_kib: u64,
    /// Agent RSS while idle and connected (KiB).
    pub agent_idle_rss_kib: u64,
    /// The anonymous part of the agent's idle RSS (KiB): heap and stacks, without the shared
    /// executable pages.
    pub agent_idle_anon_kib: u64,
    /// The anonymous part of the relay's idle RSS (KiB).
    pub relay_idle_anon_kib: u64,
    /// Relay RSS growth per extra idle agent connection (bytes).
    pub relay_bytes_per_idle_agent: u64,
    /// Command hooks: `ponte webhook` beside adnanh/webhook.
    pub hooks: hooks::HooksReport,
    /// Requests/s through the tunnel with the access log and metrics on (mean of the rounds).
    pub observed_rps: f64,
    /// Requests/s through the tunnel with both off (mean of the rounds).
    pub unobserved_rps: f64,
    /// Relay CPU time per request (µs) with the access log and metrics on: steadier than
    /// requests/s on a machine shared with other work.
    pub observed_cpu_us: f64,
    /// Relay CPU time per request (µs) with both off.
    pub unobserved_cpu_us: f64,
}

/// The on/off comparison's phases of one relay, summed.
#[derive(Default)]
struct Phases {
    rps: f64,
    rounds: u32,
    requests: u64,
    cpu: Duration,
}

impl Phases {
    fn add(&mut self, rps: f64, requests: u64, cpu: Duration) {
        self.rps += rps;
        self.rounds += 1;
        self.requests += requests;
        self.cpu += cpu;
    }
    fn rps(&self) -> f64 {
        self.rps / f64::from(self.rounds.max(1))
    }
    fn cpu_us_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// Run the whole benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    let shutdown = CancellationToken::new();
    let upstream = load::start_upstream(shutdown.clone()).await?;
    // The relay's public side speaks plain HTTP here, as behind a TLS-terminating proxy, so the
    // load generator and the direct run are on equal terms; see README for the TLS figures.
    let setup = procs::Setup::start(upstream, false, true)
        .await
        .context("starting relay and agent")?;
    let quiet = match procs::Setup::start(upstream, false, false).await {
        Ok(q) => q,
        Err(e) => {
            setup.stop();
            return Err(e.context("starting the relay and agent with the access log and metrics off"));
        }
    };
    let result = measure(&opts, &setup, &quiet, upstream).await;
    setup.stop();
    quiet.stop();
    shutdown.cancel();
    let report = result?;
    print(&opts, &report);
    Ok(report)
}

/// Rounds of the on/off comparison; alternating spreads drift (other load, CPU clocks) evenly.
const OBSERVE_ROUNDS: usize = 4;

async fn measure(
    opts: &BenchOptions,
    setup: &procs::Setup,
    quiet: &procs::Setup,
    upstream: std::net::SocketAddr,
) -> anyhow::Result<BenchReport> {
    let direct = upstream;
    let tunnel = setup.relay_addr;
    let tunnel_prefix = "/t/bench";
    // Let both processes settle, then read idle memory before any load.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let relay_idle_rss_kib = procs::rss_kib(setup.relay_pid)?;
    let agent_idle_rss_kib = procs::rss_kib(setup.agent_pid)?;
    let agent_idle_anon_kib = procs::anon_rss_kib(setup.agent_pid)?;
    let relay_idle_anon_kib = procs::anon_rss_kib(setup.relay_pid)?;

    load::warm_up(tunnel, tunnel_prefix).await?;
    load::warm_up(direct, "").await?;
    let direct_rps = load::requests_per_second(direct, "", opts.connections, opts.duration).await?;
    let tunnel_rps =
        load::requests_per_second(tunnel, tunnel_prefix, opts.connections, opts.duration).await?;
    let direct_latency = load::latency(direct, "", opts.latency_requests).await?;
    let tunnel_latency = load::latency(tunnel, tunnel_prefix, opts.latency_requests).await?;
    let direct_mib_s = load::mib_per_second(direct, "", opts.duration).await?;
    let tunnel_mib_s = load::mib_per_second(tunnel, tunnel_prefix, opts.duration).await?;
    // Both relays get the same warm-up under load, then the order alternates by round so neither
    // always runs first.
    let warm = Duration::from_secs(1);
    load::requests_per_second(quiet.relay_addr, tunnel_prefix, opts.connections, warm).await?;
    load::requests_per_second(tunnel, tunnel_prefix, opts.connections, warm).await?;
    let (mut on, mut off) = (Phases::default(), Phases::default());
    for round in 0..OBSERVE_ROUNDS {
        let order = if round % 2 == 0 {
            [(quiet, false), (setup, true)]
        } else {
            [(setup, true), (quiet, false)]
        };
        for (relay, observed) in order {
            let cpu = procs::cpu_time(relay.relay_pid)?;
            let (rps, requests) =
                load::requests_counted(relay.relay_addr, tunnel_prefix, opts.connections, opts.duration)
                    .await?;
            let cpu = procs::cpu_time(relay.relay_pid)?.saturating_sub(cpu);
            let phases = if observed { &mut on } else { &mut off };
            phases.add(rps, requests, cpu);
        }
    }
    let (observed_rps, unobserved_rps) = (on.rps(), off.rps());
    let (observed_cpu_us, unobserved_cpu_us) = (on.cpu_us_per_request(), off.cpu_us_per_request());
    let relay_bytes_per_idle_agent = setup.relay_bytes_per_idle_agent(opts.idle_agents).await?;
    let hooks = hooks::run(opts.duration).await?;
    Ok(BenchReport {
        observed_rps,
        unobserved_rps,
        observed_cpu_us,
        unobserved_cpu_us,
        tunnel_rps,
        direct_rps,
        tunnel_latency,
        direct_latency,
        tunnel_mib_s,
        direct_mib_s,
        relay_idle_rss_kib,
        agent_idle_rss_kib,
        agent_idle_anon_kib,
        relay_idle_anon_kib,
        relay_bytes_per_idle_agent,
        hooks,
    })
}

fn print(opts: &BenchOptions, r: &BenchReport) {
    if opts.json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "ponte bench — relay and agent as separate processes on loopback, plain HTTP (relay behind a TLS proxy),\nthe relay's access log and metrics on unless the line says otherwise"
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}   target",
        "", "tunnel", "direct", "ratio"
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8.2}   ≥ 0.50",
        format!("requests/s, {} connections", opts.connections),
        r.tunnel_rps,
        r.direct_rps,
        r.tunnel_rps / r.direct_rps
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>8}   tunnel ≤ 45 µs",
        "latency p50, 1 connection (µs)",
        us(r.tunnel_latency.p50),
        us(r.direct_latency.p50),
        ""
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>8}",
        "latency p99, 1 connection (µs)",
        us(r.tunnel_latency.p99),
        us(r.direct_latency.p99),
        ""
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8.2}   ≥ 0.40",
        "1 MiB responses, MiB/s",
        r.tunnel_mib_s,
        r.direct_mib_s,
        r.tunnel_mib_s / r.direct_mib_s
    );
    println!(
        "{:<34} {:>12}   ≤ 4096 KiB (anonymous part {} KiB)",
        "agent idle RSS (KiB)", r.agent_idle_rss_kib, r.agent_idle_anon_kib
    );
    println!(
        "{:<34} {:>12}   (anonymous part {} KiB)",
        "relay idle RSS (KiB)", r.relay_idle_rss_kib, r.relay_idle_anon_kib
    );
    println!(
        "{:<34} {:>12}   ≤ 65536 B",
        format!("relay bytes per idle agent ({})", opts.idle_agents),
        r.relay_bytes_per_idle_agent
    );
    println!();
    println!(
        "{:<34} {:>12} {:>12}",
        "hooks (/bin/true, output awaited)", "ponte", "adnanh"
    );
    let adnanh = |f: fn(&hooks::HookFigures) -> f64, digits: usize| match &r.hooks.adnanh {
        Some(a) => format!("{:.*}", digits, f(a)),
        None => "not found".to_string(),
    };
    println!(
        "{:<34} {:>12.0} {:>12}",
        "executions/s, 8 connections",
        r.hooks.ponte.executions_per_s,
        adnanh(|a| a.executions_per_s, 0)
    );
    println!(
        "{:<34} {:>12.0} {:>12}",
        "latency p50, 1 connection (µs)",
        us(r.hooks.ponte.latency.p50),
        adnanh(|a| a.latency.p50.as_secs_f64() * 1e6, 0)
    );
    if let Some(v) = &r.hooks.adnanh_version {
        println!("(adnanh: {v})");
    }
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>8}   target",
        "access log and metrics", "on", "off", "ratio"
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8.3}   ≥ 0.95",
        format!("requests/s, {} conn., {OBSERVE_ROUNDS} rounds", opts.connections),
        r.observed_rps,
        r.unobserved_rps,
        r.observed_rps / r.unobserved_rps
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>8.3}   ≤ 1.05",
        "relay CPU per request (µs)",
        r.observed_cpu_us,
        r.unobserved_cpu_us,
        r.observed_cpu_us / r.unobserved_cpu_us
    );
}
