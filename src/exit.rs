//! How a command ends: the failures worth their own exit code, and the codes themselves. A leaf
//! module (it knows only configuration and log-file errors), so the service glue in `daemon/` and the command
//! glue in `commands` can both name them without importing each other.

use crate::config::ConfigError;

/// Exit code for a configuration mistake (fix the file, do not restart in a loop).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for `check` when the relay refused the token (or the login).
pub const EXIT_REFUSED: u8 = 3;
/// Exit code for `check` when the relay could not be reached or trusted (DNS, TCP, proxy, TLS,
/// not a Ponte relay, timeout).
pub const EXIT_UNREACHABLE: u8 = 4;
/// Exit code for `check` when the relay accepted the token but an upstream does not answer.
pub const EXIT_UPSTREAM_DOWN: u8 = 5;

/// A failure worth its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The relay refused (`check`).
    #[error("{0}")]
    Refused(#[source] crate::BoxError),
    /// The relay could not be reached or trusted (`check`).
    #[error("{0}")]
    Unreachable(#[source] crate::BoxError),
    /// The relay accepted, but upstreams do not answer (`check`).
    #[error(
        "the relay accepted the token, but {0} upstream(s) did not answer; start your application, then check again"
    )]
    UpstreamDown(usize),
    /// The log file could not be opened.
    #[error(transparent)]
    LogFile(#[from] crate::logging::LogFileError),
    /// Anything else.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CommandError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Config(_) | CommandError::LogFile(_) => EXIT_CONFIG,
            CommandError::Refused(_) => EXIT_REFUSED,
            CommandError::Unreachable(_) => EXIT_UNREACHABLE,
            CommandError::UpstreamDown(_) => EXIT_UPSTREAM_DOWN,
            CommandError::Other(_) => 1,
        }
    }
}
