//! `agent.yaml` (and the flags that mirror it): which relay to dial, with which token, and where
//! each request goes on this machine.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{ConfigError, EnvString, Secret, duration, parse_scalar};
use crate::protocol::tunnel::{DEFAULT_MAX_STREAMS, Keepalive};

/// The agent's configuration after file and flags are merged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The relay, `https://relay.example.com` (also `wss://`; plain `http://`/`ws://` only to loopback).
    #[serde(default, deserialize_with = "opt_relay_url")]
    pub relay: Option<RelayUrl>,
    /// The tunnel's token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Extra trust anchor for the relay's certificate (PEM), on top of the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Where requests go; first match wins.
    #[serde(default)]
    pub ingress: Vec<IngressRule>,
    /// HTTP/2 PING keepalive towards the relay.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: Reconnect,
    /// Time to open a connection to an upstream.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Time an upstream may take to send response headers; then 504.
    #[serde(default = "default_upstream_timeout", with = "duration")]
    pub upstream_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown.
    #[serde(default = "default_grace", with = "duration")]
    pub grace_period: Duration,
    /// Concurrent requests the relay may open on this agent's connection.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// HTTP proxy to reach the relay through (`http://[user:pass@]host:port`); otherwise
    /// `HTTPS_PROXY` / `NO_PROXY` from the environment apply.
    #[serde(default)]
    pub proxy_url: Option<EnvString>,
    /// The proxy in effect after merging file and environment.
    #[serde(skip)]
    pub proxy: Option<crate::agent::proxy_env::ProxySettings>,
}

/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default upstream response timeout (the relay waits longer, so this 504 wins).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_upstream_timeout() -> Duration {
    DEFAULT_UPSTREAM_TIMEOUT
}
fn default_grace() -> Duration {
    crate::shutdown::DEFAULT_GRACE_PERIOD
}
fn default_max_streams() -> u32 {
    DEFAULT_MAX_STREAMS
}

/// Reconnect backoff: full jitter between zero and an exponentially growing cap.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reconnect {
    /// Cap of the first wait.
    #[serde(with = "duration")]
    pub initial: Duration,
    /// Largest wait between attempts.
    #[serde(with = "duration")]
    pub max: Duration,
    /// A session that lasted this long resets the backoff.
    #[serde(with = "duration")]
    pub stable_after: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Where the relay is, validated: scheme, host, port and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    /// TLS (https/wss) or plain (http/ws, loopback only).
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix when the relay sits under a sub-path of a proxy; `""` normally.
    pub base_path: String,
}

impl RelayUrl {
    /// Parse `https://…`, `wss://…`, or (loopback only) `http://…`/`ws://…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text.trim()).map_err(|e| {
            format!("`{text}` is not a relay URL ({e}); write it like https://relay.example.com")
        })?;
        let tls = match url.scheme() {
            "https" | "wss" => true,
            "http" | "ws" => false,
            other => {
                return Err(format!(
                    "relay URL scheme `{other}` is not supported; use https:// (or wss://)"
                ));
            }
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("`{text}` has no host")),
        };
        if !tls && !is_loopback(&host) {
            return Err(format!(
                "refusing plain `{}://` to {host}: the token and all traffic would cross the network unencrypted; use https://{host}",
                url.scheme()
            ));
        }
        let port = url.port().unwrap_or(if tls { 443 } else { 80 });
        // inlets users pass `wss://host/tunnel` or `wss://host`; treat a trailing `/tunnel`-less
        // path as a proxy sub-path and keep it.
        let base_path = url.path().trim_end_matches('/').to_string();
        Ok(RelayUrl {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// `host:port` for dialing and for `CONNECT` through a proxy (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL back as text, for logs.
    pub fn display(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "https" } else { "http" },
            self.authority(),
            self.base_path
        )
    }
}

/// Loopback names and addresses: the only places plain HTTP is allowed to.
pub fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn opt_relay_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RelayUrl>, D::Error> {
    Option::<RelayUrl>::deserialize(d)
}

impl<'de> Deserialize<'de> for RelayUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, RelayUrl::parse)
    }
}

/// One ingress rule: requests whose host and path match go to `upstream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    /// Match the public host exactly (case-insensitive), or `*.example.com`.
    #[serde(default)]
    pub host: Option<EnvString>,
    /// Match a path prefix, e.g. `/hooks/`.
    #[serde(default)]
    pub path: Option<EnvString>,
    /// The local service, `http://localhost:8000` or `https://…` (or `hooks:` instead).
    #[serde(default, deserialize_with = "opt_upstream_url")]
    pub upstream: Option<UpstreamUrl>,
    /// An adnanh/webhook hooks file whose commands answer the requests (instead of
    /// `upstream:`); hooks are served at `<path>/<id>` (`/hooks/<id>` without `path:`).
    #[serde(default)]
    pub hooks: Option<EnvString>,
    /// Render the hooks file as a Go template first (webhook's `-template`).
    #[serde(default)]
    pub hooks_template: bool,
    /// Host header sent upstream: absent keeps the public host; a value replaces it
    /// (`upstream` means the upstream's own host:port, for dev servers that check Host).
    #[serde(default)]
    pub host_header: Option<EnvString>,
    /// Accept any certificate from an `https` upstream (self-signed local servers). Logged as a
    /// warning at start.
    #[serde(default)]
    pub danger_accept_invalid_certs: bool,
}

impl IngressRule {
    /// One rule sending everything to `upstream` (`--upstream`).
    pub fn catch_all(upstream: UpstreamUrl) -> Self {
        IngressRule {
            host: None,
            path: None,
            upstream: Some(upstream),
            hooks: None,
            hooks_template: false,
            host_header: None,
            danger_accept_invalid_certs: false,
        }
    }

    /// A rule serving a hooks file under `path` (`--hooks`).
    pub fn hooks(path: &str, file: &std::path::Path) -> Self {
        IngressRule {
            host: None,
            path: Some(EnvString::from_static(path)),
            upstream: None,
            hooks: Some(EnvString::from_static(&file.display().to_string())),
            hooks_template: false,
            host_header: None,
            danger_accept_invalid_certs: false,
        }
    }
}

/// A validated upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `http` or `https`.
    pub https: bool,
    /// `host:port` to dial.
    pub authority: http::uri::Authority,
    /// Path prefix prepended to every request path (no trailing slash), `""` normally.
    pub base_path: String,
}

impl UpstreamUrl {
    /// Parse `http://host[:port][/base]` or `https://…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        // ngrok habits: `8000` means http://localhost:8000, `host:port` means http://host:port.
        let expanded;
        let t = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
            expanded = format!("http://localhost:{t}");
            expanded.as_str()
        } else if !t.contains("://") && t.contains(':') {
            expanded = format!("http://{t}");
            expanded.as_str()
        } else {
            t
        };
        let uri: http::Uri = t.parse().map_err(|e| {
            format!("`{text}` is not an upstream URL ({e}); write it like http://localhost:8000")
        })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "upstream `{text}` must start with http:// or https:// (e.g. http://localhost:8000)"
                ));
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            return Err(format!("upstream `{text}` has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "upstream `{text}`: credentials in the URL are not supported"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("upstream `{text}`: a query string is not supported here"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamUrl {
            https,
            authority,
            base_path,
        })
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority,
            self.base_path
        )
    }
}

fn opt_upstream_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UpstreamUrl>, D::Error> {
    struct Wrapped(UpstreamUrl);
    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parse_scalar(d, UpstreamUrl::parse).map(Wrapped)
        }
    }
    Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
}

/// Values given on the command line; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct AgentOverrides {
    /// `--relay`.
    pub relay: Option<String>,
    /// `--token` or `PONTE_TOKEN`.
    pub token: Option<Secret>,
    /// `--upstream`: replaces the ingress list with one catch-all rule.
    pub upstream: Option<String>,
    /// `--ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--hooks`: serve this hooks file at `/hooks/<id>`, in front of the other rules.
    pub hooks: Option<PathBuf>,
    /// The proxy from `HTTPS_PROXY`/`NO_PROXY` (used unless the file sets `proxy_url`).
    pub env_proxy: Option<crate::agent::proxy_env::ProxySettings>,
}

impl AgentConfig {
    /// An empty configuration (everything from flags).
    pub fn empty() -> Self {
        serde_norway::from_str("{}").expect("empty config parses")
    }

    /// Apply flags over the file and check that what an agent needs is there.
    pub fn merge(mut self, flags: AgentOverrides, origin: &str) -> Result<Self, ConfigError> {
        let flag_err = |m: String| ConfigError::invalid("command line", m);
        if let Some(r) = flags.relay {
            self.relay = Some(RelayUrl::parse(&r).map_err(|m| flag_err(format!("--relay: {m}")))?);
        }
        if let Some(t) = flags.token {
            self.token = Some(t);
        }
        if let Some(u) = flags.upstream {
            let upstream = UpstreamUrl::parse(&u).map_err(|m| flag_err(format!("--upstream: {m}")))?;
            self.ingress = vec![IngressRule::catch_all(upstream)];
        }
        if let Some(h) = flags.hooks {
            // In front of the catch-all, as DESIGN.md promises for `--hooks`.
            self.ingress.insert(0, IngressRule::hooks("/hooks/", &h));
        }
        if let Some(c) = flags.ca_file {
            self.ca_file = Some(c);
        }
        self.proxy = match &self.proxy_url {
            Some(url) => Some(
                crate::agent::proxy_env::ProxySettings::parse(url.as_str(), Vec::new())
                    .map_err(|m| ConfigError::invalid(origin, format!("proxy_url: {m}")))?,
            ),
            None => flags.env_proxy,
        };
        if self.relay.is_none() {
            return Err(ConfigError::invalid(
                origin,
                "no relay given: set `relay:` in the config or pass --relay https://relay.example.com",
            ));
        }
        match &self.token {
            None => {
                return Err(ConfigError::invalid(
                    origin,
                    "no token given: set `token:` in the config, pass --token, or set PONTE_TOKEN",
                ));
            }
            Some(t) if t.expose().trim().is_empty() => {
                return Err(ConfigError::invalid(origin, "the token is empty"));
            }
            Some(_) => {}
        }
        if self.ingress.is_empty() {
            return Err(ConfigError::invalid(
                origin,
                "no upstream given: add an `ingress:` rule or pass --upstream http://localhost:8000",
            ));
        }
        for (i, rule) in self.ingress.iter().enumerate() {
            match (&rule.upstream, &rule.hooks) {
                (Some(_), None) | (None, Some(_)) => {}
                (None, None) => {
                    return Err(ConfigError::invalid(
                        origin,
                        format!(
                            "ingress[{i}] has no origin: add `upstream: http://localhost:8000` or `hooks: hooks.yaml`"
                        ),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        origin,
                        format!(
                            "ingress[{i}] has both `upstream:` and `hooks:`; give each its own rule (hooks first, under `path: /hooks/`)"
                        ),
                    ));
                }
            }
            if let Some(p) = &rule.path
                && !p.as_str().starts_with('/')
            {
                return Err(ConfigError::invalid(
                    origin,
                    format!("ingress[{i}].path `{p}` must start with `/`"),
                ));
            }
        }
        if self.max_streams == 0 {
            return Err(ConfigError::invalid(origin, "max_streams must be at least 1"));
        }
        Ok(self)
    }

    /// Read a file (if given), then merge flags.
    pub fn load(path: Option<&std::path::Path>, flags: AgentOverrides) -> Result<Self, ConfigError> {
        match path {
            Some(p) => {
                let cfg: AgentConfig = super::load(p)?;
                cfg.merge(flags, &p.display().to_string())
            }
            None => AgentConfig::empty().merge(flags, "command line"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        let u = RelayUrl::parse("wss://relay.example.com").unwrap();
        assert!(u.tls);
        assert_eq!(u.authority(), "relay.example.com:443");
        assert!(RelayUrl::parse("http://127.0.0.1:8080").is_ok());
        assert!(RelayUrl::parse("ws://localhost:8080").is_ok());
        assert!(RelayUrl::parse("http://[::1]:8080").is_ok());
        let e = RelayUrl::parse("http://relay.example.com").unwrap_err();
        assert!(e.contains("unencrypted"), "{e}");
        assert!(RelayUrl::parse("ftp://x").is_err());
        assert_eq!(RelayUrl::parse("https://h/ponte/").unwrap().base_path, "/ponte");
    }

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("http://localhost:8000").unwrap();
        assert_eq!(u.authority.as_str(), "localhost:8000");
        assert_eq!(u.base_path, "");
        assert_eq!(UpstreamUrl::parse("https://h/api/").unwrap().base_path, "/api");
        assert_eq!(
            UpstreamUrl::parse("8000").unwrap().to_string(),
            "http://localhost:8000"
        );
        assert_eq!(
            UpstreamUrl::parse("127.0.0.1:9000").unwrap().to_string(),
            "http://127.0.0.1:9000"
        );
        assert!(UpstreamUrl::parse("localhost").is_err());
        assert!(UpstreamUrl::parse("tcp://x").is_err());
    }

    #[test]
    fn flags_override_and_requirements() {
        let e = AgentConfig::empty()
            .merge(AgentOverrides::default(), "command line")
            .unwrap_err();
        assert!(e.to_string().contains("no relay"), "{e}");
        let cfg = AgentConfig::empty()
            .merge(
                AgentOverrides {
                    relay: Some("https://r.example".into()),
                    token: Some(Secret::new("t")),
                    upstream: Some("http://localhost:8000".into()),
                    ca_file: None,
                    hooks: None,
                    env_proxy: None,
                },
                "command line",
            )
            .unwrap();
        assert_eq!(cfg.ingress.len(), 1);
    }
}
