//! What one client connection is doing: requests in progress, when it was last busy, and which
//! requests the client cancelled. The connection's driver closes it when it stays idle (or never
//! finishes its first request's headers); the reset budget hears of every cancelled request.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::resets::ConnResets;
use crate::BoxError;
use crate::body::Body;

/// Activity of one connection.
pub struct Activity {
    opened: Instant,
    active: AtomicUsize,
    seen_request: AtomicBool,
    last_busy: Mutex<Instant>,
    changed: Notify,
    resets: ConnResets,
}

/// Why a connection should be closed for idleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Its first request's headers never arrived in time (slowloris, or a silent connection).
    NoRequest,
    /// No request in progress for the idle timeout.
    Quiet,
}

impl Activity {
    /// A connection opened now, with its reset budget.
    pub fn new(resets: ConnResets) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Activity {
            opened: now,
            active: AtomicUsize::new(0),
            seen_request: AtomicBool::new(false),
            last_busy: Mutex::new(now),
            changed: Notify::new(),
            resets,
        })
    }

    /// The connection's reset budget.
    pub fn resets(&self) -> &ConnResets {
        &self.resets
    }

    /// A request's headers arrived; the request counts as in progress until the guard (or the
    /// response body it moves into) is dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.seen_request.store(true, Ordering::Release);
        self.active.fetch_add(1, Ordering::AcqRel);
        self.touch();
        RequestGuard {
            activity: self.clone(),
            started: Instant::now(),
            done: false,
        }
    }

    fn touch(&self) {
        *self.last_busy.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.changed.notify_waiters();
    }

    /// Resolves when the connection should be closed: no complete request within
    /// `header_timeout` of opening, or no request in progress for `idle_timeout`. Frames that
    /// are not requests (PING, SETTINGS) do not keep a connection alive.
    pub async fn idle(&self, header_timeout: Duration, idle_timeout: Duration) -> Idle {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before reading the state, so a change in between is not missed.
            changed.as_mut().enable();
            if self.active.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            let (deadline, reason) = if self.seen_request.load(Ordering::Acquire) {
                let last = *self.last_busy.lock().unwrap_or_else(|p| p.into_inner());
                (last + idle_timeout, Idle::Quiet)
            } else {
                (self.opened + header_timeout, Idle::NoRequest)
            };
            tokio::select! {
                _ = changed => continue,
                _ = tokio::time::sleep_until(deadline) => return reason,
            }
        }
    }
}

/// One request in progress. Dropped unfinished (the client reset the stream or went away before
/// its response was complete), it counts against the connection's reset budget.
pub struct RequestGuard {
    activity: Arc<Activity>,
    started: Instant,
    done: bool,
}

impl RequestGuard {
    fn finish(&mut self) {
        self.done = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.done {
            self.activity.resets.record(self.started.elapsed());
        }
        self.activity.active.fetch_sub(1, Ordering::AcqRel);
        self.activity.touch();
    }
}

/// A response body carrying its request's guard: the request is finished when the body ends
/// (or fails on the relay's side), cancelled when the client drops it before.
pub struct Tracked {
    inner: Body,
    guard: RequestGuard,
}

impl Tracked {
    /// Attach `guard` to the response body `inner`.
    pub fn new(inner: Body, guard: RequestGuard) -> Self {
        Tracked { inner, guard }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A body with nothing left to send (empty replies, upgrades) ends without a poll.
        if self.inner.is_end_stream() {
            self.guard.finish();
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            // Ended, or failed on our side (agent reset, idle timeout): not the client's doing.
            self.guard.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::relay::Limits;
    use crate::relay::server::resets::ResetBudgets;

    fn activity() -> Arc<Activity> {
        let budgets = ResetBudgets::new(&Limits::default(), false);
        Activity::new(budgets.connection("192.0.2.1".parse().unwrap()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_idle_after_the_header_timeout() {
        let a = activity();
        let started = Instant::now();
        let why = a.idle(Duration::from_secs(10), Duration::from_secs(60)).await;
        assert_eq!(
            (why, started.elapsed()),
            (Idle::NoRequest, Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_progress_keep_a_connection_busy() {
        let a = activity();
        let guard = a.begin();
        let watcher = {
            let a = a.clone();
            tokio::spawn(async move { a.idle(Duration::from_secs(10), Duration::from_secs(60)).await })
        };
        // A long request: no timer runs while it is in progress.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!watcher.is_finished());
        let ended = Instant::now();
        drop(guard);
        assert_eq!(watcher.await.unwrap(), Idle::Quiet);
        assert_eq!(ended.elapsed(), Duration::from_secs(60));
    }
}
