//! Group commit. One thread owns the write connection and drains a channel of jobs: every job
//! that is waiting when a batch starts runs inside one transaction (each in its own savepoint, so
//! one job's failure does not undo the others), the batch is committed with one fsync, and only
//! then is each caller answered. A burst of N webhooks therefore costs about one fsync per batch,
//! not one per request, and no caller hears "committed" before its data is on disk.
//!
//! Reads use a separate connection (WAL lets readers run beside the writer) on tokio's blocking
//! pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::db_err;
use crate::store::{Clock, StoreError, StoreMetrics};

/// Most jobs in one transaction: bounds the time one batch holds the writer (and its memory).
const MAX_BATCH: usize = 512;
/// Jobs that may wait for the writer; senders beyond this wait for room (back-pressure).
const CHANNEL_CAPACITY: usize = 4096;
/// How often the WAL is copied back into the database file. This runs on its own connection
/// and thread (a passive checkpoint never blocks the writer), so a burst of commits never waits
/// behind a checkpoint's extra fsyncs.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// One unit of work inside a batch.
trait Job: Send {
    /// Run inside the batch's transaction. An error means the job's savepoint must be rolled back.
    fn run(&mut self, conn: &Connection, now: i64) -> Result<(), StoreError>;
    /// Answer the caller once the batch's fate is known.
    fn reply(self: Box<Self>, commit: &Result<(), StoreError>);
}

struct TypedJob<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&Connection, i64) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, now: i64) -> Result<(), StoreError> {
        let result = match self.work.take() {
            Some(work) => work(conn, now),
            None => Err(StoreError::Unavailable("internal: a store job ran twice".into())),
        };
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        };
        self.result = Some(result);
        outcome
    }

    fn reply(self: Box<Self>, commit: &Result<(), StoreError>) {
        let this = *self;
        let answer = match (commit, this.result) {
            // The job's own error is the most precise answer, committed or not.
            (_, Some(Err(own))) => Err(own),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Err(e), _) => Err(e.clone()),
            (Ok(()), None) => Err(StoreError::Unavailable(
                "internal: a store job was not run".into(),
            )),
        };
        // The caller may have gone away (sender disconnected); the data is committed regardless.
        let _ = this.reply.send(answer);
    }
}

/// Handle to the writer thread. Dropping every handle lets the thread finish its queue and exit.
#[derive(Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Start the writer thread on `conn`.
    pub(super) fn start(
        conn: Connection,
        clock: Arc<dyn Clock>,
        metrics: Option<StoreMetrics>,
        lock: Arc<std::fs::File>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("ponte-store-writer".into())
            .spawn(move || {
                run(conn, rx, clock, metrics);
                // The file is free for another relay only once this connection is closed.
                drop(lock);
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer thread: {e}")))?;
        Ok(Writer { tx })
    }

    /// Run `work` in the next batch and return its result once the batch is committed.
    pub(super) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = TypedJob {
            work: Some(work),
            result: None,
            reply,
        };
        self.tx.send(Box::new(job)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store writer stopped (see the earlier log lines)".into())
}

fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    clock: Arc<dyn Clock>,
    metrics: Option<StoreMetrics>,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let commit = run_batch(&conn, &mut batch, clock.now_ms());
        if let Some(m) = &metrics {
            m.commit_seconds.observe(started.elapsed().as_secs_f64());
            m.batch_size.observe(batch.len() as f64);
        }
        if let Err(e) = &commit {
            tracing::warn!(error = %e, jobs = batch.len(), "store batch not committed");
        }
        for job in batch.drain(..) {
            job.reply(&commit);
        }
    }
    tracing::debug!("store writer stopped");
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>], now: i64) -> Result<(), StoreError> {
    exec(conn, "BEGIN IMMEDIATE").map_err(db_err)?;
    for job in batch.iter_mut() {
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            rollback(conn);
            return Err(db_err(e));
        }
        let outcome = job.run(conn, now);
        // Some errors (SQLITE_FULL, I/O errors) roll the whole transaction back on their own.
        // Carrying on would start a fresh implicit transaction and report the earlier jobs as
        // committed: fail the batch instead, with the cause.
        if conn.is_autocommit() {
            return Err(match outcome {
                Err(e @ (StoreError::Full(_) | StoreError::Corrupt(_))) => e,
                _ => StoreError::Unavailable("the store rolled the transaction back after an error".into()),
            });
        }
        let end = match outcome {
            Ok(()) => exec(conn, "RELEASE job"),
            Err(_) => exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job")),
        };
        if let Err(e) = end {
            rollback(conn);
            return Err(db_err(e));
        }
    }
    match exec(conn, "COMMIT") {
        Ok(()) => Ok(()),
        Err(e) => {
            rollback(conn);
            Err(db_err(e))
        }
    }
}

/// Run one transaction-control statement, prepared once: they run several times per request.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// The read connection, used from tokio's blocking pool.
#[derive(Clone)]
pub(super) struct Reader {
    conn: Arc<Mutex<Connection>>,
    clock: Arc<dyn Clock>,
}

impl Reader {
    pub(super) fn new(conn: Connection, clock: Arc<dyn Clock>) -> Self {
        Reader {
            conn: Arc::new(Mutex::new(conn)),
            clock,
        }
    }

    /// Run a read-only `work` off the async threads.
    pub(super) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let now = self.clock.now_ms();
        tokio::task::spawn_blocking(move || {
            // A panic in an earlier read cannot leave a connection half-changed: keep using it.
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            work(&conn, now)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a store read failed: {e}")))?
    }
}

/// Copies the WAL back into the database file in the background; stops when dropped.
pub(super) struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Checkpointer {
    /// Start checkpointing on `conn`. The writer's connection must have automatic checkpoints
    /// turned off, or it would still do them itself.
    pub(super) fn start(conn: Connection, lock: Arc<std::fs::File>) -> Result<Self, StoreError> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("ponte-store-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::debug!(error = %e, "store checkpoint failed; will try again");
                    }
                }
                drop(conn);
                drop(lock);
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store checkpoint thread: {e}")))?;
        Ok(Checkpointer { _stop: stop })
    }
}
