//! How a command ends: the failures worth their own exit code, and the codes themselves. A leaf
//! module (it knows only configuration errors), so the service glue in `daemon/` and the command
//! glue in `commands` can both name them without importing each other.

use crate::config::ConfigError;

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

impl CommandError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Config(_) => EXIT_CONFIG,
            CommandError::Refused(_) => EXIT_REFUSED,
            CommandError::Other(_) => 1,
        }
    }
}
