//! Delivery leases held while attempts run. A claim holds its delivery for [`LEASE`]; the worker
//! renews every lease of its running attempts together every [`RENEW_EVERY`], in one store call.
//! A relay that dies stops renewing, so its deliveries go back to the queue (to another node, or
//! to this one after a restart) within [`LEASE`], however long the tunnel's `attempt_timeout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Lease, Store};

/// How long a claim or a renewal holds a delivery before another claimer may take it.
pub(super) const LEASE: Duration = Duration::from_secs(30);
/// How often running attempts' leases are renewed: a third of [`LEASE`], so a renewal that fails
/// (the database briefly unreachable) is retried twice before a live lease expires.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// The leases of one worker's running attempts (delivery id to lease token).
#[derive(Debug, Default)]
pub(super) struct HeldLeases(Mutex<HashMap<String, i64>>);

impl HeldLeases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Renew `lease` until the returned guard is dropped (the attempt is about to report, or
    /// it panicked).
    pub(super) fn hold(self: &Arc<Self>, lease: &Lease) -> Holding {
        self.map().insert(lease.id.clone(), lease.token);
        Holding {
            held: self.clone(),
            lease: lease.clone(),
        }
    }

    fn all(&self) -> Vec<Lease> {
        self.map()
            .iter()
            .map(|(id, token)| Lease {
                id: id.clone(),
                token: *token,
            })
            .collect()
    }

    fn holds(&self, lease: &Lease) -> bool {
        self.map().get(&lease.id) == Some(&lease.token)
    }
}

/// One running attempt's lease, renewed while this lives.
#[derive(Debug)]
pub(super) struct Holding {
    held: Arc<HeldLeases>,
    lease: Lease,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut map = self.held.map();
        if map.get(&self.lease.id) == Some(&self.lease.token) {
            map.remove(&self.lease.id);
        }
    }
}

/// Renew every lease in `held` every [`RENEW_EVERY`] until `stop` is cancelled.
pub(super) async fn renew(store: Arc<dyn Store>, held: Arc<HeldLeases>, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leases = held.all();
        if leases.is_empty() {
            continue;
        }
        match store.renew(leases, LEASE).await {
            // An attempt that reported meanwhile is not a lost lease.
            Ok(lost) => {
                for lease in lost.iter().filter(|l| held.holds(l)) {
                    tracing::warn!(
                        id = %lease.id,
                        "lost the lease of a delivery while its attempt runs (it expired and was claimed again, or was replayed or purged); only a success of this attempt will be recorded"
                    );
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "could not renew the leases of running delivery attempts; retrying in {}s",
                RENEW_EVERY.as_secs()
            ),
        }
    }
}
