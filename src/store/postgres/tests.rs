//! The PostgreSQL store against a real server this binary starts (see
//! `tests/support/postgres.rs`): the shared conformance suite, several nodes claiming at once, a
//! node with a wrong clock, the server stopped under load, TLS, the size cap and cross-node
//! wake-ups. Without PostgreSQL the tests print why and pass, except under `CI=true`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

use super::*;
use crate::store::{Clock, ManualClock, Status};

#[path = "../../../tests/support/postgres.rs"]
mod cluster;

fn parse(url: &str) -> PostgresUrl {
    PostgresUrl::parse(url).expect("test URL parses")
}

async fn open(url: &str) -> PgStore {
    PgStore::open(&parse(url), OpenOptions::default())
        .await
        .expect("open")
}

fn delivery(tunnel: &str, n: usize, body_len: usize) -> NewDelivery {
    let mut headers = HeaderMap::new();
    headers.insert("x-n", n.into());
    NewDelivery {
        tunnel: tunnel.into(),
        method: "POST".into(),
        uri: format!("https://relay.test/hook/{n}"),
        headers,
        body: Bytes::from(vec![b'x'; body_len]),
    }
}

/// Enqueue `n` deliveries of tunnel `demo` with `body_len`-byte bodies, `at_once` at a time.
async fn enqueue_many(store: &PgStore, n: usize, body_len: usize, at_once: usize) {
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(store.enqueue(delivery("demo", i, body_len)));
        if pending.len() == at_once {
            for r in futures_util::future::join_all(pending.drain(..)).await {
                r.unwrap();
            }
        }
    }
    for r in futures_util::future::join_all(pending).await {
        r.unwrap();
    }
}

fn claim_req(tunnel: &str, max: usize) -> ClaimRequest {
    ClaimRequest {
        tunnel: tunnel.into(),
        max,
        ordered: false,
        lease: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_conformance_suite() {
    let Some(cluster) = cluster::shared() else { return };
    crate::store::conformance::run(|clock: Arc<ManualClock>| {
        // A fresh database per case; the suite's `make` is synchronous.
        let url = parse(&cluster.database(""));
        let options = OpenOptions {
            max_bytes: None,
            clock,
            metrics: None,
        };
        let store = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(PgStore::open_with_test_clock(&url, options))
        })
        .expect("open");
        Arc::new(store) as Arc<dyn Store>
    })
    .await;
}

#[tokio::test]
async fn nodes_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(cluster) = cluster::shared() else { return };
    let url = cluster.database("");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::open(&parse(&url), OpenOptions::default()).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap().expect("every node opens the fresh database");
    }
    let name = url.rsplit('/').next().unwrap();
    assert_eq!(
        cluster.psql(
            name,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"
        ),
        "1,2"
    );
    cluster.psql(
        name,
        "INSERT INTO schema_migrations (version, description) VALUES (99, 'future')",
    );
    let err = PgStore::open(&parse(&url), OpenOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

/// Four nodes claim 2,000 deliveries (retrying a third of the attempts once): no delivery is
/// ever held by two of them at once, and every one ends delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_claiming_together_never_share_a_delivery() {
    let Some(cluster) = cluster::shared() else { return };
    let url = cluster.database("");
    let first = open(&url).await;
    const N: usize = 2000;
    enqueue_many(&first, N, 64, 256).await;
    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    let delivered: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut nodes = tokio::task::JoinSet::new();
    for _node in 0..4 {
        let store: Arc<dyn Store> = Arc::new(open(&url).await);
        let (held, delivered) = (held.clone(), delivered.clone());
        nodes.spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "claims did not finish in time"
                );
                let batch = store.claim(claim_req("demo", 16)).await.unwrap();
                if batch.items.is_empty() {
                    if !batch.backlog {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                for item in batch.items {
                    let id = item.lease.id.clone();
                    assert!(
                        held.lock().unwrap().insert(id.clone()),
                        "delivery {id} claimed by two nodes at once"
                    );
                    let retry = item.attempt == 1 && id.as_bytes()[id.len() - 1] % 3 == 0;
                    let report = if retry {
                        AttemptReport::Retry {
                            after: Duration::ZERO,
                            status: Some(503),
                            error: "HTTP 503".into(),
                            interrupted: false,
                        }
                    } else {
                        AttemptReport::Delivered { status: 200 }
                    };
                    // Let go of it here before the report commits: until then the lease in the
                    // store still keeps every other node away.
                    held.lock().unwrap().remove(&id);
                    assert!(
                        store.finish(item.lease, report).await.unwrap(),
                        "{id}: lease lost"
                    );
                    if !retry {
                        delivered.lock().unwrap().push(id);
                    }
                }
            }
        });
    }
    while let Some(r) = nodes.join_next().await {
        r.unwrap();
    }
    let delivered = delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), N, "every delivery delivered once");
    assert_eq!(
        delivered.iter().collect::<HashSet<_>>().len(),
        N,
        "no delivery delivered twice"
    );
    let left = first
        .list(ListFilter {
            status: Some(Status::Pending),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// Leases are compared with the database's clock: a node whose own clock runs ten minutes ahead
/// neither takes a live lease nor thinks it has expired.
#[tokio::test]
async fn a_node_with_a_wrong_clock_does_not_take_live_leases() {
    let Some(cluster) = cluster::shared() else { return };
    let url = cluster.database("");
    let honest = open(&url).await;
    let ahead = ManualClock::new(crate::store::SystemClock.now_ms() + 10 * 60 * 1000);
    let skewed = PgStore::open(
        &parse(&url),
        OpenOptions {
            max_bytes: None,
            clock: Arc::new(ahead),
            metrics: None,
        },
    )
    .await
    .unwrap();
    let id = honest.enqueue(delivery("demo", 1, 10)).await.unwrap().id;
    let live = honest.claim(claim_req("demo", 1)).await.unwrap().items.remove(0);
    let batch = skewed.claim(claim_req("demo", 1)).await.unwrap();
    assert!(
        batch.items.is_empty(),
        "a live lease was taken: {:?}",
        batch.items[0].lease
    );
    let wait = batch.next_due_in.expect("the lease's end is due");
    assert!(
        wait > Duration::from_secs(50),
        "the lease looks nearly expired to the skewed node: {wait:?}"
    );
    assert!(
        honest
            .finish(live.lease, AttemptReport::Delivered { status: 200 })
            .await
            .unwrap()
    );
    let shown = skewed.show(id).await.unwrap().summary;
    assert_eq!(shown.attempts, 1);
    assert_eq!(shown.status, Status::Delivered);
}

/// The server stops (as if it crashed) while callers keep enqueueing, then comes back: every
/// enqueue that answered `Ok` is in the database afterwards, every failure was `Unavailable`,
/// and the same store works again without being reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopped_under_load_loses_no_acknowledged_delivery() {
    let cluster = match cluster::Cluster::start() {
        Ok(c) => c,
        Err(why) => return cluster::skip(&why),
    };
    let url = cluster.database("");
    let store = Arc::new(open(&url).await);
    let other_node = open(&url).await;
    let signal = other_node.work_signal("demo").expect("a shared store signals");
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let errors: Arc<Mutex<Vec<StoreError>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..8 {
        let (store, acknowledged, errors, stop) =
            (store.clone(), acknowledged.clone(), errors.clone(), stop.clone());
        senders.spawn(async move {
            let mut n = 0;
            // Bounded: stops when told, or after 20,000 attempts each.
            while !stop.is_cancelled() && n < 20_000 {
                n += 1;
                match store.enqueue(delivery("demo", s * 100_000 + n, 256)).await {
                    Ok(done) => acknowledged.lock().unwrap().push(done.id),
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
    }
    let count = || acknowledged.lock().unwrap().len();
    let wait_for = |what: &'static str, min: usize| {
        let count = &count;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while count() < min {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: only {} acknowledged",
                    count()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for("before the stop", 200).await;
    cluster.stop();
    let at_stop = count();
    // While it is down, callers hear only `Unavailable`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while errors.lock().unwrap().len() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no errors while the database is down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.restart();
    wait_for("after the restart", at_stop + 200).await;
    stop.cancel();
    while let Some(r) = senders.join_next().await {
        r.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.iter().all(|e| matches!(e, StoreError::Unavailable(_))),
        "{:?}",
        errors.iter().find(|e| !matches!(e, StoreError::Unavailable(_)))
    );
    assert!(
        !errors.iter().any(|e| e.to_string().contains(cluster::PASSWORD)),
        "a password in an error"
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    let name = url.rsplit('/').next().unwrap();
    let stored: HashSet<String> = cluster
        .psql(name, "SELECT id FROM deliveries")
        .lines()
        .map(String::from)
        .collect();
    let lost: Vec<_> = acknowledged.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged but not stored, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // The other node's listening connection came back too: new work wakes it.
    while tokio::time::timeout(Duration::from_millis(1), signal.notified())
        .await
        .is_ok()
    {}
    store.enqueue(delivery("demo", 0, 1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), signal.notified())
        .await
        .expect("the other node is woken after the restart");
}

#[tokio::test]
async fn tls_modes_check_what_they_promise() {
    let Some(cluster) = cluster::shared() else { return };
    let db = cluster.database("");
    let name = db.rsplit('/').next().unwrap().to_string();
    let ca = cluster.ca_file();
    let on = |host: &str, query: String| cluster.url(&name, &query).replace("127.0.0.1", host);
    // The server's certificate names `localhost` and is signed by the cluster's CA.
    for (url, ok, tls) in [
        (
            on(
                "localhost",
                format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            ),
            true,
            true,
        ),
        (
            on(
                "127.0.0.1",
                format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
            ),
            true,
            true,
        ),
        (on("localhost", "sslmode=require".into()), true, true),
        (on("localhost", "sslmode=prefer".into()), true, true),
        (on("localhost", "sslmode=disable".into()), true, false),
        (
            on(
                "127.0.0.1",
                format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            ),
            false,
            true,
        ),
        (on("localhost", "sslmode=verify-full".into()), false, true),
    ] {
        let result = PgStore::open(&parse(&url), OpenOptions::default()).await;
        match (result, ok) {
            (Ok(store), true) => {
                store.enqueue(delivery("demo", 1, 1)).await.unwrap();
                let client = store.shared.pool.get().await.unwrap();
                let row = client
                    .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, bool>(0), tls, "{url}: TLS in use");
            }
            (Err(e), false) => {
                let text = e.to_string();
                assert!(matches!(e, StoreError::Unavailable(_)), "{text}");
                assert!(text.contains("ponte:***@"), "{text}");
                assert!(
                    !text.contains(cluster::PASSWORD) && !text.contains("p%40ss"),
                    "{text}"
                );
            }
            (Ok(_), false) => panic!("{url}: connected without the promised check"),
            (Err(e), true) => panic!("{url}: {e}"),
        }
    }
}

/// A database whose default is `synchronous_commit = off` would acknowledge commits it could
/// still lose; Ponte's sessions turn it back on, and keep it on after a finished attempt.
#[tokio::test]
async fn sessions_wait_for_the_wal_flush_whatever_the_database_default() {
    let Some(cluster) = cluster::shared() else { return };
    let url = cluster.database("");
    let name = url.rsplit('/').next().unwrap();
    cluster.psql(
        name,
        &format!("ALTER DATABASE {name} SET synchronous_commit = off"),
    );
    let store = open(&url).await;
    store.enqueue(delivery("demo", 1, 1)).await.unwrap();
    // A finished attempt alone commits without waiting (see `ops::finish`); that must not leak
    // into the session the next transaction on the same connection uses.
    let batch = store.claim(claim_req("demo", 1)).await.unwrap();
    let lease = batch.items[0].lease.clone();
    assert!(
        store
            .finish(lease, AttemptReport::Delivered { status: 200 })
            .await
            .unwrap()
    );
    let client = store.shared.pool.get().await.unwrap();
    let row = client.query_one("SHOW synchronous_commit", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "on");
}

#[tokio::test]
async fn connection_errors_name_the_database_but_never_the_password() {
    let Some(cluster) = cluster::shared() else { return };
    let url = cluster.database("sslmode=disable");
    let wrong = url.replace("p%40ss", "wrong");
    let err = PgStore::open(&parse(&wrong), OpenOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("postgres://ponte:***@127.0.0.1"), "{text}");
    assert!(!text.contains("wrong"), "{text}");
    let nobody_listens = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = url.replace(&format!(":{}/", cluster.port()), &format!(":{nobody_listens}/"));
    let err = PgStore::open(&parse(&down), OpenOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot connect to PostgreSQL"), "{text}");
    assert!(
        !text.contains("p%40ss") && !text.contains(cluster::PASSWORD),
        "{text}"
    );
}

/// `store_max_size` counts request bytes: at the cap the oldest delivered records make room,
/// and when only pending and failed ones are left, enqueue is refused with `Full`.
#[tokio::test]
async fn the_size_cap_drops_delivered_records_first_then_refuses() {
    let Some(cluster) = cluster::shared() else { return };
    let url = parse(&cluster.database(""));
    let store = PgStore::open(
        &url,
        OpenOptions {
            max_bytes: Some(64 * 1024),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut accepted = 0;
    let err = loop {
        match store.enqueue(delivery("demo", accepted, 1000)).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "the cap was never reached");
    };
    assert!(matches!(err, StoreError::Full(_)), "{err}");
    assert!(
        (55..=64).contains(&accepted),
        "{accepted} deliveries of ~1 KiB under a 64 KiB cap"
    );
    // Deliver ten: their room is reused.
    let batch = store.claim(claim_req("demo", 10)).await.unwrap();
    for item in batch.items {
        store
            .finish(item.lease, AttemptReport::Delivered { status: 200 })
            .await
            .unwrap();
    }
    for n in 0..10 {
        store.enqueue(delivery("demo", 1000 + n, 1000)).await.unwrap();
    }
    let delivered = store
        .list(ListFilter {
            status: Some(Status::Delivered),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        delivered.len() < 10,
        "delivered records were dropped to make room"
    );
    // Deleting deliveries gives their bytes back.
    store
        .purge(PurgeFilter {
            status: Status::Pending,
            tunnel: None,
            older_than: None,
        })
        .await
        .unwrap();
    for n in 0..50 {
        store.enqueue(delivery("demo", 2000 + n, 1000)).await.unwrap();
    }
}

#[tokio::test]
async fn work_committed_on_one_node_wakes_the_others() {
    let Some(cluster) = cluster::shared() else { return };
    let url = cluster.database("");
    let a = open(&url).await;
    let b = open(&url).await;
    let demo = b.work_signal("demo").unwrap();
    let other = b.work_signal("other").unwrap();
    // The listener wakes everything once when it connects: let that pass first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while tokio::time::timeout(Duration::from_millis(1), demo.notified())
        .await
        .is_ok()
    {}
    while tokio::time::timeout(Duration::from_millis(1), other.notified())
        .await
        .is_ok()
    {}
    a.enqueue(delivery("demo", 1, 1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), demo.notified())
        .await
        .expect("an enqueue on another node wakes the tunnel's worker");
    // A replay wakes too.
    let item = a.claim(claim_req("demo", 1)).await.unwrap().items.remove(0);
    let failed = AttemptReport::Failed {
        status: Some(400),
        error: "HTTP 400".into(),
    };
    a.finish(item.lease, failed).await.unwrap();
    a.replay_failed(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), demo.notified())
        .await
        .expect("a replay on another node wakes the tunnel's worker");
    assert!(
        tokio::time::timeout(Duration::from_millis(1), other.notified())
            .await
            .is_err(),
        "another tunnel's worker was woken"
    );
}

/// Rows a plan (from `EXPLAIN (ANALYZE, FORMAT JSON)`) read and threw away, over all its nodes.
fn rows_filtered_out(plan: &serde_json::Value) -> u64 {
    let own = ["Rows Removed by Filter", "Rows Removed by Index Recheck"]
        .iter()
        .filter_map(|k| plan.get(*k).and_then(|v| v.as_f64()))
        .sum::<f64>() as u64;
    let loops = plan
        .get("Actual Loops")
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
        .max(1);
    let children: u64 = plan
        .get("Plans")
        .and_then(|p| p.as_array())
        .map(|ps| ps.iter().map(rows_filtered_out).sum())
        .unwrap_or(0);
    own * loops + children
}

/// Behind another tunnel's large backlog (the benchmark's shape: 30,000 rows of one tunnel
/// committed before this tunnel's), the statements every claim runs after leasing read a few
/// index entries each. With `tunnel = $1 ... ORDER BY seq LIMIT 1` the planner walked the primary
/// key past the whole other backlog on every claim (~45 ms each), which capped the drain rate.
#[tokio::test]
async fn a_claims_summary_reads_only_its_own_rows_behind_another_tunnels_backlog() {
    let Some(cluster) = cluster::shared() else { return };
    let url = cluster.database("");
    let name = url.rsplit('/').next().unwrap().to_string();
    let store = open(&url).await;
    let no_headers: String = crate::store::record::encode_headers(&HeaderMap::new())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cluster.psql(
        &name,
        &format!("INSERT INTO deliveries (id, tunnel, method, uri, body_bytes, stored_bytes, received_at,
                                 retry_from, status, attempts, next_attempt_at)
         SELECT 'bulk-' || g, CASE WHEN g <= 30000 THEN 'other' ELSE 'demo' END, 'POST', 'https://relay.test/',
                10, 10, g, g, 'pending', 0, g
         FROM generate_series(1, 60000) AS g;
         INSERT INTO requests (seq, headers, body) SELECT seq, '\\x{no_headers}', '\\x00' FROM deliveries;
         ANALYZE deliveries; ANALYZE requests"
        ),
    );
    for ordered in [true, false] {
        let batch = store
            .claim(ClaimRequest {
                ordered,
                ..claim_req("demo", 32)
            })
            .await
            .unwrap();
        assert_eq!(batch.items.len(), if ordered { 1 } else { 32 });
        assert!(batch.backlog);
        assert_eq!(
            batch.items[0].lease.id,
            if ordered { "bulk-30001" } else { "bulk-30002" }
        );
    }
    let client = store.shared.pool.get().await.unwrap();
    // The generic plan is the one a cached statement may end up with after a few runs.
    for mode in ["force_custom_plan", "force_generic_plan"] {
        for (what, sql) in [
            ("the summary", super::ops::summary_sql()),
            ("the head of the line", super::ops::HEAD_OF_LINE.to_string()),
        ] {
            let messages = client
                .simple_query(&format!(
                    "SET plan_cache_mode = {mode}; PREPARE probe(text) AS {sql};
                     EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe('demo'); DEALLOCATE probe"
                ))
                .await
                .unwrap();
            let text = messages
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .expect("EXPLAIN answers a row");
            let explained: serde_json::Value = serde_json::from_str(&text).unwrap();
            let plan = &explained[0]["Plan"];
            let filtered = rows_filtered_out(plan);
            assert!(
                filtered < 100,
                "{what} ({mode}) read and dropped {filtered} rows: {plan:#}"
            );
        }
    }
}

/// The delivery worker's pattern without HTTP: 32 slots, a claim for every free slot, each
/// attempt gives its slot back and then records its result. 3,000 deliveries drain with each
/// delivered exactly once and nothing left pending; prints the rate (a profile aid: compare it
/// with the benchmark's drain figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_slots_drain_a_backlog_delivering_each_once() {
    let Some(cluster) = cluster::shared() else { return };
    let url = cluster.database("");
    let store = Arc::new(open(&url).await);
    const N: usize = 3000;
    const SLOTS: usize = 32;
    enqueue_many(&store, N, 1024, 512).await;
    let slots = Arc::new(tokio::sync::Semaphore::new(SLOTS));
    let freed = Arc::new(tokio::sync::Notify::new());
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let mut attempts = tokio::task::JoinSet::new();
    let (mut claims, mut claimed) = (0usize, 0usize);
    let mut claim_time = Duration::ZERO;
    let finish_time = Arc::new(Mutex::new(Duration::ZERO));
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the backlog did not drain in 120 s"
        );
        let free = slots.available_permits();
        if free > 0 {
            let t = std::time::Instant::now();
            let batch = store.claim(claim_req("demo", free)).await.unwrap();
            claim_time += t.elapsed();
            claims += 1;
            claimed += batch.items.len();
            for item in batch.items {
                let permit = slots.clone().try_acquire_owned().unwrap();
                let (store, freed, delivered) = (store.clone(), freed.clone(), delivered.clone());
                let finish_time = finish_time.clone();
                attempts.spawn(async move {
                    drop(permit);
                    freed.notify_one();
                    let id = item.lease.id.clone();
                    let t = std::time::Instant::now();
                    let recorded = store
                        .finish(item.lease, AttemptReport::Delivered { status: 200 })
                        .await
                        .unwrap();
                    *finish_time.lock().unwrap() += t.elapsed();
                    assert!(recorded);
                    assert!(delivered.lock().unwrap().insert(id), "delivered twice");
                });
            }
            if !batch.backlog {
                break;
            }
        }
        tokio::select! {
            _ = freed.notified() => {}
            Some(r) = attempts.join_next(), if !attempts.is_empty() => r.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    while let Some(r) = attempts.join_next().await {
        r.unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    assert_eq!(delivered.lock().unwrap().len(), N);
    assert!(
        store
            .stats()
            .await
            .unwrap()
            .tunnels
            .get("demo")
            .is_none_or(|t| t.pending == 0)
    );
    eprintln!(
        "drained {N} in {took:.2} s = {:.0}/s with {claims} claims ({:.1} per claim, {:.1} ms each); {:.1} ms per finish",
        N as f64 / took,
        claimed as f64 / claims as f64,
        claim_time.as_secs_f64() * 1e3 / claims as f64,
        finish_time.lock().unwrap().as_secs_f64() * 1e3 / N as f64
    );
}
