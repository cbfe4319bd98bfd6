//! Which other nodes hold sessions of a tunnel, cached for up to a second per tunnel: a burst of
//! requests for a tunnel held elsewhere costs one query, and a node that gained or lost a tunnel
//! is seen within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ClusterDb, Holder};

/// How long one answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// One tunnel's answer and when it was fetched.
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
        if let Some((at, found)) = self.lock().get(tunnel)
            && at.elapsed() < CACHE_FOR
        {
            return found.clone();
        }
        let found = match db.holders(tunnel, me).await {
            Ok(found) => Arc::new(found),
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
            .insert(tunnel.to_string(), (Instant::now(), found.clone()));
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}
