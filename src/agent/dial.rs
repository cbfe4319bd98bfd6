//! One connection to the relay: TCP (re-resolving DNS every time), an optional proxy CONNECT,
//! TLS, and the `Upgrade: ponte-h2` handshake. The result is the raw upgraded connection on which
//! the agent will be the HTTP/2 server.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, StatusCode, header};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::proxy_env::ProxySettings;
use crate::body;
use crate::config::Secret;
use crate::config::agent::{AgentConfig, RelayUrl};
use crate::protocol::{
    CONNECT_PATH, MAX_REASON_BYTES, PONTE_AGENT_ID, PONTE_PUBLIC_URL, PONTE_TUNNEL, PONTE_VERSION,
    UPGRADE_TOKEN,
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
}

/// Why a dial failed. The supervisor's one question: is it worth retrying soon?
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Could not reach the relay (DNS, TCP, proxy).
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// TLS failed (certificate not trusted, wrong name, ...).
    #[error("TLS with {relay} failed: {reason}")]
    Tls {
        /// The relay.
        relay: String,
        /// Why.
        reason: String,
    },
    /// The relay answered but refused the login (401/403/426/429): retried slowly.
    #[error("the relay refused the connection ({status}): {reason}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The relay's one-line reason, printed as is.
        reason: String,
    },
    /// The HTTP handshake failed mid-way, or the peer is not a Ponte relay.
    #[error("handshake with {relay} failed: {reason}")]
    Handshake {
        /// The relay.
        relay: String,
        /// Why.
        reason: String,
    },
    /// The whole dial took too long.
    #[error("connecting to {0} timed out")]
    Timeout(String),
    /// Local set-up failed (bad CA file, ...).
    #[error("{0}")]
    Setup(String),
}

impl DialError {
    /// A refusal from the relay that will not change by retrying quickly.
    pub fn is_rejection(&self) -> bool {
        matches!(self, DialError::Rejected { .. })
    }
}

/// Everything needed to dial the relay, built once.
#[derive(Clone)]
pub struct Connector {
    relay: RelayUrl,
    token: Secret,
    tls: Option<TlsConnector>,
    proxy: Option<ProxySettings>,
}

impl Connector {
    /// Prepare TLS and proxy settings from the configuration.
    pub fn new(config: &AgentConfig) -> anyhow::Result<Self> {
        let relay = config
            .relay
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no relay configured"))?;
        let token = config
            .token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no token configured"))?;
        let tls = if relay.tls {
            let cfg = crate::tls::client_config(config.ca_file.as_deref(), &[b"http/1.1"])?;
            Some(TlsConnector::from(Arc::new(cfg)))
        } else {
            None
        };
        let proxy = config.proxy.clone().filter(|p| !p.bypass(&relay.host));
        Ok(Connector {
            relay,
            token,
            tls,
            proxy,
        })
    }

    /// The relay this connector dials.
    pub fn relay(&self) -> &RelayUrl {
        &self.relay
    }

    /// Dial and log in. Returns the relay's answer and the upgraded connection.
    pub async fn connect(&self, agent_id: &str) -> Result<(Handshake, Upgraded), DialError> {
        tokio::time::timeout(DIAL_TIMEOUT, self.connect_inner(agent_id))
            .await
            .map_err(|_| DialError::Timeout(self.relay.display()))?
    }

    async fn connect_inner(&self, agent_id: &str) -> Result<(Handshake, Upgraded), DialError> {
        let target = self.relay.authority();
        let tcp = match &self.proxy {
            Some(proxy) => proxy.connect(&target).await.map_err(DialError::Unreachable)?,
            // A fresh lookup on every attempt: a relay that moved is found on the next dial.
            None => TcpStream::connect(&target)
                .await
                .map_err(|e| DialError::Unreachable(format!("{target}: {e}")))?,
        };
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(self.relay.host.clone()).map_err(|e| DialError::Tls {
                    relay: self.relay.display(),
                    reason: format!("invalid server name: {e}"),
                })?;
                let stream = tls.connect(name, tcp).await.map_err(|e| DialError::Tls {
                    relay: self.relay.display(),
                    reason: tls_reason(&e),
                })?;
                self.upgrade(stream, agent_id).await
            }
            None => self.upgrade(tcp, agent_id).await,
        }
    }

    /// Send `GET /_ponte/v1/connect` with `Upgrade: ponte-h2` and wait for the 101.
    async fn upgrade<S>(&self, stream: S, agent_id: &str) -> Result<(Handshake, Upgraded), DialError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let relay = self.relay.display();
        let hs_err = |reason: String| DialError::Handshake {
            relay: relay.clone(),
            reason,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, body::Body>(TokioIo::new(stream))
            .await
            .map_err(|e| hs_err(e.to_string()))?;
        tokio::spawn(async move {
            // Resolves once the upgrade hands the connection over (or it fails).
            let _ = conn.with_upgrades().await;
        });
        let host = if (self.relay.tls && self.relay.port == 443) || (!self.relay.tls && self.relay.port == 80)
        {
            self.relay.host.clone()
        } else {
            self.relay.authority()
        };
        let req = Request::get(format!("{}{CONNECT_PATH}", self.relay.base_path))
            .header(header::HOST, host)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, UPGRADE_TOKEN)
            .header(header::USER_AGENT, format!("ponte/{}", crate::VERSION))
            .header(&PONTE_VERSION, crate::VERSION)
            .header(&PONTE_AGENT_ID, agent_id)
            .header(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", self.token.expose())).map_err(|_| {
                    DialError::Setup("the token contains characters not allowed in a header".into())
                })?,
            )
            .body(body::empty())
            .map_err(|e| hs_err(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| hs_err(e.to_string()))?;
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
                _ => hs_err(format!(
                    "expected 101 Switching Protocols, got {status}; is {} a Ponte relay (and does any proxy in front pass Upgrade)?",
                    relay
                )),
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
        };
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| hs_err(e.to_string()))?;
        Ok((handshake, upgraded))
    }
}

/// Say what an untrusted certificate means for the user.
fn tls_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("UnknownIssuer") {
        format!(
            "{text}: the relay's certificate is not signed by a trusted CA; if it uses a private CA, set ca_file"
        )
    } else if text.contains("NotValidForName") {
        format!("{text}: the certificate does not match the relay's host name")
    } else {
        text
    }
}
