//! Glue between the command line and the library: load configuration, build the runtime, wire
//! the shutdown signals, and turn failures into one clear line and an exit code.

mod agent;
pub mod deliveries;
mod local;
pub mod status;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
use crate::config::relay::RelayConfig;
pub use crate::exit::CommandError;
pub use agent::{AgentArgs, ClientArgs, agent, agent_config, check, client, client_config, inlets_upstreams};
pub use local::{bench, demo, webhook};

/// Print the error (if any) as one line and map it to an exit code.
pub fn exit(result: Result<(), CommandError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ponte: {e}");
            ExitCode::from(e.exit_code())
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
