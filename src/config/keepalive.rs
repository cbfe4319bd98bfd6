//! `keepalive:` in both files: the HTTP/2 PING settings of the tunnel. The defaults are part of
//! the wire contract (`protocol::tunnel`), so both ends agree on them.

use std::time::Duration;

use serde::Deserialize;

use crate::protocol::tunnel::{DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT};

/// PING keepalive of the tunnel, set on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// Time between PINGs on a quiet connection.
    #[serde(with = "super::duration", default = "default_interval")]
    pub interval: Duration,
    /// Time to wait for the PONG.
    #[serde(with = "super::duration", default = "default_timeout")]
    pub timeout: Duration,
}

fn default_interval() -> Duration {
    DEFAULT_PING_INTERVAL
}
fn default_timeout() -> Duration {
    DEFAULT_PING_TIMEOUT
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: DEFAULT_PING_INTERVAL,
            timeout: DEFAULT_PING_TIMEOUT,
        }
    }
}
