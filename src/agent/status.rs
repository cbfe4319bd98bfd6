//! What the agent is doing right now, published for systemd `STATUS=`, readiness and tests.

use std::fmt;
use std::time::{Duration, SystemTime};

/// The agent's connection state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    /// Started, first attempt not finished.
    Starting,
    /// At least one session is up.
    Connected {
        /// The relay URL (the URLs of every live session, comma-separated).
        relay: String,
        /// The tunnel the relay put us on.
        tunnel: String,
        /// Where the public reaches it.
        public_url: String,
        /// Sessions this agent has opened since it started, this one included (so reconnects
        /// are `connects - 1`, however quickly they followed each other).
        connects: u64,
        /// When the oldest live session came up.
        since: SystemTime,
        /// Every live session, by slot.
        sessions: Vec<SessionView>,
        /// Sessions the agent tries to keep (`ha_connections`).
        wanted: usize,
    },
    /// The last attempt or session failed; waiting before the next attempt.
    Retrying {
        /// Wait before the next attempt.
        delay: Duration,
        /// What went wrong.
        error: String,
    },
    /// Shutting down.
    Stopping,
}

/// One live session of the agent, as shown in the status and the inspector.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionView {
    /// Which of the agent's sessions (0 .. ha_connections).
    pub slot: usize,
    /// The relay URL (and the address, when the name resolved to several).
    pub relay: String,
    /// The relay node's id, when the relay sends one.
    pub node: Option<String>,
    /// When it came up.
    #[serde(skip)]
    pub since: SystemTime,
}

impl AgentStatus {
    /// True while a session is up.
    pub fn is_connected(&self) -> bool {
        matches!(self, AgentStatus::Connected { .. })
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentStatus::Starting => f.write_str("connecting"),
            AgentStatus::Connected {
                relay,
                public_url,
                sessions,
                wanted,
                ..
            } => {
                // The public URL stays last: scripts read it from the end of STATUS=.
                write!(f, "connected to {relay}")?;
                if *wanted > 1 {
                    write!(f, " ({} of {wanted} sessions)", sessions.len())?;
                }
                write!(f, "; public URL {public_url}")
            }
            AgentStatus::Retrying { delay, error } => {
                write!(
                    f,
                    "retrying in {}: {error}",
                    humantime::format_duration(round(*delay))
                )
            }
            AgentStatus::Stopping => f.write_str("stopping"),
        }
    }
}

fn round(d: Duration) -> Duration {
    if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis() as u64)
    }
}
