//! Group commit of new deliveries. One task per store takes every enqueue waiting when a batch
//! starts, commits them with one multi-row `INSERT` in one transaction (`synchronous_commit=on`
//! makes the `COMMIT` wait for the WAL flush), and only then answers each caller. A burst of N
//! webhooks costs about one WAL flush per batch, not one per request, and no caller hears
//! "committed" before the database has it on disk.
//!
//! The usual batch is one network round trip: `BEGIN`, the `INSERT` (which itself keeps to the
//! room left under `store_max_size`), the `NOTIFY` and the `COMMIT` are sent together
//! (pipelined). Only deliveries that did not fit take a second, slower transaction that drops
//! delivered records to make room.
//!
//! Like the SQLite writer, each batch is one measurable unit: its size and its time from the
//! first statement to the commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::conn::{DB_NOW_MS, Exclusive, OP_TIMEOUT, db_err, db_now_ms, pool_err};
use super::listen::{CHANNEL, NOTIFY, notify};
use super::ops::{execute, query};
use super::{Shared, stored_bytes};
use crate::store::metrics::StoreMetrics;
use crate::store::record::encode_headers;
use crate::store::{Enqueued, NewDelivery, StoreError};

/// Most deliveries in one transaction.
const MAX_BATCH: usize = 512;
/// Request bytes in one batch past which no more are added (one statement carries them all).
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Enqueues that may wait for the writer; callers beyond this wait for room (back-pressure).
const CHANNEL_CAPACITY: usize = 4096;
/// Delivered records dropped at once to make room when the store is at its size cap.
const MAKE_ROOM_BATCH: i64 = 1000;

struct Job {
    new: NewDelivery,
    reply: oneshot::Sender<Result<Enqueued, StoreError>>,
}

/// Handle to the writer task; it ends when every handle is dropped.
pub(super) struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    pub(super) fn start(shared: Arc<Shared>, metrics: Option<StoreMetrics>) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(run(shared, rx, metrics));
        Writer { tx }
    }

    /// Commit `new` in the next batch.
    pub(super) async fn enqueue(&self, new: NewDelivery) -> Result<Enqueued, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { new, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store writer stopped (see the earlier log lines)".into())
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>, metrics: Option<StoreMetrics>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.new.body.len();
        batch.push(first);
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job.new.body.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let outcome = match tokio::time::timeout(OP_TIMEOUT, commit(&shared, &batch)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL did not commit within {}s",
                OP_TIMEOUT.as_secs()
            ))),
        };
        if let Some(m) = &metrics {
            m.commit_seconds.observe(started.elapsed().as_secs_f64());
            m.batch_size.observe(batch.len() as f64);
        }
        tracing::trace!(jobs = batch.len(), elapsed = ?started.elapsed(), ok = outcome.is_ok(), "store batch");
        match outcome {
            Ok(answers) => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    // The caller may have gone away; the data is committed regardless.
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = batch.len(), "store batch not committed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!("store writer stopped");
}

/// Commit the batch: the pipelined fast path, then the room-making path for whatever did not fit.
async fn commit(shared: &Shared, batch: &[Job]) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
    let news: Vec<&NewDelivery> = batch.iter().map(|j| &j.new).collect();
    let mut answers = commit_fast(shared, &news).await?;
    let left: Vec<usize> = (0..answers.len()).filter(|&i| answers[i].is_none()).collect();
    if !left.is_empty() {
        let slow: Vec<&NewDelivery> = left.iter().map(|&i| news[i]).collect();
        for (i, answer) in left.into_iter().zip(commit_making_room(shared, &slow).await?) {
            answers[i] = Some(answer);
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "internal: a delivery was not committed".into(),
                ))
            })
        })
        .collect())
}

/// The columns of a batch, as arrays for `unnest`.
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<String>,
    tunnels: Vec<&'a str>,
    methods: Vec<&'a str>,
    uris: Vec<&'a str>,
    headers: Vec<Vec<u8>>,
    bodies: Vec<&'a [u8]>,
    stored: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, new: &'a NewDelivery) -> String {
        // v7: time-ordered, so the unique index grows at its end instead of at random places.
        let id = uuid::Uuid::now_v7().to_string();
        self.ids.push(id.clone());
        self.tunnels.push(&new.tunnel);
        self.methods.push(&new.method);
        self.uris.push(&new.uri);
        self.headers.push(encode_headers(&new.headers));
        self.bodies.push(&new.body);
        self.stored.push(stored_bytes(new));
        id
    }

    fn distinct_tunnels(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.tunnels.iter().copied().collect();
        set.into_iter().map(String::from).collect()
    }
}

/// Insert the batch's rows and return the ids inserted. `$1` is the time (`NULL`: the database's
/// `now()`), `$2`..`$8` the columns as arrays, `$9` the cap: when set, only the longest run of
/// the batch, in arrival order, that fits in the room left is inserted.
const INSERT: &str = concat!(
    "WITH t AS (SELECT COALESCE($1::bigint, ",
    db_now_ms!(),
    ") AS now),
     new AS (
        SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::bytea[], $8::bigint[])
            WITH ORDINALITY AS n(id, tunnel, method, uri, headers, body, stored_bytes, ord)
     ), fitting AS (
        SELECT * FROM (
            SELECT new.*, SUM(stored_bytes) OVER (ORDER BY ord) AS running FROM new
        ) r
        WHERE $9::bigint IS NULL
           OR running + (SELECT COALESCE(SUM(bytes), 0) FROM store_usage) <= $9::bigint
     ), inserted AS (
        INSERT INTO deliveries (id, tunnel, method, uri, body_bytes, stored_bytes, received_at, retry_from,
                                status, attempts, next_attempt_at)
        SELECT id, tunnel, method, uri, octet_length(body), stored_bytes, t.now, t.now, 'pending', 0, t.now
        FROM fitting, t ORDER BY ord
        RETURNING seq, id
     ), requests_inserted AS (
        INSERT INTO requests (seq, headers, body)
        SELECT inserted.seq, new.headers, new.body FROM inserted JOIN new USING (id)
     )
     SELECT id FROM inserted"
);

/// One round trip: `BEGIN`, insert what fits, `NOTIFY`, `COMMIT`. Returns an answer for each
/// delivery committed, `None` for those that did not fit.
async fn commit_fast(
    shared: &Shared,
    news: &[&NewDelivery],
) -> Result<Vec<Option<Result<Enqueued, StoreError>>>, StoreError> {
    let mut cols = Columns::default();
    for new in news {
        cols.push(new);
    }
    let now = shared.time.test_now();
    let client = Exclusive::new(shared.pool.get().await.map_err(pool_err)?);
    let c = client.get()?;
    let insert = c.prepare_cached(INSERT).await.map_err(db_err)?;
    let notify_stmt = c.prepare_cached(NOTIFY).await.map_err(db_err)?;
    let tunnels = cols.distinct_tunnels();
    let instance = shared.instance.as_str();
    let insert_params: [&(dyn ToSql + Sync); 9] = [
        &now,
        &cols.ids,
        &cols.tunnels,
        &cols.methods,
        &cols.uris,
        &cols.headers,
        &cols.bodies,
        &cols.stored,
        &shared.max_bytes,
    ];
    let notify_params: [&(dyn ToSql + Sync); 3] = [&CHANNEL, &instance, &tunnels];
    // Sent together (each request goes out when its future is first polled, and `biased` polls
    // them in this order), answered in order. A failed statement makes the rest of the
    // transaction fail and its COMMIT roll back, so every answer is checked before anything counts.
    let (begin, inserted, notified, committed) = tokio::join!(
        biased;
        c.batch_execute("BEGIN"),
        c.query(&insert, &insert_params),
        c.execute(&notify_stmt, &notify_params),
        c.batch_execute("COMMIT"),
    );
    begin.map_err(db_err)?;
    let inserted = inserted.map_err(db_err)?;
    notified.map_err(db_err)?;
    committed.map_err(db_err)?;
    client.release();
    let done: std::collections::HashSet<String> = inserted.iter().map(|r| r.get(0)).collect();
    Ok(cols
        .ids
        .into_iter()
        .map(|id| done.contains(&id).then_some(Ok(Enqueued { id })))
        .collect())
}

/// At the size cap: one transaction that drops the oldest delivered records until the batch fits
/// (or nothing more can go), then commits what fits. The rest is refused with `Full`.
async fn commit_making_room(
    shared: &Shared,
    batch: &[&NewDelivery],
) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
    let mut client = shared.pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(db_err)?;
    let head = query(
        &tx,
        &format!("SELECT {DB_NOW_MS}, (SELECT COALESCE(SUM(bytes), 0)::bigint FROM store_usage)"),
        &[],
    )
    .await?;
    let row = head
        .first()
        .ok_or_else(|| StoreError::Unavailable("PostgreSQL returned no row for the batch's start".into()))?;
    let now = shared.time.resolve(row.get(0));
    let mut used: i64 = row.get(1);

    let sizes: Vec<i64> = batch.iter().map(|new| stored_bytes(new)).collect();
    let mut admitted = vec![true; batch.len()];
    if let Some(max) = shared.max_bytes {
        let needed: i64 = sizes.iter().sum();
        let mut dropped = 0;
        while used.saturating_add(needed) > max {
            let freed = execute(
                &tx,
                "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries
                 WHERE status = 'delivered' ORDER BY finished_at LIMIT $1)",
                &[&MAKE_ROOM_BATCH],
            )
            .await?;
            if freed == 0 {
                break;
            }
            dropped += freed;
            used = query(
                &tx,
                "SELECT COALESCE(SUM(bytes), 0)::bigint FROM store_usage",
                &[],
            )
            .await?
            .first()
            .map(|r| r.get(0))
            .unwrap_or(used);
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "store at its size cap: dropped the oldest delivered records to make room"
            );
        }
        // Whatever still does not fit is refused, in arrival order.
        for (fits, size) in admitted.iter_mut().zip(&sizes) {
            *fits = used.saturating_add(*size) <= max;
            if *fits {
                used += size;
            }
        }
    }

    let mut cols = Columns::default();
    let mut answers = Vec::with_capacity(batch.len());
    for (new, fits) in batch.iter().zip(&admitted) {
        answers.push(if *fits {
            Ok(Enqueued { id: cols.push(new) })
        } else {
            Err(StoreError::Full(
                "store_max_size is reached by pending and failed deliveries".into(),
            ))
        });
    }
    if !cols.ids.is_empty() {
        execute(
            &tx,
            INSERT,
            &[
                &Some(now),
                &cols.ids,
                &cols.tunnels,
                &cols.methods,
                &cols.uris,
                &cols.headers,
                &cols.bodies,
                &cols.stored,
                &None::<i64>,
            ],
        )
        .await?;
        notify(&tx, &shared.instance, &cols.distinct_tunnels()).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(answers)
}
