//! The durable webhook queue: one [`Store`] trait, the boundary every backend implements (an
//! embedded SQLite file, or PostgreSQL shared by several relay nodes), and the types that cross
//! it.
//!
//! The trait is shaped for several relay nodes sharing one database:
//! - a claimed delivery carries a **lease** (`lease_until` in the row); a process that dies
//!   mid-attempt leaves a lease that simply expires, after which any node may claim the delivery
//!   again. Nothing needed to resume lives in process memory.
//! - every time comparison happens against **the store's own clock** (the relay's clock for
//!   SQLite, the database's `now()` for PostgreSQL). Callers pass durations ("retry in 5 s", "lease
//!   for 30 s"), never instants, so two hosts' clocks are never compared.
//! - the store records what happened; the retry *policy* (which status retries, how long to wait,
//!   when to give up) lives in the relay's delivery worker.

pub mod clock;
pub mod metrics;
pub mod postgres;
pub mod record;
pub mod sqlite;
mod types;

#[cfg(test)]
pub(crate) mod conformance;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use crate::config::relay::StoreUrl;

pub use clock::{Clock, ManualClock, SystemClock};
pub use metrics::StoreMetrics;
pub use types::*;

/// Why the store could not do what was asked. Callers branch on these: `Full` and `Unavailable`
/// become 503 for a sender, `NotFound` a 404 for an operator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No room: the disk is full or the configured size cap is reached and nothing can be freed.
    #[error("the queue store is full ({0}); free disk space, purge old deliveries or raise store_max_size")]
    Full(String),
    /// The store cannot be used right now (I/O error, database locked or down, writer stopped).
    #[error("the queue store is unavailable: {0}")]
    Unavailable(String),
    /// No delivery with that id.
    #[error("no delivery with id `{0}`")]
    NotFound(String),
    /// Another relay process already uses this store file.
    #[error(
        "{0}: another relay is already using this store; stop it, or give this relay its own `store:` (a SQLite store serves one relay)"
    )]
    InUse(String),
    /// The stored data cannot be read back (damaged file, or written by a newer Ponte).
    #[error("the queue store is damaged or from a newer version: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when retrying later may succeed (as opposed to a missing id).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Full(_) | StoreError::Unavailable(_))
    }
}

/// A future returned by the store: boxed so the trait can be used as `dyn Store`.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// The durable queue. Every method that changes data returns only after the change is committed
/// durably; a caller that got `Ok` may tell the sender so.
pub trait Store: Send + Sync + 'static {
    /// Commit a new request as `pending`, due at once.
    fn enqueue(&self, new: NewDelivery) -> StoreFuture<'_, Enqueued>;

    /// Claim up to `max` due deliveries of one tunnel under a lease, counting an attempt on each.
    /// In `ordered` mode only the oldest pending delivery of the tunnel is ever claimed, and only
    /// when it is due (head-of-line). Leases that expired are taken back first (their attempt is
    /// recorded as interrupted).
    fn claim(&self, request: ClaimRequest) -> StoreFuture<'_, ClaimBatch>;

    /// Record how a claimed attempt ended. A report whose lease was lost (expired and claimed
    /// again, purged) is ignored and answered `Ok(false)`, except that a delivery that succeeded is
    /// always marked delivered.
    fn finish(&self, lease: Lease, report: AttemptReport) -> StoreFuture<'_, bool>;

    /// Extend every lease in `leases` to `lease` from now (store clock), in one call, while their
    /// attempts run. Answers the leases that are no longer held (expired and claimed by someone
    /// else, finished, replayed or purged): those are left unchanged.
    fn renew(&self, leases: Vec<Lease>, lease: Duration) -> StoreFuture<'_, Vec<Lease>>;

    /// Make every pending delivery of a tunnel due now (its agent just connected). Returns how
    /// many were moved forward.
    fn wake(&self, tunnel: String) -> StoreFuture<'_, u64>;

    /// Deliveries matching `filter`, newest first.
    fn list(&self, filter: ListFilter) -> StoreFuture<'_, Vec<DeliverySummary>>;

    /// One delivery with its request and every recorded attempt.
    fn show(&self, id: String) -> StoreFuture<'_, DeliveryDetail>;

    /// Put one delivery (whatever its state) back to pending, due now, with a fresh retry window.
    fn replay(&self, id: String) -> StoreFuture<'_, DeliverySummary>;

    /// Put every failed delivery (of one tunnel, or all) back to pending. Returns how many.
    fn replay_failed(&self, tunnel: Option<String>) -> StoreFuture<'_, u64>;

    /// Delete deliveries matching `filter`. Returns how many.
    fn purge(&self, filter: PurgeFilter) -> StoreFuture<'_, u64>;

    /// Delete finished deliveries older than the retention. Returns how many.
    fn prune(&self, retention: Retention) -> StoreFuture<'_, u64>;

    /// Pending, in-flight and failed counts and the oldest pending arrival, per tunnel.
    fn stats(&self) -> StoreFuture<'_, QueueStats>;
    /// Signalled when another relay process sharing this store commits work for `tunnel` (new
    /// or replayed deliveries), so that this process's delivery worker claims at once instead of
    /// at its next poll. `None` when no other process writes to the store (SQLite).
    fn work_signal(&self, tunnel: &str) -> Option<Arc<Notify>> {
        let _ = tunnel;
        None
    }

    /// Check that the store can commit now (one round trip to a database server). A local file
    /// answers at once: its failures show on each commit.
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Rows deleted per purge or prune transaction, so one large purge never holds the store's writer
/// or its locks (and the senders waiting on them) for long.
pub(crate) const DELETE_CHUNK: i64 = 5000;

/// Run `chunk` (one transaction deleting at most [`DELETE_CHUNK`] rows) until a chunk deletes
/// fewer; returns how many rows were deleted in all.
async fn delete_in_chunks<F, Fut>(mut chunk: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let n = chunk().await?;
        total += n;
        if n < DELETE_CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// Open the store a `store:` URL names. Blocking work (opening the file, migrations) runs off the
/// async threads.
pub async fn open(url: &StoreUrl, options: OpenOptions) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path, options))
                .await
                .map_err(|e| StoreError::Unavailable(format!("opening the store failed: {e}")))??;
            Ok(Arc::new(store))
        }
        StoreUrl::Postgres(url) => Ok(Arc::new(postgres::PgStore::open(url, options).await?)),
    }
}

/// Settings every backend honours when opening.
#[derive(Clone)]
pub struct OpenOptions {
    /// Largest size the store may grow to, in bytes (`None`: only the disk limits it).
    pub max_bytes: Option<u64>,
    /// Where "now" comes from (SQLite; PostgreSQL always uses the database's clock).
    pub clock: Arc<dyn Clock>,
    /// Where commit latency and batch sizes are recorded (`None`: not recorded).
    pub metrics: Option<StoreMetrics>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            max_bytes: None,
            clock: Arc::new(SystemClock),
            metrics: None,
        }
    }
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// How long finished deliveries are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delivered requests older than this (since delivery) are deleted.
    pub delivered: Duration,
    /// Failed requests older than this (since they failed) are deleted.
    pub failed: Duration,
}
