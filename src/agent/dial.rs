//! One connection to the relay: TCP (re-resolving DNS every time), an optional proxy CONNECT,
//! TLS, and the `Upgrade: ponte-h2` handshake. The result is the raw upgraded connection on which
//! the agent will be the HTTP/2 server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use http::{HeaderValue, Request, StatusCode, header};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::CertificateError;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::proxy::{self, ProxyError};
use crate::body;
use crate::config::Secret;
use crate::config::agent::{AgentConfig, RelayUrl};
use crate::config::proxy::ProxyRoute;
use crate::protocol::{
    CONNECT_PATH, MAX_REASON_BYTES, PONTE_AGENT_ID, PONTE_AGENT_SLOT, PONTE_NODE, PONTE_PUBLIC_URL,
    PONTE_TUNNEL, PONTE_TUNNEL_AGENTS, PONTE_VERSION, UPGRADE_TOKEN,
};

/// Time allowed for one whole dial (TCP, proxy, TLS, handshake).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(20);

/// What the relay told us when it accepted the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The tunnel the token belongs to.
    pub tunnel: String,
    /// Where the public reaches it.
    pub public_url: String,
    /// Agents serving the tunnel now, this one included (requests are split between them).
    pub agents: usize,
    /// The relay node's id (`Ponte-Node`), absent from older relays.
    pub node: Option<String>,
}

/// One place a session can be dialled: a relay URL, and, when the agent spreads its sessions over
/// the addresses one name resolves to, the address to use (TLS still checks the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index of the relay URL in the configuration.
    relay: usize,
    /// The address to dial instead of resolving the name again.
    pub addr: Option<SocketAddr>,
    /// The URL, for logs.
    pub url: String,
}

impl Target {
    /// `url` dialled at `addr` (tests of the session table).
    #[cfg(test)]
    pub(super) fn at(url: &str, addr: SocketAddr) -> Self {
        Target {
            relay: 0,
            addr: Some(addr),
            url: url.to_string(),
        }
    }

    /// What identifies this target among the agent's sessions: the address when there is one,
    /// else the URL. A relay that does not send its node id is taken for one node per target.
    pub fn key(&self) -> String {
        match self.addr {
            Some(addr) => addr.to_string(),
            None => self.url.clone(),
        }
    }

    /// The URL, with the address when it was picked among several, for logs and status.
    pub fn display(&self) -> String {
        match self.addr {
            Some(addr) => format!("{} ({addr})", self.url),
            None => self.url.clone(),
        }
    }
}

/// Why a dial failed. The supervisor's one question: is it worth retrying soon?
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Could not open TCP to the relay (DNS, refused, unreachable).
    #[error("cannot reach {target}: {source}")]
    Unreachable {
        /// `host:port` of the relay.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy in between did not open a tunnel to the relay.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// TLS failed (certificate not trusted, wrong name, ...).
    #[error(transparent)]
    Tls(#[from] TlsFailure),
    /// The relay answered but refused the login (401/403/426/429): retried slowly.
    #[error("the relay refused the connection ({status}): {reason}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The relay's one-line reason, printed as is.
        reason: String,
    },
    /// The HTTP exchange of the handshake failed mid-way.
    #[error("handshake with {relay} failed: {source}")]
    Handshake {
        /// The relay.
        relay: String,
        /// Why.
        source: hyper::Error,
    },
    /// The peer answered, but not as a Ponte relay does.
    #[error(
        "handshake with {relay} failed: expected 101 Switching Protocols, got {status}; is {relay} a Ponte relay (and does any proxy in front pass Upgrade)?"
    )]
    NotPonte {
        /// The relay.
        relay: String,
        /// What it answered.
        status: StatusCode,
    },
    /// The whole dial took too long.
    #[error("connecting to {0} timed out")]
    Timeout(String),
    /// Local set-up failed (bad CA file, a token that cannot be sent, ...).
    #[error("{0:#}")]
    Setup(anyhow::Error),
}

impl DialError {
    /// A refusal from the relay (the token, the agent limit): retrying quickly will not change it.
    pub fn is_rejection(&self) -> bool {
        matches!(self, DialError::Rejected { .. })
    }

    /// Nothing a quick retry can change: the relay refused the login, or its certificate is not
    /// trusted (someone must change the configuration or the certificate). Retried slowly.
    pub fn needs_a_person(&self) -> bool {
        match self {
            DialError::Rejected { .. } => true,
            DialError::Tls(tls) => tls.certificate_error().is_some(),
            _ => false,
        }
    }
}

/// A TLS handshake with the relay that failed, with what it means for the user.
#[derive(Debug, thiserror::Error)]
#[error("TLS with {relay} failed: {}", self.explain())]
pub struct TlsFailure {
    /// The relay.
    pub relay: String,
    /// The handshake's error (rustls' error inside an `io::Error`).
    pub source: std::io::Error,
    /// How to trust a private CA, in the words the user configured the agent with.
    pub advice: String,
}

impl TlsFailure {
    /// The rustls error behind the failure, found by walking the source chain (rustls' error
    /// travels inside the `io::Error` tokio-rustls returns).
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&self.source);
        while let Some(err) = next {
            if let Some(r) = err.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
            // `io::Error::source` skips its own payload, so look into it explicitly.
            next = match err.downcast_ref::<std::io::Error>() {
                Some(io) => io
                    .get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static)),
                None => err.source(),
            };
        }
        None
    }

    /// The relay's certificate was refused (untrusted, wrong name, expired...): nothing a quick
    /// retry changes.
    pub fn certificate_error(&self) -> Option<&CertificateError> {
        match self.rustls_error() {
            Some(rustls::Error::InvalidCertificate(e)) => Some(e),
            _ => None,
        }
    }

    fn explain(&self) -> String {
        let text = self.source.to_string();
        match self.certificate_error() {
            Some(CertificateError::UnknownIssuer) => format!(
                "{text}: the relay's certificate is not signed by a trusted CA{}",
                self.advice
            ),
            Some(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
                format!("{text}: the certificate does not match the relay's host name")
            }
            Some(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
                format!("{text}: the relay's certificate has expired (or this machine's clock is wrong)")
            }
            Some(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
                format!("{text}: the relay's certificate is not valid yet (or this machine's clock is wrong)")
            }
            _ => text,
        }
    }
}

/// One configured relay URL and the proxy route to it (`NO_PROXY` may differ per host).
#[derive(Clone)]
struct Relay {
    url: RelayUrl,
    proxy: Option<ProxyRoute>,
}

/// Everything needed to dial the relay (each URL of the list), built once.
#[derive(Clone)]
pub struct Connector {
    relays: Vec<Relay>,
    token: Secret,
    tls: Option<TlsConnector>,
    advice: String,
}

impl Connector {
    /// Prepare TLS and proxy settings from the configuration.
    pub fn new(config: &AgentConfig) -> anyhow::Result<Self> {
        // Never empty from here on: every lookup of `relays[0]` below relies on it.
        if config.relay.is_empty() {
            anyhow::bail!("no relay configured");
        }
        let token = config
            .token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no token configured"))?;
        let tls = if config.relay.iter().any(|r| r.tls) {
            let cfg = crate::tls::client_config(config.ca_file.as_deref(), &[b"http/1.1"])?;
            Some(TlsConnector::from(Arc::new(cfg)))
        } else {
            None
        };
        let relays = config
            .relay
            .iter()
            .map(|url| Relay {
                proxy: config
                    .proxy
                    .as_ref()
                    .and_then(|p| p.route(&url.host, url.port, url.tls)),
                url: url.clone(),
            })
            .collect();
        Ok(Connector {
            relays,
            token,
            tls,
            advice: config.trust_advice(),
        })
    }

    /// Every configured relay URL.
    pub fn relays(&self) -> impl Iterator<Item = &RelayUrl> {
        self.relays.iter().map(|r| &r.url)
    }

    /// Where sessions can go right now: each URL of a list; for a single URL, each address its
    /// name resolves to (looked up again on every call, so nodes added to or removed from DNS
    /// are followed). Through a proxy, or when the lookup fails, the URL itself (the dial then
    /// reports the failure in full).
    pub async fn targets(&self) -> Vec<Target> {
        let by_url = |(i, r): (usize, &Relay)| Target {
            relay: i,
            addr: None,
            url: r.url.display(),
        };
        if self.relays.len() > 1 || self.relays[0].proxy.is_some() {
            return self.relays.iter().enumerate().map(by_url).collect();
        }
        let relay = &self.relays[0];
        let mut addrs: Vec<SocketAddr> = match tokio::net::lookup_host(relay.url.authority()).await {
            Ok(found) => found.collect(),
            Err(_) => Vec::new(),
        };
        let mut seen = Vec::new();
        addrs.retain(|a| {
            let new = !seen.contains(a);
            seen.push(*a);
            new
        });
        if addrs.len() < 2 {
            // One address: dial by name as ever (the lookup is repeated by the dial itself).
            return vec![by_url((0, relay))];
        }
        addrs
            .into_iter()
            .map(|addr| Target {
                relay: 0,
                addr: Some(addr),
                url: relay.url.display(),
            })
            .collect()
    }

    /// Dial the first relay and log in (slot 0). Returns the relay's answer and the upgraded
    /// connection.
    pub async fn connect(&self, agent_id: &str) -> Result<(Handshake, Upgraded), DialError> {
        let target = Target {
            relay: 0,
            addr: None,
            url: self.relays[0].url.display(),
        };
        self.connect_to(&target, agent_id, 0).await
    }

    /// Dial `target` and log in as session `slot` of agent `agent_id`.
    pub async fn connect_to(
        &self,
        target: &Target,
        agent_id: &str,
        slot: usize,
    ) -> Result<(Handshake, Upgraded), DialError> {
        let relay = self.relays.get(target.relay).unwrap_or(&self.relays[0]);
        tokio::time::timeout(
            DIAL_TIMEOUT,
            self.connect_inner(relay, target.addr, agent_id, slot),
        )
        .await
        .map_err(|_| DialError::Timeout(target.display()))?
    }

    async fn connect_inner(
        &self,
        relay: &Relay,
        addr: Option<SocketAddr>,
        agent_id: &str,
        slot: usize,
    ) -> Result<(Handshake, Upgraded), DialError> {
        let url = &relay.url;
        let target = url.authority();
        let tcp = match (&relay.proxy, addr) {
            (Some(route), _) => proxy::connect(route, &target).await?,
            (None, Some(addr)) => {
                TcpStream::connect(addr)
                    .await
                    .map_err(|source| DialError::Unreachable {
                        target: format!("{target} ({addr})"),
                        source,
                    })?
            }
            // A fresh lookup on every attempt: a relay that moved is found on the next dial.
            (None, None) => TcpStream::connect(&target)
                .await
                .map_err(|source| DialError::Unreachable { target, source })?,
        };
        let _ = tcp.set_nodelay(true);
        match (&self.tls, url.tls) {
            (Some(tls), true) => {
                let name = ServerName::try_from(url.host.clone()).map_err(|e| {
                    DialError::Setup(anyhow!("`{}` is not a valid TLS server name: {e}", url.host))
                })?;
                let stream = tls.connect(name, tcp).await.map_err(|source| TlsFailure {
                    relay: url.display(),
                    source,
                    advice: self.advice.clone(),
                })?;
                self.upgrade(url, stream, agent_id, slot).await
            }
            _ => self.upgrade(url, tcp, agent_id, slot).await,
        }
    }

    /// Send `GET /_ponte/v1/connect` with `Upgrade: ponte-h2` and wait for the 101.
    async fn upgrade<S>(
        &self,
        url: &RelayUrl,
        stream: S,
        agent_id: &str,
        slot: usize,
    ) -> Result<(Handshake, Upgraded), DialError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let relay = url.display();
        let hs_err = |source: hyper::Error| DialError::Handshake {
            relay: relay.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, body::Body>(TokioIo::new(stream))
            .await
            .map_err(hs_err)?;
        tokio::spawn(async move {
            // Resolves once the upgrade hands the connection over (or it fails).
            let _ = conn.with_upgrades().await;
        });
        let host = if (url.tls && url.port == 443) || (!url.tls && url.port == 80) {
            url.host.clone()
        } else {
            url.authority()
        };
        let req = Request::get(format!("{}{CONNECT_PATH}", url.base_path))
            .header(header::HOST, host)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, UPGRADE_TOKEN)
            .header(header::USER_AGENT, format!("ponte/{}", crate::VERSION))
            .header(&PONTE_VERSION, crate::VERSION)
            .header(&PONTE_AGENT_ID, agent_id)
            .header(&PONTE_AGENT_SLOT, slot)
            .header(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", self.token.expose())).map_err(|_| {
                    DialError::Setup(anyhow!("the token contains characters not allowed in a header"))
                })?,
            )
            .body(body::empty())
            .map_err(|e| DialError::Setup(anyhow!("building the connect request: {e}")))?;
        let resp = sender.send_request(req).await.map_err(hs_err)?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let is_ponte = resp.headers().contains_key(&crate::protocol::PONTE_ERROR);
            let reason = body::collect_limited(resp.into_body(), MAX_REASON_BYTES)
                .await
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .unwrap_or_default();
            return Err(match status.as_u16() {
                401 | 403 | 426 | 429 if is_ponte => DialError::Rejected {
                    status: status.as_u16(),
                    reason,
                },
                _ => DialError::NotPonte { relay, status },
            });
        }
        let header = |name: &http::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let handshake = Handshake {
            tunnel: header(&PONTE_TUNNEL),
            public_url: header(&PONTE_PUBLIC_URL),
            agents: header(&PONTE_TUNNEL_AGENTS).parse().unwrap_or(1).max(1),
            node: Some(header(&PONTE_NODE)).filter(|n| !n.is_empty()),
        };
        let upgraded = hyper::upgrade::on(resp).await.map_err(hs_err)?;
        Ok((handshake, upgraded))
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn failure(source: io::Error) -> DialError {
        DialError::Tls(TlsFailure {
            relay: "https://relay.test:443".into(),
            source,
            advice: "; ADVICE".into(),
        })
    }

    /// Classified by the rustls error inside the io::Error (nested or not), never by its text.
    #[test]
    fn tls_failures_are_classified_by_the_rustls_error() {
        let cert = |e: CertificateError| rustls::Error::InvalidCertificate(e);
        let unknown = failure(io::Error::new(
            io::ErrorKind::InvalidData,
            cert(CertificateError::UnknownIssuer),
        ));
        assert!(unknown.needs_a_person());
        assert!(
            unknown
                .to_string()
                .ends_with("not signed by a trusted CA; ADVICE"),
            "{unknown}"
        );
        let nested = failure(io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            cert(CertificateError::NotValidForName),
        )));
        assert!(nested.needs_a_person());
        assert!(
            nested
                .to_string()
                .contains("does not match the relay's host name"),
            "{nested}"
        );
        // A reset mid-handshake whose text merely mentions UnknownIssuer is not a trust failure.
        let reset = failure(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "peer reset (UnknownIssuer)",
        ));
        assert!(!reset.needs_a_person());
        let alert = failure(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        ));
        assert!(!alert.needs_a_person());
    }

    fn connector(yaml: &str) -> Connector {
        let cfg: AgentConfig = crate::config::parse_with_env(yaml, "agent.yaml", &|_| None).unwrap();
        let cfg = cfg
            .merge_for(
                Default::default(),
                crate::config::agent::Given::File("agent.yaml".into()),
                crate::config::agent::Purpose::Check,
            )
            .unwrap();
        Connector::new(&cfg).unwrap()
    }

    /// A list gives one target per URL, dialled by name; one URL with one address is dialled by
    /// name too (so the dial's own error names the host).
    #[tokio::test]
    async fn targets_are_the_urls_of_a_list_or_the_addresses_of_one_name() {
        let list = connector("relay:\n  - https://127.0.0.1:8443\n  - https://127.0.0.2:8443\ntoken: t\n");
        let targets = list.targets().await;
        let keys: Vec<String> = targets.iter().map(Target::key).collect();
        assert_eq!(keys, ["https://127.0.0.1:8443", "https://127.0.0.2:8443"]);
        assert!(targets.iter().all(|t| t.addr.is_none()));
        let one = connector("relay: https://127.0.0.1:8443\ntoken: t\n");
        let targets = one.targets().await;
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].display(), "https://127.0.0.1:8443");
        // Several addresses of one name: one target each, keyed and shown by address.
        let t = Target::at("https://relay.test:443", "[::1]:443".parse().unwrap());
        assert_eq!(
            (t.key().as_str(), t.display().as_str()),
            ("[::1]:443", "https://relay.test:443 ([::1]:443)")
        );
    }
}
