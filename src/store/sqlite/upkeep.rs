//! Operator actions and upkeep of the SQLite store: waking a tunnel's backlog, replay, purge and
//! the retention sweep. Each runs inside the writer's batch transaction.

use rusqlite::{Connection, params};

use super::{db_err, queries};
use crate::store::{DELETE_CHUNK, DeliverySummary, PurgeFilter, Retention, StoreError};

/// Make a tunnel's pending deliveries due now.
pub(super) fn wake(conn: &Connection, now: i64, tunnel: &str) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "UPDATE deliveries SET next_attempt_at = ?2
         WHERE tunnel = ?1 AND status = 'pending' AND next_attempt_at > ?2",
    )
    .map_err(db_err)?
    .execute(params![tunnel, now])
    .map(|n| n as u64)
    .map_err(db_err)
}

/// Put one delivery back to pending with a fresh retry window.
pub(super) fn replay(conn: &Connection, now: i64, id: &str) -> Result<DeliverySummary, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2, retry_from = ?2, finished_at = NULL
             WHERE id = ?1",
        )
        .map_err(db_err)?
        .execute(params![id, now])
        .map_err(db_err)?;
    if n == 0 {
        return Err(StoreError::NotFound(id.to_string()));
    }
    queries::summary(conn, now, id)
}

/// Put failed deliveries back to pending.
pub(super) fn replay_failed(conn: &Connection, now: i64, tunnel: Option<&str>) -> Result<u64, StoreError> {
    conn.execute(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = ?1, retry_from = ?1, finished_at = NULL
         WHERE status = 'failed' AND (?2 IS NULL OR tunnel = ?2)",
        params![now, tunnel],
    )
    .map(|n| n as u64)
    .map_err(db_err)
}

/// Delete one chunk of deliveries matching `filter`.
pub(super) fn purge_chunk(conn: &Connection, now: i64, filter: &PurgeFilter) -> Result<u64, StoreError> {
    let cutoff = filter
        .older_than
        .map(|d| now.saturating_sub(d.as_millis() as i64));
    conn.execute(
        "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries
         WHERE status = ?1 AND (?2 IS NULL OR tunnel = ?2)
           AND (?3 IS NULL OR COALESCE(finished_at, received_at) <= ?3)
         LIMIT ?4)",
        params![filter.status.as_str(), filter.tunnel, cutoff, DELETE_CHUNK],
    )
    .map(|n| n as u64)
    .map_err(db_err)
}

/// Delete one chunk of finished deliveries past their retention.
pub(super) fn prune_chunk(conn: &Connection, now: i64, retention: &Retention) -> Result<u64, StoreError> {
    let delivered_cutoff = now.saturating_sub(retention.delivered.as_millis() as i64);
    let failed_cutoff = now.saturating_sub(retention.failed.as_millis() as i64);
    conn.execute(
        "DELETE FROM deliveries WHERE seq IN (
            SELECT seq FROM deliveries WHERE status = 'delivered' AND finished_at <= ?1
            UNION ALL
            SELECT seq FROM deliveries WHERE status = 'failed' AND finished_at <= ?2
            LIMIT ?3)",
        params![delivered_cutoff, failed_cutoff, DELETE_CHUNK],
    )
    .map(|n| n as u64)
    .map_err(db_err)
}
