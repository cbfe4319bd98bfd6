//! Requests per minute of one tunnel, for the console and `ponte status`: the public requests
//! that reached it in the last 60 seconds. Counted whether or not metrics are on, so it must be
//! cheap: a fixed ring of one-second buckets, each one atomic word, and the request path pays
//! one clock read and (almost always) one atomic add. Memory stays 60 words per tunnel, however
//! many requests arrive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The window, in one-second buckets.
const WINDOW_SECS: u64 = 60;

/// Bits of a bucket that hold its count; the bits above hold its second (plus one, so an
/// untouched bucket, 0, belongs to no second). 2^32 requests in one second of one tunnel is out
/// of reach, so a count never spills into its second.
const COUNT_BITS: u32 = 32;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// A sliding one-minute request counter.
pub struct RequestRate {
    origin: Instant,
    buckets: [AtomicU64; WINDOW_SECS as usize],
}

impl Default for RequestRate {
    fn default() -> Self {
        RequestRate {
            origin: Instant::now(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RequestRate {
    /// Count one request now.
    pub fn record(&self) {
        self.record_at(self.second());
    }

    /// Requests counted in the last minute (this second included).
    pub fn per_minute(&self) -> u64 {
        self.per_minute_at(self.second())
    }

    fn second(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// Count one request in second `sec` (seconds since the counter was made).
    fn record_at(&self, sec: u64) {
        let bucket = &self.buckets[(sec % WINDOW_SECS) as usize];
        let stamp = (sec + 1) << COUNT_BITS;
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let current_stamp = current & !COUNT_MASK;
            if current_stamp == stamp {
                // The usual case: this second's bucket already. A plain add, no retry.
                bucket.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if current_stamp > stamp {
                // A thread that read the clock a minute ago and was held up since: its second
                // is out of the window anyway.
                return;
            }
            // The bucket still holds a second a minute old or more: start it over. Several
            // threads may race here; the loser re-reads and adds to the winner's count.
            match bucket.compare_exchange_weak(current, stamp | 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Requests in the 60 seconds ending with second `now`.
    fn per_minute_at(&self, now: u64) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|word| {
                let stamp = word >> COUNT_BITS;
                // stamp - 1 is the bucket's second; keep it when now - 59 <= second <= now.
                stamp > 0 && stamp <= now + 1 && stamp + WINDOW_SECS > now + 1
            })
            .map(|word| word & COUNT_MASK)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn counts_the_last_sixty_seconds_and_forgets_older_ones() {
        let r = RequestRate::default();
        assert_eq!(r.per_minute_at(0), 0);
        for _ in 0..5 {
            r.record_at(0);
        }
        r.record_at(30);
        r.record_at(59);
        assert_eq!(r.per_minute_at(59), 7);
        // Second 0 leaves the window at second 60; 30 and 59 are still in it.
        assert_eq!(r.per_minute_at(60), 2);
        assert_eq!(r.per_minute_at(89), 2);
        assert_eq!(r.per_minute_at(90), 1);
        // Second 59 is in the windows ending at 59 to 118.
        assert_eq!(r.per_minute_at(118), 1);
        assert_eq!(r.per_minute_at(119), 0);
    }

    #[test]
    fn a_reused_bucket_starts_over() {
        let r = RequestRate::default();
        for _ in 0..3 {
            r.record_at(10);
        }
        // Second 70 shares second 10's bucket.
        r.record_at(70);
        assert_eq!(r.per_minute_at(70), 1);
        // A late writer still holding second 10 does not add to second 70.
        r.record_at(10);
        assert_eq!(r.per_minute_at(70), 1);
    }

    #[test]
    fn a_quiet_tunnel_after_a_long_time_reads_zero() {
        let r = RequestRate::default();
        r.record_at(5);
        assert_eq!(r.per_minute_at(5 + 3600), 0);
        r.record_at(3600);
        assert_eq!(r.per_minute_at(3600), 1);
    }

    #[test]
    fn concurrent_requests_are_all_counted() {
        let r = Arc::new(RequestRate::default());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for n in 0..10_000u64 {
                        // Cross into the next second half way, as a busy tunnel does.
                        r.record_at(100 + u64::from(n >= 5_000 + i * 100));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.per_minute_at(101), 40_000);
    }

    #[test]
    fn record_uses_the_clock() {
        let r = RequestRate::default();
        r.record();
        r.record();
        assert_eq!(r.per_minute(), 2);
    }
}
