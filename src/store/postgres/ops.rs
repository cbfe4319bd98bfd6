//! The delivery lifecycle's writes in the PostgreSQL store after enqueue (which is batched, see
//! [`super::writer`]): claim, renew, finish, and taking back expired leases. Each runs in its own
//! transaction with that transaction's `now` (milliseconds, database clock).
//!
//! Several relay nodes claim from the same tables: candidate rows are locked with
//! `FOR UPDATE SKIP LOCKED` and re-checked on the row's latest version, so one delivery is never
//! leased to two claimers at once, and a claimer never waits behind another's locked rows.

use std::time::Duration;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::conn::{Exclusive, db_err};
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

/// The store's "now" in a claim's statements: `$2` (a test clock) or the database's `now()`,
/// which is the same in every statement of one transaction.
const CLAIM_NOW: &str = concat!("COALESCE($2::bigint, ", super::conn::db_now_ms!(), ")");

/// Take back the expired leases of tunnel `$1`, recording their attempt (`$3` says why) as
/// interrupted. Leases that another transaction is finishing right now are skipped (their report
/// wins). Answers how many, and the transaction's now.
fn interrupt_expired_sql() -> String {
    format!(
        "WITH expired AS (
            SELECT seq FROM deliveries
            WHERE tunnel = $1 AND lease_until IS NOT NULL AND lease_until <= {CLAIM_NOW}
            FOR UPDATE SKIP LOCKED
         ), cleared AS (
            UPDATE deliveries d SET lease_token = NULL, lease_until = NULL, leased_at = NULL, last_error = $3
            FROM expired WHERE d.seq = expired.seq
            RETURNING d.seq, d.attempts, d.leased_at
         ), logged AS (
            INSERT INTO attempts (seq, number, started_at, finished_at, outcome, status, error)
            SELECT seq, attempts, COALESCE(leased_at, {CLAIM_NOW}), {CLAIM_NOW}, 'interrupted', NULL, $3
            FROM cleared
            ON CONFLICT (seq, number) DO UPDATE SET started_at = EXCLUDED.started_at,
                finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome,
                status = EXCLUDED.status, error = EXCLUDED.error
         ), trimmed AS (
            DELETE FROM attempts a USING cleared c WHERE a.seq = c.seq AND a.number <= c.attempts - $4
         )
         SELECT COUNT(*), {CLAIM_NOW} FROM cleared"
    )
}

/// Lease up to `$5` due deliveries of tunnel `$1` with token `$3` for `$4` milliseconds,
/// counting an attempt on each. In `ordered` mode only the head of the line, and only if nobody
/// holds it and it is due: a concurrent claimer of the same head waits for this row's lock and
/// then finds it leased. Otherwise rows are locked with `SKIP LOCKED`, so claimers on several
/// nodes never wait for each other.
fn lease_sql(ordered: bool) -> String {
    if ordered {
        format!(
            "WITH head AS ({HEAD_OF_LINE})
             UPDATE deliveries d SET attempts = d.attempts + 1, lease_token = $3,
                    lease_until = {CLAIM_NOW} + $4, leased_at = {CLAIM_NOW}
             FROM head, requests r
             WHERE d.seq = head.seq AND r.seq = d.seq AND $5::bigint > 0
               AND d.status = 'pending' AND d.lease_until IS NULL AND d.next_attempt_at <= {CLAIM_NOW}
             RETURNING {CLAIMED_COLUMNS}"
        )
    } else {
        format!(
            "WITH picked AS (
                SELECT seq FROM deliveries
                WHERE tunnel = $1 AND status = 'pending' AND next_attempt_at <= {CLAIM_NOW}
                  AND lease_until IS NULL
                ORDER BY next_attempt_at, seq LIMIT $5
                FOR UPDATE SKIP LOCKED
             )
             UPDATE deliveries d SET attempts = d.attempts + 1, lease_token = $3,
                    lease_until = {CLAIM_NOW} + $4, leased_at = {CLAIM_NOW}
             FROM picked, requests r
             WHERE d.seq = picked.seq AND r.seq = d.seq
             RETURNING {CLAIMED_COLUMNS}"
        )
    }
}

/// Extend the leases named by ids `$3` and tokens `$4` (parallel arrays) to `$2` milliseconds
/// from now (`$1`: a test clock's time, `NULL`: the database's), where each is still held: pending
/// under the same token. Answers the ids renewed.
const RENEW: &str = concat!(
    "UPDATE deliveries d SET lease_until = COALESCE($1::bigint, ",
    super::conn::db_now_ms!(),
    ") + $2
     FROM unnest($3::text[], $4::bigint[]) AS held(id, token)
     WHERE d.id = held.id AND d.lease_token = held.token AND d.status = 'pending'
       AND d.lease_until IS NOT NULL
     RETURNING d.id"
);

/// A lease's length in milliseconds, capped far below overflow when added to a time.
fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis())
        .unwrap_or(i64::MAX / 4)
        .min(i64::MAX / 4)
}

/// Renew leases (see [`crate::store::Store::renew`]) in one statement; answers those not held.
pub(super) async fn renew(
    client: &deadpool_postgres::Object,
    now: Option<i64>,
    leases: Vec<Lease>,
    lease: Duration,
) -> Result<Vec<Lease>, StoreError> {
    if leases.is_empty() {
        return Ok(leases);
    }
    let lease_ms = lease_ms(lease);
    let ids: Vec<&str> = leases.iter().map(|l| l.id.as_str()).collect();
    let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
    let stmt = client.prepare_cached(RENEW).await.map_err(db_err)?;
    let rows = client
        .query(&stmt, &[&now, &lease_ms, &ids, &tokens])
        .await
        .map_err(db_err)?;
    let renewed: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    Ok(leases.into_iter().filter(|l| !renewed.contains(&l.id)).collect())
}

/// Why an expired lease was taken back, in the attempt log.
const LEASE_EXPIRED: &str =
    "no result before the lease expired (the relay stopped or lost track of the attempt)";

/// Claim due deliveries of one tunnel (see [`crate::store::Store::claim`]) in one round trip:
/// `BEGIN`, taking back expired leases, leasing, the summary of what is left ([`summary_sql`])
/// and `COMMIT` are sent together (pipelined) and answered in order. The `COMMIT` waits for the
/// WAL flush: the lease must be durable before the attempt starts. `now` is a test clock's time
/// (`None`: the database's).
pub(super) async fn claim(
    client: Exclusive,
    now: Option<i64>,
    req: &ClaimRequest,
) -> Result<ClaimBatch, StoreError> {
    let c = client.get()?;
    let token: i64 = rand::random();
    let lease_ms = lease_ms(req.lease);
    let max = req.max as i64;
    let interrupt = c.prepare_cached(&interrupt_expired_sql()).await.map_err(db_err)?;
    let lease = c.prepare_cached(&lease_sql(req.ordered)).await.map_err(db_err)?;
    let summary = c.prepare_cached(&summary_sql()).await.map_err(db_err)?;
    // Sent in this order (each request goes out when its future is first polled, and `biased`
    // polls them in order). A failed statement makes the rest fail and the COMMIT roll back, so
    // every answer is checked before anything counts; on any error the connection is closed
    // rather than returned to the pool.
    let interrupt_params: [&(dyn ToSql + Sync); 4] = [&req.tunnel, &now, &LEASE_EXPIRED, &MAX_ATTEMPT_LOG];
    let lease_params: [&(dyn ToSql + Sync); 5] = [&req.tunnel, &now, &token, &lease_ms, &max];
    let summary_params: [&(dyn ToSql + Sync); 1] = [&req.tunnel];
    let (begin, interrupted, leased, left, committed) = tokio::join!(
        biased;
        c.batch_execute("BEGIN"),
        c.query(&interrupt, &interrupt_params),
        c.query(&lease, &lease_params),
        c.query(&summary, &summary_params),
        c.batch_execute("COMMIT"),
    );
    begin.map_err(db_err)?;
    let interrupted = interrupted.map_err(db_err)?;
    let leased = leased.map_err(db_err)?;
    let left = left.map_err(db_err)?;
    committed.map_err(db_err)?;
    client.release();

    let now: i64 = interrupted
        .first()
        .map(|r| r.get(1))
        .ok_or_else(|| StoreError::Unavailable("PostgreSQL returned no row for the claim's start".into()))?;
    let mut claimed = leased
        .iter()
        .map(|row| claimed_row(row, now, token))
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|(due, seq, _)| (*due, *seq));
    let items = claimed.into_iter().map(|(_, _, c)| c).collect();

    let row = left.first().ok_or_else(|| {
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

/// Longest wait after a finished attempt that is stored, in milliseconds (a century): keeps
/// `now + after` far from overflowing.
const MAX_WAIT_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// Record an attempt's end in one statement, which is its own transaction: lock the delivery if
/// it is still pending and the report may apply (our lease, or a success, which always counts),
/// update it, log the attempt and trim the log. `$1` is the time (`NULL`: the database's `now()`).
///
/// This transaction's commit does not wait for the WAL flush (`set_config(..., true)` lasts to
/// its end; every other write of the store waits). Losing it is safe: it can be lost only if the
/// database server crashes within ~3 × wal_writer_delay and before any later flushing commit
/// (which writes out all earlier WAL too, so the claims that follow it in ordered mode never
/// outlive it). The row then reads as the claim left it, and the claim was flushed before the
/// attempt began: pending under our lease. The lease expires, the attempt is recorded as
/// interrupted and the delivery is attempted again: one redelivery (same `Ponte-Delivery-Id`),
/// which at-least-once allows. Nothing is lost, and no 202 depends on it. Waiting for a flush
/// per finished attempt capped the drain at the disk's flushes per second.
const FINISH: &str = concat!(
    "WITH t AS (SELECT COALESCE($1::bigint, ",
    super::conn::db_now_ms!(),
    ") AS now),
     no_flush_wait AS (SELECT set_config('synchronous_commit', 'off', true) AS set),
     target AS (
        SELECT seq, attempts, leased_at FROM deliveries
        WHERE id = $2 AND status = 'pending' AND (lease_token = $3 OR $4::text = 'delivered')
        FOR UPDATE
     ), changed AS (
        UPDATE deliveries d SET
            status = $5,
            finished_at = CASE WHEN $5 = 'pending' THEN d.finished_at ELSE t.now END,
            next_attempt_at = CASE WHEN $5 = 'pending' THEN t.now + $6 ELSE d.next_attempt_at END,
            attempts = CASE WHEN $4 = 'release' THEN GREATEST(d.attempts - 1, 0) ELSE d.attempts END,
            last_status = CASE WHEN $4 = 'release' THEN d.last_status ELSE $7 END,
            last_error = CASE WHEN $4 = 'release' THEN d.last_error ELSE $8 END,
            lease_token = NULL, lease_until = NULL, leased_at = NULL
        FROM target, t WHERE d.seq = target.seq
        RETURNING d.seq, target.attempts, COALESCE(target.leased_at, t.now) AS started, t.now
     ), logged AS (
        INSERT INTO attempts (seq, number, started_at, finished_at, outcome, status, error)
        SELECT seq, attempts, started, now, $9, $7, $8 FROM changed WHERE $9::text IS NOT NULL
        ON CONFLICT (seq, number) DO UPDATE SET started_at = EXCLUDED.started_at,
            finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome,
            status = EXCLUDED.status, error = EXCLUDED.error
     ), trimmed AS (
        DELETE FROM attempts a USING changed c
        WHERE $9::text IS NOT NULL AND a.seq = c.seq AND a.number <= c.attempts - $10
     )
     SELECT COUNT(*) FROM changed, no_flush_wait"
);

/// Record an attempt's end (see [`crate::store::Store::finish`] and [`FINISH`]): one round trip.
/// A concurrent claim or interruption of the same delivery is decided strictly before or after
/// (the row is locked, and re-checked on its latest version if another transaction changed it).
pub(super) async fn finish(
    client: &deadpool_postgres::Object,
    now: Option<i64>,
    lease: &Lease,
    report: &AttemptReport,
) -> Result<bool, StoreError> {
    let wait_ms = |after: &Duration| (after.as_millis().min(MAX_WAIT_MS as u128)) as i64;
    let (kind, status, wait, last_status, last_error, outcome): (
        &str,
        &str,
        i64,
        Option<u16>,
        Option<&str>,
        Option<AttemptOutcome>,
    ) = match report {
        AttemptReport::Delivered { status } => (
            "delivered",
            "delivered",
            0,
            Some(*status),
            None,
            Some(AttemptOutcome::Delivered),
        ),
        AttemptReport::Retry {
            after,
            status,
            error,
            interrupted,
        } => (
            "retry",
            "pending",
            wait_ms(after),
            *status,
            Some(error),
            Some(if *interrupted {
                AttemptOutcome::Interrupted
            } else {
                AttemptOutcome::Retry
            }),
        ),
        AttemptReport::Failed { status, error } => (
            "failed",
            "failed",
            0,
            *status,
            Some(error),
            Some(AttemptOutcome::Failed),
        ),
        AttemptReport::Release { after } => ("release", "pending", wait_ms(after), None, None, None),
    };
    let last_status = last_status.map(i32::from);
    let outcome = outcome.map(AttemptOutcome::as_str);
    let stmt = client.prepare_cached(FINISH).await.map_err(db_err)?;
    let row = client
        .query_one(
            &stmt,
            &[
                &now,
                &lease.id,
                &lease.token,
                &kind,
                &status,
                &wait,
                &last_status,
                &last_error,
                &outcome,
                &MAX_ATTEMPT_LOG,
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(row.get::<_, i64>(0) > 0)
}
