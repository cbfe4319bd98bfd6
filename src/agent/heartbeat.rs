//! The supervisor's heartbeat: proof, for a service manager's watchdog, that the reconnect loop
//! is still being run. The systemd glue pets the watchdog only while beats are fresh, so a
//! supervisor stuck in a blocking call (or a wedged runtime) stops the petting and systemd
//! restarts the process.
//!
//! Whoever wants the proof makes a [`Heartbeat`] and hands it to `agent::run`; without one (tests,
//! `demo`) the supervisor simply runs.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How often the supervisor beats while it is being polled.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// A beat older than this means the supervisor is not running: three missed beats, so one slow
/// poll under load is not mistaken for a hang.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// A shared "last seen alive" clock. Cloning shares it. Time is tokio's, so tests can pause it.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Self {
        Heartbeat {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Record a beat now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// True while the last beat is recent enough to count as alive.
    pub fn is_fresh(&self) -> bool {
        self.age() <= STALE_AFTER
    }

    /// Await `fut`, beating every [`BEAT_EVERY`] while it is still pending. The beats come from
    /// the same task as `fut`, so they stop when it blocks.
    pub async fn beat_while<F: Future>(&self, fut: F) -> F::Output {
        let mut tick = tokio::time::interval(BEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return out,
                _ = tick.tick() => self.beat(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn beats_only_while_the_future_runs() {
        let hb = Heartbeat::new();
        let out = hb
            .beat_while(async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                7
            })
            .await;
        assert_eq!(out, 7);
        assert!(hb.is_fresh(), "beats during the future: {:?}", hb.age());
        tokio::time::sleep(STALE_AFTER + Duration::from_secs(1)).await;
        assert!(!hb.is_fresh(), "no beats once it finished");
    }
}
