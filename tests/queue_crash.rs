//! The queue's promise under crashes and reconnects: the relay SIGKILLed with a backlog or with
//! deliveries in flight, an agent SIGKILLed mid-delivery, a graceful relay restart, and an agent
//! reconnect cutting a long backoff short. Nothing is lost; nothing in flight is failed. A process
//! that is killed is the real `ponte` binary, killed by its own PID.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use support::process::{Process, start_relay_process};
use support::*;

/// An upstream that records delivery ids and bodies, and holds every request while `hold` is
/// set (so deliveries stay in flight).
async fn holding_upstream(hold: Arc<AtomicBool>) -> (Upstream, Log, Arc<AtomicUsize>) {
    let log: Log = Arc::default();
    let arrived = Arc::new(AtomicUsize::new(0));
    let (l, a) = (log.clone(), arrived.clone());
    let up = start_upstream(move |req: Request<hyper::body::Incoming>| {
        let (log, arrived, hold) = (l.clone(), a.clone(), hold.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            arrived.fetch_add(1, Ordering::SeqCst);
            // Bounded: a held request is released after the test's deadline at the latest.
            for _ in 0..1500 {
                if !hold.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            log.lock().unwrap().push(Recorded::new(parts, body));
            text(StatusCode::OK, "ok")
        }
    })
    .await;
    (up, log, arrived)
}

fn write_config(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let path = dir.path().join("relay.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Delivered ids (first body seen for each) from the upstream's log.
fn delivered(log: &Log) -> HashMap<String, Bytes> {
    let mut map = HashMap::new();
    for r in log.lock().unwrap().iter() {
        map.entry(r.header("ponte-delivery-id").to_string())
            .or_insert_with(|| r.body.clone());
    }
    map
}

#[tokio::test]
async fn relay_killed_with_1000_queued_delivers_every_one_after_restart() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &queue_yaml(&certs, &dir.path().join("relay.db"), "queue", "", ""),
    );
    let (mut relay, port) = start_relay_process(&config, 0).await;
    let base = format!("https://127.0.0.1:{port}");
    let c = client(Some(&certs), false);

    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16u32 {
        let (c, base) = (c.clone(), base.clone());
        tasks.spawn(async move {
            let mut sent = Vec::new();
            for i in 0..1000u32 / 16 + 1 {
                let n = i * 16 + worker;
                if n >= 1000 {
                    break;
                }
                let body = Bytes::from(format!(
                    "{{\"event\":{n},\"pad\":\"{}\"}}",
                    "x".repeat((n % 97) as usize)
                ));
                let r = send(&c, request("POST", &format!("{base}/t/demo/e/{n}"), body.clone())).await;
                assert_eq!(r.status, StatusCode::ACCEPTED, "#{n}: {}", r.text());
                sent.push((r.header("ponte-delivery-id").to_string(), body));
            }
            sent
        });
    }
    let mut sent = HashMap::new();
    while let Some(batch) = tasks.join_next().await {
        sent.extend(batch.unwrap());
    }
    assert_eq!(sent.len(), 1000);

    relay.kill();
    let (_relay, _) = start_relay_process(&config, port).await;
    let (up, log) = recording_upstream(|_, _| StatusCode::OK).await;
    let agent = start_agent_to(&base, &certs, &up.url());
    eventually("all 1000 delivered after the restart", || async {
        (delivered(&log).len() >= 1000).then_some(())
    })
    .await;
    let got = delivered(&log);
    for (id, body) in &sent {
        assert_eq!(got.get(id), Some(body), "delivery {id}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn relay_killed_with_deliveries_in_flight_redelivers_them_after_restart() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &queue_yaml(&certs, &dir.path().join("relay.db"), "queue", "", ""),
    );
    let (mut relay, port) = start_relay_process(&config, 0).await;
    let base = format!("https://127.0.0.1:{port}");
    let hold = Arc::new(AtomicBool::new(true));
    let (up, log, arrived) = holding_upstream(hold.clone()).await;
    let mut agent = start_agent_to(&base, &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let mut ids = Vec::new();
    for n in 0..20 {
        let r = send(
            &c,
            request("POST", &format!("{base}/t/demo/{n}"), format!("body-{n}")),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        ids.push(r.header("ponte-delivery-id").to_string());
    }
    // The default concurrency (8) is in flight, held by the upstream.
    eventually("8 deliveries in flight", || async {
        (arrived.load(Ordering::SeqCst) >= 8).then_some(())
    })
    .await;

    relay.kill();
    hold.store(false, Ordering::SeqCst);
    let (_relay, _) = start_relay_process(&config, port).await;
    agent.connected().await;
    eventually("all 20 delivered", || async {
        let page = admin_json(&c, &base, "GET", "deliveries?status=delivered").await;
        (page["deliveries"].as_array().unwrap().len() == 20).then_some(())
    })
    .await;
    let got = delivered(&log);
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            got.get(id).map(|b| b.as_ref()),
            Some(format!("body-{n}").as_bytes())
        );
    }
    // The ones in flight at the kill show an interrupted attempt, and were never failed.
    let interrupted = {
        let mut count = 0;
        for id in &ids {
            let d = admin_json(&c, &base, "GET", &format!("deliveries/{id}")).await;
            let log = d["attempts_log"].as_array().unwrap();
            if log.iter().any(|a| a["outcome"] == "interrupted") {
                count += 1;
            }
            assert!(log.iter().all(|a| a["outcome"] != "failed"), "{d}");
        }
        count
    };
    assert!(interrupted >= 8, "{interrupted} interrupted attempts recorded");
    agent.stop().await;
}

#[tokio::test]
async fn agent_killed_mid_delivery_returns_deliveries_to_pending_not_failed() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&queue_yaml(&certs, &dir.path().join("relay.db"), "queue", "", "")).await;
    let base = relay.url(true);
    let hold = Arc::new(AtomicBool::new(true));
    let (up, log, arrived) = holding_upstream(hold.clone()).await;
    let agent_config = dir.path().join("agent.yaml");
    std::fs::write(
        &agent_config,
        agent_yaml(
            &base,
            Some(&certs),
            &format!("ingress:\n  - upstream: {}\n", up.url()),
        ),
    )
    .unwrap();
    let mut agent = Process::spawn(&["agent", "--config", agent_config.to_str().unwrap()]);
    let c = client(Some(&certs), false);
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = send(&c, request("POST", &format!("{base}/t/demo/{n}"), "x")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        ids.push(r.header("ponte-delivery-id").to_string());
    }
    eventually("5 deliveries in flight", || async {
        (arrived.load(Ordering::SeqCst) >= 5).then_some(())
    })
    .await;
    agent.kill();

    eventually("every delivery back to pending, none in flight", || async {
        let page = admin_json(&c, &base, "GET", "deliveries").await;
        let all = page["deliveries"].as_array().unwrap().clone();
        all.iter()
            .all(|d| d["status"] == "pending" && d["in_flight"] == false)
            .then_some(())
    })
    .await;
    for id in &ids {
        let d = admin_json(&c, &base, "GET", &format!("deliveries/{id}")).await;
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(d["attempts_log"][0]["outcome"], "interrupted", "{d}");
    }
    let failed = admin_json(&c, &base, "GET", "deliveries?status=failed").await;
    assert!(failed["deliveries"].as_array().unwrap().is_empty());

    hold.store(false, Ordering::SeqCst);
    let replacement = start_agent_to(&base, &certs, &up.url());
    for id in &ids {
        eventually("redelivery", || async {
            let d = admin_json(&c, &base, "GET", &format!("deliveries/{id}")).await;
            (d["status"] == "delivered").then_some(())
        })
        .await;
    }
    assert!(ids.iter().all(|id| delivered(&log).contains_key(id)));
    replacement.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn graceful_relay_stop_puts_in_flight_deliveries_back_and_restart_delivers_them() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let yaml = queue_yaml(
        &certs,
        &dir.path().join("relay.db"),
        "queue",
        "grace_period: 1s\n",
        "",
    );
    let relay = start_relay(&yaml).await;
    let (addr, base) = (relay.addr, relay.url(true));
    let hold = Arc::new(AtomicBool::new(true));
    let (up, log, arrived) = holding_upstream(hold.clone()).await;
    let mut agent = start_agent_to(&base, &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let mut ids = Vec::new();
    for n in 0..4 {
        let r = send(&c, request("POST", &format!("{base}/t/demo/{n}"), "x")).await;
        ids.push(r.header("ponte-delivery-id").to_string());
    }
    eventually("4 deliveries in flight", || async {
        (arrived.load(Ordering::SeqCst) >= 4).then_some(())
    })
    .await;
    let stopping = std::time::Instant::now();
    relay.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "stop took {:?}",
        stopping.elapsed()
    );

    hold.store(false, Ordering::SeqCst);
    let listener = within("rebind", async {
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let relay = start_relay_on(listener, &yaml);
    agent.connected().await;
    for id in &ids {
        eventually("redelivery after the restart", || async {
            let d = admin_json(&c, &base, "GET", &format!("deliveries/{id}")).await;
            (d["status"] == "delivered").then_some(())
        })
        .await;
    }
    assert!(ids.iter().all(|id| delivered(&log).contains_key(id)));
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn an_agent_reconnect_delivers_at_once_instead_of_waiting_out_the_backoff() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (up, log) = recording_upstream(|_, n| {
        if n == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let yaml = relay_yaml(
        Some(&certs),
        &format!(
            "store: sqlite://{}\nadmin_token: {ADMIN_TOKEN}\n",
            dir.path().join("relay.db").display()
        ),
        "    delivery: queue\n    queue:\n      retry_schedule: [1h]\n",
    );
    let relay = start_relay(&yaml).await;
    let base = relay.url(true);
    let mut agent = start_agent_to(&base, &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let id = send(&c, request("POST", &format!("{base}/t/demo/x"), "x"))
        .await
        .header("ponte-delivery-id")
        .to_string();
    let d = eventually("the first attempt to fail", || async {
        let d = admin_json(&c, &base, "GET", &format!("deliveries/{id}")).await;
        (d["attempts"] == 1 && d["in_flight"] == false).then_some(d)
    })
    .await;
    assert_eq!(d["status"], "pending", "{d}");
    agent.stop().await;
    let started = std::time::Instant::now();
    let mut again = start_agent_to(&base, &certs, &up.url());
    again.connected().await;
    eventually("delivery right after the reconnect", || async {
        let d = admin_json(&c, &base, "GET", &format!("deliveries/{id}")).await;
        (d["status"] == "delivered").then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "not the 1h backoff");
    assert_eq!(log.lock().unwrap().len(), 2);
    again.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_tunnel_switched_to_direct_still_delivers_what_was_stored() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let relay = start_relay(&queue_yaml(&certs, &db, "queue", "", "")).await;
    let c = client(Some(&certs), false);
    let r = send(
        &c,
        request("POST", &format!("{}/t/demo/kept", relay.url(true)), "kept"),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    relay.stop().await;

    let direct = relay_yaml(
        Some(&certs),
        &format!("store: sqlite://{}\nadmin_token: {ADMIN_TOKEN}\n", db.display()),
        "",
    );
    let relay = start_relay(&direct).await;
    let (up, log) = recording_upstream(|_, _| StatusCode::OK).await;
    let agent = start_agent_to(&relay.url(true), &certs, &up.url());
    eventually("the stored request delivered", || async {
        (log.lock().unwrap().iter().any(|r| r.body == "kept")).then_some(())
    })
    .await;
    agent.stop().await;
    relay.stop().await;
}
