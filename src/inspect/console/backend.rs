//! What the console needs from the relay, as a trait the relay implements: the admin token and
//! the login budget, the tunnels' state, and the admin API's delivery operations (in the admin
//! API's own wire types). Keeps the pages free of the relay's internals.

use std::net::IpAddr;

use futures_util::future::BoxFuture;

use crate::protocol::admin::{DeliveryDetail, ListResponse, Status};

/// Why a delivery operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No such delivery.
    #[error("{0}")]
    NotFound(String),
    /// The operation does not apply (e.g. replaying a pending delivery).
    #[error("{0}")]
    Refused(String),
    /// The store failed or is missing.
    #[error("{0}")]
    Unavailable(String),
}

/// One tunnel as the console shows it.
#[derive(Debug, Clone, Default)]
pub struct TunnelView {
    /// Its name.
    pub name: String,
    /// `direct`, `queue` or `fallback`.
    pub delivery: String,
    /// The agents connected now.
    pub agents: Vec<AgentView>,
    /// When an agent was last connected (RFC 3339), if known.
    pub last_seen: Option<String>,
    /// Public requests per minute lately, if known.
    pub requests_per_minute: Option<f64>,
    /// Its queue, when the relay has a store and knows it.
    pub queue: Option<QueueView>,
}

/// One connected agent.
#[derive(Debug, Clone, Default)]
pub struct AgentView {
    /// `ip:port` as the relay sees it.
    pub address: String,
    /// The version it announced.
    pub version: Option<String>,
    /// When it connected (RFC 3339), if known.
    pub since: Option<String>,
}

/// A tunnel's queue.
#[derive(Debug, Clone, Default)]
pub struct QueueView {
    /// Waiting or in flight.
    pub pending: u64,
    /// Given up.
    pub failed: u64,
    /// Seconds the oldest pending delivery has waited.
    pub oldest_pending_age_secs: Option<u64>,
}

/// A delivery list query.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this tunnel.
    pub tunnel: Option<String>,
    /// Only this state.
    pub status: Option<Status>,
    /// At most this many.
    pub limit: usize,
}

/// The relay, as the console sees it.
pub trait Backend: Send + Sync {
    /// The configured `admin_token`; `None` turns the console off (404).
    fn admin_token(&self) -> Option<&str>;
    /// Is this address over its failed-login budget?
    fn login_throttled(&self, ip: IpAddr) -> bool;
    /// Count a failed login.
    fn record_failed_login(&self, ip: IpAddr);
    /// The relay has a store (so deliveries exist).
    fn has_store(&self) -> bool;
    /// Every configured tunnel, by name.
    fn tunnels(&self) -> BoxFuture<'_, Vec<TunnelView>>;
    /// Deliveries, newest first.
    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<ListResponse, BackendError>>;
    /// One delivery with its attempts.
    fn show(&self, id: String) -> BoxFuture<'_, Result<DeliveryDetail, BackendError>>;
    /// Send one delivery again now.
    fn replay(&self, id: String) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Send every failed delivery (of one tunnel) again; how many.
    fn replay_failed(&self, tunnel: Option<String>) -> BoxFuture<'_, Result<u64, BackendError>>;
}
