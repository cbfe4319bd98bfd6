//! The reconnect loops. The agent keeps `ha_connections` sessions, each in its own slot with its
//! own loop: pick a target (a relay URL of the list, or an address the one relay name resolves
//! to), dial, claim the node on the [`Board`], serve until the session ends, wait a jittered
//! backoff, dial again, forever, until the shutdown token is cancelled. A session that lands on
//! a node another slot already holds is closed and the next target tried; when every reachable
//! node is taken the slot looks again every `reconnect.max` (30 s by default) without dialling a
//! held node (one node: the agent runs with one session; a node that comes back, or a new
//! address of the name, is joined).
//! Losing one session never touches the others: each is served by its own task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::board::Board;
use super::dial::{Connector, DialError};
use super::heartbeat::Heartbeat;
use super::ingress::Ingress;
use super::session::{self, SessionEnd};
use super::status::AgentStatus;
use crate::config::agent::AgentConfig;

/// Wait after the relay refused our token, or its certificate was not trusted: neither changes in
/// seconds, and hammering the relay with a bad token only trips its login throttle.
pub const REJECTED_RETRY: Duration = Duration::from_secs(60);

/// Longest wait of the other slots for slot 0's first dial, so they know which node it took.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(2);

/// How long a session that landed on an already-held node is served before its GOAWAY. hyper
/// closes a connection abruptly (failing what the relay already sent on it) when asked to shut
/// down before the HTTP/2 handshake finished; the relay's preface follows its 101 at once, so a
/// second is far more than the handshake needs.
const DUPLICATE_SETTLE: Duration = Duration::from_secs(1);

/// Owner of the reconnect loops.
pub struct Supervisor {
    shared: Arc<Shared>,
    heartbeat: Option<Heartbeat>,
}

/// What every slot's loop shares.
struct Shared {
    config: Arc<AgentConfig>,
    connector: Connector,
    ingress: Arc<Ingress>,
    shutdown: CancellationToken,
    board: Board,
    /// Stays the same across reconnects and slots: the relay replaces a slot's stale session by
    /// (agent id, slot) and counts agents by this id.
    agent_id: String,
    /// Set once slot 0's first dial ended. The other slots start after it (or after
    /// [`FIRST_ATTEMPT_WAIT`]), so they know which node slot 0 took and do not all dial it.
    first_attempt: watch::Sender<bool>,
    /// What the user was last told (banner, shared tunnel), so reconnects do not repeat it.
    announced: std::sync::Mutex<Announced>,
}

struct Announced {
    url: Option<String>,
    agents: usize,
}

/// How one round over the targets ended.
enum Round {
    /// A session was served and ended.
    Lost { error: String, stable: bool },
    /// The agent is stopping.
    Stopped,
    /// Every target failed (and none was a duplicate only).
    Failed { error: String, min_wait: Duration },
    /// Every reachable node already holds a session of this agent.
    AllHeld,
}

impl Supervisor {
    /// Prepare the loops.
    pub fn new(
        config: Arc<AgentConfig>,
        connector: Connector,
        ingress: Arc<Ingress>,
        status: watch::Sender<AgentStatus>,
        shutdown: CancellationToken,
        heartbeat: Option<Heartbeat>,
    ) -> Self {
        let slots = config.ha_connections.max(1);
        Supervisor {
            shared: Arc::new(Shared {
                board: Board::new(slots, status),
                config,
                connector,
                ingress,
                shutdown,
                agent_id: uuid::Uuid::new_v4().to_string(),
                first_attempt: watch::Sender::new(false),
                announced: std::sync::Mutex::new(Announced { url: None, agents: 1 }),
            }),
            heartbeat,
        }
    }

    /// Run until shutdown.
    pub async fn run(mut self) {
        // Beats for the systemd watchdog while the loops run (see heartbeat.rs).
        match self.heartbeat.take() {
            Some(heartbeat) => heartbeat.beat_while(self.run_slots()).await,
            None => self.run_slots().await,
        }
    }

    async fn run_slots(self) {
        for line in self.shared.ingress.describe() {
            tracing::info!(rule = %line, "ingress");
        }
        let wanted = self.shared.board.wanted();
        if wanted > 1 {
            let relays: Vec<String> = self.shared.connector.relays().map(|r| r.display()).collect();
            tracing::info!(sessions = wanted, relays = %relays.join(", "), "keeping sessions to distinct relay nodes");
        }
        // Each slot on its own task: a session's connection is polled apart from the others.
        let mut slots = tokio::task::JoinSet::new();
        for slot in 0..wanted {
            let shared = self.shared.clone();
            slots.spawn(async move { shared.run_slot(slot).await });
        }
        while let Some(done) = slots.join_next().await {
            if let Err(e) = done
                && e.is_panic()
            {
                tracing::error!(error = %e, "a session loop failed");
            }
        }
        self.shared.board.stopping();
        tracing::info!("agent stopped");
    }
}

impl Shared {
    async fn run_slot(&self, slot: usize) {
        if slot > 0 {
            // Not for long: a first dial into a blackhole takes its whole timeout, and the other
            // slots must not be offline that long.
            let mut first = self.first_attempt.subscribe();
            tokio::select! {
                _ = tokio::time::timeout(FIRST_ATTEMPT_WAIT, first.wait_for(|done| *done)) => {},
                _ = self.shutdown.cancelled() => return,
            }
        }
        let mut backoff = Backoff::new(&self.config.reconnect);
        let mut last_told: Option<String> = None;
        while !self.shutdown.is_cancelled() {
            let round = self.round(slot, &mut last_told).await;
            self.first_attempt_done(slot);
            let (delay, error, all_held) = match round {
                Round::Stopped => break,
                Round::Lost { error, stable } => {
                    if stable {
                        backoff.reset();
                    }
                    (backoff.next_delay(), error, false)
                }
                Round::Failed { error, min_wait } => (backoff.next_delay().max(min_wait), error, false),
                Round::AllHeld => {
                    // Nothing is dialled then (held nodes are skipped): the wait only bounds how
                    // soon a node added to the name's addresses is noticed.
                    let spare_retry = self.config.reconnect.max.max(self.config.reconnect.initial);
                    let live = self.board.live_count();
                    let wanted = self.board.wanted();
                    tracing::debug!(slot, "no free relay node; looking again later");
                    if self.board.first_time_fewer() {
                        tracing::info!(
                            sessions = live,
                            wanted,
                            "running with {live} of {wanted} sessions: every relay node reachable now already has one; trying again every {}",
                            humantime::format_duration(spare_retry)
                        );
                    }
                    let error = format!(
                        "every reachable relay node already has a session of this agent ({live} of {wanted})"
                    );
                    (spare_retry, error, true)
                }
            };
            let shown = humantime::format_duration(Duration::from_millis(delay.as_millis() as u64));
            if all_held || self.board.live_count() > 0 {
                // Other sessions serve: this slot's retries are not news.
                tracing::debug!(slot, delay = %shown, "reconnecting");
            } else {
                tracing::info!(slot, delay = %shown, "reconnecting");
            }
            self.board.waiting(slot, delay, error, all_held);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {},
                _ = self.shutdown.cancelled() => break,
            }
        }
    }

    /// Try the targets in turn (each slot starts at its own, to spread), skipping those that
    /// lead to a node another slot holds; serve the first session that lands on a node of its
    /// own. Behind one address that reaches several nodes (an L4 load balancer) the agent cannot
    /// tell them apart before connecting, and keeps one session there.
    async fn round(&self, slot: usize, last_told: &mut Option<String>) -> Round {
        let targets = self.connector.targets().await;
        let count = targets.len().max(1);
        let mut failure: Option<(String, Duration)> = None;
        let mut held = 0;
        for i in 0..targets.len() {
            let target = &targets[(slot + i) % count];
            if self.board.key_held_by_other(slot, &target.key()) {
                held += 1;
                continue;
            }
            let relay = target.display();
            let started = Instant::now();
            let dialed = tokio::select! {
                res = self.connector.connect_to(target, &self.agent_id, slot) => res,
                _ = self.shutdown.cancelled() => return Round::Stopped,
            };
            let (handshake, conn) = match dialed {
                Ok(pair) => pair,
                Err(e) => {
                    self.first_attempt_done(slot);
                    failure = Some(self.report(&relay, slot, e, last_told));
                    continue;
                }
            };
            *last_told = None;
            let claimed = self.board.claim(slot, target, &handshake);
            self.first_attempt_done(slot);
            if let Err(other) = claimed {
                tracing::debug!(%relay, slot, node = handshake.node.as_deref().unwrap_or("unknown"), held_by = other.slot, "this relay node already has a session of this agent; trying another");
                self.close_duplicate(conn).await;
                held += 1;
                continue;
            }
            self.announce(&relay, slot, &handshake);
            return match session::serve(conn, self.ingress.clone(), &self.config, &self.shutdown).await {
                SessionEnd::Stopped => Round::Stopped,
                SessionEnd::Lost(reason) => {
                    tracing::warn!(%relay, slot, %reason, "tunnel lost");
                    Round::Lost {
                        error: format!("connection lost: {reason}"),
                        stable: started.elapsed() >= self.config.reconnect.stable_after,
                    }
                }
            };
        }
        match failure {
            Some((error, min_wait)) => Round::Failed { error, min_wait },
            None if held > 0 => Round::AllHeld,
            None => Round::Failed {
                error: "no relay address to dial".to_string(),
                min_wait: Duration::ZERO,
            },
        }
    }

    /// After slot 0's first dial (or round), let the other slots start.
    fn first_attempt_done(&self, slot: usize) {
        if slot == 0 {
            self.first_attempt
                .send_if_modified(|done| !std::mem::replace(done, true));
        }
    }

    /// Close a session that landed on a node another slot holds. The relay may already have
    /// registered it and sent a request on it: rather than drop the connection under that
    /// request, serve it like any session for [`DUPLICATE_SETTLE`], then shut it down
    /// gracefully (GOAWAY: what was sent is answered, nothing new is accepted). The slot waits
    /// for it, so its next session (same slot: the relay would replace this one abruptly) comes
    /// after it is gone.
    async fn close_duplicate(&self, conn: hyper::upgrade::Upgraded) {
        let stop = self.shutdown.child_token();
        let serve = session::serve(conn, self.ingress.clone(), &self.config, &stop);
        tokio::pin!(serve);
        tokio::select! {
            _ = &mut serve => return,
            _ = tokio::time::sleep(DUPLICATE_SETTLE) => {},
        }
        stop.cancel();
        serve.await;
    }

    /// Log a failed dial (a refusal once, then quietly; an unreachable node once while other
    /// sessions serve) and say how long to wait at least.
    fn report(
        &self,
        relay: &str,
        slot: usize,
        e: DialError,
        last_told: &mut Option<String>,
    ) -> (String, Duration) {
        let text = e.to_string();
        if e.needs_a_person() {
            if last_told.as_deref() != Some(&text) {
                tracing::error!(%relay, slot, "{text}");
            } else {
                tracing::debug!(%relay, slot, "{text}");
            }
            *last_told = Some(text.clone());
            (text, REJECTED_RETRY)
        } else {
            // While other sessions serve, a node that stays unreachable (down, or an address not
            // routed from here) is said once, not at every retry.
            if self.board.live_count() > 0 && last_told.as_deref() == Some(&text) {
                tracing::debug!(%relay, slot, error = %e, "cannot connect");
            } else {
                tracing::warn!(%relay, slot, error = %e, "cannot connect");
            }
            *last_told = Some(text.clone());
            (text, Duration::ZERO)
        }
    }

    /// Say a session is up; the banner and the shared-tunnel warning only when they change.
    fn announce(&self, relay: &str, slot: usize, handshake: &super::dial::Handshake) {
        tracing::info!(%relay, slot, node = handshake.node.as_deref().unwrap_or("unknown"), tunnel = %handshake.tunnel, public_url = %handshake.public_url, agents = handshake.agents, "tunnel connected");
        let mut told = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        if told.url.as_deref() != Some(handshake.public_url.as_str()) {
            for line in self.ingress.forwarding(&handshake.public_url, self.config.lang) {
                tracing::info!("{line}");
            }
            told.url = Some(handshake.public_url.clone());
        }
        if handshake.agents != told.agents && handshake.agents > 1 {
            tracing::warn!(
                tunnel = %handshake.tunnel,
                "{} agents share this tunnel: requests are split between them (if they serve different upstreams, give each its own tunnel and token)",
                handshake.agents
            );
        }
        told.agents = handshake.agents;
    }
}
