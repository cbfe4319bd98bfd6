//! The delivery lifecycle's writes in the PostgreSQL store after enqueue (which is batched, see
//! [`super::writer`]): claim, finish, and taking back expired leases. Each runs in its own
//! transaction with that transaction's `now` (milliseconds, database clock).
//!
//! Several relay nodes claim from the same tables: candidate rows are locked with
//! `FOR UPDATE SKIP LOCKED` and re-checked on the row's latest version, so one delivery is never
//! leased to two claimers at once, and a claimer never waits behind another's locked rows.

use std::time::Duration;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::conn::db_err;
use crate::store::record::decode_headers;
use crate::store::{AttemptOutcome, AttemptReport, ClaimBatch, ClaimRequest, Claimed, Lease, StoreError};

/// Most attempt records kept per delivery (as the SQLite store).
const MAX_ATTEMPT_LOG: i32 = 100;

/// Run one cached statement and return its rows.
pub(super) async fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await.map_err(db_err)?;
    tx.query(&stmt, params).await.map_err(db_err)
}

/// Run one cached statement and return how many rows it changed.
pub(super) async fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = tx.prepare_cached(sql).await.map_err(db_err)?;
    tx.execute(&stmt, params).await.map_err(db_err)
}

/// The oldest pending delivery of tunnel `$1` (its `seq`, `next_attempt_at` and `lease_until`),
/// read from the `deliveries_order` index. The tunnel is matched as a range (`>= $1 AND <= $1`,
/// the same rows as `= $1`) on purpose: with `= $1` the planner drops the tunnel from the sort
/// key and may walk the primary key instead, filtering row by row; behind another tunnel's
/// backlog of 65,000 rows that made every claim take ~45 ms instead of ~0.1 ms.
pub(super) const HEAD_OF_LINE: &str = "SELECT seq, next_attempt_at, lease_until FROM deliveries
     WHERE tunnel >= $1 AND tunnel <= $1 AND status = 'pending' ORDER BY tunnel, seq LIMIT 1";

/// After a claim, when tunnel `$1` next has work: the earliest due unleased delivery, the head
/// of the line if it is unleased (ordered mode), the earliest lease expiry, and whether anything
/// is pending at all (the head exists). Each part is one short index scan (see [`HEAD_OF_LINE`]),
/// so the cost does not grow with the backlog, the tunnel's or another's.
pub(super) fn summary_sql() -> String {
    format!(
        "SELECT
            (SELECT MIN(next_attempt_at) FROM deliveries
              WHERE tunnel = $1 AND status = 'pending' AND lease_until IS NULL),
            CASE WHEN head.lease_until IS NULL THEN head.next_attempt_at END,
            (SELECT MIN(lease_until) FROM deliveries WHERE tunnel = $1 AND lease_until IS NOT NULL),
            head.seq IS NOT NULL
         FROM (SELECT 1) AS one LEFT JOIN LATERAL ({HEAD_OF_LINE}) AS head ON true"
    )
}

/// The columns a claim returns, in order.
const CLAIMED_COLUMNS: &str =
    "d.id, d.attempts, d.retry_from, d.method, d.uri, d.next_attempt_at, d.seq, r.headers, r.body";

/// Claim due deliveries of one tunnel (see [`crate::store::Store::claim`]).
pub(super) async fn claim(
    tx: &Transaction<'_>,
    now: i64,
    req: &ClaimRequest,
) -> Result<ClaimBatch, StoreError> {
    interrupt_expired(
        tx,
        now,
        &req.tunnel,
        "no result before the lease expired (the relay stopped or lost track of the attempt)",
    )
    .await?;
    let token: i64 = rand::random();
    let lease_until = now.saturating_add(req.lease.as_millis() as i64);
    let max = req.max as i64;
    let rows = if req.ordered {
        // Only the head of the line, and only if nobody holds it and it is due. A concurrent
        // claimer of the same head waits for this row's lock and then finds it leased.
        query(
            tx,
            &format!(
                "WITH head AS ({HEAD_OF_LINE})
                 UPDATE deliveries d SET attempts = d.attempts + 1, lease_token = $3, lease_until = $4, leased_at = $2
                 FROM head, requests r
                 WHERE d.seq = head.seq AND r.seq = d.seq AND $5::bigint > 0
                   AND d.status = 'pending' AND d.lease_until IS NULL AND d.next_attempt_at <= $2
                 RETURNING {CLAIMED_COLUMNS}"
            ),
            &[&req.tunnel, &now, &token, &lease_until, &max],
        )
        .await?
    } else {
        query(
            tx,
            &format!(
                "WITH picked AS (
                    SELECT seq FROM deliveries
                    WHERE tunnel = $1 AND status = 'pending' AND next_attempt_at <= $2 AND lease_until IS NULL
                    ORDER BY next_attempt_at, seq LIMIT $5
                    FOR UPDATE SKIP LOCKED
                 )
                 UPDATE deliveries d SET attempts = d.attempts + 1, lease_token = $3, lease_until = $4, leased_at = $2
                 FROM picked, requests r
                 WHERE d.seq = picked.seq AND r.seq = d.seq
                 RETURNING {CLAIMED_COLUMNS}"
            ),
            &[&req.tunnel, &now, &token, &lease_until, &max],
        )
        .await?
    };
    let mut claimed = rows
        .iter()
        .map(|row| claimed_row(row, now, token))
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|(due, seq, _)| (*due, *seq));
    let items = claimed.into_iter().map(|(_, _, c)| c).collect();

    let next = query(tx, &summary_sql(), &[&req.tunnel]).await?;
    let row = next.first().ok_or_else(|| {
        StoreError::Unavailable("PostgreSQL returned no row for the claim's summary".into())
    })?;
    let next_due: Option<i64> = if req.ordered { row.get(1) } else { row.get(0) };
    // A live lease of another claimer becomes claimable when it expires.
    let lease_expiry: Option<i64> = row.get(2);
    let wake_at = match (next_due, lease_expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(ClaimBatch {
        items,
        next_due_in: wake_at.map(|t| Duration::from_millis((t - now).max(0) as u64)),
        backlog: row.get(3),
    })
}

/// One claimed row, with its due time and seq to sort the batch by.
fn claimed_row(row: &Row, now: i64, token: i64) -> Result<(i64, i64, Claimed), StoreError> {
    let id: String = row.get(0);
    let headers: &[u8] = row.get(7);
    let body: Vec<u8> = row.get(8);
    let headers = decode_headers(headers).map_err(|e| StoreError::Corrupt(format!("delivery {id}: {e}")))?;
    let retry_from: i64 = row.get(2);
    let attempt: i32 = row.get(1);
    Ok((
        row.get(5),
        row.get(6),
        Claimed {
            lease: Lease { id, token },
            attempt: attempt.max(0) as u32,
            age: Duration::from_millis((now - retry_from).max(0) as u64),
            method: row.get(3),
            uri: row.get(4),
            headers,
            body: body.into(),
        },
    ))
}

/// Take back the expired leases of one tunnel, recording their attempt as interrupted. Leases
/// that another transaction is finishing right now are skipped (their report wins). Returns how
/// many.
pub(super) async fn interrupt_expired(
    tx: &Transaction<'_>,
    now: i64,
    tunnel: &str,
    why: &str,
) -> Result<u64, StoreError> {
    let rows = query(
        tx,
        "WITH expired AS (
            SELECT seq FROM deliveries
            WHERE tunnel = $1 AND lease_until IS NOT NULL AND lease_until <= $2
            FOR UPDATE SKIP LOCKED
         ), cleared AS (
            UPDATE deliveries d SET lease_token = NULL, lease_until = NULL, leased_at = NULL, last_error = $3
            FROM expired WHERE d.seq = expired.seq
            RETURNING d.seq, d.attempts, d.leased_at
         ), logged AS (
            INSERT INTO attempts (seq, number, started_at, finished_at, outcome, status, error)
            SELECT seq, attempts, COALESCE(leased_at, $2), $2, 'interrupted', NULL, $3 FROM cleared
            ON CONFLICT (seq, number) DO UPDATE SET started_at = EXCLUDED.started_at,
                finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome,
                status = EXCLUDED.status, error = EXCLUDED.error
         ), trimmed AS (
            DELETE FROM attempts a USING cleared c WHERE a.seq = c.seq AND a.number <= c.attempts - $4
         )
         SELECT COUNT(*) FROM cleared",
        &[&tunnel, &now, &why, &MAX_ATTEMPT_LOG],
    )
    .await?;
    Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0).max(0) as u64)
}

#[allow(clippy::too_many_arguments)]
async fn record_attempt(
    tx: &Transaction<'_>,
    seq: i64,
    number: i32,
    started_at: i64,
    finished_at: i64,
    outcome: AttemptOutcome,
    status: Option<u16>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let status = status.map(i32::from);
    execute(
        tx,
        "INSERT INTO attempts (seq, number, started_at, finished_at, outcome, status, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (seq, number) DO UPDATE SET started_at = EXCLUDED.started_at,
             finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome,
             status = EXCLUDED.status, error = EXCLUDED.error",
        &[
            &seq,
            &number,
            &started_at,
            &finished_at,
            &outcome.as_str(),
            &status,
            &error,
        ],
    )
    .await?;
    if number > MAX_ATTEMPT_LOG {
        execute(
            tx,
            "DELETE FROM attempts WHERE seq = $1 AND number <= $2",
            &[&seq, &(number - MAX_ATTEMPT_LOG)],
        )
        .await?;
    }
    Ok(())
}

/// Record an attempt's end (see [`crate::store::Store::finish`]). The row is locked first, so a
/// concurrent claim or interruption of the same delivery is decided strictly before or after.
pub(super) async fn finish(
    tx: &Transaction<'_>,
    now: i64,
    lease: &Lease,
    report: &AttemptReport,
) -> Result<bool, StoreError> {
    // This transaction's COMMIT does not wait for the WAL flush (every other write of the store
    // does). Losing it is safe: it can be lost only if the database server crashes within
    // ~3 × wal_writer_delay (and before any later flushing commit, which writes out all earlier
    // WAL too, so the claims that follow in ordered mode never outlive it). The row then reads
    // as it did after the claim, which was flushed before the attempt began: pending under our
    // lease. The lease expires, the attempt is recorded as interrupted, and the delivery is
    // attempted again: one redelivery (same `Ponte-Delivery-Id`), which at-least-once allows.
    // Nothing is lost, and no 202 depends on it. Waiting for a flush per finished attempt
    // capped the drain at the disk's flushes per second.
    execute(tx, "SET LOCAL synchronous_commit = off", &[]).await?;
    let rows = query(
        tx,
        "SELECT seq, attempts, leased_at, status, lease_token FROM deliveries WHERE id = $1 FOR UPDATE",
        &[&lease.id],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok(false);
    };
    let seq: i64 = row.get(0);
    let attempts: i32 = row.get(1);
    let leased_at: Option<i64> = row.get(2);
    let status: &str = row.get(3);
    let token: Option<i64> = row.get(4);
    let ours = token == Some(lease.token);
    let delivered = matches!(report, AttemptReport::Delivered { .. });
    if status != "pending" || (!ours && !delivered) {
        return Ok(false);
    }
    let started = leased_at.unwrap_or(now);
    match report {
        AttemptReport::Delivered { status } => {
            execute(
                tx,
                "UPDATE deliveries SET status = 'delivered', finished_at = $2, last_status = $3, last_error = NULL,
                        lease_token = NULL, lease_until = NULL, leased_at = NULL WHERE seq = $1",
                &[&seq, &now, &i32::from(*status)],
            )
            .await?;
            record_attempt(
                tx,
                seq,
                attempts,
                started,
                now,
                AttemptOutcome::Delivered,
                Some(*status),
                None,
            )
            .await?;
        }
        AttemptReport::Retry {
            after,
            status,
            error,
            interrupted,
        } => {
            let due = now.saturating_add(after.as_millis() as i64);
            execute(
                tx,
                "UPDATE deliveries SET next_attempt_at = $2, last_status = $3, last_error = $4,
                        lease_token = NULL, lease_until = NULL, leased_at = NULL WHERE seq = $1",
                &[&seq, &due, &status.map(i32::from), error],
            )
            .await?;
            let outcome = if *interrupted {
                AttemptOutcome::Interrupted
            } else {
                AttemptOutcome::Retry
            };
            record_attempt(tx, seq, attempts, started, now, outcome, *status, Some(error)).await?;
        }
        AttemptReport::Failed { status, error } => {
            execute(
                tx,
                "UPDATE deliveries SET status = 'failed', finished_at = $2, last_status = $3, last_error = $4,
                        lease_token = NULL, lease_until = NULL, leased_at = NULL WHERE seq = $1",
                &[&seq, &now, &status.map(i32::from), error],
            )
            .await?;
            record_attempt(
                tx,
                seq,
                attempts,
                started,
                now,
                AttemptOutcome::Failed,
                *status,
                Some(error),
            )
            .await?;
        }
        AttemptReport::Release { after } => {
            let due = now.saturating_add(after.as_millis() as i64);
            execute(
                tx,
                "UPDATE deliveries SET attempts = GREATEST(attempts - 1, 0), next_attempt_at = $2,
                        lease_token = NULL, lease_until = NULL, leased_at = NULL WHERE seq = $1",
                &[&seq, &due],
            )
            .await?;
        }
    }
    Ok(true)
}
