//! `relay.yaml`: where the relay listens, its TLS files, and the tunnels it serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::keepalive::Keepalive;
use super::{ByteSize, EnvString, Secret, duration, parse_scalar};
use crate::protocol::tunnel::DEFAULT_MAX_STREAMS;

pub use super::store::{MIN_STORE_MAX_SIZE, RetentionConfig, StoreUrl};
pub use super::tunnel::*;

/// Default public listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:443";

/// The relay's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Address of the one public listener (agents and internet traffic share it).
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Certificate and key; absent means plain HTTP (behind nginx/Caddy).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Tunnels are reachable at `<name>.<domain>`; without it only `/t/<name>/` routing works.
    #[serde(default, deserialize_with = "opt_domain")]
    pub domain: Option<String>,
    /// Base URL the public uses, when the relay sits behind a proxy on another port or scheme.
    #[serde(default)]
    pub public_url: Option<EnvString>,
    /// Token for `/_ponte/admin/` and the `ponte deliveries` commands.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// Durable queue location, e.g. `sqlite:///var/lib/ponte/relay.db`.
    #[serde(default)]
    pub store: Option<StoreUrl>,
    /// Largest size of the store. Past it the oldest delivered records are dropped first; when
    /// pending and failed ones alone fill it, new requests get 503 until room returns.
    #[serde(default = "default_store_max_size")]
    pub store_max_size: ByteSize,
    /// How long finished deliveries are kept in the store.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Bounds on what a peer may make the relay do.
    #[serde(default)]
    pub limits: Limits,
    /// HTTP/2 PING keepalive towards agents.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default = "default_grace", with = "duration")]
    pub grace_period: Duration,
    /// Trust `X-Forwarded-*` from the peer (set when a proxy you run sits in front).
    #[serde(default)]
    pub trust_forwarded_headers: bool,
    /// Addresses (or networks) of TCP load balancers that put a PROXY protocol header (HAProxy
    /// `send-proxy-v2`) before each connection: from them the header gives the client's address,
    /// for the per-address budgets and the access log. Read only from these.
    #[serde(default, deserialize_with = "networks")]
    pub proxy_protocol: Vec<ipnet::IpNet>,
    /// One INFO line per public request under the `ponte::access` log target.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Bearer token for `/_ponte/metrics` on the public port; without it the public port serves
    /// no metrics.
    #[serde(default)]
    pub metrics_token: Option<Secret>,
    /// A separate address serving `/metrics` and `/ready` without a token (loopback or a private
    /// network), e.g. `127.0.0.1:9464`.
    #[serde(default, deserialize_with = "opt_socket_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Several relay nodes sharing one PostgreSQL store: this node's id, how the others reach
    /// it, and their shared secret.
    #[serde(default)]
    pub cluster: Option<super::cluster::ClusterConfig>,
    /// The tunnels, by name.
    #[serde(default)]
    pub tunnels: BTreeMap<TunnelName, TunnelConfig>,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("constant address parses")
}
fn default_store_max_size() -> ByteSize {
    ByteSize(super::store::DEFAULT_STORE_MAX_SIZE)
}
fn default_true() -> bool {
    true
}
fn default_grace() -> Duration {
    crate::shutdown::DEFAULT_GRACE_PERIOD
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_scalar(d, |s| {
        s.trim().parse().map_err(|_| {
            format!("`{s}` is not an address to listen on; write it like 0.0.0.0:443 or 127.0.0.1:8080")
        })
    })
}

fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Ok(Vec::<Network>::deserialize(d)?.into_iter().map(|n| n.0).collect())
}

/// An address (`10.0.0.4`, one host) or a network (`10.0.0.0/24`).
struct Network(ipnet::IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, |s| {
            let s = s.trim();
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(Network)
                .map_err(|_| {
                    format!("`{s}` is not an address or network: write the load balancer's address, e.g. 10.0.0.4 or 10.0.0.0/24")
                })
        })
    }
}

fn opt_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

fn opt_domain<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Domain>::deserialize(d)?.map(|d| d.0))
}

struct Domain(String);

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, parse_domain).map(Domain)
    }
}

fn parse_domain(s: &str) -> Result<String, String> {
    let domain = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(domain)
    } else {
        Err(format!(
            "`{s}` is not a domain name; write it like relay.example.com (no scheme, no port)"
        ))
    }
}

/// PEM files for the public listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (leaf first), PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Limits on what one peer may make the relay hold or wait for. Each default is a named constant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request header block (bytes); larger gets 431.
    pub max_header_bytes: ByteSize,
    /// Largest request body streamed through a tunnel; larger gets 413.
    pub max_body_bytes: ByteSize,
    /// Time allowed for a client to finish the TLS handshake.
    #[serde(with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Time allowed for a client to send its request headers.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Longest pause allowed between two pieces of a request body.
    #[serde(with = "duration")]
    pub body_idle_timeout: Duration,
    /// Longest wait for the agent's response headers; then 504.
    #[serde(with = "duration")]
    pub response_timeout: Duration,
    /// Concurrent streams on one agent connection; more wait their turn.
    pub max_streams_per_agent: u32,
    /// Open client connections (public and agents) before new ones are refused.
    pub max_connections: usize,
    /// Failed agent logins allowed per client address per minute before 429.
    pub max_failed_logins_per_minute: u32,
    /// Agent connections one tunnel may hold at once (a leaked token cannot exhaust the relay).
    pub max_agents_per_tunnel: usize,
    /// Connection slots anonymous clients can never take, so agents can log in while idle or
    /// hostile clients hold everything else. Absent: a tenth of `max_connections` (at least 1).
    pub reserved_agent_connections: Option<usize>,
    /// Longest time a client connection may stay open with no request in progress.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Longest pause inside an agent's response body before the stream is reset.
    #[serde(with = "duration")]
    pub response_body_idle_timeout: Duration,
    /// Requests one connection may cancel within [`RAPID_RESET_AGE`] of sending them, per
    /// [`RESET_WINDOW`]; past it the connection gets GOAWAY (ENHANCE_YOUR_CALM). 0: no limit.
    pub max_resets_per_connection: u32,
    /// The same budget for all connections of one client address (an IPv6 /64) together; past it
    /// new connections from that address are refused until the window ends. 0: no limit. Not
    /// applied with `trust_forwarded_headers` (every client then shares the proxy's address).
    pub max_resets_per_address: u32,
}

/// Default largest request header block.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
/// Default largest request body through a live tunnel (what Cloudflare's free plan allows).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;
/// Default TLS handshake timeout.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default header read timeout (slowloris bound).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default pause allowed inside a request body.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default wait for response headers: longer than the agent's upstream timeout, so the agent's
/// more precise 504 arrives first.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(100);
/// Default connection cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default failed-login budget per address and minute.
pub const DEFAULT_MAX_FAILED_LOGINS: u32 = 20;
/// Default agent connections per tunnel: room for several machines and their reconnects.
pub const DEFAULT_MAX_AGENTS_PER_TUNNEL: usize = 32;
/// Default share of `max_connections` kept for agent logins, in percent.
pub const DEFAULT_RESERVED_AGENT_PERCENT: usize = 10;
/// Default idle timeout of client connections: a minute is long enough for a sender to reuse a
/// connection between webhooks, short enough that idle connections cannot pile up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default pause allowed inside an agent's response body: longer than the agent's own
/// `upstream_body_idle_timeout`, so the agent's more precise reset comes first.
pub const DEFAULT_RESPONSE_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default rapid resets per connection and window. An honest client rarely cancels a request
/// within a second of sending it; a rapid-reset attack does it thousands of times.
pub const DEFAULT_MAX_RESETS_PER_CONNECTION: u32 = 50;
/// Default rapid resets per client address and window.
pub const DEFAULT_MAX_RESETS_PER_ADDRESS: u32 = 200;
/// A request cancelled younger than this counts against the reset budgets; older ones (a sender
/// giving up on a slow upstream) do not.
pub const RAPID_RESET_AGE: Duration = Duration::from_secs(1);
/// The window over which resets are counted.
pub const RESET_WINDOW: Duration = Duration::from_secs(60);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: ByteSize(DEFAULT_MAX_HEADER_BYTES),
            max_body_bytes: ByteSize(DEFAULT_MAX_BODY_BYTES),
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_streams_per_agent: DEFAULT_MAX_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_failed_logins_per_minute: DEFAULT_MAX_FAILED_LOGINS,
            max_agents_per_tunnel: DEFAULT_MAX_AGENTS_PER_TUNNEL,
            reserved_agent_connections: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            response_body_idle_timeout: DEFAULT_RESPONSE_BODY_IDLE_TIMEOUT,
            max_resets_per_connection: DEFAULT_MAX_RESETS_PER_CONNECTION,
            max_resets_per_address: DEFAULT_MAX_RESETS_PER_ADDRESS,
        }
    }
}

impl Limits {
    /// Connection slots only agents may use: as configured, or a tenth of `max_connections`
    /// (at least one, while that leaves one for the public).
    pub fn reserved_agent_connections(&self) -> usize {
        self.reserved_agent_connections.unwrap_or_else(|| {
            (self.max_connections * DEFAULT_RESERVED_AGENT_PERCENT / 100)
                .max(1)
                .min(self.max_connections.saturating_sub(1))
        })
    }
}

impl RelayConfig {
    /// Checks that need the whole file.
    pub fn validate(&self, origin: &str) -> Result<(), super::ConfigError> {
        let mut seen: Vec<(&TunnelName, &TokenHash)> = Vec::new();
        for (name, t) in &self.tunnels {
            for h in &t.tokens {
                if let Some((other, _)) = seen.iter().find(|(_, o)| o.matches(h)) {
                    return Err(super::ConfigError::invalid(
                        origin,
                        format!(
                            "tunnels.{name}: uses the same token as tunnel `{other}`; each tunnel needs its own token"
                        ),
                    ));
                }
                seen.push((name, h));
            }
            if t.queue.attempt_timeout.is_zero() || t.queue.max_age.is_zero() {
                return Err(super::ConfigError::invalid(
                    origin,
                    format!("tunnels.{name}.queue: attempt_timeout and max_age must be longer than 0s"),
                ));
            }
            if t.delivery != DeliveryMode::Direct && self.store.is_none() {
                return Err(super::ConfigError::invalid(
                    origin,
                    format!(
                        "tunnels.{name}: delivery `{}` needs a `store:` (e.g. store: sqlite:///var/lib/ponte/relay.db)",
                        format!("{:?}", t.delivery).to_lowercase()
                    ),
                ));
            }
        }
        self.validate_limits(origin)?;
        self.validate_metrics(origin)?;
        if let Some(cluster) = &self.cluster {
            let postgres = matches!(self.store, Some(StoreUrl::Postgres(_)));
            cluster
                .validate(postgres, self.domain.as_deref())
                .map_err(|why| super::ConfigError::invalid(origin, why))?;
        }
        self.validate_store(origin)
    }

    /// Checks of the limits that depend on each other.
    fn validate_limits(&self, origin: &str) -> Result<(), super::ConfigError> {
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(super::ConfigError::invalid(
                origin,
                "limits.max_connections must be at least 1",
            ));
        }
        if l.reserved_agent_connections() >= l.max_connections {
            return Err(super::ConfigError::invalid(
                origin,
                format!(
                    "limits.reserved_agent_connections ({}) must be smaller than limits.max_connections ({}), or public clients get no connection at all",
                    l.reserved_agent_connections(),
                    l.max_connections
                ),
            ));
        }
        Ok(())
    }

    /// Checks of the metrics settings.
    fn validate_metrics(&self, origin: &str) -> Result<(), super::ConfigError> {
        if self
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return Err(super::ConfigError::invalid(
                origin,
                "metrics_token is empty; set a long random value or remove the key",
            ));
        }
        if self
            .metrics_listen
            .is_some_and(|m| m == self.listen && m.port() != 0)
        {
            return Err(super::ConfigError::invalid(
                origin,
                format!(
                    "metrics_listen {} is the public `listen:` address; give metrics their own port (e.g. 127.0.0.1:9464)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// Are metrics recorded? Only when something can read them: `metrics_token` (public port) or
    /// `metrics_listen`. Otherwise the request path skips the counting altogether.
    pub fn metrics_enabled(&self) -> bool {
        self.metrics_token.is_some() || self.metrics_listen.is_some()
    }

    /// Checks of the store settings.
    fn validate_store(&self, origin: &str) -> Result<(), super::ConfigError> {
        if self.retention.delivered.is_zero() || self.retention.failed.is_zero() {
            return Err(super::ConfigError::invalid(
                origin,
                "retention: delivered and failed must be longer than 0s (e.g. 7d)",
            ));
        }
        if self.store_max_size.0 < MIN_STORE_MAX_SIZE {
            return Err(super::ConfigError::invalid(
                origin,
                format!("store_max_size must be at least {}KiB", MIN_STORE_MAX_SIZE >> 10),
            ));
        }
        Ok(())
    }

    /// Parse and validate.
    pub fn from_str_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, super::ConfigError> {
        let cfg: RelayConfig = super::parse_with_env(text, origin, env)?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &std::path::Path) -> Result<Self, super::ConfigError> {
        let cfg: RelayConfig = super::load(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// A configuration with no tunnels listening on `listen`, for tests and the demo.
    pub fn minimal(listen: SocketAddr) -> Self {
        let mut cfg: RelayConfig = serde_norway::from_str("{}").expect("empty config parses");
        cfg.listen = listen;
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RelayConfig, super::super::ConfigError> {
        RelayConfig::from_str_with_env(yaml, "relay.yaml", &|_| None)
    }

    #[test]
    fn the_agent_reserve_is_a_tenth_by_default_and_leaves_room_for_the_public() {
        let reserve = |yaml: &str| parse(yaml).unwrap().limits.reserved_agent_connections();
        assert_eq!(reserve("{}"), 1000);
        assert_eq!(reserve("limits:\n  max_connections: 50\n"), 5);
        assert_eq!(reserve("limits:\n  max_connections: 5\n"), 1);
        assert_eq!(reserve("limits:\n  max_connections: 1\n"), 0);
        assert_eq!(reserve("limits:\n  reserved_agent_connections: 0\n"), 0);
        let err = parse("limits:\n  max_connections: 10\n  reserved_agent_connections: 10\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "limits.reserved_agent_connections (10) must be smaller than limits.max_connections (10)"
            ),
            "{err}"
        );
    }
}
