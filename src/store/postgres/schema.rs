//! The PostgreSQL schema and its migrations. Migrations are compiled into the binary, numbered,
//! recorded in `schema_migrations`, and applied in one transaction under an advisory lock, so two
//! relay nodes starting at once against a fresh database do not race: the second waits, then
//! finds the work done.
//!
//! The shape follows the SQLite store's (times are `BIGINT` milliseconds of the store's clock,
//! request bytes live in their own table so claiming rewrites only a small row). Later versions
//! add the cluster's own tables (a `nodes` table of live relay nodes and session entries with an
//! expiry) as new migrations; nothing here assumes a single node.

use deadpool_postgres::Object;
use tokio_postgres::error::SqlState;

use super::conn::db_err;
use crate::store::StoreError;

/// Key of the advisory lock migrations run under ("ponte" and the lock's purpose).
const MIGRATION_LOCK: i64 = 0x706f_6e74_6501;

/// Each migration: what it does, and its SQL. The schema version is the number applied.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "deliveries, their request bytes, their attempt log, and the counted size of the store",
        "CREATE TABLE deliveries (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        tunnel TEXT NOT NULL,
        method TEXT NOT NULL,
        uri TEXT NOT NULL,
        body_bytes BIGINT NOT NULL,
        stored_bytes BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        retry_from BIGINT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        lease_token BIGINT,
        lease_until BIGINT,
        leased_at BIGINT,
        last_status INTEGER,
        last_error TEXT,
        finished_at BIGINT
    );
    CREATE INDEX deliveries_due ON deliveries (tunnel, next_attempt_at) WHERE status = 'pending';
    CREATE INDEX deliveries_order ON deliveries (tunnel, seq) WHERE status = 'pending';
    CREATE INDEX deliveries_leased ON deliveries (tunnel, lease_until) WHERE lease_until IS NOT NULL;
    CREATE INDEX deliveries_finished ON deliveries (status, finished_at) WHERE status <> 'pending';
    CREATE INDEX deliveries_list ON deliveries (tunnel, seq);
    CREATE TABLE requests (
        seq BIGINT PRIMARY KEY REFERENCES deliveries (seq) ON DELETE CASCADE,
        headers BYTEA NOT NULL,
        body BYTEA NOT NULL
    );
    CREATE TABLE attempts (
        seq BIGINT NOT NULL REFERENCES deliveries (seq) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        started_at BIGINT NOT NULL,
        finished_at BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        status INTEGER,
        error TEXT,
        PRIMARY KEY (seq, number)
    );
    -- store_max_size counts the request bytes of every stored delivery. The sum is kept in a few
    -- rows (one picked per database connection) so that writers on different connections and
    -- nodes do not queue behind one hot row; the total is their sum.
    CREATE TABLE store_usage (
        shard INTEGER PRIMARY KEY,
        bytes BIGINT NOT NULL
    );
    CREATE FUNCTION ponte_count_stored_bytes() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        delta BIGINT;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            SELECT COALESCE(SUM(stored_bytes), 0) INTO delta FROM changed_rows;
        ELSE
            SELECT -COALESCE(SUM(stored_bytes), 0) INTO delta FROM changed_rows;
        END IF;
        IF delta <> 0 THEN
            INSERT INTO store_usage (shard, bytes) VALUES (pg_backend_pid() % 16, delta)
            ON CONFLICT (shard) DO UPDATE SET bytes = store_usage.bytes + EXCLUDED.bytes;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER deliveries_count_inserted AFTER INSERT ON deliveries
        REFERENCING NEW TABLE AS changed_rows
        FOR EACH STATEMENT EXECUTE FUNCTION ponte_count_stored_bytes();
    CREATE TRIGGER deliveries_count_deleted AFTER DELETE ON deliveries
        REFERENCING OLD TABLE AS changed_rows
        FOR EACH STATEMENT EXECUTE FUNCTION ponte_count_stored_bytes();",
    ),
    (
        "cluster membership: relay nodes and where each tunnel's agent sessions are",
        "CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        advertise TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL
    );
    -- One entry per (node, tunnel) while that node holds agent sessions of the tunnel. Readers
    -- ignore entries past expires_at, so a crashed node's entries vanish on their own.
    CREATE TABLE tunnel_sessions (
        node_id TEXT NOT NULL,
        tunnel TEXT NOT NULL,
        agents INTEGER NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (tunnel, node_id)
    );
    CREATE INDEX tunnel_sessions_node ON tunnel_sessions (node_id);",
    ),
];

/// Bring the schema up to date. Refuses a database migrated by a newer Ponte rather than guess.
pub(super) async fn migrate(client: &mut Object, shown: &str) -> Result<u32, StoreError> {
    let tx = client.transaction().await.map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(|e| migration_err(e, shown))?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
        .await
        .map_err(db_err)?
        .get(0);
    let latest = MIGRATIONS.len() as i32;
    if current > latest {
        return Err(StoreError::Corrupt(format!(
            "{shown}: the database has schema version {current} but this ponte knows only up to {latest}; upgrade ponte on this node (every node of a cluster runs the same version)"
        )));
    }
    for (i, (description, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(|e| migration_err(e, shown))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
            &[&version, description],
        )
        .await
        .map_err(db_err)?;
        tracing::info!(version, %description, "store schema migrated");
    }
    tx.commit().await.map_err(db_err)?;
    Ok(latest as u32)
}

fn migration_err(e: tokio_postgres::Error, shown: &str) -> StoreError {
    if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        return StoreError::Unavailable(format!(
            "{shown}: the database user may not create Ponte's tables ({}); give the relay a database it owns (CREATE DATABASE ponte OWNER ponte) or GRANT CREATE ON SCHEMA public to its user",
            e.as_db_error()
                .map(|d| d.message())
                .unwrap_or("permission denied")
        ));
    }
    db_err(e)
}
