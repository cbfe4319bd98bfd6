//! Which other nodes hold sessions of a tunnel, cached for up to a second per tunnel: a burst of
//! requests for a tunnel held elsewhere costs one query, and a node that gained or lost a tunnel
//! is seen within a second. "No node" is kept for a tenth of that: an agent that just connected
//! to another node is reachable from here as soon as that node has written it down (itself
//! within [`DEBOUNCE`](super::membership::DEBOUNCE)), while a tunnel with no agent anywhere still
//! costs at most ten queries a second, however many requests name it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ClusterDb, Holder};

/// How long one answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);
/// How long an answer naming no node is reused.
pub const CACHE_NONE_FOR: Duration = Duration::from_millis(100);

/// One tunnel's answer and until when it is reused.
type Entry = (Instant, Arc<Vec<Holder>>);

/// The cache.
#[derive(Default)]
pub struct Directory {
    cached: Mutex<HashMap<String, Entry>>,
}

impl Directory {
    /// The nodes other than `me` holding `tunnel`; when the database cannot say, the last answer
    /// (none if there was none: the request is then answered as if no node held the tunnel).
    pub async fn holders(&self, db: &ClusterDb, tunnel: &str, me: &str) -> Arc<Vec<Holder>> {
        if let Some((until, found)) = self.lock().get(tunnel)
            && Instant::now() < *until
        {
            return found.clone();
        }
        let mut keep = CACHE_FOR;
        let found = match db.holders(tunnel, me).await {
            Ok(found) => {
                if found.is_empty() {
                    keep = CACHE_NONE_FOR;
                }
                Arc::new(found)
            }
            Err(e) => {
                // With the database down, the last known holders are still the best guess (a
                // holder that is gone too is skipped as unreachable): direct tunnels keep working
                // across nodes through an outage. Kept for another second, so a database that
                // does not answer costs one lookup a second, not one per request.
                let stale = self.lock().get(tunnel).map(|(_, found)| found.clone());
                tracing::warn!(%tunnel, error = %e, known = stale.is_some(), "cannot look up which relay node holds the tunnel's agent; using the last answer");
                stale.unwrap_or_default()
            }
        };
        self.lock()
            .insert(tunnel.to_string(), (Instant::now() + keep, found.clone()));
        found
    }

    /// Drop `tunnel`'s answer: a node named in it said it no longer holds the tunnel.
    pub fn forget(&self, tunnel: &str) {
        self.lock().remove(tunnel);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}
