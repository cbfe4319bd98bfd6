//! Running as a system service: systemd notifications on Linux, the Service Control Manager on
//! Windows, and `ponte service install|uninstall|status` on both.
//!
//! The command glue (`commands.rs`) calls three hooks and stay free of OS details:
//! [`run`] wraps a long-running command (on Windows it becomes the service body when the SCM
//! started the process, detected by asking the service dispatcher, never by reading the command
//! line); [`watch_agent`] / [`relay_listening`] report readiness, status and liveness, and link
//! a service Stop to the command's shutdown token.

pub mod install;
pub mod logfile;
#[cfg(unix)]
mod systemctl;
#[cfg(unix)]
pub mod systemd;
#[cfg(windows)]
pub mod windows;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentStatus, Heartbeat};
use crate::exit::CommandError;

pub use install::{Role, ServiceAction, ServiceSpec};
pub use logfile::LogSink;

/// The writer to install as the log subscriber's output (stderr until a service routes it).
pub fn log_writer() -> LogSink {
    LogSink
}

/// Run a long-running command (`agent`, `relay`). On Windows, when the Service Control Manager
/// started this process, `body` runs as the service `role` (logs to files under
/// `%ProgramData%\Ponte\logs`, Stop cancels the shutdown token); otherwise it simply runs.
/// `config` is the file the command will read; a Windows service writes the example there if it
/// is missing, so a fresh install has a file to edit.
pub fn run<F>(role: Role, config: Option<PathBuf>, body: F) -> Result<(), CommandError>
where
    F: FnOnce() -> Result<(), CommandError> + Send + 'static,
{
    #[cfg(windows)]
    {
        windows::run(role, config, body)
    }
    #[cfg(not(windows))]
    {
        let _ = (role, config);
        body()
    }
}

/// Start reporting the agent's state to the service manager (call inside the runtime, before
/// `agent::run`). Returns the heartbeat to hand to `agent::run`, so the watchdog is petted only
/// while the supervisor runs.
pub fn watch_agent(status: watch::Receiver<AgentStatus>, shutdown: &CancellationToken) -> Heartbeat {
    let heartbeat = Heartbeat::new();
    #[cfg(unix)]
    tokio::spawn(systemd::report_agent(status, heartbeat.clone(), shutdown.clone()));
    #[cfg(windows)]
    {
        let _ = status;
        windows::link_stop(shutdown);
    }
    heartbeat
}

/// Tell the service manager the relay is listening (call inside the runtime, once bound).
pub fn relay_listening(addr: SocketAddr, shutdown: &CancellationToken) {
    #[cfg(unix)]
    tokio::spawn(systemd::report_relay(addr.to_string(), shutdown.clone()));
    #[cfg(windows)]
    {
        let _ = addr;
        windows::link_stop(shutdown);
    }
}

/// `ponte service install|uninstall|status`.
pub fn service_command(action: ServiceAction, spec: ServiceSpec) -> Result<(), CommandError> {
    #[cfg(unix)]
    {
        systemctl::run(action, &spec)
    }
    #[cfg(windows)]
    {
        windows::service_command(action, &spec)
    }
}
