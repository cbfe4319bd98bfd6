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
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(10);

/// The leases of one worker's running attempts, by delivery id.
#[derive(Debug, Default)]
pub(super) struct HeldLeases(Mutex<HashMap<String, Lease>>);

impl HeldLeases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Renew `lease` until the returned guard is dropped (the attempt is about to report, or
    /// it panicked).
    pub(super) fn hold(self: &Arc<Self>, lease: &Lease) -> Holding {
        self.map().insert(lease.id.clone(), lease.clone());
        Holding {
            held: self.clone(),
            lease: lease.clone(),
        }
    }

    fn all(&self) -> Vec<Lease> {
        self.map().values().cloned().collect()
    }

    fn holds(&self, lease: &Lease) -> bool {
        self.map().get(&lease.id) == Some(lease)
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
        if map.get(&self.lease.id) == Some(&self.lease) {
            map.remove(&self.lease.id);
        }
    }
}

/// Renew every lease in `held` every `every` ([`RENEW_EVERY`]) until `stop` is cancelled.
pub(super) async fn renew(
    store: Arc<dyn Store>,
    held: Arc<HeldLeases>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
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
                every.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{ClaimRequest, ManualClock, NewDelivery, OpenOptions};

    fn claim(tunnel: &str) -> ClaimRequest {
        ClaimRequest {
            tunnel: tunnel.into(),
            max: 10,
            ordered: false,
            lease: LEASE,
        }
    }

    fn webhook(tunnel: &str) -> NewDelivery {
        NewDelivery {
            tunnel: tunnel.into(),
            method: "POST".into(),
            uri: "https://demo.relay.test/hook".into(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(b"{}"),
        }
    }

    /// A running attempt's lease is renewed and outlives its first expiry; the lease of an
    /// attempt nobody renews (a crashed node's) is claimable once [`LEASE`] has passed.
    #[tokio::test]
    async fn held_leases_are_renewed_and_others_expire_after_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let options = OpenOptions {
            clock: clock.clone(),
            ..OpenOptions::default()
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("q.db"), options).unwrap());
        // "live" is held by this worker; "crashed" was claimed by a node that then died.
        store.enqueue(webhook("live")).await.unwrap();
        store.enqueue(webhook("crashed")).await.unwrap();
        let live = store.claim(claim("live")).await.unwrap().items.remove(0);
        let crashed = store.claim(claim("crashed")).await.unwrap().items.remove(0);
        let held = Arc::new(HeldLeases::default());
        let _holding = held.hold(&live.lease);
        let stop = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            store.clone(),
            held.clone(),
            Duration::from_millis(20),
            stop.clone(),
        ));

        // 20 s later the renewal has pushed the lease's end back to a full LEASE from now (the
        // claim's summary says when the tunnel's earliest lease ends).
        clock.advance(Duration::from_secs(20));
        let mut renewed = false;
        for _ in 0..500 {
            let batch = store.claim(claim("live")).await.unwrap();
            assert!(batch.items.is_empty());
            if batch.next_due_in == Some(LEASE) {
                renewed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(renewed, "the held lease was not renewed");

        // Past the first expiry: the crashed node's delivery goes to a new claimer, the live
        // attempt's does not.
        clock.advance(Duration::from_secs(11));
        assert!(store.claim(claim("live")).await.unwrap().items.is_empty());
        let taken = store.claim(claim("crashed")).await.unwrap().items;
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].lease.id, crashed.lease.id);
        assert_eq!(taken[0].attempt, 2);
        stop.cancel();
        renewer.await.unwrap();
    }
}
