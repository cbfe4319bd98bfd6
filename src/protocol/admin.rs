//! The admin API (`/_ponte/admin/`) that `ponte deliveries` talks to: its paths and the JSON
//! answers beyond the store's own types. Authentication is `Authorization: Bearer <admin_token>`.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET deliveries?tunnel=&status=&limit=&before=` | [`ListResponse`] |
//! | `GET deliveries/{id}` | [`crate::store::DeliveryDetail`] |
//! | `POST deliveries/{id}/replay` | [`crate::store::DeliverySummary`] |
//! | `POST replay?status=failed&tunnel=` | [`ReplayResponse`] |
//! | `POST purge?status=&tunnel=&older_than=` | [`PurgeResponse`] |
//! | `GET status` | [`StatusResponse`] (also works without a `store:`) |

use serde::{Deserialize, Serialize};

use crate::store::DeliverySummary;

/// Prefix of every admin path on the relay's own host.
pub const ADMIN_PREFIX: &str = "/_ponte/admin/";

/// A page of deliveries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListResponse {
    /// Newest first.
    pub deliveries: Vec<DeliverySummary>,
    /// Pass as `before=` for the next page; absent on the last page.
    pub next_before: Option<i64>,
}

/// The answer to a bulk replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayResponse {
    /// How many deliveries went back to pending.
    pub replayed: u64,
}

/// The answer to a purge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeResponse {
    /// How many deliveries were deleted.
    pub purged: u64,
}

/// `GET status`: the relay, its tunnels, their agents and queues (`ponte status`). Times are
/// RFC 3339 by the relay's clock; compare them with [`StatusResponse::now`], never the caller's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    /// The relay's version.
    pub version: String,
    /// The relay's clock when it answered.
    pub now: String,
    /// When the relay started.
    pub started_at: String,
    /// The relay is shutting down (its `/ready` answers 503).
    pub draining: bool,
    /// The relay has a durable queue (`store:`).
    pub store: bool,
    /// Every configured tunnel, by name.
    pub tunnels: Vec<TunnelStatus>,
}

/// One tunnel in [`StatusResponse`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// Its name.
    pub name: String,
    /// `direct`, `queue` or `fallback`.
    pub delivery: String,
    /// The agents connected now.
    pub agents: Vec<AgentStatus>,
    /// When an agent was last connected: `now` while one is; absent if none was since the
    /// relay started.
    pub last_seen: Option<String>,
    /// The tunnel's queue, when the relay has a store.
    pub queue: Option<QueueStatus>,
}

/// One connected agent in [`TunnelStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's instance id (stable across its reconnects).
    pub id: String,
    /// Where it connected from (`ip:port`, as the relay sees it).
    pub address: String,
    /// The Ponte version it announced, if any.
    pub version: Option<String>,
    /// When this connection was registered.
    pub connected_since: String,
    /// Requests in flight on it now.
    pub streams_in_use: u32,
}

/// A tunnel's queue in [`TunnelStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Waiting for an attempt, or in flight.
    pub pending: u64,
    /// Of those, with an attempt running now.
    pub in_flight: u64,
    /// Given up; `ponte deliveries replay --failed` sends them again.
    pub failed: u64,
    /// When the oldest pending delivery arrived.
    pub oldest_pending: Option<String>,
    /// How long it has waited, in seconds (by the store's clock).
    pub oldest_pending_age_secs: Option<u64>,
}

impl TunnelStatus {
    /// Pending deliveries that cannot go out because no agent is connected.
    pub fn waiting_for_agent(&self) -> bool {
        self.agents.is_empty() && self.queue.as_ref().is_some_and(|q| q.pending > 0)
    }
}
