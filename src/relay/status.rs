//! The operator's overview behind `GET /_ponte/admin/status`, `ponte status` and the console's
//! tunnels panel: every tunnel with its agents (address, version, since when), when one was last
//! seen, its requests per minute, and its queue; with `cluster:`, every relay node of the cluster.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::state::RelayState;
use crate::protocol::admin::{
    AgentStatus, ClusterStatus, NodeStatus, QueueStatus, StatusResponse, TunnelStatus,
};
use crate::store::{QueueStats, StoreError};

/// Build the answer from the registry and (with a store) the queue's counts.
pub async fn collect(state: &RelayState) -> Result<StatusResponse, StoreError> {
    let stats: Option<QueueStats> = match &state.queues {
        Some(q) => Some(q.store.stats().await?),
        None => None,
    };
    let mut status = build(state, stats.as_ref());
    if let Some(cluster) = &state.cluster {
        status.cluster = Some(cluster_status(cluster).await);
    }
    Ok(status)
}

/// The nodes as the database lists them; a database that cannot be read is reported, not fatal.
async fn cluster_status(cluster: &crate::cluster::Cluster) -> ClusterStatus {
    let ms = |t: i64| time(UNIX_EPOCH + Duration::from_millis(u64::try_from(t).unwrap_or_default()));
    let (nodes, error) = match cluster.db().nodes().await {
        Ok(rows) => (
            rows.into_iter()
                .map(|n| NodeStatus {
                    id: n.node_id,
                    advertise: n.advertise,
                    started_at: ms(n.started_at),
                    last_heartbeat: ms(n.heartbeat_at),
                    heartbeat_age_secs: u64::try_from(n.heartbeat_age_ms / 1000).unwrap_or_default(),
                    tunnels: n.tunnels,
                })
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    ClusterStatus {
        node_id: cluster.node_id.clone(),
        nodes,
        error,
    }
}

/// The answer from the registry and the queue's counts, if read (`None`: no store, or the
/// store could not be read and the console still shows the agents).
pub fn build(state: &RelayState, stats: Option<&QueueStats>) -> StatusResponse {
    let mut tunnels: Vec<TunnelStatus> = state
        .registry
        .tunnels()
        .map(|t| {
            let agents = t
                .sessions()
                .iter()
                .map(|s| AgentStatus {
                    id: s.agent_id.clone(),
                    address: s.remote.to_string(),
                    version: s.version.clone(),
                    connected_since: time(s.connected_at),
                    streams_in_use: s.streams_in_use(),
                })
                .collect();
            let queue = stats.map(|stats| {
                let c = stats.tunnels.get(t.name.as_str()).cloned().unwrap_or_default();
                QueueStatus {
                    pending: c.pending,
                    in_flight: c.in_flight,
                    failed: c.failed,
                    oldest_pending: c.oldest_pending.map(|ts| ts.to_string()),
                    oldest_pending_age_secs: c.oldest_pending_age.map(|a| a.as_secs()),
                }
            });
            TunnelStatus {
                name: t.name.to_string(),
                delivery: format!("{:?}", t.config.delivery).to_lowercase(),
                agents,
                last_seen: t.last_seen().map(time),
                requests_per_minute: t.requests.per_minute(),
                queue,
            }
        })
        .collect();
    tunnels.sort_by(|a, b| a.name.cmp(&b.name));
    StatusResponse {
        version: crate::VERSION.to_string(),
        now: time(SystemTime::now()),
        started_at: time(state.started_at),
        draining: state.draining.is_cancelled(),
        store: state.queues.is_some(),
        tunnels,
        cluster: None,
    }
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
