//! The PostgreSQL store: the durable queue in a database that several relay nodes may share.
//!
//! - New deliveries are committed in batches by one writer task per node ([`writer`]); every
//!   other operation runs in its own transaction on a pooled connection ([`conn`]).
//! - Claims lease rows with `FOR UPDATE SKIP LOCKED` ([`ops`]); every time is the database's
//!   `now()`, so a node whose clock is off never takes a live lease early.
//! - Work committed on one node wakes the others through `LISTEN`/`NOTIFY` ([`listen`]).
//! - Unlike the SQLite store, opening takes back no lease: other nodes may be mid-attempt.
//!   A node that died leaves leases that simply expire.
//! - `store_max_size` caps the request bytes held (body, headers and URI of every delivery), a
//!   count the database keeps itself ([`schema`]); PostgreSQL's own files (indexes, rows waiting
//!   for vacuum, WAL) come on top and are the database administrator's to size.

pub mod cluster;
mod conn;
mod listen;
mod ops;
mod queries;
mod schema;
#[cfg(test)]
mod tests;
mod tls;
mod upkeep;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::conn::{TimeSource, db_err, pool_err};
use self::listen::Wakeups;
use self::writer::Writer;
use super::QueueStats;
use super::metrics::StoreMetrics;
use super::{
    AttemptReport, ClaimBatch, ClaimRequest, DeliveryDetail, DeliverySummary, Enqueued, Lease, ListFilter,
    NewDelivery, OpenOptions, PurgeFilter, Retention, Store, StoreError, StoreFuture,
};
use crate::config::postgres::PostgresUrl;

/// What the writer and the operations share.
struct Shared {
    pool: Pool,
    time: TimeSource,
    /// `store_max_size`, in counted request bytes.
    max_bytes: Option<i64>,
    /// This store instance's name in notifications, so it ignores its own.
    instance: String,
}

/// The PostgreSQL backend of [`Store`].
pub struct PgStore {
    url: PostgresUrl,
    shared: Arc<Shared>,
    writer: Writer,
    wakeups: Arc<Wakeups>,
    /// Stops the listening task when the store is dropped.
    _listener: DropGuard,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect, migrate the schema, and start the writer and the listener. Every time the store
    /// compares is the database's (`options.clock` is not used: see the module doc).
    pub async fn open(url: &PostgresUrl, options: OpenOptions) -> Result<Self, StoreError> {
        Self::open_with(url, options.max_bytes, TimeSource::Database, options.metrics).await
    }

    /// As [`PgStore::open`], with the store's clock replaced by `options.clock` (tests move it by
    /// hand instead of waiting).
    #[cfg(test)]
    pub(crate) async fn open_with_test_clock(
        url: &PostgresUrl,
        options: OpenOptions,
    ) -> Result<Self, StoreError> {
        Self::open_with(
            url,
            options.max_bytes,
            TimeSource::Clock(options.clock),
            options.metrics,
        )
        .await
    }

    async fn open_with(
        url: &PostgresUrl,
        max_bytes: Option<u64>,
        time: TimeSource,
        metrics: Option<StoreMetrics>,
    ) -> Result<Self, StoreError> {
        let pool = conn::pool(url, conn::POOL_SIZE)?;
        let mut client = pool.get().await.map_err(|e| {
            let why = match pool_err(e) {
                StoreError::Unavailable(why) => why,
                other => other.to_string(),
            };
            StoreError::Unavailable(format!(
                "{url}: cannot connect to PostgreSQL ({why}); check the URL, that the server runs and that it accepts this user and password"
            ))
        })?;
        schema::migrate(&mut client, &url.to_string()).await?;
        drop(client);
        let shared = Arc::new(Shared {
            pool,
            time,
            max_bytes: max_bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            instance: format!("{:016x}", rand::random::<u64>()),
        });
        let wakeups = Arc::new(Wakeups::default());
        let stop = CancellationToken::new();
        tokio::spawn(listen::run(
            url.clone(),
            shared.instance.clone(),
            wakeups.clone(),
            stop.clone(),
        ));
        Ok(PgStore {
            url: url.clone(),
            writer: Writer::start(shared.clone(), metrics),
            shared,
            wakeups,
            _listener: stop.drop_guard(),
        })
    }

    /// Run `work` in one transaction with its `now`, commit, and return its result. The whole
    /// operation is bounded by [`conn::OP_TIMEOUT`]; a transaction cut short is rolled back.
    async fn in_tx<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>, i64) -> BoxFuture<'t, Result<T, StoreError>>,
    {
        let run = async {
            let mut client = self.shared.pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(db_err)?;
            let now = self.shared.time.now(&tx).await?;
            let value = work(&tx, now).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(value)
        };
        conn::bounded(run).await
    }
}

/// The request bytes a delivery counts for `store_max_size`.
fn stored_bytes(new: &NewDelivery) -> i64 {
    let headers: usize = new
        .headers
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum();
    (5 + headers + new.body.len() + new.uri.len()) as i64
}

impl Store for PgStore {
    fn enqueue(&self, new: NewDelivery) -> StoreFuture<'_, Enqueued> {
        Box::pin(self.writer.enqueue(new))
    }

    fn claim(&self, request: ClaimRequest) -> StoreFuture<'_, ClaimBatch> {
        // One pipelined transaction (see `ops::claim`), so no `in_tx`.
        Box::pin(async move {
            let run = async {
                let client = conn::Exclusive::new(self.shared.pool.get().await.map_err(pool_err)?);
                ops::claim(client, self.shared.time.test_now(), &request).await
            };
            conn::bounded(run).await
        })
    }

    fn finish(&self, lease: Lease, report: AttemptReport) -> StoreFuture<'_, bool> {
        // One statement, its own transaction (see `ops::FINISH`), so no `in_tx`.
        Box::pin(async move {
            let run = async {
                let client = self.shared.pool.get().await.map_err(pool_err)?;
                ops::finish(&client, self.shared.time.test_now(), &lease, &report).await
            };
            conn::bounded(run).await
        })
    }

    fn renew(&self, leases: Vec<Lease>, lease: Duration) -> StoreFuture<'_, Vec<Lease>> {
        // One statement, its own transaction, so no `in_tx`.
        Box::pin(async move {
            let run = async {
                let client = self.shared.pool.get().await.map_err(pool_err)?;
                ops::renew(&client, self.shared.time.test_now(), leases, lease).await
            };
            conn::bounded(run).await
        })
    }

    fn wake(&self, tunnel: String) -> StoreFuture<'_, u64> {
        let instance = self.shared.instance.clone();
        Box::pin(
            self.in_tx(move |tx, now| {
                Box::pin(async move { upkeep::wake(tx, now, &tunnel, &instance).await })
            }),
        )
    }

    fn list(&self, filter: ListFilter) -> StoreFuture<'_, Vec<DeliverySummary>> {
        Box::pin(self.in_tx(move |tx, now| Box::pin(async move { queries::list(tx, now, &filter).await })))
    }

    fn show(&self, id: String) -> StoreFuture<'_, DeliveryDetail> {
        Box::pin(self.in_tx(move |tx, now| Box::pin(async move { queries::show(tx, now, &id).await })))
    }

    fn stats(&self) -> StoreFuture<'_, QueueStats> {
        Box::pin(self.in_tx(|tx, now| Box::pin(async move { queries::stats(tx, now).await })))
    }

    fn replay(&self, id: String) -> StoreFuture<'_, DeliverySummary> {
        let instance = self.shared.instance.clone();
        Box::pin(
            self.in_tx(move |tx, now| Box::pin(async move { upkeep::replay(tx, now, &id, &instance).await })),
        )
    }

    fn replay_failed(&self, tunnel: Option<String>) -> StoreFuture<'_, u64> {
        let instance = self.shared.instance.clone();
        Box::pin(self.in_tx(move |tx, now| {
            Box::pin(async move { upkeep::replay_failed(tx, now, tunnel.as_deref(), &instance).await })
        }))
    }

    fn purge(&self, filter: PurgeFilter) -> StoreFuture<'_, u64> {
        Box::pin(super::delete_in_chunks(move || {
            let f = filter.clone();
            self.in_tx(move |tx, now| Box::pin(async move { upkeep::purge_chunk(tx, now, &f).await }))
        }))
    }

    fn prune(&self, retention: Retention) -> StoreFuture<'_, u64> {
        Box::pin(super::delete_in_chunks(move || {
            self.in_tx(move |tx, now| Box::pin(async move { upkeep::prune_chunk(tx, now, &retention).await }))
        }))
    }

    fn work_signal(&self, tunnel: &str) -> Option<Arc<Notify>> {
        Some(self.wakeups.signal(tunnel))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.in_tx(|_, _| Box::pin(async { Ok(()) })))
    }
}
