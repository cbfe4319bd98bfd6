//! The private side's commands: `agent`, its inlets-compatible alias `client`, and `check`.

use std::path::{Path, PathBuf};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{CommandError, runtime, runtime_with};
use crate::agent::{self, AgentStatus, DialError};
use crate::config::agent::{
    AgentConfig, AgentOverrides, COMMAND_LINE, Given, IngressRule, Purpose, UpstreamUrl, token_from_file,
};
use crate::config::proxy::ProxyEnv;
use crate::config::{ConfigError, Secret};

/// The agent serves one machine's traffic: one thread is plenty, keeps memory small, and avoids
/// cross-thread wake-ups on every request.
const AGENT_DEFAULT_THREADS: usize = 1;

/// Agent flags shared by `agent` and `check`.
#[derive(Debug, Default)]
pub struct AgentArgs {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--relay` (repeatable: one per relay node).
    pub relay: Vec<String>,
    /// `--token` / `PONTE_TOKEN`.
    pub token: Option<String>,
    /// `--token-from`: wins over `--token` and `PONTE_TOKEN`.
    pub token_from: Option<PathBuf>,
    /// `--upstream`.
    pub upstream: Option<String>,
    /// `--ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--hooks`.
    pub hooks: Option<PathBuf>,
    /// `--inspect ADDR|off` (`agent` only).
    pub inspect: Option<String>,
}

fn proxy_env() -> ProxyEnv {
    ProxyEnv::from_lookup(|n| std::env::var(n).ok())
}

/// `--token-from FILE`, else `--token` / `PONTE_TOKEN`.
fn token(token: Option<String>, token_from: Option<&Path>) -> Result<Option<Secret>, ConfigError> {
    match token_from {
        Some(path) => Ok(Some(token_from_file(path)?)),
        None => Ok(token.map(Secret::new)),
    }
}

/// Load the file (if any) and apply flags and environment, checking what `purpose` needs.
pub fn agent_config(args: AgentArgs, purpose: Purpose) -> Result<AgentConfig, ConfigError> {
    let flags = AgentOverrides {
        relay: args.relay,
        token: token(args.token, args.token_from.as_deref())?,
        upstream: args.upstream,
        ca_file: args.ca_file,
        hooks: args.hooks,
        inspect: args.inspect,
        proxy_env: proxy_env(),
    };
    AgentConfig::load_for(args.config.as_deref(), flags, purpose)
}

/// `ponte agent` (as a Windows service when the SCM started it).
pub fn agent(args: AgentArgs) -> Result<(), CommandError> {
    let role = crate::daemon::Role::Agent { name: None };
    crate::daemon::run(role, args.config.clone(), move || {
        run_agent(agent_config(args, Purpose::Serve)?)
    })
}

fn run_agent(mut cfg: AgentConfig) -> Result<(), CommandError> {
    // The start-up banner speaks the user's language (pt-BR under a Portuguese locale).
    cfg.lang = crate::locale::Lang::from_env();
    runtime_with(Some(AGENT_DEFAULT_THREADS))?.block_on(async move {
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signals(shutdown.clone());
        let (status, rx) = watch::channel(AgentStatus::Starting);
        // Readiness, STATUS= and the watchdog for systemd; Stop for the Windows SCM.
        let heartbeat = crate::daemon::watch_agent(rx.clone(), &shutdown);
        // The inspector (127.0.0.1:4040 unless `inspect:` says otherwise) wraps the origins.
        match crate::inspect::inspector::start(&cfg, rx, &shutdown).await? {
            Some(started) => {
                agent::run_with_ingress(cfg, started.ingress, shutdown, status, Some(heartbeat)).await?
            }
            None => agent::run(cfg, shutdown, status, Some(heartbeat)).await?,
        }
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
    /// `--inspect ADDR|off`.
    pub inspect: Option<String>,
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
            let mut rule = IngressRule::catch_all(UpstreamUrl::parse(url).map_err(bad)?);
            rule.host = host.map(crate::config::EnvString::from_static);
            Ok(rule)
        })
        .collect()
}

/// Build the agent configuration of `ponte client`.
pub fn client_config(args: ClientArgs) -> Result<AgentConfig, ConfigError> {
    let mut cfg = AgentConfig::empty().merge_for(
        AgentOverrides {
            relay: vec![args.url],
            token: token(args.token, args.token_from.as_deref())?,
            // Replaced below by the rules `--upstream` describes.
            upstream: Some("http://localhost:8000".into()),
            ca_file: args.ca_file,
            hooks: None,
            inspect: args.inspect,
            proxy_env: proxy_env(),
        },
        Given::Client,
        Purpose::Serve,
    )?;
    cfg.ingress = inlets_upstreams(&args.upstream)?;
    if cfg.ingress.is_empty() {
        return Err(ConfigError::invalid(
            COMMAND_LINE,
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

/// Longest wait for one upstream to accept a TCP connection in `check`.
const UPSTREAM_PROBE: std::time::Duration = std::time::Duration::from_secs(3);

/// `ponte check`: log in once and say what the relay answered; then, if upstreams are
/// configured, whether each accepts a connection. Exit codes: see [`crate::exit`].
pub fn check(args: AgentArgs) -> Result<(), CommandError> {
    let cfg = agent_config(args, Purpose::Check)?;
    // Hooks files are checked before the relay: a mistake there is the user's to fix first.
    for rule in &cfg.ingress {
        if let Some(file) = &rule.hooks {
            let (hooks, warnings) =
                crate::hooks::load_file(std::path::Path::new(file.as_str()), rule.hooks_template)?;
            for w in warnings {
                println!("warning: {w}");
            }
            let ids: Vec<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
            println!("hooks {file}: {} hook(s): {}", hooks.len(), ids.join(", "));
        }
    }
    runtime()?.block_on(async move {
        let setup = |e: anyhow::Error| {
            CommandError::Config(ConfigError::invalid(cfg.given.origin(), format!("{e:#}")))
        };
        let answers = agent::check_all(&cfg).await.map_err(|e| match e {
            DialError::Setup(e) => setup(e),
            other => CommandError::Unreachable(other.into()),
        })?;
        // A list names each node on purpose: every one must accept. The addresses of one name
        // are checked too, but one answering is enough (an IPv6 address may not be routed here).
        let listed = cfg.relay.len() > 1;
        let several = answers.len() > 1;
        let mut failed: Option<CommandError> = None;
        let mut nodes: Vec<String> = Vec::new();
        let mut accepted = 0;
        for (relay, answer) in answers {
            let h = match answer {
                Ok(h) => h,
                Err(e) => {
                    if several {
                        println!("FAILED: {relay}: {e}");
                    }
                    let err = match e {
                        DialError::Rejected { .. } => CommandError::Refused(e.into()),
                        DialError::Setup(e) => setup(e),
                        other => CommandError::Unreachable(other.into()),
                    };
                    // A refused token is the more useful exit code.
                    if !matches!(failed, Some(CommandError::Refused(_))) {
                        failed = Some(err);
                    }
                    continue;
                }
            };
            accepted += 1;
            println!("ok: {relay} accepted the token");
            if let Some(node) = &h.node {
                println!("node: {node}");
                nodes.push(node.clone());
            }
            println!("tunnel: {}", h.tunnel);
            println!("public URL: {}", h.public_url);
            if h.agents > 1 {
                println!(
                    "{} agents share this tunnel, counting this check: requests are split between them",
                    h.agents
                );
            }
        }
        if let Some(err) = failed
            && (listed || accepted == 0)
        {
            return Err(err);
        }
        if cfg.ha_connections > 1 {
            // Relays that send no node id count one node per address.
            let distinct = if nodes.len() == accepted {
                nodes.sort_unstable();
                nodes.dedup();
                nodes.len()
            } else {
                accepted
            };
            let sessions = distinct.min(cfg.ha_connections);
            println!(
                "sessions: {sessions} of {} (ha_connections) on distinct relay nodes",
                cfg.ha_connections
            );
        }
        let upstreams: Vec<_> = cfg.ingress.iter().filter_map(|r| r.upstream.as_ref()).collect();
        if upstreams.is_empty() {
            println!("upstreams: none configured (only the credentials were tested)");
            return Ok(());
        }
        let mut down = 0;
        for upstream in upstreams {
            let reachable = tokio::time::timeout(
                UPSTREAM_PROBE,
                tokio::net::TcpStream::connect(upstream.authority.as_str()),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            let state = if reachable {
                "reachable"
            } else {
                down += 1;
                "NOT reachable (is your application running?)"
            };
            println!("upstream {upstream}: {state}");
        }
        match down {
            0 => Ok(()),
            n => Err(CommandError::UpstreamDown(n)),
        }
    })
}
