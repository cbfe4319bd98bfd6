//! Live sessions per tunnel. Several agents may serve one tunnel (streams are spread round-robin);
//! a reconnecting agent's stale session (same agent id) is evicted at once, so a connection that
//! died silently never holds the tunnel hostage (the ngrok ERR_NGROK_334 failure).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::rate::RequestRate;
use super::session::{Attempt, SendError, Session};
use crate::config::relay::{RelayConfig, TokenHash, TunnelConfig, TunnelName};

/// One configured tunnel and its live sessions.
pub struct TunnelState {
    /// Its name.
    pub name: TunnelName,
    /// Its settings.
    pub config: TunnelConfig,
    members: Arc<Mutex<Members>>,
    next: AtomicUsize,
    connected: watch::Sender<usize>,
    next_login: AtomicU64,
    /// When the last session of this tunnel ended (for `ponte status`).
    last_disconnect: Mutex<Option<SystemTime>>,
    /// Public requests in the last minute (for `ponte status` and the console).
    pub requests: RequestRate,
}

/// Who holds a place in a tunnel: registered sessions, and logins accepted (101 sent) whose
/// HTTP/2 session is not registered yet. One lock over both, so a login is counted and reserved
/// in one step.
#[derive(Default)]
struct Members {
    sessions: Vec<Arc<Session>>,
    /// (login id, agent id) of each login in progress.
    pending: Vec<(u64, String)>,
}

/// A login's place in its tunnel, held until dropped (the session registered, or the login
/// failed).
pub struct PendingLogin {
    members: Arc<Mutex<Members>>,
    id: u64,
    agents: usize,
}

impl PendingLogin {
    /// How many agents (distinct instance ids, this one included) serve the tunnel once this login
    /// is registered, counting logins in progress: seen under the same lock as the reservation.
    pub fn agents(&self) -> usize {
        self.agents
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        lock(&self.members).pending.retain(|(id, _)| *id != self.id);
    }
}

fn lock(members: &Mutex<Members>) -> std::sync::MutexGuard<'_, Members> {
    // A panic while holding this lock cannot leave the lists inconsistent; keep serving.
    members.lock().unwrap_or_else(|p| p.into_inner())
}

impl TunnelState {
    fn new(name: TunnelName, config: TunnelConfig) -> Self {
        TunnelState {
            name,
            config,
            members: Arc::default(),
            next: AtomicUsize::new(0),
            connected: watch::Sender::new(0),
            next_login: AtomicU64::new(1),
            last_disconnect: Mutex::new(None),
            requests: RequestRate::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Members> {
        lock(&self.members)
    }

    /// Add a session, evicting any earlier one from the same agent instance and slot (an agent
    /// with `ha_connections` keeps one session per slot; a slot re-dialled replaces its own).
    pub fn register(&self, session: Arc<Session>) {
        let mut members = self.lock();
        let sessions = &mut members.sessions;
        sessions.retain(|old| {
            let stale = old.agent_id == session.agent_id && old.slot == session.slot;
            if stale {
                tracing::info!(tunnel = %self.name, old = old.id, old_peer = %old.remote, new = session.id, "agent reconnected; evicting its stale session");
                old.close();
            }
            !stale
        });
        sessions.push(session);
        self.connected.send_replace(sessions.len());
    }

    /// Remove a session that ended.
    pub fn deregister(&self, id: u64) {
        let mut members = self.lock();
        members.sessions.retain(|s| s.id != id);
        self.connected.send_replace(members.sessions.len());
        *self.last_disconnect.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
    }

    /// The registered sessions, oldest first.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.lock().sessions.clone()
    }

    /// When an agent of this tunnel was last connected: now while one is, else when the last
    /// session ended (`None`: none since the relay started).
    pub fn last_seen(&self) -> Option<SystemTime> {
        if self.connected_count() > 0 {
            return Some(SystemTime::now());
        }
        *self.last_disconnect.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session to carry the next stream, round-robin over the usable ones.
    pub fn pick(&self) -> Option<Arc<Session>> {
        let members = self.lock();
        let usable: Vec<&Arc<Session>> = members.sessions.iter().filter(|s| s.is_usable()).collect();
        if usable.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % usable.len();
        Some(usable[i].clone())
    }

    /// Reserve a place for a login of `agent_id`, or `None` when the tunnel already has `max`
    /// other agents, counting both registered sessions and logins in progress: checked and
    /// reserved under one lock, so concurrent logins cannot all pass before any registers. An
    /// agent logging in again replaces its old session, so it never counts against itself.
    pub fn try_login(&self, agent_id: &str, max: usize) -> Option<PendingLogin> {
        let mut members = self.lock();
        let mut others: Vec<&str> = members
            .sessions
            .iter()
            .map(|s| s.agent_id.as_str())
            .chain(members.pending.iter().map(|(_, a)| a.as_str()))
            .filter(|a| *a != agent_id)
            .collect();
        others.sort_unstable();
        others.dedup();
        if others.len() >= max {
            return None;
        }
        let id = self.next_login.fetch_add(1, Ordering::Relaxed);
        let agents = others.len() + 1;
        members.pending.push((id, agent_id.to_string()));
        Some(PendingLogin {
            members: self.members.clone(),
            id,
            agents,
        })
    }

    /// A session for the next stream; if none is registered but a login is being set up (the
    /// agent already has its 101), wait up to `wait` for it rather than answer 503 in that gap.
    pub async fn pick_or_wait(&self, wait: std::time::Duration) -> Option<Arc<Session>> {
        if let Some(s) = self.pick() {
            return Some(s);
        }
        if self.lock().pending.is_empty() {
            return None;
        }
        let mut rx = self.connected.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|n| *n > 0)).await;
        self.pick()
    }

    /// Follow the number of registered sessions: the delivery worker waits on it, and delivers
    /// at once when an agent arrives.
    pub fn watch_connected(&self) -> watch::Receiver<usize> {
        self.connected.subscribe()
    }

    /// Send on `first`; if its connection turns out closed before the request left (a session
    /// that died silently and is not deregistered yet), send it on another live session instead
    /// of failing the sender.
    pub async fn send(
        &self,
        first: Arc<Session>,
        req: http::Request<crate::body::Body>,
        timeout: std::time::Duration,
    ) -> Result<
        (
            http::Response<hyper::body::Incoming>,
            tokio::sync::OwnedSemaphorePermit,
        ),
        SendError,
    > {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut session = first;
        let mut req = req;
        let mut tried = Vec::new();
        loop {
            match session.try_send(req, deadline).await {
                Ok(pair) => return Ok(pair),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::NotSent(back, e)) => {
                    tracing::debug!(tunnel = %self.name, session = session.id, error = %e, "session closed before the request left; trying another");
                    tried.push(session.id);
                    let next = self
                        .lock()
                        .sessions
                        .iter()
                        .find(|s| s.is_usable() && !tried.contains(&s.id))
                        .cloned();
                    match next {
                        Some(s) => {
                            session = s;
                            req = *back;
                        }
                        None => return Err(SendError::Failed(e)),
                    }
                }
            }
        }
    }

    /// Number of registered sessions.
    pub fn connected_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Close every session (shutdown).
    pub fn close_all(&self) {
        for s in self.lock().sessions.iter() {
            s.close();
        }
    }
}

/// All tunnels of the relay, and the failed-login budget per address.
pub struct Registry {
    tunnels: HashMap<TunnelName, Arc<TunnelState>>,
    failed_logins: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    max_failed_logins: u32,
    next_session_id: AtomicU64,
}

/// Window over which failed logins are counted.
const LOGIN_WINDOW: Duration = Duration::from_secs(60);

impl Registry {
    /// Build from the configuration.
    pub fn new(config: &RelayConfig) -> Self {
        Registry {
            tunnels: config
                .tunnels
                .iter()
                .map(|(n, c)| (n.clone(), Arc::new(TunnelState::new(n.clone(), c.clone()))))
                .collect(),
            failed_logins: Mutex::new(HashMap::new()),
            max_failed_logins: config.limits.max_failed_logins_per_minute,
            next_session_id: AtomicU64::new(1),
        }
    }

    /// A tunnel by name.
    pub fn tunnel(&self, name: &TunnelName) -> Option<&Arc<TunnelState>> {
        self.tunnels.get(name)
    }

    /// Every tunnel.
    pub fn tunnels(&self) -> impl Iterator<Item = &Arc<TunnelState>> {
        self.tunnels.values()
    }

    /// The tunnel a presented token belongs to. Every configured hash is compared in constant
    /// time, whatever matched earlier.
    pub fn tunnel_for_token(&self, presented: &TokenHash) -> Option<Arc<TunnelState>> {
        let mut found = None;
        for t in self.tunnels.values() {
            for h in &t.config.tokens {
                if h.matches(presented) && found.is_none() {
                    found = Some(t.clone());
                }
            }
        }
        found
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Is this address over its failed-login budget?
    pub fn login_throttled(&self, ip: IpAddr) -> bool {
        let map = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .is_some_and(|(since, n)| since.elapsed() < LOGIN_WINDOW && *n >= self.max_failed_logins)
    }

    /// Count a failed login.
    pub fn record_failed_login(&self, ip: IpAddr) {
        let mut map = self.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the map: forget old windows when it grows.
        if map.len() > 10_000 {
            map.retain(|_, (since, _)| since.elapsed() < LOGIN_WINDOW);
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= LOGIN_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    /// Close every session (shutdown).
    pub fn close_all(&self) {
        for t in self.tunnels.values() {
            t.close_all();
        }
    }
}

#[cfg(test)]
impl TunnelState {
    /// Register two fake agent sessions: one whose connection is already gone but that nobody
    /// has deregistered yet (returned, to be sent on as if picked just before it died), and a
    /// live one (its connection task returned: keep it).
    pub(super) async fn with_dead_and_live_session(&self) -> (Arc<Session>, tokio::task::JoinHandle<()>) {
        use super::session::testing::session_pair;
        let (dead, dead_conn) = session_pair(1).await;
        let (live, live_conn) = session_pair(2).await;
        self.register(dead.clone());
        self.register(live);
        dead_conn.abort();
        let _ = dead_conn.await;
        (dead, live_conn)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::body;

    #[tokio::test]
    async fn a_request_not_sent_on_a_dead_session_goes_to_a_live_one() {
        let tunnel = demo_tunnel();
        let (dead, _live_conn) = tunnel.with_dead_and_live_session().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let req = http::Request::post("http://t/x")
            .body(body::full("payload"))
            .unwrap();
        let (resp, _permit) = tunnel.send(dead, req, Duration::from_secs(5)).await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[test]
    fn pending_logins_count_against_the_cap() {
        let tunnel = demo_tunnel();
        // Two logins still being set up (101 sent, no session yet) fill a cap of 2.
        let a = tunnel.try_login("agent-1", 2).expect("room for a first agent");
        let b = tunnel.try_login("agent-2", 2).expect("room for a second agent");
        assert!(tunnel.try_login("agent-3", 2).is_none(), "a third agent got in");
        // An agent logging in again is not a new agent.
        assert!(tunnel.try_login("agent-1", 2).is_some());
        // A login that failed frees its place.
        drop(b);
        assert!(tunnel.try_login("agent-3", 2).is_some());
        drop(a);
    }

    fn demo_tunnel() -> TunnelState {
        let cfg: crate::config::relay::RelayConfig = crate::config::parse_with_env(
            "tunnels:\n  t:\n    token: 0123456789abcdef0123\n",
            "relay.yaml",
            &|_| None,
        )
        .unwrap();
        let (name, tcfg) = cfg.tunnels.into_iter().next().unwrap();
        TunnelState::new(name, tcfg)
    }

    /// Two HA sessions of one agent (slots 0 and 1) live side by side and count as one agent; the
    /// same slot dialled again replaces its stale session.
    #[tokio::test]
    async fn sessions_are_replaced_per_agent_and_slot() {
        use super::super::session::testing::agent_session;
        let tunnel = demo_tunnel();
        let (first, _c1) = agent_session(1, "agent-a", 0).await;
        let (second, _c2) = agent_session(2, "agent-a", 1).await;
        tunnel.register(first.clone());
        tunnel.register(second.clone());
        assert_eq!(tunnel.connected_count(), 2, "a sibling slot was evicted");
        assert!(first.is_usable() && second.is_usable());
        // Counted as one agent: a third slot's login is not "another agent".
        let login = tunnel
            .try_login("agent-a", 1)
            .expect("same agent, not a second one");
        assert_eq!(login.agents(), 1);
        drop(login);
        // Slot 0 re-dialled: its old session goes, slot 1 stays.
        let (again, _c3) = agent_session(3, "agent-a", 0).await;
        tunnel.register(again);
        let ids: Vec<u64> = tunnel.sessions().iter().map(|s| s.id).collect();
        assert_eq!(ids, [2, 3]);
        assert!(!first.is_usable(), "the stale slot-0 session was kept open");
    }

    /// Streams are spread over a tunnel's sessions, one agent's slots included.
    #[tokio::test]
    async fn picks_alternate_between_sessions() {
        use super::super::session::testing::agent_session;
        let tunnel = demo_tunnel();
        let (a, _c1) = agent_session(1, "agent-a", 0).await;
        let (b, _c2) = agent_session(2, "agent-a", 1).await;
        tunnel.register(a);
        tunnel.register(b);
        let picked: Vec<u64> = (0..6).map(|_| tunnel.pick().unwrap().id).collect();
        assert_eq!(picked.iter().filter(|id| **id == 1).count(), 3, "{picked:?}");
        assert_eq!(picked.iter().filter(|id| **id == 2).count(), 3, "{picked:?}");
    }
}
