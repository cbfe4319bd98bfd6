//! Reconnect backoff with full jitter (AWS architecture blog, "Exponential Backoff and Jitter"):
//! wait a uniformly random time between zero and `min(max, initial * 2^attempt)`. Full jitter
//! spreads a fleet of agents that lost the same relay, so they do not reconnect in lockstep.
//! (backon's and backoff's jitter add noise around the step instead, which keeps the herd.)

use std::time::Duration;

use crate::config::agent::Reconnect;

/// Backoff state of one reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Start from the configured bounds.
    pub fn new(cfg: &Reconnect) -> Self {
        Backoff {
            initial: cfg.initial,
            max: cfg.max.max(cfg.initial),
            attempt: 0,
        }
    }

    /// The cap of the next wait, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next wait: uniform in `[0, ceiling]`; then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = ceiling.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(rand::random_range(0..=millis))
    }

    /// After a stable session: start again from the smallest wait.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let cfg = Reconnect {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        };
        let mut b = Backoff::new(&cfg);
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c, "{d:?} > {c:?}");
                c.as_secs()
            })
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30, 30]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_waits() {
        let cfg = Reconnect {
            initial: Duration::from_secs(8),
            max: Duration::from_secs(8),
            stable_after: Duration::ZERO,
        };
        let mut b = Backoff::new(&cfg);
        let waits: std::collections::HashSet<u128> = (0..50).map(|_| b.next_delay().as_millis()).collect();
        assert!(
            waits.len() > 40,
            "full jitter should rarely repeat a wait: {}",
            waits.len()
        );
    }
}
