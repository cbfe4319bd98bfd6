//! The delivery lifecycle's writes in the SQLite store (enqueue, claim, renew, finish, lease recovery). Each
//! runs inside the writer's batch transaction with the batch's `now` (milliseconds, store clock).

use rusqlite::{Connection, OptionalExtension, params};

use super::db_err;
use crate::store::record::{decode_headers, encode_headers};
use crate::store::{
    AttemptOutcome, AttemptReport, ClaimBatch, ClaimRequest, Claimed, Enqueued, Lease, NewDelivery,
    StoreError,
};

/// Most attempt records kept per delivery; older ones are dropped (a flapping agent must not
/// grow one delivery's log without bound).
const MAX_ATTEMPT_LOG: i64 = 100;
/// Delivered records dropped at once to make room when the store is full.
const MAKE_ROOM_BATCH: i64 = 1000;

/// Commit a new pending delivery. When the size cap leaves no room, the oldest delivered records
/// are dropped first (pending and failed ones never are); if that frees nothing, the answer is
/// `Full`. Room is checked before writing because SQLite answers a full database by rolling back
/// the whole transaction, which would fail every other request of the batch too.
pub(super) fn enqueue(conn: &Connection, now: i64, new: &NewDelivery) -> Result<Enqueued, StoreError> {
    let headers = encode_headers(&new.headers);
    let bytes = headers.len() + new.body.len() + new.uri.len() + new.tunnel.len() + 256;
    let mut dropped = 0;
    while !has_room(conn, bytes)? {
        let freed = conn
            .prepare_cached(
                "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries
                 WHERE status = 'delivered' ORDER BY finished_at LIMIT ?1)",
            )
            .map_err(db_err)?
            .execute([MAKE_ROOM_BATCH])
            .map_err(db_err)?;
        if freed == 0 {
            return Err(StoreError::Full(
                "store_max_size is reached by pending and failed deliveries".into(),
            ));
        }
        dropped += freed;
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "store at its size cap: dropped the oldest delivered records to make room"
        );
    }
    insert(conn, now, new, &headers).map_err(db_err)
}

/// Whether `bytes` more fit under `max_page_count`, counting free pages, with slack for b-tree
/// splits of the row and its indexes.
fn has_room(conn: &Connection, bytes: usize) -> Result<bool, StoreError> {
    const SLACK_PAGES: i64 = 8;
    let pragma = |sql: &str| -> Result<i64, StoreError> {
        conn.prepare_cached(sql)
            .map_err(db_err)?
            .query_row([], |r| r.get(0))
            .map_err(db_err)
    };
    let max = pragma("PRAGMA max_page_count")?;
    let used = pragma("PRAGMA page_count")? - pragma("PRAGMA freelist_count")?;
    // Usable bytes per page leave room for page and cell headers.
    let per_page = (pragma("PRAGMA page_size")? - 128).max(256);
    let needed = bytes as i64 / per_page + 1 + SLACK_PAGES;
    Ok(max - used >= needed)
}

fn insert(conn: &Connection, now: i64, new: &NewDelivery, headers: &[u8]) -> rusqlite::Result<Enqueued> {
    // v7: time-ordered, so the unique index grows at its end instead of at random places.
    let id = uuid::Uuid::now_v7().to_string();
    conn.prepare_cached(
        "INSERT INTO deliveries (id, tunnel, method, uri, body_bytes, received_at, retry_from,
                                 status, attempts, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 'pending', 0, ?6)",
    )?
    .execute(params![
        id,
        new.tunnel,
        new.method,
        new.uri,
        new.body.len() as i64,
        now
    ])?;
    let seq = conn.last_insert_rowid();
    conn.prepare_cached("INSERT INTO requests (seq, headers, body) VALUES (?1, ?2, ?3)")?
        .execute(params![seq, headers, new.body.as_ref()])?;
    Ok(Enqueued { id })
}

/// Claim due deliveries of one tunnel (see [`crate::store::Store::claim`]).
pub(super) fn claim(conn: &Connection, now: i64, req: &ClaimRequest) -> Result<ClaimBatch, StoreError> {
    interrupt_expired(
        conn,
        now,
        Some(&req.tunnel),
        "no result before the lease expired (the relay stopped or lost track of the attempt)",
    )?;
    let candidates: Vec<i64> = if req.ordered {
        let head: Option<(i64, i64, Option<i64>)> = conn
            .prepare_cached(
                "SELECT seq, next_attempt_at, lease_until FROM deliveries
                 WHERE tunnel = ?1 AND status = 'pending' ORDER BY seq LIMIT 1",
            )
            .map_err(db_err)?
            .query_row([&req.tunnel], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db_err)?;
        match head {
            Some((seq, due, None)) if due <= now && req.max > 0 => vec![seq],
            _ => Vec::new(),
        }
    } else {
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq FROM deliveries
                 WHERE tunnel = ?1 AND status = 'pending' AND next_attempt_at <= ?2 AND lease_until IS NULL
                 ORDER BY next_attempt_at, seq LIMIT ?3",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![req.tunnel, now, req.max as i64], |r| r.get(0))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };

    let lease_until = now.saturating_add(req.lease.as_millis() as i64);
    let mut items = Vec::with_capacity(candidates.len());
    for seq in candidates {
        let token: i64 = rand::random();
        conn.prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1, lease_token = ?2, lease_until = ?3, leased_at = ?4
             WHERE seq = ?1",
        )
        .map_err(db_err)?
        .execute(params![seq, token, lease_until, now])
        .map_err(db_err)?;
        items.push(load_claimed(conn, now, seq, token)?);
    }

    let next_due: Option<i64> = if req.ordered {
        conn.prepare_cached(
            "SELECT CASE WHEN lease_until IS NULL THEN next_attempt_at ELSE NULL END FROM deliveries
             WHERE tunnel = ?1 AND status = 'pending' ORDER BY seq LIMIT 1",
        )
        .map_err(db_err)?
        .query_row([&req.tunnel], |r| r.get(0))
        .optional()
        .map_err(db_err)?
        .flatten()
    } else {
        conn.prepare_cached(
            "SELECT MIN(next_attempt_at) FROM deliveries
             WHERE tunnel = ?1 AND status = 'pending' AND lease_until IS NULL",
        )
        .map_err(db_err)?
        .query_row([&req.tunnel], |r| r.get(0))
        .map_err(db_err)?
    };
    // A live lease of another claimer becomes claimable when it expires.
    let lease_expiry: Option<i64> = conn
        .prepare_cached(
            "SELECT MIN(lease_until) FROM deliveries WHERE lease_until IS NOT NULL AND tunnel = ?1",
        )
        .map_err(db_err)?
        .query_row([&req.tunnel], |r| r.get(0))
        .map_err(db_err)?;
    let wake_at = match (next_due, lease_expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let backlog: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM deliveries WHERE tunnel = ?1 AND status = 'pending')")
        .map_err(db_err)?
        .query_row([&req.tunnel], |r| r.get(0))
        .map_err(db_err)?;
    Ok(ClaimBatch {
        items,
        next_due_in: wake_at.map(|t| std::time::Duration::from_millis((t - now).max(0) as u64)),
        backlog,
    })
}

fn load_claimed(conn: &Connection, now: i64, seq: i64, token: i64) -> Result<Claimed, StoreError> {
    let (id, attempt, retry_from, method, uri, headers, body): (
        String,
        u32,
        i64,
        String,
        String,
        Vec<u8>,
        Vec<u8>,
    ) = conn
        .prepare_cached(
            "SELECT d.id, d.attempts, d.retry_from, d.method, d.uri, r.headers, r.body
             FROM deliveries d JOIN requests r ON r.seq = d.seq WHERE d.seq = ?1",
        )
        .map_err(db_err)?
        .query_row([seq], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .map_err(db_err)?;
    let headers = decode_headers(&headers).map_err(|e| StoreError::Corrupt(format!("delivery {id}: {e}")))?;
    Ok(Claimed {
        lease: Lease { id, token },
        attempt,
        age: std::time::Duration::from_millis((now - retry_from).max(0) as u64),
        method,
        uri,
        headers,
        body: body.into(),
    })
}

/// Take back leases that expired (of one tunnel, or all), recording their attempt as
/// interrupted. Returns how many.
pub(super) fn interrupt_expired(
    conn: &Connection,
    now: i64,
    tunnel: Option<&str>,
    why: &str,
) -> Result<u64, StoreError> {
    let expired: Vec<(i64, i64, Option<i64>)> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, attempts, leased_at FROM deliveries
                 WHERE lease_until IS NOT NULL AND lease_until <= ?1 AND (?2 IS NULL OR tunnel = ?2)",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![now, tunnel], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    for (seq, attempts, leased_at) in &expired {
        record_attempt(
            conn,
            *seq,
            *attempts,
            leased_at.unwrap_or(now),
            now,
            AttemptOutcome::Interrupted,
            None,
            Some(why),
        )?;
        conn.prepare_cached(
            "UPDATE deliveries SET lease_token = NULL, lease_until = NULL, leased_at = NULL,
                    last_error = ?2 WHERE seq = ?1",
        )
        .map_err(db_err)?
        .execute(params![seq, why])
        .map_err(db_err)?;
    }
    Ok(expired.len() as u64)
}

/// Release every lease at once: only valid when no other process can hold one (the SQLite store
/// holds an exclusive lock on its file).
pub(super) fn release_all_leases(conn: &Connection, now: i64) -> Result<u64, StoreError> {
    conn.execute(
        "UPDATE deliveries SET lease_until = ?1 WHERE lease_until IS NOT NULL",
        [now],
    )
    .map_err(db_err)?;
    interrupt_expired(
        conn,
        now,
        None,
        "the relay stopped during this attempt (it is retried after the restart)",
    )
}

/// Extend each held lease to `now + lease_ms` (see [`crate::store::Store::renew`]); answers the
/// leases no longer held.
pub(super) fn renew(
    conn: &Connection,
    now: i64,
    leases: &[Lease],
    lease_ms: i64,
) -> Result<Vec<Lease>, StoreError> {
    let mut renew = conn
        .prepare_cached(
            "UPDATE deliveries SET lease_until = ?1
             WHERE id = ?2 AND lease_token = ?3 AND status = 'pending' AND lease_until IS NOT NULL",
        )
        .map_err(db_err)?;
    let mut lost = Vec::new();
    for lease in leases {
        let changed = renew
            .execute(params![now.saturating_add(lease_ms), lease.id, lease.token])
            .map_err(db_err)?;
        if changed == 0 {
            lost.push(lease.clone());
        }
    }
    Ok(lost)
}

#[allow(clippy::too_many_arguments)]
fn record_attempt(
    conn: &Connection,
    seq: i64,
    number: i64,
    started_at: i64,
    finished_at: i64,
    outcome: AttemptOutcome,
    status: Option<u16>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO attempts (seq, number, started_at, finished_at, outcome, status, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(db_err)?
    .execute(params![
        seq,
        number,
        started_at,
        finished_at,
        outcome.as_str(),
        status,
        error
    ])
    .map_err(db_err)?;
    if number > MAX_ATTEMPT_LOG {
        conn.prepare_cached("DELETE FROM attempts WHERE seq = ?1 AND number <= ?2")
            .map_err(db_err)?
            .execute(params![seq, number - MAX_ATTEMPT_LOG])
            .map_err(db_err)?;
    }
    Ok(())
}

/// Record an attempt's end (see [`crate::store::Store::finish`]).
pub(super) fn finish(
    conn: &Connection,
    now: i64,
    lease: &Lease,
    report: &AttemptReport,
) -> Result<bool, StoreError> {
    /// The columns `finish` decides on.
    struct Row {
        seq: i64,
        attempts: i64,
        leased_at: Option<i64>,
        status: String,
        token: Option<i64>,
    }
    let row = conn
        .prepare_cached("SELECT seq, attempts, leased_at, status, lease_token FROM deliveries WHERE id = ?1")
        .map_err(db_err)?
        .query_row([&lease.id], |r| {
            Ok(Row {
                seq: r.get(0)?,
                attempts: r.get(1)?,
                leased_at: r.get(2)?,
                status: r.get(3)?,
                token: r.get(4)?,
            })
        })
        .optional()
        .map_err(db_err)?;
    let Some(Row {
        seq,
        attempts,
        leased_at,
        status,
        token,
    }) = row
    else {
        return Ok(false);
    };
    let ours = token == Some(lease.token);
    let delivered = matches!(report, AttemptReport::Delivered { .. });
    if status != "pending" || (!ours && !delivered) {
        return Ok(false);
    }
    let started = leased_at.unwrap_or(now);
    match report {
        AttemptReport::Delivered { status } => {
            conn.prepare_cached(
                "UPDATE deliveries SET status = 'delivered', finished_at = ?2, last_status = ?3, last_error = NULL,
                        lease_token = NULL, lease_until = NULL, leased_at = NULL WHERE seq = ?1",
            )
            .map_err(db_err)?
            .execute(params![seq, now, status])
            .map_err(db_err)?;
            record_attempt(
                conn,
                seq,
                attempts,
                started,
                now,
                AttemptOutcome::Delivered,
                Some(*status),
                None,
            )?;
        }
        AttemptReport::Retry {
            after,
            status,
            error,
            interrupted,
        } => {
            let due = now.saturating_add(after.as_millis() as i64);
            conn.prepare_cached(
                "UPDATE deliveries SET next_attempt_at = ?2, last_status = ?3, last_error = ?4,
                        lease_token = NULL, lease_until = NULL, leased_at = NULL WHERE seq = ?1",
            )
            .map_err(db_err)?
            .execute(params![seq, due, status, error])
            .map_err(db_err)?;
            let outcome = if *interrupted {
                AttemptOutcome::Interrupted
            } else {
                AttemptOutcome::Retry
            };
            record_attempt(conn, seq, attempts, started, now, outcome, *status, Some(error))?;
        }
        AttemptReport::Failed { status, error } => {
            conn.prepare_cached(
                "UPDATE deliveries SET status = 'failed', finished_at = ?2, last_status = ?3, last_error = ?4,
                        lease_token = NULL, lease_until = NULL, leased_at = NULL WHERE seq = ?1",
            )
            .map_err(db_err)?
            .execute(params![seq, now, status, error])
            .map_err(db_err)?;
            record_attempt(
                conn,
                seq,
                attempts,
                started,
                now,
                AttemptOutcome::Failed,
                *status,
                Some(error),
            )?;
        }
        AttemptReport::Release { after } => {
            let due = now.saturating_add(after.as_millis() as i64);
            conn.prepare_cached(
                "UPDATE deliveries SET attempts = MAX(attempts - 1, 0), next_attempt_at = ?2,
                        lease_token = NULL, lease_until = NULL, leased_at = NULL WHERE seq = ?1",
            )
            .map_err(db_err)?
            .execute(params![seq, due])
            .map_err(db_err)?;
        }
    }
    Ok(true)
}
