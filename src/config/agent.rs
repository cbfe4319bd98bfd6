//! `agent.yaml` (and the flags that mirror it): which relay to dial, with which token, and where
//! each request goes on this machine.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::inspect::Inspect;
use super::keepalive::Keepalive;
use super::proxy::{ProxyEnv, ProxySettings};
pub use super::urls::{RelayUrl, UpstreamUrl, is_loopback};
use super::urls::{opt_upstream_url, relay_urls};
use super::{ConfigError, EnvString, Secret, duration};
use crate::protocol::tunnel::DEFAULT_MAX_STREAMS;

/// The agent's configuration after file and flags are merged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The relay, `https://relay.example.com` (also `wss://`; plain `http://`/`ws://` only to
    /// loopback), or a list of URLs, one per relay node.
    #[serde(default, deserialize_with = "relay_urls")]
    pub relay: Vec<RelayUrl>,
    /// Sessions kept open at once, each to a distinct relay node (1 turns high availability off).
    #[serde(default = "default_ha_connections")]
    pub ha_connections: usize,
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
    /// Longest pause inside an upstream's response body before the stream is reset.
    #[serde(default = "default_upstream_body_idle_timeout", with = "duration")]
    pub upstream_body_idle_timeout: Duration,
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
    pub proxy: Option<ProxySettings>,
    /// Where the agent inspector listens (`127.0.0.1:4040` unless set), or `off`.
    #[serde(default)]
    pub inspect: Inspect,
    /// The language of the lines printed for a person (the start-up banner); set from the
    /// environment by the command line, English otherwise.
    #[serde(skip)]
    pub lang: crate::locale::Lang,
    /// How the settings were given (for messages in the user's words).
    #[serde(skip)]
    pub given: Given,
    /// `--ca-file` was passed (it overrides the file's `ca_file:`).
    #[serde(skip)]
    ca_from_flag: bool,
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
/// Default pause allowed inside an upstream's response body: a webhook answer that stops for a
/// minute is broken, and its stream must not hold one of the tunnel's stream slots forever.
pub const DEFAULT_UPSTREAM_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn default_upstream_body_idle_timeout() -> Duration {
    DEFAULT_UPSTREAM_BODY_IDLE_TIMEOUT
}
fn default_grace() -> Duration {
    crate::shutdown::DEFAULT_GRACE_PERIOD
}
/// Default number of sessions to distinct relay nodes (cloudflared keeps four; two survive the
/// loss of one node, which is what a two- or three-node cluster offers).
pub const DEFAULT_HA_CONNECTIONS: usize = 2;
/// Most sessions one agent may keep: each is a connection the relay cluster has to hold (the
/// relay holds no more per agent either).
pub const MAX_HA_CONNECTIONS: usize = crate::protocol::MAX_AGENT_SLOTS as usize;

fn default_ha_connections() -> usize {
    DEFAULT_HA_CONNECTIONS
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

/// Values given on the command line; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct AgentOverrides {
    /// `--relay`, repeated for several relay nodes (replaces the file's list).
    pub relay: Vec<String>,
    /// `--token` or `PONTE_TOKEN`.
    pub token: Option<Secret>,
    /// `--upstream`: replaces the ingress list with one catch-all rule.
    pub upstream: Option<String>,
    /// `--ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--hooks`: serve this hooks file at `/hooks/<id>`, in front of the other rules.
    pub hooks: Option<PathBuf>,
    /// `--inspect ADDR|off`.
    pub inspect: Option<String>,
    /// The proxy variables of the environment (used unless the file sets `proxy_url`).
    pub proxy_env: ProxyEnv,
}

/// Origin named in errors about values given on the command line.
pub const COMMAND_LINE: &str = "command line";

/// The token placeholder of the shipped example (`packaging/examples/agent.yaml`).
pub const EXAMPLE_TOKEN: &str = "PASTE-YOUR-TOKEN-HERE";
/// The relay host of the shipped example (a reserved name: it can never be a real relay).
pub const EXAMPLE_RELAY_HOST: &str = "relay.example.com";

/// What the settings are for: serving needs an upstream, a credentials test does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `ponte agent` / `ponte client`: relay, token and at least one ingress rule.
    Serve,
    /// `ponte check`: relay and token; upstreams are tested only if there are any.
    Check,
}

/// How the user gave the agent its settings, so that messages name what they typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Given {
    /// Flags only (`ponte agent --relay … --token …`).
    #[default]
    Flags,
    /// A configuration file, named as the user wrote it (flags may override some keys).
    File(String),
    /// `ponte client --url wss://…`, the inlets command line.
    Client,
}

impl Given {
    /// The origin printed at the start of a configuration error.
    pub fn origin(&self) -> &str {
        match self {
            Given::File(f) => f,
            Given::Flags | Given::Client => COMMAND_LINE,
        }
    }

    /// Where the user sets `key`: `` `token:` in agent.yaml ``, `--token`, or `--url` for the relay
    /// of `ponte client`.
    fn setting(&self, key: &str) -> String {
        match (self, key) {
            (Given::File(f), k) => format!("`{k}:` in {f}"),
            (Given::Client, "relay") => "--url".into(),
            (_, k) => format!("--{}", k.replace('_', "-")),
        }
    }
}

/// Read a token from a file (`--token-from`): the first line, trimmed. Tokens given as flags show
/// in `ps`; a file does not.
pub fn token_from_file(path: &std::path::Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(
            COMMAND_LINE,
            format!(
                "--token-from {}: cannot read it ({e}); check the path and that this user may read it",
                path.display()
            ),
        )
    })?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(ConfigError::invalid(
            COMMAND_LINE,
            format!(
                "--token-from {}: the file is empty; put the token on its first line",
                path.display()
            ),
        ));
    }
    Ok(Secret::new(token))
}

impl AgentConfig {
    /// An empty configuration (everything from flags).
    pub fn empty() -> Self {
        serde_norway::from_str("{}").expect("empty config parses")
    }

    /// Apply flags over the file (named `origin`, or [`COMMAND_LINE`] without one) and check that
    /// what an agent needs to serve is there.
    pub fn merge(self, flags: AgentOverrides, origin: &str) -> Result<Self, ConfigError> {
        let given = if origin == COMMAND_LINE {
            Given::Flags
        } else {
            Given::File(origin.to_string())
        };
        self.merge_for(flags, given, Purpose::Serve)
    }

    /// Apply flags over the file and check what `purpose` needs. Every missing or placeholder
    /// setting is reported in one error, so one edit fixes them all.
    pub fn merge_for(
        mut self,
        flags: AgentOverrides,
        given: Given,
        purpose: Purpose,
    ) -> Result<Self, ConfigError> {
        let origin = given.origin().to_string();
        let flag_err = |m: String| ConfigError::invalid(COMMAND_LINE, m);
        if !flags.relay.is_empty() {
            let flag = if given == Given::Client {
                "--url"
            } else {
                "--relay"
            };
            self.relay = flags
                .relay
                .iter()
                .map(|r| RelayUrl::parse(r).map_err(|m| flag_err(format!("{flag}: {m}"))))
                .collect::<Result<_, _>>()?;
        }
        // The same node listed twice would only make two sessions compete for it.
        let mut seen = Vec::new();
        self.relay.retain(|r| {
            let new = !seen.contains(r);
            seen.push(r.clone());
            new
        });
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
        if let Some(i) = flags.inspect {
            self.inspect = Inspect::parse(&i).map_err(|m| flag_err(format!("--inspect: {m}")))?;
        }
        self.ca_from_flag = flags.ca_file.is_some();
        if let Some(c) = flags.ca_file {
            self.ca_file = Some(c);
        }
        self.given = given;
        self.proxy = match (&self.proxy_url, self.relay.first()) {
            (Some(url), _) => Some(
                ProxySettings::from_url(url.as_str())
                    .map_err(|m| ConfigError::invalid(&origin, format!("proxy_url: {m}")))?,
            ),
            // The relay's scheme picks the variable (HTTPS_PROXY for https://).
            (None, Some(relay)) => ProxySettings::from_env(&flags.proxy_env, relay.tls)
                .map_err(|m| ConfigError::invalid("environment", m))?,
            (None, None) => None,
        };
        let problems = self.problems(purpose);
        if !problems.is_empty() {
            return Err(ConfigError::invalid(origin, problems.join("; ")));
        }
        Ok(self)
    }

    /// Everything missing or still a placeholder, in the user's words.
    fn problems(&self, purpose: Purpose) -> Vec<String> {
        let mut problems = Vec::new();
        let given = &self.given;
        let token_placeholder = self
            .token
            .as_ref()
            .is_some_and(|t| t.expose().trim() == EXAMPLE_TOKEN);
        if token_placeholder {
            let relay_too = self
                .relay
                .iter()
                .any(|r| r.host.eq_ignore_ascii_case(EXAMPLE_RELAY_HOST));
            let what = if relay_too {
                format!(
                    "set {} and {} to the relay address and token your provider gave you",
                    given.setting("relay"),
                    given.setting("token")
                )
            } else {
                format!(
                    "set {} to the token your provider gave you",
                    given.setting("token")
                )
            };
            problems.push(format!(
                "this is still the example configuration ({EXAMPLE_TOKEN}): {what}"
            ));
        }
        if self.relay.is_empty() {
            problems.push(match given {
                Given::File(f) => format!(
                    "no relay given: set `relay:` in {f} or pass --relay https://relay.example.com"
                ),
                _ => "no relay given: pass --relay https://relay.example.com or set `relay:` in a --config file"
                    .to_string(),
            });
        }
        match &self.token {
            None => problems.push(match given {
                Given::File(f) => format!(
                    "no token given: set `token:` in {f}, pass --token-from FILE or --token, or set PONTE_TOKEN"
                ),
                _ => "no token given: pass --token-from FILE or --token, or set PONTE_TOKEN".to_string(),
            }),
            Some(t) if t.expose().trim().is_empty() => {
                problems.push(format!("the token is empty: set {}", given.setting("token")))
            }
            Some(_) => {}
        }
        if purpose == Purpose::Serve && self.ingress.is_empty() {
            problems.push(match given {
                Given::File(f) => format!(
                    "no upstream given: add an `ingress:` rule to {f} or pass --upstream http://localhost:8000"
                ),
                _ => "no upstream given: pass --upstream http://localhost:8000".to_string(),
            });
        }
        for (i, rule) in self.ingress.iter().enumerate() {
            match (&rule.upstream, &rule.hooks) {
                (Some(_), None) | (None, Some(_)) => {}
                (None, None) => problems.push(format!(
                    "ingress[{i}] has no origin: add `upstream: http://localhost:8000` or `hooks: hooks.yaml`"
                )),
                (Some(_), Some(_)) => problems.push(format!(
                    "ingress[{i}] has both `upstream:` and `hooks:`; give each its own rule (hooks first, under `path: /hooks/`)"
                )),
            }
            if let Some(p) = &rule.path
                && !p.as_str().starts_with('/')
            {
                problems.push(format!("ingress[{i}].path `{p}` must start with `/`"));
            }
        }
        if !(1..=MAX_HA_CONNECTIONS).contains(&self.ha_connections) {
            problems.push(format!(
                "ha_connections is {}: set it between 1 and {MAX_HA_CONNECTIONS} (1 keeps a single session, {DEFAULT_HA_CONNECTIONS} is the default)",
                self.ha_connections
            ));
        }
        if self.max_streams == 0 {
            problems.push("max_streams must be at least 1".to_string());
        }
        problems
    }

    /// What to tell a user whose relay certificate is not signed by a trusted CA, in the words
    /// they configured the agent with (the flag, the file's key, or `ponte client`'s `--url`).
    /// Continues "the relay's certificate is not signed by a trusted CA".
    pub fn trust_advice(&self) -> String {
        let setting = if self.ca_from_flag {
            "--ca-file".to_string()
        } else {
            self.given.setting("ca_file")
        };
        if let Some(ca) = &self.ca_file {
            return format!(
                ", nor by the CA in {} ({setting}): check that this file holds the CA that signed the relay's certificate",
                ca.display()
            );
        }
        match (&self.given, self.ca_from_flag) {
            (Given::File(f), false) => {
                format!("; if the relay uses a private CA, add `ca_file: /path/to/relay-ca.pem` to {f}")
            }
            (Given::Client, _) => {
                let url = self
                    .relay
                    .first()
                    .map(|r| format!("wss://{}{}", r.authority(), r.base_path))
                    .unwrap_or_default();
                format!(
                    "; if the relay in --url {url} uses a private CA, pass --ca-file /path/to/relay-ca.pem"
                )
            }
            _ => "; if the relay uses a private CA, pass --ca-file /path/to/relay-ca.pem".to_string(),
        }
    }

    /// Read a file (if given), then merge flags, for serving.
    pub fn load(path: Option<&std::path::Path>, flags: AgentOverrides) -> Result<Self, ConfigError> {
        Self::load_for(path, flags, Purpose::Serve)
    }

    /// Read a file (if given), then merge flags and check what `purpose` needs.
    pub fn load_for(
        path: Option<&std::path::Path>,
        flags: AgentOverrides,
        purpose: Purpose,
    ) -> Result<Self, ConfigError> {
        match path {
            Some(p) => {
                let cfg: AgentConfig = super::load(p)?;
                cfg.merge_for(flags, Given::File(p.display().to_string()), purpose)
            }
            None => AgentConfig::empty().merge_for(flags, Given::Flags, purpose),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_with_env;

    #[test]
    fn flags_override_and_requirements() {
        let e = AgentConfig::empty()
            .merge(AgentOverrides::default(), "command line")
            .unwrap_err();
        assert!(e.to_string().contains("no relay"), "{e}");
        let cfg = AgentConfig::empty()
            .merge(
                AgentOverrides {
                    relay: vec!["https://r.example".into()],
                    token: Some(Secret::new("t")),
                    upstream: Some("http://localhost:8000".into()),
                    ca_file: None,
                    hooks: None,
                    inspect: Some("off".into()),
                    proxy_env: Default::default(),
                },
                "command line",
            )
            .unwrap();
        assert_eq!(cfg.ingress.len(), 1);
        assert_eq!(cfg.inspect, Inspect::Off);
        let e = AgentConfig::empty()
            .merge(
                AgentOverrides {
                    inspect: Some("nowhere".into()),
                    ..flags(Some("https://r.example"), Some("t"))
                },
                COMMAND_LINE,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("command line: --inspect: `nowhere` is not an address"),
            "{e}"
        );
        let cfg: AgentConfig = parse_with_env("inspect: off\n", "a.yaml", &|_| None).unwrap();
        assert_eq!(cfg.inspect, Inspect::Off);
        let e = parse_with_env::<AgentConfig>("inspect: here\n", "a.yaml", &|_| None).unwrap_err();
        assert!(
            e.to_string()
                .contains("a.yaml:1: inspect: `here` is not an address"),
            "{e}"
        );
    }

    fn flags(relay: Option<&str>, token: Option<&str>) -> AgentOverrides {
        AgentOverrides {
            relay: relay.map(String::from).into_iter().collect(),
            token: token.map(Secret::new),
            ..Default::default()
        }
    }

    #[test]
    fn every_missing_setting_is_named_in_one_error() {
        let e = AgentConfig::empty()
            .merge(AgentOverrides::default(), COMMAND_LINE)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("command line: no relay given"), "{e}");
        assert!(e.contains("; no token given: pass --token-from FILE"), "{e}");
        assert!(e.contains("; no upstream given: pass --upstream"), "{e}");
        let e = parse_with_env::<AgentConfig>("ingress:\n  - upstream: 8000\n", "a.yaml", &|_| None)
            .unwrap()
            .merge(AgentOverrides::default(), "a.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("set `relay:` in a.yaml") && e.contains("set `token:` in a.yaml"),
            "{e}"
        );
        assert!(!e.contains("upstream"), "{e}");
    }

    #[test]
    fn a_credentials_check_needs_no_upstream() {
        let cfg = AgentConfig::empty()
            .merge_for(
                flags(Some("https://r.example"), Some("t")),
                Given::Flags,
                Purpose::Check,
            )
            .unwrap();
        assert!(cfg.ingress.is_empty());
        let e = AgentConfig::empty()
            .merge_for(flags(None, None), Given::Flags, Purpose::Check)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no relay given") && e.contains("no token given"),
            "{e}"
        );
        assert!(!e.contains("upstream"), "{e}");
    }

    #[test]
    fn the_example_placeholders_are_recognised_in_the_users_words() {
        let example = include_str!("../../packaging/examples/agent.yaml");
        let cfg: AgentConfig = parse_with_env(example, "/etc/ponte/agent.yaml", &|_| None).unwrap();
        let e = cfg
            .clone()
            .merge(AgentOverrides::default(), "/etc/ponte/agent.yaml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/etc/ponte/agent.yaml: this is still the example configuration (PASTE-YOUR-TOKEN-HERE): set `relay:` in /etc/ponte/agent.yaml and `token:` in /etc/ponte/agent.yaml to the relay address and token your provider gave you"
        );
        // A real relay on the command line: only the token is left to fix.
        let e = cfg
            .merge(flags(Some("https://relay.clinic.example"), None), "agent.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("set `token:` in agent.yaml to the token"), "{e}");
        let e = AgentConfig::empty()
            .merge_for(
                AgentOverrides {
                    upstream: Some("8000".into()),
                    ..flags(Some("wss://relay.example.com"), Some(EXAMPLE_TOKEN))
                },
                Given::Client,
                Purpose::Serve,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("set --url and --token to the relay address"), "{e}");
    }

    #[test]
    fn trust_advice_names_the_flag_or_key_the_user_typed() {
        let serve = |given: Given, ca_flag: Option<&str>, file_ca: bool| {
            let mut cfg = AgentConfig::empty();
            if file_ca {
                cfg.ca_file = Some(PathBuf::from("/etc/ponte/relay-ca.pem"));
            }
            cfg.merge_for(
                AgentOverrides {
                    ca_file: ca_flag.map(PathBuf::from),
                    upstream: Some("8000".into()),
                    ..flags(Some("https://relay.clinic.example:8443"), Some("t"))
                },
                given,
                Purpose::Serve,
            )
            .unwrap()
            .trust_advice()
        };
        let file = Given::File("agent.yaml".into());
        assert!(
            serve(file.clone(), None, false).contains("add `ca_file: /path/to/relay-ca.pem` to agent.yaml")
        );
        assert!(serve(Given::Flags, None, false).contains("pass --ca-file"));
        assert!(serve(Given::Client, None, false).contains(
            "the relay in --url wss://relay.clinic.example:8443 uses a private CA, pass --ca-file"
        ));
        let set_in_file = serve(file.clone(), None, true);
        assert!(
            set_in_file.contains("nor by the CA in /etc/ponte/relay-ca.pem (`ca_file:` in agent.yaml)"),
            "{set_in_file}"
        );
        assert!(serve(file, Some("/tmp/ca.pem"), false).contains("nor by the CA in /tmp/ca.pem (--ca-file)"));
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret \nsecond line\n").unwrap();
        assert_eq!(token_from_file(&path).unwrap().expose(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        let e = token_from_file(&path).unwrap_err().to_string();
        assert!(e.contains("the file is empty"), "{e}");
        let e = token_from_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--token-from") && e.contains("cannot read it"), "{e}");
    }

    #[test]
    fn relay_is_one_url_or_a_list_and_flags_replace_it() {
        let parse = |yaml: &str| parse_with_env::<AgentConfig>(yaml, "a.yaml", &|_| None);
        let one = parse("relay: https://relay.example.net\n").unwrap();
        assert_eq!(one.relay.len(), 1);
        assert_eq!(one.ha_connections, DEFAULT_HA_CONNECTIONS);
        let list =
            parse("relay:\n  - https://a.example.net\n  - https://b.example.net:8443\nha_connections: 3\n")
                .unwrap();
        let hosts: Vec<(&str, u16)> = list.relay.iter().map(|r| (r.host.as_str(), r.port)).collect();
        assert_eq!(hosts, [("a.example.net", 443), ("b.example.net", 8443)]);
        assert_eq!(list.ha_connections, 3);
        let e = parse("relay:\n  - https://a.example.net\n  - ftp://b.example.net\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.yaml:3") && e.contains("scheme `ftp` is not supported"),
            "{e}"
        );
        // Repeated --relay replaces the file's list; the same node twice counts once.
        let cfg = list
            .merge_for(
                AgentOverrides {
                    relay: vec![
                        "https://c.example.net".into(),
                        "https://d.example.net".into(),
                        "https://c.example.net".into(),
                    ],
                    ..flags(None, Some("t"))
                },
                Given::File("a.yaml".into()),
                Purpose::Check,
            )
            .unwrap();
        let hosts: Vec<&str> = cfg.relay.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(hosts, ["c.example.net", "d.example.net"]);
        let e = AgentConfig::empty()
            .merge_for(flags(Some("gopher://x"), Some("t")), Given::Flags, Purpose::Check)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("command line: --relay: relay URL scheme `gopher`"),
            "{e}"
        );
    }

    #[test]
    fn ha_connections_out_of_range_is_named_with_its_bounds() {
        for bad in ["0", "9"] {
            let cfg: AgentConfig = parse_with_env(
                &format!("relay: https://r.example.net\ntoken: t\nha_connections: {bad}\n"),
                "a.yaml",
                &|_| None,
            )
            .unwrap();
            let e = cfg
                .merge_for(
                    AgentOverrides::default(),
                    Given::File("a.yaml".into()),
                    Purpose::Check,
                )
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!(
                    "a.yaml: ha_connections is {bad}: set it between 1 and 8 (1 keeps a single session, 2 is the default)"
                )
            );
        }
        let e = parse_with_env::<AgentConfig>("ha_connections: -1\n", "a.yaml", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.yaml:1") && e.contains("ha_connections"), "{e}");
    }
}
