//! Operator actions and upkeep of the PostgreSQL store: waking a tunnel's backlog, replay, purge
//! and the retention sweep. What makes deliveries due now also tells the other relay nodes
//! (`NOTIFY`, delivered when the transaction commits).

use deadpool_postgres::Transaction;

use super::listen::notify;
use super::ops::{execute, query};
use super::queries;
use crate::store::{DELETE_CHUNK, DeliverySummary, PurgeFilter, Retention, StoreError};

/// Make a tunnel's pending deliveries due now.
pub(super) async fn wake(
    tx: &Transaction<'_>,
    now: i64,
    tunnel: &str,
    instance: &str,
) -> Result<u64, StoreError> {
    let n = execute(
        tx,
        "UPDATE deliveries SET next_attempt_at = $2
         WHERE tunnel = $1 AND status = 'pending' AND next_attempt_at > $2",
        &[&tunnel, &now],
    )
    .await?;
    if n > 0 {
        notify(tx, instance, &[tunnel.to_string()]).await?;
    }
    Ok(n)
}

/// Put one delivery back to pending with a fresh retry window.
pub(super) async fn replay(
    tx: &Transaction<'_>,
    now: i64,
    id: &str,
    instance: &str,
) -> Result<DeliverySummary, StoreError> {
    let rows = query(
        tx,
        "UPDATE deliveries SET status = 'pending', next_attempt_at = $2, retry_from = $2, finished_at = NULL
         WHERE id = $1 RETURNING tunnel",
        &[&id, &now],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Err(StoreError::NotFound(id.to_string()));
    };
    notify(tx, instance, &[row.get(0)]).await?;
    queries::summary(tx, now, id).await
}

/// Put failed deliveries back to pending.
pub(super) async fn replay_failed(
    tx: &Transaction<'_>,
    now: i64,
    tunnel: Option<&str>,
    instance: &str,
) -> Result<u64, StoreError> {
    let rows = query(
        tx,
        "WITH replayed AS (
            UPDATE deliveries SET status = 'pending', next_attempt_at = $1, retry_from = $1, finished_at = NULL
            WHERE status = 'failed' AND ($2::text IS NULL OR tunnel = $2)
            RETURNING tunnel
         )
         SELECT tunnel, COUNT(*) FROM replayed GROUP BY tunnel",
        &[&now, &tunnel],
    )
    .await?;
    let tunnels: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let total: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    notify(tx, instance, &tunnels).await?;
    Ok(total.max(0) as u64)
}

/// Delete one chunk of deliveries matching `filter`.
pub(super) async fn purge_chunk(
    tx: &Transaction<'_>,
    now: i64,
    filter: &PurgeFilter,
) -> Result<u64, StoreError> {
    let cutoff = filter
        .older_than
        .map(|d| now.saturating_sub(d.as_millis() as i64));
    execute(
        tx,
        "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries
         WHERE status = $1 AND ($2::text IS NULL OR tunnel = $2)
           AND ($3::bigint IS NULL OR COALESCE(finished_at, received_at) <= $3)
         LIMIT $4)",
        &[&filter.status.as_str(), &filter.tunnel, &cutoff, &DELETE_CHUNK],
    )
    .await
}

/// Delete one chunk of finished deliveries past their retention.
pub(super) async fn prune_chunk(
    tx: &Transaction<'_>,
    now: i64,
    retention: &Retention,
) -> Result<u64, StoreError> {
    let delivered_cutoff = now.saturating_sub(retention.delivered.as_millis() as i64);
    let failed_cutoff = now.saturating_sub(retention.failed.as_millis() as i64);
    execute(
        tx,
        "DELETE FROM deliveries WHERE seq IN (
            (SELECT seq FROM deliveries WHERE status = 'delivered' AND finished_at <= $1 LIMIT $3)
            UNION ALL
            (SELECT seq FROM deliveries WHERE status = 'failed' AND finished_at <= $2 LIMIT $3))",
        &[&delivered_cutoff, &failed_cutoff, &DELETE_CHUNK],
    )
    .await
}
