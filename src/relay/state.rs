//! What every part of the relay shares: the configuration, the registry of agent sessions, the
//! durable queue (when `store:` is set), the metrics (when they are served), and the facts about
//! the connection a request came on.
//! It sits below the dispatcher and every handler, so none of them imports another to reach it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::metrics::RelayMetrics;
use super::registry::Registry;
use crate::config::relay::{RelayConfig, TunnelName};
use crate::store::Store;

/// Everything a request handler needs, shared by all connections.
pub struct RelayState {
    /// The configuration.
    pub config: RelayConfig,
    /// Tunnels and their sessions.
    pub registry: Registry,
    /// Cancelled once public connections have drained, to close agent sessions last.
    pub sessions_shutdown: CancellationToken,
    /// The durable queue, when `store:` is configured.
    pub queues: Option<Arc<Queues>>,
    /// The console's sessions.
    pub console: crate::inspect::console::Console,
    /// The metrics, when `metrics_token` or `metrics_listen` lets someone read them.
    pub metrics: Option<Arc<RelayMetrics>>,
    /// Cancelled when the relay starts draining: `/ready` answers 503 from then on.
    pub draining: CancellationToken,
    /// When this relay started (for `ponte status`).
    pub started_at: SystemTime,
    /// This node's id, sent to agents in the 101 (`Ponte-Node`) so one agent's sessions can
    /// land on distinct nodes. A random id per process until the cluster configuration names it.
    pub node_id: String,
}

impl RelayState {
    /// Build the shared state, with the durable queue (if any) already opened by the caller, no
    /// metrics, and a draining token of its own (tests).
    #[cfg(test)]
    pub fn with_queues(config: RelayConfig, queues: Option<Arc<Queues>>) -> Self {
        Self::new(config, queues, None, CancellationToken::new())
    }

    /// Build the shared state with its metrics and the token that says the relay is draining.
    pub fn new(
        config: RelayConfig,
        queues: Option<Arc<Queues>>,
        metrics: Option<Arc<RelayMetrics>>,
        draining: CancellationToken,
    ) -> Self {
        RelayState {
            registry: Registry::new(&config),
            config,
            sessions_shutdown: CancellationToken::new(),
            queues,
            console: Default::default(),
            metrics,
            draining,
            started_at: SystemTime::now(),
            node_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Record an agent round trip (stream opened → response headers) of `tunnel`.
    pub fn round_trip(&self, tunnel: &TunnelName, since: std::time::Instant) {
        if let Some(m) = &self.metrics {
            m.tunnel(tunnel).round_trip(since);
        }
    }

    /// Are requests logged or counted? When neither, the request path skips the bookkeeping.
    pub fn observing(&self) -> bool {
        self.config.access_log || self.metrics.is_some()
    }
}

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The store and the per-tunnel queue state of a relay with `store:` configured.
pub struct Queues {
    /// The durable store.
    pub store: Arc<dyn Store>,
    tunnels: HashMap<TunnelName, Arc<TunnelQueue>>,
    /// Why the store could not commit at the last check (`None`: it could).
    store_problem: std::sync::Mutex<Option<String>>,
}

/// Queue state of one tunnel, shared by the request path and its delivery worker.
#[derive(Default)]
pub struct TunnelQueue {
    /// Wakes the delivery worker (a request was committed).
    pub wake: Notify,
    /// The tunnel has pending deliveries (kept by the worker, set on every commit).
    backlog: AtomicBool,
}

impl TunnelQueue {
    /// Record whether deliveries are pending.
    pub fn set_backlog(&self, pending: bool) {
        self.backlog.store(pending, Ordering::Release);
    }

    /// Are deliveries pending? Live requests of an ordered tunnel must not overtake them.
    pub fn has_backlog(&self) -> bool {
        self.backlog.load(Ordering::Acquire)
    }
}

impl Queues {
    /// Queue state for every tunnel. `direct` tunnels get one too: a tunnel switched from
    /// `queue` to `direct` may still have deliveries stored, and they must not be stranded.
    pub fn new(store: Arc<dyn Store>, config: &RelayConfig) -> Self {
        let tunnels = config
            .tunnels
            .keys()
            // Assume a backlog until the worker's first claim says otherwise (after a restart).
            .map(|name| {
                let q = TunnelQueue::default();
                q.set_backlog(true);
                (name.clone(), Arc::new(q))
            })
            .collect();
        Queues {
            store,
            tunnels,
            store_problem: std::sync::Mutex::new(None),
        }
    }

    /// Why the store could not commit at the last check, if it could not.
    pub fn store_problem(&self) -> Option<String> {
        self.store_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Record the outcome of a store check; returns the previous problem.
    pub fn set_store_problem(&self, problem: Option<String>) -> Option<String> {
        std::mem::replace(
            &mut *self.store_problem.lock().unwrap_or_else(|p| p.into_inner()),
            problem,
        )
    }

    /// The queue of a tunnel, if it has one.
    pub fn tunnel(&self, name: &TunnelName) -> Option<&Arc<TunnelQueue>> {
        self.tunnels.get(name)
    }
}
