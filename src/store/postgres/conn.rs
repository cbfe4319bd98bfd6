//! Connections to PostgreSQL: the pool every operation borrows from, TLS as the URL asks, the
//! store's notion of "now", and how driver errors become [`StoreError`]s.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::error::SqlState;

use super::tls;
use crate::config::postgres::PostgresUrl;
use crate::store::{Clock, StoreError};

/// Connections one relay's store keeps to the database at most.
pub(super) const POOL_SIZE: usize = 16;
/// Longest wait for a free pooled connection, or for a new one to be made.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Connection attempt limit when the URL sets no `connect_timeout`: a database that does not
/// answer makes the relay answer 503 soon rather than hold every sender.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection whose sent data stays unacknowledged this long is dead (the server's host
/// vanished without closing it). Linux only; elsewhere keepalives and [`OP_TIMEOUT`] bound it.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
/// Keepalive probes start after this much silence, for the same reason.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Longest time one store operation may take, from borrowing a connection to its commit.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Run one database operation bounded by [`OP_TIMEOUT`]; past it, the operation is dropped (a
/// transaction cut short is rolled back) and the caller gets `Unavailable`.
pub(super) async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(OP_TIMEOUT, work).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!(
            "PostgreSQL did not answer within {}s",
            OP_TIMEOUT.as_secs()
        )))
    })
}

/// The connection settings with Ponte's defaults for what the URL leaves out.
pub(super) fn driver_config(url: &PostgresUrl) -> tokio_postgres::Config {
    let mut config = url.config().clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    config.keepalives_idle(KEEPALIVE_IDLE);
    // A 202 means committed to disk: Ponte's sessions wait for the WAL flush whatever the
    // server's or the database's default, unless the URL's `options` says otherwise.
    let options = config.get_options().unwrap_or_default().to_string();
    if !options.contains("synchronous_commit") {
        config.options(format!("{options} -c synchronous_commit=on").trim_start());
    }
    config
}

/// The pool of at most `max_size` connections (made on demand: none is opened here).
pub(super) fn pool(url: &PostgresUrl, max_size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        driver_config(url),
        tls::connector(url)?,
        ManagerConfig {
            // A connection the server closed (restart, failover) is noticed here and replaced;
            // one that dies while idle fails its next statement, which callers see as
            // `Unavailable` and retry.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot set up the PostgreSQL connection pool: {e}")))
}

/// Where the store's "now" comes from. In production it is always the database's `now()` (the
/// start of the current transaction), so no relay's clock is ever compared with another's; tests
/// substitute a clock they move by hand.
#[derive(Clone)]
pub(super) enum TimeSource {
    /// The database server's clock.
    Database,
    /// A test clock.
    #[cfg_attr(not(test), allow(dead_code))]
    Clock(Arc<dyn Clock>),
}

/// The current transaction's `now()` in milliseconds since the epoch (a macro, for `concat!`).
macro_rules! db_now_ms {
    () => {
        "floor(extract(epoch FROM now()) * 1000)::bigint"
    };
}
pub(super) use db_now_ms;

/// [`db_now_ms!`] as a constant.
pub(super) const DB_NOW_MS: &str = db_now_ms!();

impl TimeSource {
    /// "Now" inside `tx`, in milliseconds since the epoch.
    pub(super) async fn now(&self, tx: &Transaction<'_>) -> Result<i64, StoreError> {
        match self {
            TimeSource::Database => {
                let stmt = tx
                    .prepare_cached(&format!("SELECT {DB_NOW_MS}"))
                    .await
                    .map_err(db_err)?;
                tx.query_one(&stmt, &[]).await.map(|r| r.get(0)).map_err(db_err)
            }
            TimeSource::Clock(c) => Ok(c.now_ms()),
        }
    }

    /// Pick between the database's `now` (already read by a query) and the test clock.
    pub(super) fn resolve(&self, db_now: i64) -> i64 {
        match self {
            TimeSource::Database => db_now,
            TimeSource::Clock(c) => c.now_ms(),
        }
    }

    /// A test clock's time, for statements that otherwise read the database's `now()`; `None`
    /// with the database's clock.
    pub(super) fn test_now(&self) -> Option<i64> {
        match self {
            TimeSource::Database => None,
            TimeSource::Clock(c) => Some(c.now_ms()),
        }
    }
}

/// Classify a driver error for callers: a full disk is `Full`, damaged data is `Corrupt`, and
/// everything else (server down, connection lost, a statement refused) is `Unavailable`, which
/// the relay answers with 503 and a `Retry-After`.
pub(super) fn db_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::DISK_FULL {
            return StoreError::Full(format!(
                "the PostgreSQL server's disk is full ({}); free space on it",
                db.message()
            ));
        }
        if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
            return StoreError::Corrupt(format!("PostgreSQL: {}", db.message()));
        }
        return StoreError::Unavailable(format!("PostgreSQL: {} (SQLSTATE {})", db.message(), code.code()));
    }
    StoreError::Unavailable(format!("PostgreSQL: {}", chain(&e)))
}

/// Classify an error of borrowing a pooled connection.
pub(super) fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_err(e),
        PoolError::Timeout(_) => StoreError::Unavailable(format!(
            "PostgreSQL: no connection could be made or freed within {}s",
            POOL_WAIT.as_secs()
        )),
        other => StoreError::Unavailable(format!("PostgreSQL: {other}")),
    }
}

/// An error and its causes, `: `-separated (the driver's own text names only the kind).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// A pooled connection used outside the transaction API: unless released after a clean end, it
/// is taken out of the pool and closed, so no one inherits a transaction left open by an error or
/// a timeout.
pub(super) struct Exclusive(Option<deadpool_postgres::Object>);

impl Exclusive {
    pub(super) fn new(object: deadpool_postgres::Object) -> Self {
        Exclusive(Some(object))
    }

    pub(super) fn get(&self) -> Result<&deadpool_postgres::Object, StoreError> {
        self.0
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("internal: the connection was already released".into()))
    }

    /// The work ended cleanly: the connection goes back to the pool.
    pub(super) fn release(mut self) {
        self.0.take();
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}
