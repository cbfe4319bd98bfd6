//! The reconnect loop. One task owns it: dial, serve until the session ends, wait a jittered
//! backoff, dial again — forever, until the shutdown token is cancelled. Status changes are
//! published for systemd and tests; a refused token is reported once, then retried slowly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::dial::Connector;
use super::heartbeat::Heartbeat;
use super::ingress::Ingress;
use super::session::{self, SessionEnd};
use super::status::AgentStatus;
use crate::config::agent::AgentConfig;

/// Wait after the relay refused our token, or its certificate was not trusted: neither changes in
/// seconds, and hammering the relay with a bad token only trips its login throttle.
pub const REJECTED_RETRY: Duration = Duration::from_secs(60);

/// Owner of the reconnect loop.
pub struct Supervisor {
    config: Arc<AgentConfig>,
    connector: Connector,
    ingress: Arc<Ingress>,
    status: watch::Sender<AgentStatus>,
    shutdown: CancellationToken,
    heartbeat: Option<Heartbeat>,
    agent_id: String,
}

impl Supervisor {
    /// Prepare the loop.
    pub fn new(
        config: Arc<AgentConfig>,
        connector: Connector,
        ingress: Arc<Ingress>,
        status: watch::Sender<AgentStatus>,
        shutdown: CancellationToken,
        heartbeat: Option<Heartbeat>,
    ) -> Self {
        Supervisor {
            config,
            connector,
            ingress,
            status,
            shutdown,
            heartbeat,
            agent_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Run until shutdown.
    pub async fn run(mut self) {
        // Beats for the systemd watchdog while this loop runs (see heartbeat.rs).
        match self.heartbeat.take() {
            Some(heartbeat) => heartbeat.beat_while(self.run_loop()).await,
            None => self.run_loop().await,
        }
    }

    async fn run_loop(self) {
        let relay = self.connector.relay().display();
        for line in self.ingress.describe() {
            tracing::info!(rule = %line, "ingress");
        }
        let mut backoff = Backoff::new(&self.config.reconnect);
        let mut last_rejection: Option<String> = None;
        // What the user was last told, so reconnects do not repeat it.
        let mut announced_url: Option<String> = None;
        let mut announced_agents = 1;
        let mut connects = 0;
        while !self.shutdown.is_cancelled() {
            let started = Instant::now();
            let dialed = tokio::select! {
                res = self.connector.connect(&self.agent_id) => res,
                _ = self.shutdown.cancelled() => break,
            };
            let (error, min_wait) = match dialed {
                Ok((handshake, conn)) => {
                    last_rejection = None;
                    tracing::info!(%relay, tunnel = %handshake.tunnel, public_url = %handshake.public_url, agents = handshake.agents, "tunnel connected");
                    if announced_url.as_deref() != Some(handshake.public_url.as_str()) {
                        for line in self.ingress.forwarding(&handshake.public_url, self.config.lang) {
                            tracing::info!("{line}");
                        }
                        announced_url = Some(handshake.public_url.clone());
                    }
                    if handshake.agents != announced_agents && handshake.agents > 1 {
                        tracing::warn!(
                            tunnel = %handshake.tunnel,
                            "{} agents share this tunnel: requests are split between them (if they serve different upstreams, give each its own tunnel and token)",
                            handshake.agents
                        );
                    }
                    announced_agents = handshake.agents;
                    connects += 1;
                    self.status.send_replace(AgentStatus::Connected {
                        relay: relay.clone(),
                        tunnel: handshake.tunnel,
                        public_url: handshake.public_url,
                        connects,
                        since: std::time::SystemTime::now(),
                    });
                    match session::serve(conn, self.ingress.clone(), &self.config, &self.shutdown).await {
                        SessionEnd::Stopped => break,
                        SessionEnd::Lost(reason) => {
                            if started.elapsed() >= self.config.reconnect.stable_after {
                                backoff.reset();
                            }
                            tracing::warn!(%relay, %reason, "tunnel lost");
                            (format!("connection lost: {reason}"), Duration::ZERO)
                        }
                    }
                }
                Err(e) if e.needs_a_person() => {
                    let text = e.to_string();
                    if last_rejection.as_deref() != Some(&text) {
                        tracing::error!(%relay, "{text}");
                    } else {
                        tracing::debug!(%relay, "{text}");
                    }
                    last_rejection = Some(text.clone());
                    (text, REJECTED_RETRY)
                }
                Err(e) => {
                    tracing::warn!(%relay, error = %e, "cannot connect");
                    (e.to_string(), Duration::ZERO)
                }
            };
            let delay = backoff.next_delay().max(min_wait);
            tracing::info!(delay = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)), "reconnecting");
            self.status.send_replace(AgentStatus::Retrying { delay, error });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {},
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.status.send_replace(AgentStatus::Stopping);
        tracing::info!("agent stopped");
    }
}
