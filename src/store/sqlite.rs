//! The embedded SQLite store: one file (plus its `-wal` and `-shm`), written by one thread with
//! group commit ([`writer`]), read beside it, migrated at start ([`schema`]).
//!
//! A SQLite store serves one relay process. It holds an exclusive lock on `<file>-lock` for its
//! whole life; that is what makes it safe to take back every lease at start: whoever held them
//! is gone. (Several relays on one database is what the PostgreSQL backend is for.)

mod ops;
mod queries;
mod schema;
mod upkeep;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::ErrorCode;

use self::writer::{Checkpointer, Reader, Writer};
use super::{
    AttemptReport, ClaimBatch, ClaimRequest, Clock, DeliveryDetail, DeliverySummary, Enqueued, Lease,
    ListFilter, NewDelivery, OpenOptions, PurgeFilter, QueueStats, Retention, Store, StoreError, StoreFuture,
};

/// The SQLite backend of [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    reader: Reader,
    _checkpointer: Checkpointer,
    /// Held open for the exclusive lock; released when the store is dropped.
    _lock: Arc<std::fs::File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating if needed) the store file, migrate it, and take back the leases a previous
    /// process left. Blocking: call from a blocking context.
    pub fn open(path: &Path, options: OpenOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!(
                    "{}: cannot create the store's directory ({e}); create it and let the relay's user write it",
                    dir.display()
                ))
            })?;
        }
        create_private(path)?;
        // Held by the store and both its threads: released when the last of them has closed its
        // connection, so a relay opened next never meets a connection still closing.
        let lock = Arc::new(take_lock(path)?);
        let clock: Arc<dyn Clock> = options.clock.clone();
        let mut conn = schema::open_connection(path, options.max_bytes)?;
        schema::migrate(&mut conn)?;
        let released = {
            let tx = conn.transaction().map_err(db_err)?;
            let n = ops::release_all_leases(&tx, clock.now_ms())?;
            tx.commit().map_err(db_err)?;
            n
        };
        if released > 0 {
            tracing::info!(
                released,
                "deliveries that were in flight when the relay stopped are pending again"
            );
        }
        let read_conn = schema::open_connection(path, None)?;
        read_conn
            .execute_batch("PRAGMA query_only = ON")
            .map_err(db_err)?;
        // Checkpoints run on their own connection (see `writer::Checkpointer`).
        conn.query_row("PRAGMA wal_autocheckpoint = 0", [], |_| Ok(()))
            .map_err(db_err)?;
        let checkpointer = Checkpointer::start(schema::open_connection(path, None)?, lock.clone())?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Writer::start(conn, clock.clone(), options.metrics, lock.clone())?,
            reader: Reader::new(read_conn, clock),
            _checkpointer: checkpointer,
            _lock: lock,
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Create the file readable by its owner only: it holds request bodies and headers, which may
/// carry credentials. SQLite gives the `-wal` and `-shm` files the same permissions.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut open = std::fs::OpenOptions::new();
    open.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    open.open(path).map(drop).map_err(|e| {
        StoreError::Unavailable(format!(
            "{}: cannot create the store file ({e}); check the path and that the relay's user may write there",
            path.display()
        ))
    })
}

fn take_lock(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push("-lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "{}: cannot create the store's lock file ({e})",
                Path::new(&lock_path).display()
            ))
        })?;
    // A store closed a moment ago (a relay restarted in the same process) frees the file once its
    // threads have closed their connections: wait that long before calling it another relay's.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return lock_outcome(other, file, path),
        }
    }
}

/// How long opening waits for a store that is still closing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn lock_outcome(
    outcome: Result<(), std::fs::TryLockError>,
    file: std::fs::File,
    path: &Path,
) -> Result<std::fs::File, StoreError> {
    match outcome {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(path.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "{}: cannot lock the store ({e})",
            path.display()
        ))),
    }
}

/// Classify a SQLite error for callers.
pub(super) fn db_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full(
            "no space left for the store: the disk is full or store_max_size is reached".into(),
        ),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl Store for SqliteStore {
    fn enqueue(&self, new: NewDelivery) -> StoreFuture<'_, Enqueued> {
        Box::pin(self.writer.run(move |c, now| ops::enqueue(c, now, &new)))
    }

    fn claim(&self, request: ClaimRequest) -> StoreFuture<'_, ClaimBatch> {
        Box::pin(self.writer.run(move |c, now| ops::claim(c, now, &request)))
    }

    fn finish(&self, lease: Lease, report: AttemptReport) -> StoreFuture<'_, bool> {
        Box::pin(
            self.writer
                .run(move |c, now| ops::finish(c, now, &lease, &report)),
        )
    }

    fn renew(&self, leases: Vec<Lease>, lease: Duration) -> StoreFuture<'_, Vec<Lease>> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        Box::pin(
            self.writer
                .run(move |c, now| ops::renew(c, now, &leases, lease_ms)),
        )
    }

    fn wake(&self, tunnel: String) -> StoreFuture<'_, u64> {
        Box::pin(self.writer.run(move |c, now| upkeep::wake(c, now, &tunnel)))
    }

    fn list(&self, filter: ListFilter) -> StoreFuture<'_, Vec<DeliverySummary>> {
        Box::pin(self.reader.run(move |c, now| queries::list(c, now, &filter)))
    }

    fn show(&self, id: String) -> StoreFuture<'_, DeliveryDetail> {
        Box::pin(self.reader.run(move |c, now| queries::show(c, now, &id)))
    }

    fn stats(&self) -> StoreFuture<'_, QueueStats> {
        Box::pin(self.reader.run(queries::stats))
    }

    fn replay(&self, id: String) -> StoreFuture<'_, DeliverySummary> {
        Box::pin(self.writer.run(move |c, now| upkeep::replay(c, now, &id)))
    }

    fn replay_failed(&self, tunnel: Option<String>) -> StoreFuture<'_, u64> {
        Box::pin(
            self.writer
                .run(move |c, now| upkeep::replay_failed(c, now, tunnel.as_deref())),
        )
    }

    fn purge(&self, filter: PurgeFilter) -> StoreFuture<'_, u64> {
        Box::pin(super::delete_in_chunks(move || {
            let f = filter.clone();
            self.writer.run(move |c, now| upkeep::purge_chunk(c, now, &f))
        }))
    }

    fn prune(&self, retention: Retention) -> StoreFuture<'_, u64> {
        Box::pin(super::delete_in_chunks(move || {
            self.writer
                .run(move |c, now| upkeep::prune_chunk(c, now, &retention))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ManualClock;

    #[tokio::test]
    async fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        crate::store::conformance::run(|clock: Arc<ManualClock>| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = dir.path().join(format!("store-{n}.db"));
            let store = SqliteStore::open(
                &path,
                OpenOptions {
                    max_bytes: None,
                    clock,
                    metrics: None,
                },
            )
            .unwrap();
            Arc::new(store) as Arc<dyn Store>
        })
        .await;
    }

    #[test]
    fn a_second_relay_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let first = SqliteStore::open(&path, OpenOptions::default()).unwrap();
        let err = SqliteStore::open(&path, OpenOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::InUse(_)), "{err}");
        assert!(err.to_string().contains("another relay"), "{err}");
        drop(first);
        // Its threads close their connections, then free the file; opening waits for that.
        if let Err(e) = SqliteStore::open(&path, OpenOptions::default()) {
            panic!("reopening after the first store was dropped: {e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/relay.db");
        let _store = SqliteStore::open(&path, OpenOptions::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        drop(SqliteStore::open(&path, OpenOptions::default()).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("INSERT INTO schema_version (version) VALUES (99)", [])
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(&path, OpenOptions::default()).unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
