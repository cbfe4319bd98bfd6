//! What the console needs from the relay, as a trait the relay implements: the admin token and
//! the login budget, the relay's status, and the admin API's delivery operations (all in the
//! admin API's own wire types). Keeps the pages free of the relay's internals.

use std::net::IpAddr;

use futures_util::future::BoxFuture;

use crate::protocol::admin::{DeliveryDetail, ListResponse, Status, StatusResponse};

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

/// What the tunnels panel shows: the relay's status, the very answer of the admin API's
/// `GET status` (and `ponte status`), so the three never disagree.
#[derive(Debug, Clone)]
pub struct Overview {
    /// The relay, its tunnels, their agents, request rates and queues.
    pub status: StatusResponse,
    /// Why the queue counts are missing, when the relay has a store that could not be read.
    pub queue_error: Option<String>,
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
    /// The relay's status: every configured tunnel, by name, with its agents and queue.
    fn status(&self) -> BoxFuture<'_, Overview>;
    /// Deliveries, newest first.
    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<ListResponse, BackendError>>;
    /// One delivery with its attempts.
    fn show(&self, id: String) -> BoxFuture<'_, Result<DeliveryDetail, BackendError>>;
    /// Send one delivery again now.
    fn replay(&self, id: String) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Send every failed delivery (of one tunnel) again; how many.
    fn replay_failed(&self, tunnel: Option<String>) -> BoxFuture<'_, Result<u64, BackendError>>;
}
