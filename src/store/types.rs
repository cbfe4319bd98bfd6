//! The values that cross the [`Store`](super::Store) boundary. The admin API has wire types of its
//! own (`protocol::admin`); the relay converts these into them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;

/// A wall-clock instant of the store's clock, in milliseconds since the Unix epoch. Shown as
/// RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// As a `SystemTime` (instants before 1970 clamp to the epoch).
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_rfc3339_millis(self.to_system_time()).fmt(f)
    }
}

/// A request to commit to the queue, exactly as it will be sent on the tunnel.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The tunnel it is for.
    pub tunnel: String,
    /// The request method.
    pub method: String,
    /// The URI of the tunnel stream (`https://public-host/path?query`).
    pub uri: String,
    /// The headers the agent will receive (hop-by-hop removed, `X-Forwarded-*` added).
    pub headers: HeaderMap,
    /// The body bytes as received.
    pub body: Bytes,
}

/// What `enqueue` committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The delivery id the sender is told in `Ponte-Delivery-Id`.
    pub id: String,
}

/// What to claim.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The tunnel.
    pub tunnel: String,
    /// At most this many.
    pub max: usize,
    /// Strict arrival order: only the oldest pending delivery, and only when it is due.
    pub ordered: bool,
    /// How long the claim holds before another claimer may take the delivery.
    pub lease: Duration,
}

/// The result of a claim.
#[derive(Debug, Clone, Default)]
pub struct ClaimBatch {
    /// The claimed deliveries.
    pub items: Vec<Claimed>,
    /// How long until the next pending delivery of the tunnel becomes due (store clock), if any
    /// remains that was not claimed.
    pub next_due_in: Option<Duration>,
    /// Whether the tunnel still has pending deliveries (claimed or not) after this claim.
    pub backlog: bool,
}

/// Proof of a claim: finishing needs it, so a stale worker cannot overwrite a newer claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The delivery.
    pub id: String,
    /// The claim's random token.
    pub token: i64,
}

/// One claimed delivery, with everything needed to send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The lease to finish it with.
    pub lease: Lease,
    /// This attempt's number, from 1 (sent as `Ponte-Attempt`).
    pub attempt: u32,
    /// Time since the retry window opened (arrival or last replay), by the store's clock.
    pub age: Duration,
    /// Request method.
    pub method: String,
    /// Tunnel stream URI.
    pub uri: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// How one attempt ended, as decided by the delivery worker's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptReport {
    /// A 2xx: the delivery is done.
    Delivered {
        /// The upstream's status.
        status: u16,
    },
    /// Try again after `after`. `interrupted` marks attempts cut by the tunnel (agent gone,
    /// connection lost) rather than answered by the upstream.
    Retry {
        /// Wait before the next attempt.
        after: Duration,
        /// The upstream's status, if it answered.
        status: Option<u16>,
        /// What went wrong, for operators.
        error: String,
        /// The tunnel cut the attempt (not the upstream's answer).
        interrupted: bool,
    },
    /// Give up: the delivery is `failed` until replayed.
    Failed {
        /// The upstream's status, if it answered.
        status: Option<u16>,
        /// Why.
        error: String,
    },
    /// The attempt never started (no stream free): undo the claim without counting an attempt.
    Release {
        /// Wait before it may be claimed again.
        after: Duration,
    },
}

/// The state of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting for (another) attempt, or in flight.
    Pending,
    /// An upstream answered 2xx.
    Delivered,
    /// Given up: a permanent 4xx, or the retry window ended.
    Failed,
}

impl Status {
    /// The name used in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
        }
    }

    /// Parse the stored name.
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// An attempt is running right now (its lease has not expired).
    pub in_flight: bool,
    /// Attempts made so far.
    pub attempts: u32,
    /// Body size in bytes.
    pub body_bytes: u64,
    /// When the relay accepted the request.
    pub received_at: Timestamp,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// When it was delivered or failed.
    pub finished_at: Option<Timestamp>,
    /// The last attempt's upstream status, if any.
    pub last_status: Option<u16>,
    /// The last attempt's error, if any.
    pub last_error: Option<String>,
}

/// One request header as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEntry {
    /// Lowercase name.
    pub name: String,
    /// The value, lossily as text.
    pub value: String,
}

/// How one attempt ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Failed => "failed",
        }
    }

    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delivered" => Some(AttemptOutcome::Delivered),
            "retry" => Some(AttemptOutcome::Retry),
            "interrupted" => Some(AttemptOutcome::Interrupted),
            "failed" => Some(AttemptOutcome::Failed),
            _ => None,
        }
    }
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Attempt number (the `Ponte-Attempt` it carried).
    pub number: u32,
    /// When it was claimed.
    pub started_at: Timestamp,
    /// When its result was recorded.
    pub finished_at: Timestamp,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The upstream's status, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Everything known about one delivery (`ponte deliveries show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryDetail {
    /// The summary fields.
    pub summary: DeliverySummary,
    /// The tunnel stream URI.
    pub uri: String,
    /// Request headers as they are sent on the tunnel.
    pub headers: Vec<HeaderEntry>,
    /// The body as received.
    pub body: Bytes,
    /// Every recorded attempt, oldest first (the most recent ones when there were very many).
    pub attempts_log: Vec<AttemptRecord>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this tunnel.
    pub tunnel: Option<String>,
    /// Only this state.
    pub status: Option<Status>,
    /// Only deliveries older than this `seq` (the cursor of the previous page).
    pub before_seq: Option<i64>,
    /// At most this many (the store caps it at [`MAX_LIST`]).
    pub limit: usize,
}

/// Largest page `list` returns.
pub const MAX_LIST: usize = 1000;

/// Which deliveries to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeFilter {
    /// Only this state (required: purging is never "everything" by accident).
    pub status: Status,
    /// Only this tunnel.
    pub tunnel: Option<String>,
    /// Only deliveries that finished (or, for pending, arrived) at least this long ago.
    pub older_than: Option<Duration>,
}

/// How full the queue is, per tunnel: what `/_ponte/metrics` and `ponte status` show.
/// Delivered deliveries are not counted: they are history, and counting them would scan the
/// whole retention window on every scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// By tunnel name; a tunnel with nothing pending or failed is absent.
    pub tunnels: std::collections::BTreeMap<String, TunnelQueueStats>,
}

/// The queue of one tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelQueueStats {
    /// Waiting for an attempt or in flight.
    pub pending: u64,
    /// Of those, with an attempt running now (lease not expired).
    pub in_flight: u64,
    /// Given up, waiting for an operator's replay or their retention.
    pub failed: u64,
    /// When the oldest pending delivery arrived.
    pub oldest_pending: Option<Timestamp>,
    /// How long it has waited, by the store's clock.
    pub oldest_pending_age: Option<Duration>,
}
