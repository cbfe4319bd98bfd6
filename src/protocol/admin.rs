//! The admin API (`/_ponte/admin/`) that `ponte deliveries` talks to: its paths and its JSON.
//! These are wire types of their own, not the store's structs, so the store can change its
//! records without changing what operators' scripts read. Authentication is
//! `Authorization: Bearer <admin_token>`.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET deliveries?tunnel=&status=&limit=&before=` | [`ListResponse`] |
//! | `GET deliveries/{id}` | [`DeliveryDetail`] |
//! | `POST deliveries/{id}/replay` | [`DeliverySummary`] |
//! | `POST replay?status=failed&tunnel=` | [`ReplayResponse`] |
//! | `POST purge?status=&tunnel=&older_than=` | [`PurgeResponse`] |
//! | `GET status` | [`StatusResponse`] (also works without a `store:`) |
//!
//! Instants are RFC 3339 text in UTC with milliseconds (`2026-05-01T12:00:00.123Z`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Prefix of every admin path on the relay's own host.
pub const ADMIN_PREFIX: &str = "/_ponte/admin/";

/// The state of a delivery (`status=` in queries, `status` in answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for (another) attempt, or in flight.
    Pending,
    /// An upstream answered 2xx.
    Delivered,
    /// Given up: a permanent 4xx, or the retry window ended.
    Failed,
}

impl Status {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
        }
    }

    /// Parse a name from the wire.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Status::Pending),
            "delivered" => Some(Status::Delivered),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `ponte deliveries list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverySummary {
    /// The delivery id.
    pub id: String,
    /// Arrival order within the store (also the list cursor).
    pub seq: i64,
    /// The tunnel.
    pub tunnel: String,
    /// Request method.
    pub method: String,
    /// Path and query as the upstream sees them.
    pub path: String,
    /// Current state.
    pub status: Status,
    /// An attempt is running right now.
    pub in_flight: bool,
    /// Attempts made so far.
    pub attempts: u32,
    /// Body size in bytes.
    pub body_bytes: u64,
    /// When the relay accepted the request.
    pub received_at: String,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    /// When it was delivered or failed.
    pub finished_at: Option<String>,
    /// The last attempt's upstream status, if any.
    pub last_status: Option<u16>,
    /// The last attempt's error, if any.
    pub last_error: Option<String>,
}

/// One request header as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderEntry {
    /// Lowercase name.
    pub name: String,
    /// The value, lossily as text.
    pub value: String,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// 2xx.
    Delivered,
    /// Will be retried.
    Retry,
    /// Cut by the tunnel or a relay stop; will be retried.
    Interrupted,
    /// Gave up.
    Failed,
}

impl AttemptOutcome {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Failed => "failed",
        }
    }
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Attempt number (the `Ponte-Attempt` it carried).
    pub number: u32,
    /// When it was claimed.
    pub started_at: String,
    /// When its result was recorded.
    pub finished_at: String,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The upstream's status, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Everything known about one delivery (`ponte deliveries show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: DeliverySummary,
    /// The tunnel stream URI.
    pub uri: String,
    /// Request headers as they are sent on the tunnel.
    pub headers: Vec<HeaderEntry>,
    /// The body, base64 (standard alphabet).
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
    /// Every recorded attempt, oldest first (the most recent ones when there were very many).
    pub attempts_log: Vec<AttemptRecord>,
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

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
    /// The relay nodes sharing this relay's database (`cluster:` configured; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// The cluster in [`StatusResponse`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The id of the node that answered.
    pub node_id: String,
    /// Every node with a row in the database, by id (a crashed node stays listed, its heartbeat
    /// growing old, until it starts again or is removed).
    pub nodes: Vec<NodeStatus>,
    /// Why the nodes could not be read, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One relay node in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `cluster.node_id`.
    pub id: String,
    /// `cluster.advertise`.
    pub advertise: String,
    /// When it started (its own clock), RFC 3339.
    pub started_at: String,
    /// Its last heartbeat (the database's clock), RFC 3339.
    pub last_heartbeat: String,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_secs: u64,
    /// The tunnels it holds agent sessions of (entries not expired).
    pub tunnels: Vec<String>,
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
    /// Public requests that reached the tunnel in the last minute, answered or refused (an
    /// older relay does not send it: read as 0).
    #[serde(default)]
    pub requests_per_minute: u64,
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
