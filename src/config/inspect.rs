//! `inspect:` in agent.yaml and `--inspect` on the command line: where the agent inspector
//! listens, or `off`. Loopback unless the user writes another address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Deserializer};

use super::parse_scalar;

/// Where the inspector listens by default: loopback only, ngrok's port.
pub const DEFAULT_INSPECT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4040);

/// The inspector setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    /// No inspector (and no capture: requests cost nothing extra).
    Off,
    /// Listen here (the next few ports when it is taken).
    Listen(SocketAddr),
}

impl Default for Inspect {
    fn default() -> Self {
        Inspect::Listen(DEFAULT_INSPECT)
    }
}

impl Inspect {
    /// `off` (also `false`, `no`, `none`), `127.0.0.1:4040`, `localhost:4041`, `[::1]:4040`, or
    /// a bare port (`4041`, on loopback). Any other address is taken as written: binding beyond
    /// loopback is the user's explicit choice.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if ["off", "false", "no", "none"].contains(&t.to_ascii_lowercase().as_str()) {
            return Ok(Inspect::Off);
        }
        if let Ok(port) = t.parse::<u16>() {
            return Ok(Inspect::Listen(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)));
        }
        if let Some(port) = t.strip_prefix("localhost:") {
            return port
                .parse::<u16>()
                .map(|p| Inspect::Listen(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p)))
                .map_err(|_| format!("`{t}` has no valid port; write e.g. 127.0.0.1:4040 or off"));
        }
        t.parse::<SocketAddr>().map(Inspect::Listen).map_err(|_| {
            format!("`{t}` is not an address; write e.g. 127.0.0.1:4040 (or off to disable the inspector)")
        })
    }
}

impl<'de> Deserialize<'de> for Inspect {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, Inspect::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_the_user_may_write() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (text, want) in [
            ("off", Ok(Inspect::Off)),
            ("OFF", Ok(Inspect::Off)),
            ("false", Ok(Inspect::Off)),
            ("127.0.0.1:4040", Ok(Inspect::Listen(at("127.0.0.1:4040")))),
            ("4041", Ok(Inspect::Listen(at("127.0.0.1:4041")))),
            ("localhost:4042", Ok(Inspect::Listen(at("127.0.0.1:4042")))),
            ("[::1]:4040", Ok(Inspect::Listen(at("[::1]:4040")))),
            ("0.0.0.0:4040", Ok(Inspect::Listen(at("0.0.0.0:4040")))),
        ] {
            assert_eq!(Inspect::parse(text), want, "{text}");
        }
        assert!(
            Inspect::parse("localhost")
                .unwrap_err()
                .contains("is not an address")
        );
        assert!(
            Inspect::parse("localhost:x")
                .unwrap_err()
                .contains("no valid port")
        );
        assert_eq!(Inspect::default(), Inspect::Listen(DEFAULT_INSPECT));
    }
}
