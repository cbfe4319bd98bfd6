//! Several relay nodes on one PostgreSQL database. Each node keeps its row and the list of
//! tunnels it holds agent sessions of in the database ([`membership`]), looks up which other
//! nodes hold a tunnel it has no session of ([`directory`]), and passes such requests to one of
//! them over a pooled, authenticated HTTP/2 connection ([`peers`]). PostgreSQL is the only shared
//! state: Ponte runs no consensus of its own.

pub mod directory;
pub mod membership;
pub mod peers;

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::config::cluster::ClusterConfig;
use crate::config::postgres::PostgresUrl;
pub use crate::store::postgres::cluster::{ClusterDb, ENTRY_TTL, Holder, NodeRow};

/// This node's place in the cluster.
pub struct Cluster {
    /// `cluster.node_id` (or the host name).
    pub node_id: String,
    /// `cluster.advertise`, as other nodes dial it.
    pub advertise: String,
    secret: crate::config::Secret,
    db: ClusterDb,
    directory: directory::Directory,
    peers: peers::Peers,
    /// Woken when a tunnel gains its first or loses its last agent on this node.
    changed: Notify,
    started_at_ms: i64,
}

impl Cluster {
    /// Set up from `cluster:` and the store's PostgreSQL URL (no connection is made yet).
    pub fn new(config: &ClusterConfig, url: &PostgresUrl) -> anyhow::Result<Self> {
        let started_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        Ok(Cluster {
            node_id: config.node_id(),
            advertise: config.advertise.as_str().trim_end_matches('/').to_string(),
            secret: config.secret.clone(),
            db: ClusterDb::connect(url)?,
            directory: directory::Directory::default(),
            peers: peers::Peers::new(config.ca_file.as_deref())?,
            changed: Notify::new(),
            started_at_ms,
        })
    }

    /// The shared secret (compare it in constant time; never log it).
    pub fn secret(&self) -> &str {
        self.secret.expose()
    }

    /// The cluster's tables.
    pub fn db(&self) -> &ClusterDb {
        &self.db
    }

    /// The connections to other nodes.
    pub fn peers(&self) -> &peers::Peers {
        &self.peers
    }

    /// The other nodes holding sessions of `tunnel` (looked up at most once a second per tunnel).
    pub async fn holders(&self, tunnel: &str) -> std::sync::Arc<Vec<Holder>> {
        self.directory.holders(&self.db, tunnel, &self.node_id).await
    }

    /// Look `tunnel`'s holders up again on the next request (one of them no longer holds it).
    pub fn forget_holders(&self, tunnel: &str) {
        self.directory.forget(tunnel);
    }

    /// A tunnel gained its first or lost its last agent here: tell the other nodes soon.
    pub fn sessions_changed(&self) {
        self.changed.notify_one();
    }
}
