//! This node's heartbeat: every few seconds its row in `nodes` and an entry per tunnel it holds
//! agent sessions of (valid for [`ENTRY_TTL`](super::ENTRY_TTL) on the database's clock); at
//! once (debounced) when a tunnel gains its first or loses its last agent here; and its rows
//! deleted on a clean shutdown. A node that crashed simply stops renewing them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// Time between two heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Changes arriving within this time are written together.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest wait for the rows to be deleted at shutdown.
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// One tunnel's name and its number of registered sessions on this node.
pub type Watched = (String, watch::Receiver<usize>);

/// Keep this node's rows current until `stop`, then delete them.
pub async fn run(cluster: Arc<Cluster>, tunnels: Vec<Watched>, stop: CancellationToken) {
    let watchers = stop.child_token();
    for (_, rx) in &tunnels {
        tokio::spawn(watch_transitions(cluster.clone(), rx.clone(), watchers.clone()));
    }
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    // Until this node's first write, the row may be its own from an earlier run.
    let mut written = false;
    let mut clash_logged = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            _ = cluster.changed.notified() => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(DEBOUNCE) => {}
                }
            }
        }
        let held: Vec<(String, i32)> = tunnels
            .iter()
            .filter_map(|(name, rx)| {
                let n = *rx.borrow();
                (n > 0).then(|| (name.clone(), i32::try_from(n).unwrap_or(i32::MAX)))
            })
            .collect();
        match cluster
            .db
            .heartbeat(&cluster.node_id, &cluster.advertise, cluster.started_at_ms, &held)
            .await
        {
            Ok(previous) => {
                // Another process rewrote this node's row since the last heartbeat: two nodes
                // share one id, and each hides the other's tunnels.
                if written && previous != Some(cluster.started_at_ms) && !clash_logged {
                    clash_logged = true;
                    tracing::error!(node = %cluster.node_id, "another relay node uses the same cluster.node_id; give every node its own (requests may be forwarded to the wrong node)");
                }
                written = true;
                if failing {
                    failing = false;
                    tracing::info!(node = %cluster.node_id, "cluster heartbeat written again");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(node = %cluster.node_id, error = %e, "cannot write the cluster heartbeat; other nodes stop forwarding to this one once its entries expire");
            }
            Err(e) => tracing::debug!(error = %e, "cluster heartbeat failed again"),
        }
    }
    watchers.cancel();
    match tokio::time::timeout(LEAVE_WAIT, cluster.db.leave(&cluster.node_id)).await {
        Ok(Ok(())) => tracing::info!(node = %cluster.node_id, "left the cluster"),
        Ok(Err(e)) => {
            tracing::warn!(node = %cluster.node_id, error = %e, "cannot remove this node from the cluster; its entries expire on their own")
        }
        Err(_) => {
            tracing::warn!(node = %cluster.node_id, "removing this node from the cluster took too long; its entries expire on their own")
        }
    }
}

/// Wake the heartbeat when the tunnel's session count goes from 0 to more, or back to 0.
async fn watch_transitions(cluster: Arc<Cluster>, mut rx: watch::Receiver<usize>, stop: CancellationToken) {
    let mut held = *rx.borrow_and_update() > 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let now = *rx.borrow_and_update() > 0;
        if now != held {
            held = now;
            cluster.sessions_changed();
        }
    }
}
