//! `ponte bench`: start a relay and an agent as real processes plus a small upstream on loopback,
//! and measure the tunnel next to a direct connection to the same upstream and next to the raw
//! TCP forwarders rathole and bore (when found: `--peers DIR` or `PATH`), in one run and through
//! the same load generator: requests/s at 64 connections, latency at 1 connection, 1 MiB
//! transfers, idle RSS and CPU time per request of each process, and Ponte again with TLS on
//! both hops. A second relay and agent with the access log and metrics off measure what watching
//! the relay costs: requests/s and relay CPU per request with them on and off, alternating.
//!
//! Targets live here, not in timed tests: the report prints each figure with its target and
//! ✔/✘. The machine's load average is printed with the figures: on a shared machine requests/s
//! move with other work, CPU time per request much less.

mod hooks;
mod load;
mod peers;
mod procs;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use load::{LatencyStats, LoadResult};

use load::Endpoint;

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
    /// Where `rathole` and `bore` are (`None`: look on `PATH`).
    pub peers: Option<PathBuf>,
    /// Also measure command hooks against adnanh/webhook.
    pub hooks: bool,
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
            peers: None,
            hooks: true,
            json: false,
        }
    }
}

/// The figures of one way to reach the upstream (direct, a forwarder, or Ponte).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    /// Small requests per second at `connections` connections.
    pub rps: f64,
    /// Latency of small requests on 1 connection.
    pub latency: LatencyStats,
    /// MiB/s of 1 MiB responses on 4 connections.
    pub mib_s: f64,
    /// Idle RSS of the public side (relay, forwarder server), KiB.
    pub server_idle_rss_kib: Option<u64>,
    /// Idle RSS of the private side (agent, forwarder client), KiB.
    pub client_idle_rss_kib: Option<u64>,
    /// CPU time of the public side per small request (µs), during the requests/s phase.
    pub server_cpu_us: Option<f64>,
    /// CPU time of the private side per small request (µs).
    pub client_cpu_us: Option<f64>,
    /// CPU time of the public side per 1 MiB response (µs).
    pub server_big_cpu_us: Option<f64>,
    /// CPU time of the private side per 1 MiB response (µs).
    pub client_big_cpu_us: Option<f64>,
    /// Minor page faults of the public side per 1 MiB response.
    pub server_big_faults: Option<f64>,
    /// Minor page faults of the private side per 1 MiB response.
    pub client_big_faults: Option<f64>,
}

/// A forwarder's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerFigures {
    /// `rathole` or `bore`.
    pub name: String,
    /// What its `--version` said.
    pub version: Option<String>,
    /// Its figures (`None`: not found, or it failed to start: see `error`).
    pub figures: Option<Figures>,
    /// Why there are no figures.
    pub error: Option<String>,
}

/// Every figure of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// When the run started (RFC 3339, UTC).
    pub started: String,
    /// CPUs the machine has.
    pub cpus: usize,
    /// 1-minute load average at the start and the end of the run.
    pub load_average: (f64, f64),
    /// Straight to the upstream.
    pub direct: Figures,
    /// Through Ponte, plain HTTP on both hops (access log and metrics on).
    pub ponte: Figures,
    /// Through Ponte with TLS on the public side and on the tunnel.
    pub ponte_tls: Figures,
    /// rathole and bore.
    pub peers: Vec<PeerFigures>,
    /// The anonymous part of the agent's idle RSS (KiB): heap and stacks, without the shared
    /// executable pages.
    pub agent_idle_anon_kib: u64,
    /// The anonymous part of the relay's idle RSS (KiB).
    pub relay_idle_anon_kib: u64,
    /// Relay RSS growth per extra idle agent connection (bytes).
    pub relay_bytes_per_idle_agent: u64,
    /// Command hooks: `ponte webhook` beside adnanh/webhook (unless `--no-hooks`).
    pub hooks: Option<hooks::HooksReport>,
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

/// The path prefix of the bench tunnel on the relay.
const TUNNEL_PREFIX: &str = "/t/bench";

/// Run the whole benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    let shutdown = CancellationToken::new();
    let upstream = load::start_upstream(shutdown.clone()).await?;
    let result = run_with(&opts, upstream).await;
    shutdown.cancel();
    let report = result?;
    print(&opts, &report);
    Ok(report)
}

/// The processes of one run; each stops when dropped (or on `stop`).
struct Running {
    plain: procs::Setup,
    quiet: procs::Setup,
    tls: procs::Setup,
}

async fn run_with(opts: &BenchOptions, upstream: std::net::SocketAddr) -> anyhow::Result<BenchReport> {
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let load_start = procs::load_average();
    // The relay's public side speaks plain HTTP here, as behind a TLS-terminating proxy, so the
    // load generator and the direct run are on equal terms; the TLS row puts TLS on both hops.
    let plain = procs::Setup::start(upstream, false, true)
        .await
        .context("starting relay and agent")?;
    let quiet = procs::Setup::start(upstream, false, false)
        .await
        .context("starting the relay and agent with the access log and metrics off")?;
    let tls = procs::Setup::start(upstream, true, true)
        .await
        .context("starting the relay and agent with TLS")?;
    let running = Running { plain, quiet, tls };
    let mut peers = Vec::new();
    let mut started_peers = Vec::new();
    for name in ["rathole", "bore"] {
        let Some(program) = peers::find(opts.peers.as_deref(), name) else {
            peers.push(PeerFigures {
                name: name.into(),
                version: None,
                figures: None,
                error: Some(match &opts.peers {
                    Some(d) => format!("not found in {}", d.display()),
                    None => "not found on PATH (bench/install-peers.sh; --peers DIR)".into(),
                }),
            });
            continue;
        };
        let version = peers::version(&program);
        let peer = match name {
            "rathole" => peers::rathole(&program, upstream).await,
            _ => peers::bore(&program, upstream).await,
        };
        let error = match peer {
            Ok(p) => {
                started_peers.push((peers.len(), p));
                None
            }
            Err(e) => Some(format!("{e:#}")),
        };
        peers.push(PeerFigures {
            name: name.into(),
            version,
            figures: None,
            error,
        });
    }
    let result = measure(opts, &running, upstream, &started_peers, &mut peers).await;
    drop(started_peers);
    running.plain.stop();
    running.quiet.stop();
    running.tls.stop();
    let mut report = result?;
    report.started = started;
    report.load_average = (load_start, procs::load_average());
    report.peers = peers;
    Ok(report)
}

/// One way to reach the upstream, and the processes on that way.
struct Subject {
    ep: Endpoint,
    pids: Option<(u32, u32)>,
}

/// Rounds of the on/off comparison; alternating spreads drift (other load, CPU clocks) evenly.
const OBSERVE_ROUNDS: usize = 4;

async fn measure(
    opts: &BenchOptions,
    running: &Running,
    upstream: std::net::SocketAddr,
    started_peers: &[(usize, peers::Peer)],
    peer_rows: &mut [PeerFigures],
) -> anyhow::Result<BenchReport> {
    let (setup, quiet) = (&running.plain, &running.quiet);
    let tunnel = |s: &procs::Setup| Endpoint::plain(s.relay_addr).with_prefix(TUNNEL_PREFIX);
    let mut subjects = vec![
        Subject {
            ep: Endpoint::plain(upstream),
            pids: None,
        },
        Subject {
            ep: tunnel(setup),
            pids: Some((setup.relay_pid, setup.agent_pid)),
        },
        Subject {
            ep: tunnel(&running.tls).with_tls(running.tls.ca())?,
            pids: Some((running.tls.relay_pid, running.tls.agent_pid)),
        },
    ];
    for (_, p) in started_peers {
        subjects.push(Subject {
            ep: Endpoint::plain(p.public),
            pids: Some((p.server_pid, p.client_pid)),
        });
    }
    // Let every process settle, then read idle memory before any load.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut idle = Vec::new();
    for s in &subjects {
        idle.push(match s.pids {
            Some((server, client)) => (Some(procs::rss_kib(server)?), Some(procs::rss_kib(client)?)),
            None => (None, None),
        });
    }
    let agent_idle_anon_kib = procs::anon_rss_kib(setup.agent_pid)?;
    let relay_idle_anon_kib = procs::anon_rss_kib(setup.relay_pid)?;
    // Each phase runs for every subject before the next phase, so drift in the machine's other
    // load spreads over all of them alike.
    for s in &subjects {
        load::warm_up(&s.ep).await?;
    }
    let mut small = Vec::new();
    for s in &subjects {
        let before = per_side(s.pids, procs::cpu_time)?;
        let r = load::small(&s.ep, opts.connections, opts.duration).await?;
        let after = per_side(s.pids, procs::cpu_time)?;
        small.push((
            r.per_second(),
            cpu_us_each(after.0, before.0, r.requests),
            cpu_us_each(after.1, before.1, r.requests),
        ));
    }
    let mut latency = Vec::new();
    for s in &subjects {
        latency.push(load::latency(&s.ep, opts.latency_requests).await?);
    }
    let mut big = Vec::new();
    for s in &subjects {
        let before = (
            per_side(s.pids, procs::cpu_time)?,
            per_side(s.pids, procs::minor_faults)?,
        );
        let r = load::big(&s.ep, opts.duration).await?;
        let after = (
            per_side(s.pids, procs::cpu_time)?,
            per_side(s.pids, procs::minor_faults)?,
        );
        let faults =
            |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?) as f64 / r.requests.max(1) as f64);
        big.push(BigFigures {
            mib_s: r.mib_per_second(),
            cpu_us: (
                cpu_us_each(after.0.0, before.0.0, r.requests),
                cpu_us_each(after.0.1, before.0.1, r.requests),
            ),
            faults: (faults(after.1.0, before.1.0), faults(after.1.1, before.1.1)),
        });
    }
    let mut figures: Vec<Figures> = (0..subjects.len())
        .map(|i| Figures {
            rps: small[i].0,
            latency: latency[i],
            mib_s: big[i].mib_s,
            server_idle_rss_kib: idle[i].0,
            client_idle_rss_kib: idle[i].1,
            server_cpu_us: small[i].1,
            client_cpu_us: small[i].2,
            server_big_cpu_us: big[i].cpu_us.0,
            client_big_cpu_us: big[i].cpu_us.1,
            server_big_faults: big[i].faults.0,
            client_big_faults: big[i].faults.1,
        })
        .collect();
    for (k, (row, _)) in started_peers.iter().enumerate().rev() {
        peer_rows[*row].figures = Some(figures.remove(3 + k));
    }
    let ponte_tls = figures.remove(2);
    let ponte = figures.remove(1);
    let direct = figures.remove(0);

    // Both relays get the same warm-up under load, then the order alternates by round so neither
    // always runs first.
    let warm = Duration::from_secs(1);
    load::small(&tunnel(quiet), opts.connections, warm).await?;
    load::small(&tunnel(setup), opts.connections, warm).await?;
    let (mut on, mut off) = (Phases::default(), Phases::default());
    for round in 0..OBSERVE_ROUNDS {
        let order = if round % 2 == 0 {
            [(quiet, false), (setup, true)]
        } else {
            [(setup, true), (quiet, false)]
        };
        for (relay, observed) in order {
            let cpu = procs::cpu_time(relay.relay_pid)?;
            let r = load::small(&tunnel(relay), opts.connections, opts.duration).await?;
            let cpu = procs::cpu_time(relay.relay_pid)?.saturating_sub(cpu);
            let phases = if observed { &mut on } else { &mut off };
            phases.add(r.per_second(), r.requests, cpu);
        }
    }
    let (observed_rps, unobserved_rps) = (on.rps(), off.rps());
    let (observed_cpu_us, unobserved_cpu_us) = (on.cpu_us_per_request(), off.cpu_us_per_request());
    let relay_bytes_per_idle_agent = setup.relay_bytes_per_idle_agent(opts.idle_agents).await?;
    let hooks = if opts.hooks {
        Some(hooks::run(opts.duration).await?)
    } else {
        None
    };
    Ok(BenchReport {
        started: String::new(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: (0.0, 0.0),
        direct,
        ponte,
        ponte_tls,
        peers: Vec::new(),
        agent_idle_anon_kib,
        relay_idle_anon_kib,
        relay_bytes_per_idle_agent,
        hooks,
        observed_rps,
        unobserved_rps,
        observed_cpu_us,
        unobserved_cpu_us,
    })
}

/// The 1 MiB phase of one subject: throughput, and per response the CPU time and minor page
/// faults of its public and private side.
struct BigFigures {
    mib_s: f64,
    cpu_us: (Option<f64>, Option<f64>),
    faults: (Option<f64>, Option<f64>),
}

/// `read` of a server and client process (CPU time, page faults so far); `None` for the direct path.
fn per_side<T>(
    pids: Option<(u32, u32)>,
    read: fn(u32) -> anyhow::Result<T>,
) -> anyhow::Result<(Option<T>, Option<T>)> {
    Ok(match pids {
        Some((s, c)) => (Some(read(s)?), Some(read(c)?)),
        None => (None, None),
    })
}

/// CPU µs per request of one process over a phase of `requests`.
fn cpu_us_each(after: Option<Duration>, before: Option<Duration>, requests: u64) -> Option<f64> {
    Some(after?.saturating_sub(before?).as_secs_f64() * 1e6 / requests.max(1) as f64)
}

/// The targets, beside Ponte's figures.
mod target {
    /// Agent idle RSS (KiB).
    pub const AGENT_RSS_KIB: u64 = 4 * 1024;
    /// Relay idle RSS (KiB).
    pub const RELAY_RSS_KIB: u64 = 8 * 1024;
    /// 1 MiB throughput over direct.
    pub const BIG_RATIO: f64 = 0.40;
    /// p50 at 1 connection over rathole's.
    pub const P50_OVER_RATHOLE: f64 = 1.25;
    /// With TLS on both hops, the plain figures may be this much worse.
    pub const TLS_SLACK: f64 = 0.15;
    /// Access log and metrics on over off, requests/s (and the inverse for CPU).
    pub const OBSERVE_RATIO: f64 = 0.95;
}

fn mark(ok: bool) -> &'static str {
    if ok { "✔" } else { "✘" }
}

fn print(opts: &BenchOptions, r: &BenchReport) {
    if opts.json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "ponte bench {} — {} CPUs, load average {:.2} at start, {:.2} at end (other work on the machine moves requests/s; CPU time per request moves less)",
        r.started, r.cpus, r.load_average.0, r.load_average.1
    );
    println!(
        "loopback, one load generator and upstream for all; Ponte's relay plain HTTP on both hops (as behind a TLS proxy), access log and metrics on"
    );
    let peer = |name: &str| {
        r.peers
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.figures.as_ref())
    };
    let (rathole, bore) = (peer("rathole"), peer("bore"));
    let columns: [(&str, Option<&Figures>); 5] = [
        ("direct", Some(&r.direct)),
        ("rathole", rathole),
        ("bore", bore),
        ("ponte", Some(&r.ponte)),
        ("ponte TLS", Some(&r.ponte_tls)),
    ];
    let row = |label: &str, value: &dyn Fn(&Figures) -> Option<String>, target: String| {
        let mut line = format!("{label:<36}");
        for (_, f) in &columns {
            let cell = f.and_then(value).unwrap_or_else(|| "–".into());
            line.push_str(&format!(" {cell:>10}"));
        }
        println!("{line}   {target}");
    };
    let mut head = format!("{:<36}", "");
    for (name, _) in &columns {
        head.push_str(&format!(" {name:>10}"));
    }
    println!("{head}   target (ponte)");

    let best_peer_rps = [rathole, bore]
        .iter()
        .flatten()
        .map(|f| f.rps)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let rps_target = match best_peer_rps {
        Some(best) => format!("≥ rathole, bore  {}", mark(r.ponte.rps >= best)),
        None => "≥ rathole, bore  (peers not found)".into(),
    };
    row(
        &format!("requests/s, {} connections", opts.connections),
        &|f| Some(format!("{:.0}", f.rps)),
        rps_target,
    );
    row(
        "  ratio to direct",
        &|f| Some(format!("{:.2}", f.rps / r.direct.rps)),
        String::new(),
    );
    let p50_target = match rathole {
        Some(rh) => {
            let bound = us(rh.latency.p50) * target::P50_OVER_RATHOLE;
            format!(
                "≤ 1.25 × rathole = {bound:.0}  {}",
                mark(us(r.ponte.latency.p50) <= bound)
            )
        }
        None => "≤ 1.25 × rathole  (not found)".into(),
    };
    row(
        "latency p50, 1 connection (µs)",
        &|f| Some(format!("{:.0}", us(f.latency.p50))),
        p50_target,
    );
    row(
        "latency p99, 1 connection (µs)",
        &|f| Some(format!("{:.0}", us(f.latency.p99))),
        String::new(),
    );
    row(
        "1 MiB responses, MiB/s",
        &|f| Some(format!("{:.0}", f.mib_s)),
        String::new(),
    );
    let big_ratio = r.ponte.mib_s / r.direct.mib_s;
    row(
        "  ratio to direct",
        &|f| Some(format!("{:.2}", f.mib_s / r.direct.mib_s)),
        format!(
            "≥ {:.2}  {}",
            target::BIG_RATIO,
            mark(big_ratio >= target::BIG_RATIO)
        ),
    );
    let relay_rss = r.ponte.server_idle_rss_kib.unwrap_or(0);
    let agent_rss = r.ponte.client_idle_rss_kib.unwrap_or(0);
    row(
        "idle RSS, relay / server (KiB)",
        &|f| f.server_idle_rss_kib.map(|v| v.to_string()),
        format!(
            "≤ {}  {} (anonymous part {} KiB)",
            target::RELAY_RSS_KIB,
            mark(relay_rss <= target::RELAY_RSS_KIB),
            r.relay_idle_anon_kib
        ),
    );
    row(
        "idle RSS, agent / client (KiB)",
        &|f| f.client_idle_rss_kib.map(|v| v.to_string()),
        format!(
            "≤ {}  {} (anonymous part {} KiB)",
            target::AGENT_RSS_KIB,
            mark(agent_rss <= target::AGENT_RSS_KIB),
            r.agent_idle_anon_kib
        ),
    );
    // Costs of each side, with the decimals that keep their noise out of sight.
    type Figure = fn(&Figures) -> Option<f64>;
    let costs: [(&str, Figure, usize); 6] = [
        ("CPU per request, relay / server (µs)", |f| f.server_cpu_us, 1),
        ("CPU per request, agent / client (µs)", |f| f.client_cpu_us, 1),
        ("CPU per 1 MiB, relay / server (µs)", |f| f.server_big_cpu_us, 0),
        ("CPU per 1 MiB, agent / client (µs)", |f| f.client_big_cpu_us, 0),
        ("page faults / 1 MiB, relay / server", |f| f.server_big_faults, 1),
        ("page faults / 1 MiB, agent / client", |f| f.client_big_faults, 1),
    ];
    for (label, value, decimals) in costs {
        row(
            label,
            &|f| value(f).map(|v| format!("{v:.decimals$}")),
            String::new(),
        );
    }
    for p in &r.peers {
        match (&p.figures, &p.error) {
            (_, Some(e)) => println!("({}: skipped, {e})", p.name),
            (Some(_), None) => println!(
                "({}: {})",
                p.name,
                p.version.as_deref().unwrap_or("version unknown")
            ),
            (None, None) => {}
        }
    }
    println!(
        "{:<36} {:>10}   ≤ 65536",
        format!("relay bytes per idle agent ({})", opts.idle_agents),
        r.relay_bytes_per_idle_agent,
    );

    println!();
    let plain_rps = r.ponte.rps / r.direct.rps;
    let tls_rps = r.ponte_tls.rps / r.direct.rps;
    let tls_big = r.ponte_tls.mib_s / r.direct.mib_s;
    let keep = 1.0 - target::TLS_SLACK;
    println!(
        "{:<36} {:>10} {:>10} {:>10}   target",
        "TLS on both hops", "plain", "TLS", "TLS/plain"
    );
    println!(
        "{:<36} {:>10.2} {:>10.2} {:>10.2}   ≥ {keep:.2}  {}",
        "requests/s, ratio to direct",
        plain_rps,
        tls_rps,
        tls_rps / plain_rps,
        mark(tls_rps / plain_rps >= keep)
    );
    let p50_factor = us(r.ponte_tls.latency.p50) / us(r.ponte.latency.p50);
    println!(
        "{:<36} {:>10.0} {:>10.0} {:>10.2}   ≤ {:.2}  {}",
        "latency p50, 1 connection (µs)",
        us(r.ponte.latency.p50),
        us(r.ponte_tls.latency.p50),
        p50_factor,
        1.0 + target::TLS_SLACK,
        mark(p50_factor <= 1.0 + target::TLS_SLACK)
    );
    println!(
        "{:<36} {:>10.2} {:>10.2} {:>10.2}   ≥ {keep:.2}  {}",
        "1 MiB responses, ratio to direct",
        big_ratio,
        tls_big,
        tls_big / big_ratio,
        mark(tls_big / big_ratio >= keep)
    );

    if let Some(h) = &r.hooks {
        println!();
        println!(
            "{:<34} {:>12} {:>12}",
            "hooks (/bin/true, output awaited)", "ponte", "adnanh"
        );
        let adnanh = |f: fn(&hooks::HookFigures) -> f64, digits: usize| match &h.adnanh {
            Some(a) => format!("{:.*}", digits, f(a)),
            None => "not found".to_string(),
        };
        println!(
            "{:<34} {:>12.0} {:>12}",
            "executions/s, 8 connections",
            h.ponte.executions_per_s,
            adnanh(|a| a.executions_per_s, 0)
        );
        println!(
            "{:<34} {:>12.0} {:>12}",
            "latency p50, 1 connection (µs)",
            us(h.ponte.latency.p50),
            adnanh(|a| a.latency.p50.as_secs_f64() * 1e6, 0)
        );
        if let Some(v) = &h.adnanh_version {
            println!("(adnanh: {v})");
        }
    }
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>8}   target",
        "access log and metrics", "on", "off", "ratio"
    );
    let rps_ratio = r.observed_rps / r.unobserved_rps;
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8.3}   ≥ {:.2}  {}",
        format!("requests/s, {} conn., {OBSERVE_ROUNDS} rounds", opts.connections),
        r.observed_rps,
        r.unobserved_rps,
        rps_ratio,
        target::OBSERVE_RATIO,
        mark(rps_ratio >= target::OBSERVE_RATIO)
    );
    let cpu_ratio = r.observed_cpu_us / r.unobserved_cpu_us;
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>8.3}   ≤ {:.2}  {}",
        "relay CPU per request (µs)",
        r.observed_cpu_us,
        r.unobserved_cpu_us,
        cpu_ratio,
        2.0 - target::OBSERVE_RATIO,
        mark(cpu_ratio <= 2.0 - target::OBSERVE_RATIO)
    );
}
