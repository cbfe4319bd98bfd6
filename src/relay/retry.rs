//! The delivery policy, as pure functions: what an attempt's result means (delivered, retry,
//! failed, not attempted), how long to wait before the next attempt, and when to give up.
//!
//! - 2xx: delivered.
//! - 408, 429, 5xx, timeouts: retry per the schedule (plus jitter), honouring `Retry-After` given
//!   in seconds; after `max_age` since arrival (or replay) the delivery fails.
//! - Other 4xx: failed at once (the upstream refused this request; sending it again won't help).
//! - 1xx/3xx: retry (a redirect or an odd answer is a misconfigured upstream, which may be fixed).
//! - Connection lost mid-attempt: retry, and never fail by age: the tunnel, not the upstream, cut
//!   it (the agent PC switched off), and the promise is that nothing is lost meanwhile.
//! - No agent or no free stream: the attempt never started; undo the claim.

use std::time::Duration;

use http::{HeaderMap, StatusCode, header};

use crate::config::relay::QueueSettings;
use crate::store::AttemptReport;

/// Longest `Retry-After` honoured; a larger value is taken as this (bounds what a peer can make
/// the relay hold).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Wait before re-claiming a delivery that found every stream of the agent busy.
pub const BUSY_RETRY: Duration = Duration::from_secs(1);
/// Wait before re-claiming a delivery that found no usable session (one closing as it was
/// claimed); a reconnect makes it due at once anyway.
pub const NO_AGENT_RETRY: Duration = Duration::from_millis(250);

/// What happened to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The upstream (or the agent on its behalf) answered.
    Response {
        /// Its status.
        status: StatusCode,
        /// `Retry-After` in seconds, if given.
        retry_after: Option<Duration>,
        /// A short description for operators (who answered, a body excerpt).
        detail: String,
    },
    /// No response headers within the attempt timeout.
    Timeout(Duration),
    /// The tunnel connection failed during the attempt.
    ConnectionLost(String),
    /// No agent was connected when the attempt was about to start.
    NoAgent,
    /// Every stream of the agent connection stayed busy.
    Busy,
    /// The stored request cannot be sent (damaged record).
    Unsendable(String),
}

/// Turn an attempt's result into what the store records. `attempt` is the number of the attempt
/// that just ended (from 1), `age` the time since the retry window opened, `jitter` a random
/// number in `[0, 1)`.
pub fn decide(
    result: &AttemptResult,
    attempt: u32,
    age: Duration,
    settings: &QueueSettings,
    jitter: f64,
) -> AttemptReport {
    let wait = backoff(&settings.retry_schedule, attempt, jitter);
    let give_up_or_retry = |status: Option<u16>, error: String, retry_after: Option<Duration>| {
        if age >= settings.max_age {
            AttemptReport::Failed {
                status,
                error: format!(
                    "gave up after {} of retries; last error: {error}",
                    humantime::format_duration(settings.max_age)
                ),
            }
        } else {
            AttemptReport::Retry {
                after: retry_after.map_or(wait, |r| r.min(MAX_RETRY_AFTER).max(wait)),
                status,
                error,
                interrupted: false,
            }
        }
    };
    match result {
        AttemptResult::Response {
            status,
            retry_after,
            detail,
        } => {
            let code = status.as_u16();
            if status.is_success() {
                AttemptReport::Delivered { status: code }
            } else if is_retryable(*status) {
                give_up_or_retry(Some(code), detail.clone(), *retry_after)
            } else if status.is_client_error() {
                AttemptReport::Failed {
                    status: Some(code),
                    error: detail.clone(),
                }
            } else {
                give_up_or_retry(Some(code), detail.clone(), None)
            }
        }
        AttemptResult::Timeout(limit) => give_up_or_retry(
            None,
            format!(
                "no response within {} (attempt_timeout)",
                humantime::format_duration(*limit)
            ),
            None,
        ),
        AttemptResult::ConnectionLost(e) => AttemptReport::Retry {
            after: wait,
            status: None,
            error: format!("the agent connection was lost during the attempt: {e}"),
            interrupted: true,
        },
        AttemptResult::NoAgent => AttemptReport::Release {
            after: Duration::ZERO,
        },
        AttemptResult::Busy => AttemptReport::Release { after: BUSY_RETRY },
        AttemptResult::Unsendable(e) => AttemptReport::Failed {
            status: None,
            error: format!("the stored request cannot be sent: {e}"),
        },
    }
}

/// 408, 429 and every 5xx are worth retrying.
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// The wait after attempt number `attempt` failed: the schedule's step for it (the last step
/// repeats), scaled by a jitter factor in `[0.75, 1.25)` so deliveries that failed together do
/// not all come back at the same instant.
pub fn backoff(schedule: &[Duration], attempt: u32, jitter: f64) -> Duration {
    let step = attempt.saturating_sub(1) as usize;
    let base = schedule
        .get(step)
        .or(schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(5));
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// `Retry-After` as a number of seconds. The HTTP-date form is ignored on purpose: honouring it
/// would compare the upstream's clock with ours.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> QueueSettings {
        QueueSettings {
            retry_schedule: vec![Duration::from_secs(5), Duration::from_secs(60)],
            max_age: Duration::from_secs(3600),
            ..QueueSettings::default()
        }
    }

    fn response(code: u16, retry_after: Option<u64>) -> AttemptResult {
        AttemptResult::Response {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: retry_after.map(Duration::from_secs),
            detail: format!("HTTP {code}"),
        }
    }

    #[test]
    fn status_table() {
        let s = settings();
        let young = Duration::from_secs(1);
        let cases: &[(u16, &str)] = &[
            (200, "delivered"),
            (204, "delivered"),
            (301, "retry"),
            (400, "failed"),
            (404, "failed"),
            (408, "retry"),
            (410, "failed"),
            (429, "retry"),
            (500, "retry"),
            (502, "retry"),
            (503, "retry"),
        ];
        for (code, want) in cases {
            let got = match decide(&response(*code, None), 1, young, &s, 0.5) {
                AttemptReport::Delivered { .. } => "delivered",
                AttemptReport::Retry { .. } => "retry",
                AttemptReport::Failed { .. } => "failed",
                AttemptReport::Release { .. } => "release",
            };
            assert_eq!(got, *want, "status {code}");
        }
    }

    #[test]
    fn schedule_steps_repeat_the_last_and_jitter_stays_in_range() {
        let sched = [Duration::from_secs(4), Duration::from_secs(40)];
        assert_eq!(backoff(&sched, 1, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(&sched, 2, 0.5), Duration::from_secs(40));
        assert_eq!(backoff(&sched, 9, 0.5), Duration::from_secs(40));
        assert_eq!(backoff(&sched, 1, 0.0), Duration::from_secs(3));
        assert!(backoff(&sched, 1, 0.999) < Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        let s = settings();
        let young = Duration::from_secs(1);
        let after = |r: AttemptReport| match r {
            AttemptReport::Retry { after, .. } => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            after(decide(&response(429, Some(120)), 1, young, &s, 0.5)),
            Duration::from_secs(120)
        );
        // Never sooner than the schedule.
        assert_eq!(
            after(decide(&response(503, Some(1)), 1, young, &s, 0.5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            after(decide(&response(429, Some(10_000_000)), 1, young, &s, 0.5)),
            MAX_RETRY_AFTER
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None, "dates would compare two clocks");
        h.insert(header::RETRY_AFTER, " 30 ".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
    }

    #[test]
    fn the_window_ends_upstream_failures_but_not_lost_connections() {
        let s = settings();
        let old = Duration::from_secs(3600);
        let failed = decide(&response(500, None), 7, old, &s, 0.5);
        assert!(
            matches!(&failed, AttemptReport::Failed { error, .. } if error.contains("gave up after 1h")),
            "{failed:?}"
        );
        let timeout = decide(&AttemptResult::Timeout(Duration::from_secs(30)), 7, old, &s, 0.5);
        assert!(matches!(timeout, AttemptReport::Failed { .. }), "{timeout:?}");
        let cut = decide(&AttemptResult::ConnectionLost("reset".into()), 7, old, &s, 0.5);
        assert!(
            matches!(
                cut,
                AttemptReport::Retry {
                    interrupted: true,
                    ..
                }
            ),
            "{cut:?}"
        );
        assert_eq!(
            decide(&AttemptResult::NoAgent, 1, old, &s, 0.5),
            AttemptReport::Release {
                after: Duration::ZERO
            }
        );
        assert!(matches!(
            decide(&AttemptResult::Busy, 1, old, &s, 0.5),
            AttemptReport::Release { .. }
        ));
    }
}
