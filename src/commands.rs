//! Glue between the command line and the library: load configuration, build the runtime, wire
//! the shutdown signals, and turn failures into one clear line and an exit code.

pub mod deliveries;
pub mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentStatus, proxy_env::ProxySettings};
use crate::config::agent::{AgentConfig, AgentOverrides, IngressRule, UpstreamUrl};
use crate::config::relay::RelayConfig;
use crate::config::{ConfigError, Secret};

/// Exit code for a configuration mistake (fix the file, do not restart in a loop).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for `check` when the relay refused.
pub const EXIT_REFUSED: u8 = 3;

/// A failure worth its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The relay refused (`check`).
    #[error("{0}")]
    Refused(String),
    /// Anything else.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Print the error (if any) as one line and map it to an exit code.
pub fn exit(result: Result<(), CommandError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ponte: {e}");
            ExitCode::from(match e {
                CommandError::Config(_) => EXIT_CONFIG,
                CommandError::Refused(_) => EXIT_REFUSED,
                CommandError::Other(_) => 1,
            })
        }
    }
}

/// Worker threads of the async runtime: `Some(1)` runs everything on the calling thread, `None`
/// uses one worker per core.
static WORKER_THREADS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

/// Set the runtime size from `--worker-threads` (0 = the command's default).
pub fn set_worker_threads(n: usize) {
    let _ = WORKER_THREADS.set((n > 0).then_some(n));
}

/// The agent serves one machine's traffic: one thread is plenty, keeps memory small, and avoids
/// cross-thread wake-ups on every request.
const AGENT_DEFAULT_THREADS: usize = 1;

fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    runtime_with(None)
}

fn runtime_with(default: Option<usize>) -> Result<tokio::runtime::Runtime, CommandError> {
    let threads = WORKER_THREADS.get().copied().flatten().or(default).unwrap_or(0);
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    Ok(b.enable_all().build().context("starting the async runtime")?)
}

/// `ponte relay` (as a Windows service when the SCM started it).
pub fn relay(config: &Path, listen: Option<&str>) -> Result<(), CommandError> {
    let (config, listen) = (config.to_owned(), listen.map(str::to_owned));
    crate::daemon::run(crate::daemon::Role::Relay, Some(config.clone()), move || {
        run_relay(&config, listen.as_deref())
    })
}

fn run_relay(config: &Path, listen: Option<&str>) -> Result<(), CommandError> {
    let mut cfg = RelayConfig::load(config)?;
    if let Some(l) = listen {
        cfg.listen = l.parse().map_err(|_| {
            ConfigError::invalid(
                "command line",
                format!("--listen `{l}` is not an address; write it like 0.0.0.0:443"),
            )
        })?;
    }
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (is another program using the port?)",
                cfg.listen
            )
        })?;
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signals(shutdown.clone());
        crate::daemon::relay_listening(listener.local_addr().unwrap_or(cfg.listen), &shutdown);
        crate::relay::serve(listener, cfg, shutdown).await?;
        Ok(())
    })
}

/// Agent flags shared by `agent` and `check`.
#[derive(Debug, Default)]
pub struct AgentArgs {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--relay`.
    pub relay: Option<String>,
    /// `--token` / `PONTE_TOKEN`.
    pub token: Option<String>,
    /// `--upstream`.
    pub upstream: Option<String>,
    /// `--ca-file`.
    pub ca_file: Option<PathBuf>,
}

fn env_proxy(relay_tls: bool) -> Result<Option<ProxySettings>, ConfigError> {
    ProxySettings::from_env(|n| std::env::var(n).ok(), relay_tls)
        .map_err(|m| ConfigError::invalid("environment", m))
}

/// Load the file (if any) and apply flags and environment.
pub fn agent_config(args: AgentArgs) -> Result<AgentConfig, ConfigError> {
    // The proxy variable to read depends on the relay's scheme, known only after parsing; the
    // HTTPS one applies to every TLS relay, which is all relays outside loopback.
    let flags = AgentOverrides {
        relay: args.relay,
        token: args.token.map(Secret::new),
        upstream: args.upstream,
        ca_file: args.ca_file,
        env_proxy: env_proxy(true)?,
    };
    AgentConfig::load(args.config.as_deref(), flags)
}

/// `ponte agent` (as a Windows service when the SCM started it).
pub fn agent(args: AgentArgs) -> Result<(), CommandError> {
    let role = crate::daemon::Role::Agent { name: None };
    crate::daemon::run(role, args.config.clone(), move || run_agent(agent_config(args)?))
}

fn run_agent(cfg: AgentConfig) -> Result<(), CommandError> {
    runtime_with(Some(AGENT_DEFAULT_THREADS))?.block_on(async move {
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signals(shutdown.clone());
        let (status, rx) = watch::channel(AgentStatus::Starting);
        // Readiness, STATUS= and the watchdog for systemd; Stop for the Windows SCM.
        let heartbeat = crate::daemon::watch_agent(rx, &shutdown);
        heartbeat.scope(agent::run(cfg, shutdown, status)).await?;
        Ok(())
    })
}

/// Flags of the inlets-compatible `client` command.
#[derive(Debug, Default)]
pub struct ClientArgs {
    /// `--url wss://…`.
    pub url: String,
    /// `--upstream`.
    pub upstream: String,
    /// `--token`.
    pub token: Option<String>,
    /// `--token-from`.
    pub token_from: Option<PathBuf>,
    /// `--ca-file`.
    pub ca_file: Option<PathBuf>,
}

/// Turn inlets' `--upstream` (one URL, or `host=url,host2=url2`) into ingress rules.
pub fn inlets_upstreams(spec: &str) -> Result<Vec<IngressRule>, ConfigError> {
    let bad = |m: String| ConfigError::invalid("command line", format!("--upstream: {m}"));
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (host, url) = match item.split_once('=') {
                Some((h, u)) if !h.contains("://") => (Some(h.trim()), u.trim()),
                _ => (None, item),
            };
            Ok(IngressRule {
                host: host.map(crate::config::EnvString::from_static),
                path: None,
                upstream: UpstreamUrl::parse(url).map_err(bad)?,
                host_header: None,
                danger_accept_invalid_certs: false,
            })
        })
        .collect()
}

/// Build the agent configuration of `ponte client`.
pub fn client_config(args: ClientArgs) -> Result<AgentConfig, ConfigError> {
    let token = match (args.token, &args.token_from) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                ConfigError::invalid("command line", format!("--token-from {}: {e}", path.display()))
            })?,
        (Some(t), None) => t,
        (None, None) => {
            return Err(ConfigError::invalid(
                "command line",
                "no token: pass --token=KEY, --token-from FILE or set PONTE_TOKEN",
            ));
        }
    };
    let mut cfg = AgentConfig::empty().merge(
        AgentOverrides {
            relay: Some(args.url),
            token: Some(Secret::new(token)),
            upstream: Some("http://localhost:8000".into()),
            ca_file: args.ca_file,
            env_proxy: env_proxy(true)?,
        },
        "command line",
    )?;
    cfg.ingress = inlets_upstreams(&args.upstream)?;
    if cfg.ingress.is_empty() {
        return Err(ConfigError::invalid(
            "command line",
            "--upstream is empty; pass e.g. --upstream=http://localhost:8000",
        ));
    }
    Ok(cfg)
}

/// `ponte client`.
pub fn client(args: ClientArgs) -> Result<(), CommandError> {
    let role = crate::daemon::Role::Agent { name: None };
    crate::daemon::run(role, None, move || run_agent(client_config(args)?))
}

/// `ponte check`.
pub fn check(args: AgentArgs) -> Result<(), CommandError> {
    let cfg = agent_config(args)?;
    runtime()?.block_on(async move {
        let relay = cfg.relay.as_ref().map(|r| r.display()).unwrap_or_default();
        match agent::check(&cfg).await {
            Ok(h) => {
                println!("ok: {relay} accepted the token");
                println!("tunnel: {}", h.tunnel);
                println!("public URL: {}", h.public_url);
                for rule in &cfg.ingress {
                    let reachable = tokio::time::timeout(
                        std::time::Duration::from_secs(3),
                        tokio::net::TcpStream::connect(rule.upstream.authority.as_str()),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok());
                    let state = if reachable {
                        "reachable"
                    } else {
                        "NOT reachable (is your application running?)"
                    };
                    println!("upstream {}: {state}", rule.upstream);
                }
                Ok(())
            }
            Err(e) => Err(CommandError::Refused(e.to_string())),
        }
    })
}

/// `ponte demo`.
pub fn demo(upstream: Option<String>) -> Result<(), CommandError> {
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signals(shutdown.clone());
        crate::demo::run(upstream, shutdown).await?;
        Ok(())
    })
}

/// `ponte bench`.
pub fn bench(opts: crate::bench::BenchOptions) -> Result<(), CommandError> {
    runtime()?.block_on(async move {
        crate::bench::run(opts).await?;
        Ok(())
    })
}
