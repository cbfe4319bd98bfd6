//! The conformance suite every [`Store`] backend must pass: one generic async function, run by
//! each backend's tests against a fresh store per case and a clock the suite moves by hand.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::*;

const LEASE: Duration = Duration::from_secs(60);

fn request(tunnel: &str, n: usize) -> NewDelivery {
    let mut headers = HeaderMap::new();
    headers.append("content-type", HeaderValue::from_static("application/json"));
    headers.append("x-multi", HeaderValue::from_static("a"));
    headers.append("x-multi", HeaderValue::from_static("b"));
    headers.append("x-raw", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
    NewDelivery {
        tunnel: tunnel.into(),
        method: "POST".into(),
        uri: format!("https://demo.relay.test/hooks/{n}?x=1"),
        headers,
        body: Bytes::from(format!("{{\"n\":{n}}}\0\u{1}binary")),
    }
}

fn claim_req(tunnel: &str, max: usize, ordered: bool) -> ClaimRequest {
    ClaimRequest {
        tunnel: tunnel.into(),
        max,
        ordered,
        lease: LEASE,
    }
}

fn retry(after: Duration) -> AttemptReport {
    AttemptReport::Retry {
        after,
        status: Some(500),
        error: "HTTP 500".into(),
        interrupted: false,
    }
}

async fn status_of(store: &dyn Store, id: &str) -> Status {
    store.show(id.into()).await.unwrap().summary.status
}

/// Run every case. `make` returns a fresh, empty store whose clock is the one given.
pub async fn run<F>(make: F)
where
    F: Fn(Arc<ManualClock>) -> Arc<dyn Store>,
{
    let fresh = || {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        (make(clock.clone()), clock)
    };
    let (s, c) = fresh();
    round_trip_keeps_the_request_exactly(&*s, &c).await;
    let (s, c) = fresh();
    claim_lease_and_finish(&*s, &c).await;
    let (s, c) = fresh();
    retries_wait_their_time_and_wake_moves_them(&*s, &c).await;
    let (s, c) = fresh();
    expired_leases_return_to_pending(&*s, &c).await;
    let (s, c) = fresh();
    renewed_leases_outlive_their_first_expiry(&*s, &c).await;
    let (s, c) = fresh();
    ordered_claims_only_the_head(&*s, &c).await;
    let (s, c) = fresh();
    release_does_not_count_an_attempt(&*s, &c).await;
    let (s, c) = fresh();
    replay_and_failed(&*s, &c).await;
    let (s, c) = fresh();
    list_filters_and_pages(&*s, &c).await;
    let (s, c) = fresh();
    purge_and_retention(&*s, &c).await;
    let (s, c) = fresh();
    stats_count_the_backlog_per_tunnel(&*s, &c).await;
}

async fn round_trip_keeps_the_request_exactly(s: &dyn Store, _c: &ManualClock) {
    let new = request("demo", 1);
    let id = s.enqueue(new.clone()).await.unwrap().id;
    let detail = s.show(id.clone()).await.unwrap();
    assert_eq!(detail.summary.status, Status::Pending);
    assert_eq!(detail.summary.path, "/hooks/1?x=1");
    assert_eq!(detail.summary.body_bytes, new.body.len() as u64);
    assert_eq!(detail.uri, new.uri);
    assert_eq!(detail.body, new.body);
    let multi: Vec<_> = detail.headers.iter().filter(|h| h.name == "x-multi").collect();
    assert_eq!(multi.len(), 2);
    let batch = s.claim(claim_req("demo", 10, false)).await.unwrap();
    assert_eq!(batch.items.len(), 1);
    let item = &batch.items[0];
    assert_eq!(item.lease.id, id);
    assert_eq!(item.method, "POST");
    assert_eq!(item.uri, new.uri);
    assert_eq!(item.headers, new.headers, "headers come back byte for byte");
    assert_eq!(item.body, new.body);
    assert!(matches!(
        s.show("nope".into()).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn claim_lease_and_finish(s: &dyn Store, c: &ManualClock) {
    let a = s.enqueue(request("demo", 1)).await.unwrap().id;
    let b = s.enqueue(request("other", 2)).await.unwrap().id;
    c.advance(Duration::from_secs(3));
    let batch = s.claim(claim_req("demo", 10, false)).await.unwrap();
    assert_eq!(batch.items.len(), 1, "other tunnels' deliveries are not claimed");
    let item = batch.items[0].clone();
    assert_eq!((item.attempt, item.age), (1, Duration::from_secs(3)));
    assert!(batch.backlog);
    let shown = s.show(a.clone()).await.unwrap().summary;
    assert!(shown.in_flight && shown.attempts == 1, "{shown:?}");
    assert!(
        s.claim(claim_req("demo", 10, false))
            .await
            .unwrap()
            .items
            .is_empty(),
        "leased"
    );
    assert!(
        s.finish(item.lease.clone(), AttemptReport::Delivered { status: 204 })
            .await
            .unwrap()
    );
    let d = s.show(a.clone()).await.unwrap();
    assert_eq!(d.summary.status, Status::Delivered);
    assert!(!d.summary.in_flight);
    assert!(d.summary.finished_at.is_some() && d.summary.next_attempt_at.is_none());
    assert_eq!(d.attempts_log.len(), 1);
    assert_eq!(d.attempts_log[0].outcome, AttemptOutcome::Delivered);
    assert_eq!(d.attempts_log[0].status, Some(204));
    // A second report for a finished delivery is ignored.
    assert!(!s.finish(item.lease, retry(Duration::ZERO)).await.unwrap());
    assert_eq!(status_of(s, &a).await, Status::Delivered);
    let after = s.claim(claim_req("demo", 10, false)).await.unwrap();
    assert!(after.items.is_empty() && !after.backlog && after.next_due_in.is_none());
    assert_eq!(status_of(s, &b).await, Status::Pending);
}

async fn retries_wait_their_time_and_wake_moves_them(s: &dyn Store, c: &ManualClock) {
    let id = s.enqueue(request("demo", 1)).await.unwrap().id;
    let item = s
        .claim(claim_req("demo", 1, false))
        .await
        .unwrap()
        .items
        .remove(0);
    assert!(
        s.finish(item.lease, retry(Duration::from_secs(10)))
            .await
            .unwrap()
    );
    let batch = s.claim(claim_req("demo", 1, false)).await.unwrap();
    assert!(batch.items.is_empty());
    assert_eq!(batch.next_due_in, Some(Duration::from_secs(10)));
    c.advance(Duration::from_secs(10));
    let item = s
        .claim(claim_req("demo", 1, false))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(item.attempt, 2);
    assert!(
        s.finish(item.lease, retry(Duration::from_secs(3600)))
            .await
            .unwrap()
    );
    assert_eq!(s.wake("other".into()).await.unwrap(), 0);
    assert_eq!(s.wake("demo".into()).await.unwrap(), 1);
    let item = s
        .claim(claim_req("demo", 1, false))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(item.attempt, 3);
    let log = s.show(id).await.unwrap().attempts_log;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].outcome, AttemptOutcome::Retry);
    assert_eq!(log[0].status, Some(500));
    assert_eq!(log[0].error.as_deref(), Some("HTTP 500"));
}

async fn expired_leases_return_to_pending(s: &dyn Store, c: &ManualClock) {
    let id = s.enqueue(request("demo", 1)).await.unwrap().id;
    let first = s.claim(claim_req("demo", 1, false)).await.unwrap();
    assert_eq!(
        first.next_due_in,
        Some(LEASE),
        "the worker wakes when the lease ends"
    );
    let stale = first.items[0].clone();
    c.advance(LEASE + Duration::from_millis(1));
    let again = s
        .claim(claim_req("demo", 1, false))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(again.attempt, 2);
    assert_ne!(again.lease, stale.lease);
    // The stale claimer's failure must not overwrite the new claim.
    let failed = AttemptReport::Failed {
        status: Some(400),
        error: "HTTP 400".into(),
    };
    assert!(!s.finish(stale.lease, failed).await.unwrap());
    assert_eq!(status_of(s, &id).await, Status::Pending);
    let log = s.show(id.clone()).await.unwrap().attempts_log;
    assert_eq!(log[0].outcome, AttemptOutcome::Interrupted, "{log:?}");
    // Interrupted by the tunnel: still pending, never failed.
    let cut = AttemptReport::Retry {
        after: Duration::ZERO,
        status: None,
        error: "connection lost".into(),
        interrupted: true,
    };
    assert!(s.finish(again.lease, cut).await.unwrap());
    assert_eq!(status_of(s, &id).await, Status::Pending);
    assert_eq!(s.claim(claim_req("demo", 1, false)).await.unwrap().items.len(), 1);
}

/// A renewed lease is not claimable after its first expiry; one not renewed is; renewing a lease
/// someone else took over changes nothing and is reported as lost.
async fn renewed_leases_outlive_their_first_expiry(s: &dyn Store, c: &ManualClock) {
    let a = s.enqueue(request("demo", 1)).await.unwrap().id;
    let b = s.enqueue(request("demo", 2)).await.unwrap().id;
    let first = s.claim(claim_req("demo", 10, false)).await.unwrap().items;
    let lease_of = |id: &str| first.iter().find(|i| i.lease.id == id).unwrap().lease.clone();
    let (lease_a, stale_b) = (lease_of(&a), lease_of(&b));
    assert!(s.renew(Vec::new(), LEASE).await.unwrap().is_empty());

    c.advance(LEASE / 2);
    assert!(s.renew(vec![lease_a.clone()], LEASE).await.unwrap().is_empty());
    c.advance(LEASE / 2 + Duration::from_millis(1));
    // Past the first expiry: only the delivery whose lease was not renewed is taken.
    let second = s.claim(claim_req("demo", 10, false)).await.unwrap().items;
    let ids: Vec<&str> = second.iter().map(|i| i.lease.id.as_str()).collect();
    assert_eq!(ids, [b.as_str()], "a renewed lease was claimed again");
    assert_eq!(second[0].attempt, 2);

    // One call renews what is held and reports what was taken over, leaving that untouched.
    let lost = s
        .renew(vec![lease_a.clone(), stale_b.clone()], LEASE * 2)
        .await
        .unwrap();
    assert_eq!(lost, [stale_b]);
    c.advance(LEASE + Duration::from_millis(1));
    let third = s.claim(claim_req("demo", 10, false)).await.unwrap().items;
    let ids: Vec<&str> = third.iter().map(|i| i.lease.id.as_str()).collect();
    assert_eq!(
        ids,
        [b.as_str()],
        "the stale renewal extended the new claim, or `a` lost its lease"
    );
    assert_eq!(third[0].attempt, 3);
    assert!(
        s.finish(lease_a, AttemptReport::Delivered { status: 200 })
            .await
            .unwrap()
    );
    assert_eq!(status_of(s, &a).await, Status::Delivered);
    // A finished delivery's lease is gone too.
    let lease_b = third[0].lease.clone();
    assert!(
        s.finish(lease_b.clone(), AttemptReport::Delivered { status: 200 })
            .await
            .unwrap()
    );
    assert_eq!(s.renew(vec![lease_b.clone()], LEASE).await.unwrap(), [lease_b]);
}

async fn ordered_claims_only_the_head(s: &dyn Store, c: &ManualClock) {
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for n in 0..3 {
            v.push(s.enqueue(request("demo", n)).await.unwrap().id);
        }
        v
    };
    let batch = s.claim(claim_req("demo", 5, true)).await.unwrap();
    assert_eq!(batch.items.len(), 1);
    assert_eq!(batch.items[0].lease.id, ids[0]);
    assert!(
        s.claim(claim_req("demo", 5, true))
            .await
            .unwrap()
            .items
            .is_empty(),
        "head in flight"
    );
    assert!(
        s.finish(batch.items[0].lease.clone(), retry(Duration::from_secs(5)))
            .await
            .unwrap()
    );
    let blocked = s.claim(claim_req("demo", 5, true)).await.unwrap();
    assert!(
        blocked.items.is_empty(),
        "the head blocks the line while it waits"
    );
    assert_eq!(blocked.next_due_in, Some(Duration::from_secs(5)));
    c.advance(Duration::from_secs(5));
    let head = s.claim(claim_req("demo", 5, true)).await.unwrap().items.remove(0);
    assert_eq!(head.lease.id, ids[0]);
    assert!(
        s.finish(head.lease, AttemptReport::Delivered { status: 200 })
            .await
            .unwrap()
    );
    for want in &ids[1..] {
        let item = s.claim(claim_req("demo", 5, true)).await.unwrap().items.remove(0);
        assert_eq!(&item.lease.id, want);
        assert!(
            s.finish(item.lease, AttemptReport::Delivered { status: 200 })
                .await
                .unwrap()
        );
    }
}

async fn release_does_not_count_an_attempt(s: &dyn Store, _c: &ManualClock) {
    let id = s.enqueue(request("demo", 1)).await.unwrap().id;
    let item = s
        .claim(claim_req("demo", 1, false))
        .await
        .unwrap()
        .items
        .remove(0);
    let release = AttemptReport::Release {
        after: Duration::ZERO,
    };
    assert!(s.finish(item.lease, release).await.unwrap());
    let d = s.show(id).await.unwrap();
    assert_eq!((d.summary.attempts, d.attempts_log.len()), (0, 0));
    let item = s
        .claim(claim_req("demo", 1, false))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(item.attempt, 1);
}

async fn replay_and_failed(s: &dyn Store, c: &ManualClock) {
    let a = s.enqueue(request("demo", 1)).await.unwrap().id;
    let b = s.enqueue(request("other", 2)).await.unwrap().id;
    for tunnel in ["demo", "other"] {
        let item = s
            .claim(claim_req(tunnel, 1, false))
            .await
            .unwrap()
            .items
            .remove(0);
        let failed = AttemptReport::Failed {
            status: Some(400),
            error: "HTTP 400: bad".into(),
        };
        assert!(s.finish(item.lease, failed).await.unwrap());
    }
    let d = s.show(a.clone()).await.unwrap().summary;
    assert_eq!((d.status, d.last_status), (Status::Failed, Some(400)));
    assert!(
        s.claim(claim_req("demo", 1, false))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    c.advance(Duration::from_secs(100));
    let replayed = s.replay(a.clone()).await.unwrap();
    assert_eq!(replayed.status, Status::Pending);
    let item = s
        .claim(claim_req("demo", 1, false))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(
        (item.attempt, item.age),
        (2, Duration::ZERO),
        "a replay opens a fresh window"
    );
    assert!(matches!(
        s.replay("missing".into()).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.replay_failed(Some("demo".into())).await.unwrap(), 0);
    assert_eq!(s.replay_failed(None).await.unwrap(), 1);
    assert_eq!(status_of(s, &b).await, Status::Pending);
}

async fn list_filters_and_pages(s: &dyn Store, _c: &ManualClock) {
    for n in 0..5 {
        s.enqueue(request("demo", n)).await.unwrap();
    }
    s.enqueue(request("other", 9)).await.unwrap();
    let item = s
        .claim(claim_req("demo", 1, false))
        .await
        .unwrap()
        .items
        .remove(0);
    s.finish(item.lease, AttemptReport::Delivered { status: 200 })
        .await
        .unwrap();
    let all = s
        .list(ListFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    let demo = ListFilter {
        tunnel: Some("demo".into()),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(s.list(demo.clone()).await.unwrap().len(), 5);
    let delivered = ListFilter {
        status: Some(Status::Delivered),
        ..demo.clone()
    };
    assert_eq!(s.list(delivered).await.unwrap().len(), 1);
    let page1 = s
        .list(ListFilter {
            limit: 2,
            ..demo.clone()
        })
        .await
        .unwrap();
    let page2 = s
        .list(ListFilter {
            limit: 2,
            before_seq: Some(page1[1].seq),
            ..demo
        })
        .await
        .unwrap();
    assert_eq!(page2.len(), 2);
    assert!(page2[0].seq < page1[1].seq);
}

async fn purge_and_retention(s: &dyn Store, c: &ManualClock) {
    let day = Duration::from_secs(24 * 3600);
    let finish_one = |report: AttemptReport| async move {
        let item = s
            .claim(claim_req("demo", 1, false))
            .await
            .unwrap()
            .items
            .remove(0);
        assert!(s.finish(item.lease.clone(), report).await.unwrap());
        item.lease.id
    };
    let old_delivered = {
        s.enqueue(request("demo", 1)).await.unwrap();
        finish_one(AttemptReport::Delivered { status: 200 }).await
    };
    let old_failed = {
        s.enqueue(request("demo", 2)).await.unwrap();
        finish_one(AttemptReport::Failed {
            status: Some(404),
            error: "HTTP 404".into(),
        })
        .await
    };
    let old_pending = s.enqueue(request("demo", 3)).await.unwrap().id;
    c.advance(8 * day);
    let recent = {
        s.enqueue(request("other", 4)).await.unwrap();
        let item = s
            .claim(claim_req("other", 1, false))
            .await
            .unwrap()
            .items
            .remove(0);
        s.finish(item.lease.clone(), AttemptReport::Delivered { status: 200 })
            .await
            .unwrap();
        item.lease.id
    };
    let retention = Retention {
        delivered: 7 * day,
        failed: 30 * day,
    };
    assert_eq!(s.prune(retention).await.unwrap(), 1);
    assert!(matches!(
        s.show(old_delivered).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(status_of(s, &old_failed).await, Status::Failed);
    assert_eq!(
        status_of(s, &old_pending).await,
        Status::Pending,
        "pending is never pruned"
    );
    assert_eq!(status_of(s, &recent).await, Status::Delivered);
    let purge = |status, tunnel: Option<&str>, older_than| PurgeFilter {
        status,
        tunnel: tunnel.map(String::from),
        older_than,
    };
    assert_eq!(
        s.purge(purge(Status::Delivered, Some("demo"), None))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.purge(purge(Status::Delivered, None, Some(day))).await.unwrap(),
        0,
        "too recent"
    );
    assert_eq!(s.purge(purge(Status::Delivered, None, None)).await.unwrap(), 1);
    assert!(matches!(s.show(recent).await, Err(StoreError::NotFound(_))));
    c.advance(23 * day);
    assert_eq!(
        s.prune(retention).await.unwrap(),
        1,
        "failed go after their own retention"
    );
    assert!(matches!(s.show(old_failed).await, Err(StoreError::NotFound(_))));
    assert_eq!(
        s.purge(purge(Status::Pending, Some("demo"), None)).await.unwrap(),
        1
    );
    assert!(
        s.list(ListFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
}

async fn stats_count_the_backlog_per_tunnel(s: &dyn Store, c: &ManualClock) {
    assert!(s.stats().await.unwrap().tunnels.is_empty());
    let first = s.enqueue(request("demo", 1)).await.unwrap().id;
    c.advance(Duration::from_secs(10));
    for n in 2..=4 {
        s.enqueue(request("demo", n)).await.unwrap();
    }
    let other = s.enqueue(request("other", 5)).await.unwrap().id;
    c.advance(Duration::from_secs(5));
    // One of demo's in flight; other's only delivery fails.
    let claimed = s.claim(claim_req("demo", 1, false)).await.unwrap().items;
    assert_eq!(claimed[0].lease.id, first);
    let item = s
        .claim(claim_req("other", 1, false))
        .await
        .unwrap()
        .items
        .remove(0);
    let failed = AttemptReport::Failed {
        status: Some(400),
        error: "HTTP 400".into(),
    };
    s.finish(item.lease, failed).await.unwrap();

    let stats = s.stats().await.unwrap();
    let demo = &stats.tunnels["demo"];
    assert_eq!((demo.pending, demo.in_flight, demo.failed), (4, 1, 0), "{demo:?}");
    assert_eq!(demo.oldest_pending, Some(Timestamp(1_700_000_000_000)));
    assert_eq!(demo.oldest_pending_age, Some(Duration::from_secs(15)));
    let o = &stats.tunnels["other"];
    assert_eq!((o.pending, o.in_flight, o.failed), (0, 0, 1), "{o:?}");
    assert_eq!(o.oldest_pending, None);

    // A delivered one leaves the counts; the next oldest pending is now the oldest.
    s.finish(claimed[0].lease.clone(), AttemptReport::Delivered { status: 200 })
        .await
        .unwrap();
    let demo = s.stats().await.unwrap().tunnels["demo"].clone();
    assert_eq!((demo.pending, demo.in_flight), (3, 0));
    assert_eq!(demo.oldest_pending_age, Some(Duration::from_secs(5)));
    s.purge(PurgeFilter {
        status: Status::Failed,
        tunnel: None,
        older_than: None,
    })
    .await
    .unwrap();
    assert!(
        !s.stats().await.unwrap().tunnels.contains_key("other"),
        "{other} purged"
    );
}
