//! The read operations of the PostgreSQL store: listing and showing deliveries.

use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::ops::query;
use crate::store::record::decode_headers;
use crate::store::{
    AttemptOutcome, AttemptRecord, DeliveryDetail, DeliverySummary, HeaderEntry, ListFilter, MAX_LIST,
    QueueStats, Status, StoreError, Timestamp,
};

const SUMMARY_COLUMNS: &str = "seq, id, tunnel, method, uri, status, lease_until, attempts, body_bytes,
     received_at, next_attempt_at, finished_at, last_status, last_error";

fn summary_row(row: &Row, now: i64) -> Result<DeliverySummary, StoreError> {
    let status_text: &str = row.get(5);
    let status = Status::parse(status_text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery status `{status_text}`")))?;
    let lease_until: Option<i64> = row.get(6);
    let uri: String = row.get(4);
    let next: i64 = row.get(10);
    let finished: Option<i64> = row.get(11);
    let attempts: i32 = row.get(7);
    let last_status: Option<i32> = row.get(12);
    Ok(DeliverySummary {
        seq: row.get(0),
        id: row.get(1),
        tunnel: row.get(2),
        method: row.get(3),
        path: path_of(&uri),
        status,
        in_flight: status == Status::Pending && lease_until.is_some_and(|t| t > now),
        attempts: attempts.max(0) as u32,
        body_bytes: row.get::<_, i64>(8).max(0) as u64,
        received_at: Timestamp(row.get(9)),
        next_attempt_at: (status == Status::Pending).then_some(Timestamp(next)),
        finished_at: finished.map(Timestamp),
        last_status: last_status.and_then(|s| u16::try_from(s).ok()),
        last_error: row.get(13),
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
pub(super) async fn summary(tx: &Transaction<'_>, now: i64, id: &str) -> Result<DeliverySummary, StoreError> {
    let rows = query(
        tx,
        &format!("SELECT {SUMMARY_COLUMNS} FROM deliveries WHERE id = $1"),
        &[&id],
    )
    .await?;
    match rows.first() {
        Some(row) => summary_row(row, now),
        None => Err(StoreError::NotFound(id.to_string())),
    }
}

/// A page of deliveries, newest first. The statement names only the filters given, so each
/// combination gets a plan that uses its index.
pub(super) async fn list(
    tx: &Transaction<'_>,
    now: i64,
    filter: &ListFilter,
) -> Result<Vec<DeliverySummary>, StoreError> {
    let limit = filter.limit.clamp(1, MAX_LIST) as i64;
    let status = filter.status.map(Status::as_str);
    let mut conditions = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(tunnel) = &filter.tunnel {
        params.push(tunnel);
        conditions.push(format!("tunnel = ${}", params.len()));
    }
    if let Some(status) = &status {
        params.push(status);
        conditions.push(format!("status = ${}", params.len()));
    }
    if let Some(before) = &filter.before_seq {
        params.push(before);
        conditions.push(format!("seq < ${}", params.len()));
    }
    params.push(&limit);
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let rows = query(
        tx,
        &format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries {where_clause} ORDER BY seq DESC LIMIT ${}",
            params.len()
        ),
        &params,
    )
    .await?;
    rows.iter().map(|r| summary_row(r, now)).collect()
}

/// One delivery with its request and attempt log.
pub(super) async fn show(tx: &Transaction<'_>, now: i64, id: &str) -> Result<DeliveryDetail, StoreError> {
    let summary = summary(tx, now, id).await?;
    let rows = query(
        tx,
        "SELECT d.uri, r.headers, r.body FROM deliveries d JOIN requests r ON r.seq = d.seq WHERE d.seq = $1",
        &[&summary.seq],
    )
    .await?;
    let row = rows.first().ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    let uri: String = row.get(0);
    let headers: &[u8] = row.get(1);
    let body: Vec<u8> = row.get(2);
    let headers = decode_headers(headers)
        .map_err(|e| StoreError::Corrupt(format!("delivery {id}: {e}")))?
        .iter()
        .map(|(n, v)| HeaderEntry {
            name: n.as_str().to_string(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
        .collect();
    let attempts = query(
        tx,
        "SELECT number, started_at, finished_at, outcome, status, error FROM attempts
         WHERE seq = $1 ORDER BY number",
        &[&summary.seq],
    )
    .await?
    .iter()
    .map(|r| {
        let number: i32 = r.get(0);
        let outcome: &str = r.get(3);
        let status: Option<i32> = r.get(4);
        AttemptRecord {
            number: number.max(0) as u32,
            started_at: Timestamp(r.get(1)),
            finished_at: Timestamp(r.get(2)),
            outcome: AttemptOutcome::parse(outcome).unwrap_or(AttemptOutcome::Retry),
            status: status.and_then(|s| u16::try_from(s).ok()),
            error: r.get(5),
        }
    })
    .collect();
    Ok(DeliveryDetail {
        summary,
        uri,
        headers,
        body: body.into(),
        attempts_log: attempts,
    })
}

/// Pending (and in-flight) and failed counts per tunnel, with the oldest pending arrival, as the
/// SQLite store reports them. Both queries run on the partial indexes of pending and finished rows.
pub(super) async fn stats(tx: &Transaction<'_>, now: i64) -> Result<QueueStats, StoreError> {
    let mut stats = QueueStats::default();
    let pending = query(
        tx,
        "SELECT tunnel, COUNT(*), COUNT(*) FILTER (WHERE lease_until > $1), MIN(received_at)
         FROM deliveries WHERE status = 'pending' GROUP BY tunnel",
        &[&now],
    )
    .await?;
    for row in &pending {
        let oldest: Option<i64> = row.get(3);
        let t = stats.tunnels.entry(row.get::<_, String>(0)).or_default();
        t.pending = row.get::<_, i64>(1).max(0) as u64;
        t.in_flight = row.get::<_, i64>(2).max(0) as u64;
        t.oldest_pending = oldest.map(Timestamp);
        t.oldest_pending_age =
            oldest.map(|at| std::time::Duration::from_millis(now.saturating_sub(at).max(0) as u64));
    }
    let failed = query(
        tx,
        "SELECT tunnel, COUNT(*) FROM deliveries WHERE status = 'failed' GROUP BY tunnel",
        &[],
    )
    .await?;
    for row in &failed {
        stats.tunnels.entry(row.get::<_, String>(0)).or_default().failed = row.get::<_, i64>(1).max(0) as u64;
    }
    Ok(stats)
}
