//! The cluster's own rows in the shared database: which relay nodes are alive (`nodes`, one
//! heartbeat every few seconds) and which of them hold agent sessions of which tunnel
//! (`tunnel_sessions`, each entry with an expiry on the database's clock). Kept apart from the
//! [`Store`](crate::store::Store) trait: only PostgreSQL can hold a cluster.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::conn::{DB_NOW_MS, bounded, db_err, pool, pool_err};
use crate::config::postgres::PostgresUrl;
use crate::store::StoreError;

/// How long a session entry stays valid after the heartbeat that wrote it: a crashed node's
/// entries are ignored this long after its last heartbeat.
pub const ENTRY_TTL: Duration = Duration::from_secs(30);

/// A node holding sessions of a tunnel: its id and the URL it is reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `cluster.node_id` of that node.
    pub node_id: String,
    /// Its `cluster.advertise` URL.
    pub advertise: String,
    /// When this run of the node started (its own clock, ms): a new value is a restarted node.
    pub started_at: i64,
}

/// One node as `ponte status` shows it.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// Its id.
    pub node_id: String,
    /// Its advertise URL.
    pub advertise: String,
    /// When it started, ms since the epoch (its own clock).
    pub started_at: i64,
    /// Its last heartbeat, ms since the epoch (the database's clock).
    pub heartbeat_at: i64,
    /// How long ago that was, in ms (the database's clock).
    pub heartbeat_age_ms: i64,
    /// The tunnels it holds sessions of (unexpired entries).
    pub tunnels: Vec<String>,
}

/// Access to the cluster's tables.
#[derive(Clone)]
pub struct ClusterDb {
    pool: Pool,
}

impl std::fmt::Debug for ClusterDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterDb").finish_non_exhaustive()
    }
}

/// Write the node's row; returns the `started_at` the row had before (none: a new row), which
/// tells whether another process wrote it meanwhile.
const UPSERT_NODE: &str = concat!(
    "WITH prev AS (SELECT started_at FROM nodes WHERE node_id = $1) \
     INSERT INTO nodes (node_id, advertise, started_at, heartbeat_at) VALUES ($1, $2, $3, ",
    super::conn::db_now_ms!(),
    ") ON CONFLICT (node_id) DO UPDATE SET advertise = EXCLUDED.advertise, \
     started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at \
     RETURNING (SELECT started_at FROM prev)"
);

const UPSERT_ENTRIES: &str = concat!(
    "INSERT INTO tunnel_sessions (node_id, tunnel, agents, expires_at) \
     SELECT $1, t, a, ",
    super::conn::db_now_ms!(),
    " + $4 FROM unnest($2::text[], $3::int[]) AS x(t, a) \
     ON CONFLICT (tunnel, node_id) DO UPDATE SET agents = EXCLUDED.agents, expires_at = EXCLUDED.expires_at"
);

/// Connections the cluster's own pool keeps at most: a heartbeat every few seconds and a lookup
/// per tunnel at most once a second.
const POOL_SIZE: usize = 4;

/// A node silent this long is forgotten (`ponte status` shows it until then).
pub const FORGET_NODE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Delete nodes silent for `$1` ms, and entries expired for longer than `$2` ms.
const PRUNE: &str = concat!(
    "WITH gone AS (DELETE FROM nodes WHERE heartbeat_at < ",
    super::conn::db_now_ms!(),
    " - $1) DELETE FROM tunnel_sessions WHERE expires_at < ",
    super::conn::db_now_ms!(),
    " - $2"
);

const DELETE_DROPPED: &str =
    "DELETE FROM tunnel_sessions WHERE node_id = $1 AND NOT (tunnel = ANY($2::text[]))";

impl ClusterDb {
    /// A pool of its own on the store's database (whose schema the store has migrated).
    pub fn connect(url: &PostgresUrl) -> Result<Self, StoreError> {
        Ok(ClusterDb {
            pool: pool(url, POOL_SIZE)?,
        })
    }

    /// Record this node's heartbeat and the tunnels it holds sessions of (with their agent
    /// counts), valid for [`ENTRY_TTL`]; entries of tunnels it no longer holds are deleted.
    /// Returns the `started_at` the node's row had before (`None`: there was none).
    pub async fn heartbeat(
        &self,
        node_id: &str,
        advertise: &str,
        started_at_ms: i64,
        held: &[(String, i32)],
    ) -> Result<Option<i64>, StoreError> {
        let tunnels: Vec<&str> = held.iter().map(|(t, _)| t.as_str()).collect();
        let agents: Vec<i32> = held.iter().map(|(_, a)| *a).collect();
        let ttl = ENTRY_TTL.as_millis() as i64;
        bounded(async {
            let mut client = self.pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(db_err)?;
            let previous: Option<i64> = tx
                .query_one(UPSERT_NODE, &[&node_id, &advertise, &started_at_ms])
                .await
                .map_err(db_err)?
                .get(0);
            tx.execute(DELETE_DROPPED, &[&node_id, &tunnels])
                .await
                .map_err(db_err)?;
            if !tunnels.is_empty() {
                tx.execute(UPSERT_ENTRIES, &[&node_id, &tunnels, &agents, &ttl])
                    .await
                    .map_err(db_err)?;
            }
            let forget = FORGET_NODE_AFTER.as_millis() as i64;
            tx.execute(PRUNE, &[&forget, &ttl]).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok(previous)
        })
        .await
    }

    /// Remove this node and its entries (clean shutdown).
    pub async fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        bounded(async {
            let mut client = self.pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(db_err)?;
            tx.execute("DELETE FROM tunnel_sessions WHERE node_id = $1", &[&node_id])
                .await
                .map_err(db_err)?;
            tx.execute("DELETE FROM nodes WHERE node_id = $1", &[&node_id])
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)
        })
        .await
    }

    /// The other nodes holding unexpired sessions of `tunnel`.
    pub async fn holders(&self, tunnel: &str, except: &str) -> Result<Vec<Holder>, StoreError> {
        let sql = format!(
            "SELECT s.node_id, n.advertise, n.started_at FROM tunnel_sessions s JOIN nodes n USING (node_id) \
             WHERE s.tunnel = $1 AND s.node_id <> $2 AND s.expires_at > {DB_NOW_MS} ORDER BY s.node_id"
        );
        bounded(async {
            let client = self.pool.get().await.map_err(pool_err)?;
            let stmt = client.prepare_cached(&sql).await.map_err(db_err)?;
            let rows = client.query(&stmt, &[&tunnel, &except]).await.map_err(db_err)?;
            Ok(rows
                .iter()
                .map(|r| Holder {
                    node_id: r.get(0),
                    advertise: r.get(1),
                    started_at: r.get(2),
                })
                .collect())
        })
        .await
    }

    /// Every node with its unexpired tunnels, ordered by id.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let sql = format!(
            "SELECT n.node_id, n.advertise, n.started_at, n.heartbeat_at, {DB_NOW_MS} - n.heartbeat_at, \
             COALESCE(array_agg(s.tunnel ORDER BY s.tunnel) FILTER (WHERE s.tunnel IS NOT NULL), '{{}}') \
             FROM nodes n LEFT JOIN tunnel_sessions s \
             ON s.node_id = n.node_id AND s.expires_at > {DB_NOW_MS} \
             GROUP BY n.node_id ORDER BY n.node_id"
        );
        bounded(async {
            let client = self.pool.get().await.map_err(pool_err)?;
            let rows = client.query(&sql, &[]).await.map_err(db_err)?;
            Ok(rows
                .iter()
                .map(|r| NodeRow {
                    node_id: r.get(0),
                    advertise: r.get(1),
                    started_at: r.get(2),
                    heartbeat_at: r.get(3),
                    heartbeat_age_ms: r.get(4),
                    tunnels: r.get(5),
                })
                .collect())
        })
        .await
    }
}
