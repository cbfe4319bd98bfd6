//! The delivery workers: one per queued tunnel. While an agent of the tunnel is connected, a
//! worker claims due deliveries from the store under a lease, sends each as one stream through
//! the agent with `Ponte-Delivery-Id` and `Ponte-Attempt`, and records the result the retry
//! policy ([`super::retry`]) gives. When an agent (re)connects every pending delivery of the
//! tunnel is made due at once instead of waiting out its backoff. A sweeper deletes finished
//! deliveries past their retention.
//!
//! The worker keeps nothing the store does not know: if the relay dies mid-attempt, the lease in
//! the store is all that is left, and it expires within 30 s ([`super::lease`]) since nothing
//! renews it; the next claimer (another node, or this one after a restart) takes it back.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::access::TARGET as ACCESS;
use super::lease::{self, HeldLeases, Holding, LEASE};
use super::metrics::{AttemptOutcome, RelayMetrics};
use super::registry::TunnelState;
use super::retry::{self, AttemptResult};
use super::session::SendError;
use super::state::{RelayState, TunnelQueue};
use super::stream::stream_request;
use crate::config::relay::DeliveryMode;
use crate::protocol::{PONTE_ATTEMPT, PONTE_DELIVERY_ID, PONTE_ERROR};
use crate::store::{AttemptReport, ClaimRequest, Claimed, Retention, Store};

/// Longest sleep between two claims when nothing says when work is due: a safety net for
/// deliveries other processes make due (a shared PostgreSQL store) and for clock steps.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Wait after a store error before claiming again.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Most bytes of a failed response body kept in the attempt log.
const EXCERPT_BYTES: usize = 200;
/// Longest wait for that excerpt.
const EXCERPT_WAIT: Duration = Duration::from_secs(1);
/// Longest pause between two retention sweeps.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Start a worker for every queued tunnel and the retention sweeper. They stop claiming when
/// `shutdown` is cancelled and end once their in-flight attempts have reported.
pub fn start(state: &Arc<RelayState>, shutdown: CancellationToken) -> TaskTracker {
    let tracker = TaskTracker::new();
    let Some(queues) = &state.queues else {
        tracker.close();
        return tracker;
    };
    for tunnel in state.registry.tunnels() {
        if let Some(queue) = queues.tunnel(&tunnel.name) {
            let worker = Worker {
                tunnel: tunnel.clone(),
                queue: queue.clone(),
                store: queues.store.clone(),
                shutdown: shutdown.clone(),
                metrics: state.metrics.clone(),
            };
            let span = tracing::info_span!("delivery", tunnel = %tunnel.name);
            tracker.spawn(worker.run().instrument(span));
        }
    }
    let retention = Retention {
        delivered: state.config.retention.delivered,
        failed: state.config.retention.failed,
    };
    tracker.spawn(sweep(queues.store.clone(), retention, shutdown));
    tracker.close();
    tracker
}

struct Worker {
    tunnel: Arc<TunnelState>,
    queue: Arc<TunnelQueue>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    metrics: Option<Arc<RelayMetrics>>,
}

impl Worker {
    async fn run(self) {
        let settings = &self.tunnel.config.queue;
        let ordered = settings.ordered;
        let slots = Arc::new(Semaphore::new(if ordered {
            1
        } else {
            settings.concurrency as usize
        }));
        // Leases of running attempts are renewed until every attempt has reported, including
        // those still running after shutdown began.
        let held = Arc::new(HeldLeases::default());
        let stop_renewing = CancellationToken::new();
        let renewer = tokio::spawn(
            lease::renew(
                self.store.clone(),
                held.clone(),
                lease::RENEW_EVERY,
                stop_renewing.clone(),
            )
            .in_current_span(),
        );
        let mut connected = self.tunnel.watch_connected();
        // Agents seen at the last look, and whether the count changed since. A drop and
        // reconnect between two looks shows as "changed, same count": that is a reconnect too.
        let mut last_agents = 0;
        let mut changed = true;
        let mut announced = false;
        let mut in_flight: JoinSet<()> = JoinSet::new();
        // Work other relay nodes commit to a shared store (PostgreSQL) wakes this worker too.
        let remote_work = self.store.work_signal(self.tunnel.name.as_str());
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let agents = *connected.borrow_and_update();
            let reconnected = changed && agents > 0 && agents >= last_agents.max(1);
            (last_agents, changed) = (agents, false);
            let mut pause = IDLE_POLL;
            if agents > 0 {
                if reconnected {
                    // An agent (re)connected: whatever waits out a backoff goes now.
                    match self.store.wake(self.tunnel.name.to_string()).await {
                        Ok(n) if n > 0 => {
                            tracing::info!(woken = n, "agent connected; delivering the backlog now")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not wake pending deliveries"),
                    }
                }
                let free = slots.available_permits();
                if free > 0 {
                    let request = ClaimRequest {
                        tunnel: self.tunnel.name.to_string(),
                        max: free,
                        ordered,
                        lease: LEASE,
                    };
                    match self.store.claim(request).await {
                        Ok(batch) => {
                            self.queue.set_backlog(batch.backlog);
                            if self.tunnel.config.delivery == DeliveryMode::Direct {
                                if !batch.backlog && in_flight.is_empty() {
                                    // Nothing left from an earlier `queue` configuration.
                                    break;
                                }
                                if !batch.items.is_empty() && !announced {
                                    announced = true;
                                    tracing::info!(
                                        "the tunnel is `direct` now but has deliveries stored from an earlier configuration; delivering them"
                                    );
                                }
                            }
                            for item in batch.items {
                                let Ok(permit) = slots.clone().try_acquire_owned() else {
                                    break;
                                };
                                let holding = held.hold(&item.lease);
                                let attempt = Attempt {
                                    tunnel: self.tunnel.clone(),
                                    queue: self.queue.clone(),
                                    store: self.store.clone(),
                                    metrics: self.metrics.clone(),
                                    item,
                                };
                                in_flight.spawn(attempt.run(permit, holding, ordered));
                            }
                            // With every slot taken, the next finished attempt wakes the loop.
                            if let Some(due) = batch.next_due_in {
                                pause = pause.min(due);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "claiming deliveries failed; retrying");
                            pause = STORE_ERROR_PAUSE;
                        }
                    }
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.queue.wake.notified() => {}
                _ = signalled(remote_work.as_deref()) => {}
                res = connected.changed() => match res {
                    Ok(()) => changed = true,
                    Err(_) => break,
                },
                Some(res) = in_flight.join_next(), if !in_flight.is_empty() => log_panic(res),
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // Let in-flight attempts report (each is bounded by its own timeout); the store takes
        // back the lease of any that cannot.
        while let Some(res) = in_flight.join_next().await {
            log_panic(res);
        }
        stop_renewing.cancel();
        if let Err(e) = renewer.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "renewing delivery leases panicked");
        }
    }
}

/// Wait for `signal`, or forever when there is none.
async fn signalled(signal: Option<&tokio::sync::Notify>) {
    match signal {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

fn log_panic(res: Result<(), tokio::task::JoinError>) {
    if let Err(e) = res
        && e.is_panic()
    {
        tracing::error!(error = %e, "a delivery attempt panicked; its lease will expire and it will be retried");
    }
}

/// One attempt of one claimed delivery.
struct Attempt {
    tunnel: Arc<TunnelState>,
    queue: Arc<TunnelQueue>,
    store: Arc<dyn Store>,
    metrics: Option<Arc<RelayMetrics>>,
    item: Claimed,
}

impl Attempt {
    /// Send, decide, record. `slot` is the concurrency permit: in unordered mode it is given
    /// back as soon as the upstream has answered (recording the result does not load the
    /// upstream); in ordered mode only after the result is recorded, so the next delivery cannot
    /// start before the store knows this one is done. `holding` keeps the lease renewed while
    /// the attempt runs.
    async fn run(self, slot: tokio::sync::OwnedSemaphorePermit, holding: Holding, ordered: bool) {
        let settings = &self.tunnel.config.queue;
        let started = Instant::now();
        let result = self.send().await;
        let slot = if ordered {
            Some(slot)
        } else {
            drop(slot);
            // A slot is free: let the worker claim the next delivery now.
            self.queue.wake.notify_one();
            None
        };
        let age = self.item.age + started.elapsed();
        let report = retry::decide(&result, self.item.attempt, age, settings, rand::random::<f64>());
        let id = &self.item.lease.id;
        self.log(&report, &result, started.elapsed());
        let outcome = outcome_of(&report);
        // Not renewed from here: `finish` ends the lease, and a renewal racing it would read as lost.
        drop(holding);
        match self.store.finish(self.item.lease.clone(), report).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(%id, "the delivery changed during the attempt (lease lost, replayed or purged)")
            }
            Err(e) => {
                tracing::warn!(%id, error = %e, "could not record the attempt; the lease will expire and it will be retried")
            }
        }
        // Counted once the store has the outcome, so a scrape never shows an attempt as done
        // while its delivery still reads as pending in the queue gauges.
        if let (Some(m), Some(outcome)) = (&self.metrics, outcome) {
            m.tunnel(&self.tunnel.name).attempt(outcome);
        }
        drop(slot);
    }

    /// One access-log line per attempt that ran: delivered at INFO, failures at WARN.
    fn log(&self, report: &AttemptReport, result: &AttemptResult, took: Duration) {
        let id = self.item.lease.id.as_str();
        let attempt = self.item.attempt;
        let tunnel = self.tunnel.name.as_str();
        let duration_ms = (took.as_secs_f64() * 1e6).round() / 1e3;
        let status = match result {
            AttemptResult::Response { status, .. } => Some(status.as_u16()),
            _ => None,
        };
        match report {
            AttemptReport::Delivered { status } => tracing::info!(
                target: ACCESS,
                tunnel,
                id,
                attempt,
                outcome = "delivered",
                status,
                duration_ms,
                "delivery attempt"
            ),
            AttemptReport::Retry {
                after,
                error,
                interrupted,
                ..
            } => tracing::warn!(
                target: ACCESS,
                tunnel,
                id,
                attempt,
                outcome = if *interrupted { "interrupted" } else { "retry" },
                status,
                error = error.as_str(),
                duration_ms,
                retry_in = %humantime::format_duration(Duration::from_millis(after.as_millis() as u64)),
                "delivery attempt failed; will retry"
            ),
            AttemptReport::Failed { error, .. } => tracing::warn!(
                target: ACCESS,
                tunnel,
                id,
                attempt,
                outcome = "failed",
                status,
                error = error.as_str(),
                duration_ms,
                "delivery failed; replay it with `ponte deliveries replay`"
            ),
            AttemptReport::Release { .. } => {
                tracing::debug!(%id, "attempt not started; released")
            }
        }
    }

    async fn send(&self) -> AttemptResult {
        let Some(session) = self.tunnel.pick() else {
            return AttemptResult::NoAgent;
        };
        let item = &self.item;
        let mut req = match stream_request(&item.method, &item.uri, item.headers.clone(), item.body.clone()) {
            Ok(req) => req,
            Err(e) => return AttemptResult::Unsendable(e.to_string()),
        };
        if let Ok(v) = HeaderValue::from_str(&item.lease.id) {
            req.headers_mut().insert(PONTE_DELIVERY_ID.clone(), v);
        }
        req.headers_mut()
            .insert(PONTE_ATTEMPT.clone(), HeaderValue::from(item.attempt));
        let timeout = self.tunnel.config.queue.attempt_timeout;
        let sent = Instant::now();
        match self.tunnel.send(session, req, timeout).await {
            Ok((resp, _permit)) => {
                if let Some(m) = &self.metrics {
                    m.tunnel(&self.tunnel.name).round_trip(sent.into_std());
                }
                let status = resp.status();
                let retry_after = retry::retry_after(resp.headers());
                let detail = if status.is_success() {
                    String::new()
                } else {
                    describe(resp).await
                };
                AttemptResult::Response {
                    status,
                    retry_after,
                    detail,
                }
            }
            Err(SendError::Timeout) => AttemptResult::Timeout(timeout),
            Err(SendError::Busy(_)) => AttemptResult::Busy,
            Err(SendError::Failed(e)) => AttemptResult::ConnectionLost(e.to_string()),
        }
    }
}

/// How an attempt is counted (`None`: it never started).
fn outcome_of(report: &AttemptReport) -> Option<AttemptOutcome> {
    match report {
        AttemptReport::Delivered { .. } => Some(AttemptOutcome::Delivered),
        AttemptReport::Retry {
            interrupted: true, ..
        } => Some(AttemptOutcome::Interrupted),
        AttemptReport::Retry { .. } => Some(AttemptOutcome::Retry),
        AttemptReport::Failed { .. } => Some(AttemptOutcome::Failed),
        AttemptReport::Release { .. } => None,
    }
}

/// `HTTP 500: <first bytes of the body>`, naming the agent when it answered for the upstream.
async fn describe(resp: http::Response<Incoming>) -> String {
    let status = resp.status().as_u16();
    let by_agent = resp
        .headers()
        .get(&PONTE_ERROR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = resp.into_body();
    let read = async {
        let mut buf = Vec::new();
        while buf.len() < EXCERPT_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                _ => break,
            }
        }
        buf
    };
    let mut excerpt = tokio::time::timeout(EXCERPT_WAIT, read).await.unwrap_or_default();
    excerpt.truncate(EXCERPT_BYTES);
    let text = String::from_utf8_lossy(&excerpt)
        .trim()
        .replace(['\r', '\n'], " ");
    let who = match by_agent {
        Some(code) => format!("HTTP {status} from the agent ({code})"),
        None => format!("HTTP {status}"),
    };
    if text.is_empty() {
        who
    } else {
        format!("{who}: {text}")
    }
}

/// Delete finished deliveries past their retention, at an interval that keeps short retentions
/// (tests, tight disks) honest without sweeping a large store needlessly often.
async fn sweep(store: Arc<dyn Store>, retention: Retention, shutdown: CancellationToken) {
    let interval =
        (retention.delivered.min(retention.failed) / 2).clamp(Duration::from_millis(50), MAX_SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match store.prune(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "finished deliveries past their retention deleted"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; will try again"),
        }
    }
}
