//! The read operations of the SQLite store: listing and showing deliveries, and the queue's
//! counts per tunnel.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::db_err;
use crate::store::record::decode_headers;
use crate::store::{
    AttemptOutcome, AttemptRecord, DeliveryDetail, DeliverySummary, HeaderEntry, ListFilter, MAX_LIST,
    QueueStats, Status, StoreError, Timestamp,
};

const SUMMARY_COLUMNS: &str = "seq, id, tunnel, method, uri, status, lease_until, attempts, body_bytes,
     received_at, next_attempt_at, finished_at, last_status, last_error";

fn summary_row(row: &Row<'_>, now: i64) -> rusqlite::Result<DeliverySummary> {
    let status_text: String = row.get(5)?;
    let status = Status::parse(&status_text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, "unknown status".into())
    })?;
    let lease_until: Option<i64> = row.get(6)?;
    let uri: String = row.get(4)?;
    let next: i64 = row.get(10)?;
    let finished: Option<i64> = row.get(11)?;
    Ok(DeliverySummary {
        seq: row.get(0)?,
        id: row.get(1)?,
        tunnel: row.get(2)?,
        method: row.get(3)?,
        path: path_of(&uri),
        status,
        in_flight: status == Status::Pending && lease_until.is_some_and(|t| t > now),
        attempts: row.get(7)?,
        body_bytes: row.get::<_, i64>(8)?.max(0) as u64,
        received_at: Timestamp(row.get(9)?),
        next_attempt_at: (status == Status::Pending).then_some(Timestamp(next)),
        finished_at: finished.map(Timestamp),
        last_status: row.get(12)?,
        last_error: row.get(13)?,
    })
}

/// The path and query of a stored tunnel URI.
fn path_of(uri: &str) -> String {
    match uri.parse::<http::Uri>() {
        Ok(u) => u
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into()),
        Err(_) => uri.to_string(),
    }
}

/// One delivery's summary.
pub(super) fn summary(conn: &Connection, now: i64, id: &str) -> Result<DeliverySummary, StoreError> {
    conn.prepare_cached(&format!("SELECT {SUMMARY_COLUMNS} FROM deliveries WHERE id = ?1"))
        .map_err(db_err)?
        .query_row([id], |r| summary_row(r, now))
        .optional()
        .map_err(db_err)?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))
}

/// A page of deliveries, newest first.
pub(super) fn list(
    conn: &Connection,
    now: i64,
    filter: &ListFilter,
) -> Result<Vec<DeliverySummary>, StoreError> {
    let limit = filter.limit.clamp(1, MAX_LIST) as i64;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries
             WHERE (?1 IS NULL OR tunnel = ?1) AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR seq < ?3)
             ORDER BY seq DESC LIMIT ?4"
        ))
        .map_err(db_err)?;
    let rows = stmt
        .query_map(
            params![
                filter.tunnel,
                filter.status.map(Status::as_str),
                filter.before_seq,
                limit
            ],
            |r| summary_row(r, now),
        )
        .map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}

/// One delivery with its request and attempt log.
pub(super) fn show(conn: &Connection, now: i64, id: &str) -> Result<DeliveryDetail, StoreError> {
    let summary = summary(conn, now, id)?;
    let (uri, headers, body): (String, Vec<u8>, Vec<u8>) = conn
        .prepare_cached(
            "SELECT d.uri, r.headers, r.body FROM deliveries d JOIN requests r ON r.seq = d.seq WHERE d.seq = ?1",
        )
        .map_err(db_err)?
        .query_row([summary.seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(db_err)?;
    let headers = decode_headers(&headers)
        .map_err(|e| StoreError::Corrupt(format!("delivery {id}: {e}")))?
        .iter()
        .map(|(n, v)| HeaderEntry {
            name: n.as_str().to_string(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
        .collect();
    let mut stmt = conn
        .prepare_cached(
            "SELECT number, started_at, finished_at, outcome, status, error FROM attempts
             WHERE seq = ?1 ORDER BY number",
        )
        .map_err(db_err)?;
    let attempts = stmt
        .query_map([summary.seq], |r| {
            let outcome: String = r.get(3)?;
            Ok(AttemptRecord {
                number: r.get(0)?,
                started_at: Timestamp(r.get(1)?),
                finished_at: Timestamp(r.get(2)?),
                outcome: AttemptOutcome::parse(&outcome).unwrap_or(AttemptOutcome::Retry),
                status: r.get(4)?,
                error: r.get(5)?,
            })
        })
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    Ok(DeliveryDetail {
        summary,
        uri,
        headers,
        body: body.into(),
        attempts_log: attempts,
    })
}

/// Pending (and in-flight) and failed counts per tunnel, with the oldest pending arrival. Both
/// queries run on the partial indexes of pending and finished rows, so their cost follows the
/// backlog, not the delivered history.
pub(super) fn stats(conn: &Connection, now: i64) -> Result<QueueStats, StoreError> {
    let mut stats = QueueStats::default();
    let mut pending = conn
        .prepare_cached(
            "SELECT tunnel, COUNT(*), SUM(CASE WHEN lease_until > ?1 THEN 1 ELSE 0 END), MIN(received_at)
             FROM deliveries WHERE status = 'pending' GROUP BY tunnel",
        )
        .map_err(db_err)?;
    let rows = pending
        .query_map([now], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (tunnel, count, in_flight, oldest) = row.map_err(db_err)?;
        let t = stats.tunnels.entry(tunnel).or_default();
        t.pending = count.max(0) as u64;
        t.in_flight = in_flight.unwrap_or(0).max(0) as u64;
        t.oldest_pending = oldest.map(Timestamp);
        t.oldest_pending_age =
            oldest.map(|at| std::time::Duration::from_millis(now.saturating_sub(at).max(0) as u64));
    }
    let mut failed = conn
        .prepare_cached("SELECT tunnel, COUNT(*) FROM deliveries WHERE status = 'failed' GROUP BY tunnel")
        .map_err(db_err)?;
    let rows = failed
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(db_err)?;
    for row in rows {
        let (tunnel, count) = row.map_err(db_err)?;
        stats.tunnels.entry(tunnel).or_default().failed = count.max(0) as u64;
    }
    Ok(stats)
}
