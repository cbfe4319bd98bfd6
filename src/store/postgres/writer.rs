//! Group commit of new deliveries. One task per store takes every enqueue waiting when a batch
//! starts, commits them with one multi-row `INSERT` in one transaction (PostgreSQL's
//! `synchronous_commit` makes the `COMMIT` wait for the WAL flush), and only then answers each
//! caller. A burst of N webhooks costs about one WAL flush per batch, not one per request, and no
//! caller hears "committed" before the database has it on disk.
//!
//! Like the SQLite writer, each batch is one measurable unit: its size and its time from the
//! first statement to the commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::conn::{DB_NOW_MS, OP_TIMEOUT, db_err, pool_err};
use super::listen::notify;
use super::ops::{execute, query};
use super::{Shared, stored_bytes};
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
    pub(super) fn start(shared: Arc<Shared>) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(run(shared, rx));
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

async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
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

/// One transaction for the whole batch. Returns each job's answer (a job refused for lack of
/// room gets `Full` while the others commit), or the error that stopped the batch.
async fn commit(shared: &Shared, batch: &[Job]) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
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

    let sizes: Vec<i64> = batch.iter().map(|j| stored_bytes(&j.new)).collect();
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

    let mut ids = Vec::new();
    let mut tunnels = Vec::new();
    let mut methods = Vec::new();
    let mut uris = Vec::new();
    let mut headers = Vec::new();
    let mut bodies: Vec<&[u8]> = Vec::new();
    let mut stored = Vec::new();
    let mut answers = Vec::with_capacity(batch.len());
    for ((job, fits), size) in batch.iter().zip(&admitted).zip(&sizes) {
        if !fits {
            answers.push(Err(StoreError::Full(
                "store_max_size is reached by pending and failed deliveries".into(),
            )));
            continue;
        }
        // v7: time-ordered, so the unique index grows at its end instead of at random places.
        let id = uuid::Uuid::now_v7().to_string();
        ids.push(id.clone());
        tunnels.push(job.new.tunnel.as_str());
        methods.push(job.new.method.as_str());
        uris.push(job.new.uri.as_str());
        headers.push(encode_headers(&job.new.headers));
        bodies.push(job.new.body.as_ref());
        stored.push(*size);
        answers.push(Ok(Enqueued { id }));
    }
    if !ids.is_empty() {
        execute(
            &tx,
            "WITH new AS (
                SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::bytea[], $8::bigint[])
                    WITH ORDINALITY AS n(id, tunnel, method, uri, headers, body, stored_bytes, ord)
             ), inserted AS (
                INSERT INTO deliveries (id, tunnel, method, uri, body_bytes, stored_bytes, received_at, retry_from,
                                        status, attempts, next_attempt_at)
                SELECT id, tunnel, method, uri, octet_length(body), stored_bytes, $1, $1, 'pending', 0, $1
                FROM new ORDER BY ord
                RETURNING seq, id
             )
             INSERT INTO requests (seq, headers, body)
             SELECT inserted.seq, new.headers, new.body FROM inserted JOIN new USING (id)",
            &[&now, &ids, &tunnels, &methods, &uris, &headers, &bodies, &stored],
        )
        .await?;
        let distinct: BTreeSet<&str> = tunnels.iter().copied().collect();
        let distinct: Vec<String> = distinct.into_iter().map(String::from).collect();
        notify(&tx, &shared.instance, &distinct).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(answers)
}
