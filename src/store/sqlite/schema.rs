//! Connection settings and schema migrations of the SQLite store.
//!
//! Durability: WAL with `synchronous=FULL`, so a commit is on disk before the sender hears 202
//! and survives power loss, not only a crash (`NORMAL` would survive only the latter).
//!
//! The schema is written so a PostgreSQL backend can use the same shape (`BIGINT` millisecond
//! times, `BYTEA` for the blobs, `BIGSERIAL` for `seq`): the request bytes live in their own
//! table so that claiming and finishing a delivery rewrite only a small row.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::db_err;
use crate::store::StoreError;

/// How long a connection waits for a lock held by another connection (the reader and the
/// writer share the file) before reporting the store unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Cap on the WAL file left on disk after a checkpoint, so one burst does not keep a huge file.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Each migration, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    // v1: deliveries, their request bytes, and their attempt log.
    "CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        tunnel TEXT NOT NULL,
        method TEXT NOT NULL,
        uri TEXT NOT NULL,
        body_bytes INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        retry_from INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        lease_token INTEGER,
        lease_until INTEGER,
        leased_at INTEGER,
        last_status INTEGER,
        last_error TEXT,
        finished_at INTEGER
    );
    CREATE INDEX deliveries_due ON deliveries (tunnel, next_attempt_at) WHERE status = 'pending';
    CREATE INDEX deliveries_order ON deliveries (tunnel, seq) WHERE status = 'pending';
    CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE lease_until IS NOT NULL;
    CREATE INDEX deliveries_finished ON deliveries (status, finished_at) WHERE status <> 'pending';
    CREATE TABLE requests (
        seq INTEGER PRIMARY KEY REFERENCES deliveries (seq) ON DELETE CASCADE,
        headers BLOB NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE attempts (
        seq INTEGER NOT NULL REFERENCES deliveries (seq) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        status INTEGER,
        error TEXT,
        PRIMARY KEY (seq, number)
    );",
];

/// Open a connection with the store's settings. `max_bytes` becomes SQLite's `max_page_count`,
/// so reaching the cap is the same `SQLITE_FULL` as a full disk and takes the same path.
pub(super) fn open_connection(path: &Path, max_bytes: Option<u64>) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        StoreError::Unavailable(format!(
            "{}: cannot open the store file ({e}); check the directory exists and this user may write it",
            path.display()
        ))
    })?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(db_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{}: the file system does not support SQLite's WAL mode (got `{mode}`); put the store on a local disk",
            path.display()
        )));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
    ))
    .map_err(db_err)?;
    if let Some(max) = max_bytes {
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(db_err)?;
        let pages = (max / page_size.max(512) as u64).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(db_err)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Bring the schema up to date. Refuses a file written by a newer Ponte rather than guessing.
pub(super) fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(db_err)?;
    let current: u32 = conn
        .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| {
            r.get(0)
        })
        .map_err(db_err)?;
    let latest = MIGRATIONS.len() as u32;
    if current > latest {
        return Err(StoreError::Corrupt(format!(
            "the store has schema version {current} but this ponte knows only up to {latest}; upgrade ponte or point `store:` at another file"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as u32 + 1;
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [version])
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(version, "store schema migrated");
    }
    Ok(latest)
}
