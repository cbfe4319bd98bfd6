//! The durable queue end to end, through a real relay (TLS, SQLite file in a temp dir) and real
//! agents: offline acceptance, byte-exact delivery, retries, permanent failures and replay,
//! ordered mode, fallback mode, limits, the admin API, retention and purge, and an attempt that
//! outlives the 30 s lease (renewed while it runs).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::Value;
use support::*;

fn db(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("relay.db")
}

/// Wait until the admin API shows `id` in `status`, and return its detail.
async fn wait_status(c: &HttpsClient, base: &str, id: &str, status: &str) -> Value {
    eventually(&format!("delivery {id} to be {status}"), || async {
        let d = admin_json(c, base, "GET", &format!("deliveries/{id}")).await;
        (d["status"] == status).then_some(d)
    })
    .await
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    ponte::body::Body,
>;

async fn post(c: &HttpsClient, url: &str, body: impl Into<Bytes>) -> Reply {
    send(c, request("POST", url, body)).await
}

#[tokio::test]
async fn offline_posts_are_accepted_then_delivered_byte_for_byte() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (up, log) = recording_upstream(|_, _| StatusCode::OK).await;
    let relay = start_relay(&queue_yaml(&certs, &db(&dir), "queue", "", "")).await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let mut sent = HashMap::new();
    for i in 0..20u32 {
        let body: Vec<u8> = (0..=255u8)
            .cycle()
            .skip(i as usize)
            .take(1000 + i as usize)
            .collect();
        let req = Request::builder()
            .method(if i % 2 == 0 { "POST" } else { "PUT" })
            .uri(format!("{base}/t/demo/hooks/{i}?a=1&b=%2F"))
            .header("x-seq", i.to_string())
            .header("content-type", "application/octet-stream")
            .header("ponte-delivery-id", "forged")
            .body(ponte::body::full(body.clone()))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        let id = r.header("ponte-delivery-id").to_string();
        let json: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (json["status"].as_str(), json["delivery_id"].as_str()),
            (Some("queued"), Some(id.as_str()))
        );
        sent.insert(id, (i, body));
    }
    assert_eq!(sent.len(), 20, "ids are unique");
    assert_eq!(up.hits(), 0, "nothing is delivered while the agent is offline");

    let agent = start_agent_to(&base, &certs, &up.url());
    eventually("all 20 delivered", || async {
        (log.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    for rec in log.lock().unwrap().iter() {
        let (i, body) = &sent[rec.header("ponte-delivery-id")];
        assert_eq!(rec.body.as_ref(), body.as_slice(), "body of #{i}");
        assert_eq!(rec.method, if i % 2 == 0 { "POST" } else { "PUT" });
        assert_eq!(rec.path, format!("/hooks/{i}?a=1&b=%2F"));
        assert_eq!(rec.header("x-seq"), i.to_string());
        assert_eq!(rec.header("ponte-attempt"), "1");
        assert_eq!(rec.header("x-forwarded-for"), "127.0.0.1");
    }
    let page = eventually("the store to show 20 delivered", || async {
        let page = admin_json(&c, &base, "GET", "deliveries?status=delivered").await;
        (page["deliveries"].as_array().unwrap().len() == 20).then_some(page)
    })
    .await;
    assert!(page["next_before"].is_null());
    let first = admin_json(&c, &base, "GET", "deliveries?limit=15").await;
    let rest = admin_json(
        &c,
        &base,
        "GET",
        &format!("deliveries?limit=15&before={}", first["next_before"]),
    )
    .await;
    assert_eq!(first["deliveries"].as_array().unwrap().len(), 15);
    assert_eq!(rest["deliveries"].as_array().unwrap().len(), 5);
    assert!(rest["next_before"].is_null());
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn upstream_500_then_200_is_retried_then_delivered() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (up, log) = recording_upstream(|_, n| {
        if n < 2 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    })
    .await;
    let relay = start_relay(&queue_yaml(&certs, &db(&dir), "queue", "", "")).await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let r = post(&c, &format!("{base}/t/demo/hook"), "payload").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = r.header("ponte-delivery-id").to_string();
    let d = wait_status(&c, &base, &id, "delivered").await;
    let outcomes: Vec<&str> = d["attempts_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"]);
    assert_eq!(d["attempts_log"][0]["status"], 500);
    assert!(
        d["attempts_log"][0]["error"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"),
        "{d}"
    );
    let log = log.lock().unwrap().clone();
    let attempts: Vec<&str> = log.iter().map(|r| r.header("ponte-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(
        log.iter()
            .all(|r| r.header("ponte-delivery-id") == id && r.body == "payload")
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_400_fails_at_once_and_replay_delivers_it() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (up, log) = recording_upstream(|_, n| {
        if n == 0 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        }
    })
    .await;
    let relay = start_relay(&queue_yaml(&certs, &db(&dir), "queue", "", "")).await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let id = post(&c, &format!("{base}/t/demo/x"), "once")
        .await
        .header("ponte-delivery-id")
        .to_string();
    let d = wait_status(&c, &base, &id, "failed").await;
    assert_eq!(d["attempts"], 1, "a 400 is not retried");
    assert_eq!(d["last_status"], 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.hits(), 1, "still not retried after the schedule's waits");

    let replayed = admin_json(&c, &base, "POST", &format!("deliveries/{id}/replay")).await;
    assert_eq!(replayed["status"], "pending");
    wait_status(&c, &base, &id, "delivered").await;
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[1].header("ponte-delivery-id"), log[1].header("ponte-attempt")),
        (id.as_str(), "2")
    );
    let missing = admin(&c, &base, "POST", "deliveries/nope/replay", Some(ADMIN_TOKEN)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn ordered_mode_delivers_in_arrival_order_one_at_a_time() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let busy = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let failed_once = Arc::new(AtomicUsize::new(0));
    let (b, p, f) = (busy.clone(), peak.clone(), failed_once.clone());
    let order = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let o = order.clone();
    let up = start_upstream(move |req: Request<hyper::body::Incoming>| {
        let (b, p, f, o) = (b.clone(), p.clone(), f.clone(), o.clone());
        async move {
            let now = b.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            let n: u32 = req.uri().path().trim_start_matches('/').parse().unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            // #3 fails once: the line must wait for it.
            let status = if n == 3 && f.fetch_add(1, Ordering::SeqCst) == 0 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                o.lock().unwrap().push(n);
                StatusCode::OK
            };
            b.fetch_sub(1, Ordering::SeqCst);
            text(status, "")
        }
    })
    .await;
    let relay = start_relay(&queue_yaml(
        &certs,
        &db(&dir),
        "queue",
        "",
        "      ordered: true\n",
    ))
    .await;
    let c = client(Some(&certs), true);
    for n in 0..30u32 {
        let r = post(&c, &format!("{}/t/demo/{n}", relay.url(true)), "x").await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    let agent = start_agent_to(&relay.url(true), &certs, &up.url());
    eventually("30 in-order deliveries", || async {
        (order.lock().unwrap().len() == 30).then_some(())
    })
    .await;
    assert_eq!(*order.lock().unwrap(), (0..30).collect::<Vec<_>>());
    assert_eq!(peak.load(Ordering::SeqCst), 1, "one delivery in flight at a time");
    assert_eq!(failed_once.load(Ordering::SeqCst), 2);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn fallback_proxies_live_when_up_and_queues_when_down() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let up = echo_upstream().await;
    let relay = start_relay(&queue_yaml(
        &certs,
        &db(&dir),
        "fallback",
        "",
        "      max_body_bytes: 1KiB\n",
    ))
    .await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let too_big = post(&c, &format!("{base}/t/demo/big"), vec![b'b'; 2048]).await;
    assert_eq!(
        too_big.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too large to queue while offline"
    );
    let offline_get = send(&c, request("GET", &format!("{base}/t/demo/page"), "")).await;
    assert_eq!(
        offline_get.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "GET is not queued by default"
    );
    let queued = post(&c, &format!("{base}/t/demo/while-down"), "later").await;
    assert_eq!(queued.status, StatusCode::ACCEPTED);
    let id = queued.header("ponte-delivery-id").to_string();

    let mut agent = start_agent_to(&base, &certs, &up.url());
    agent.connected().await;
    wait_status(&c, &base, &id, "delivered").await;
    let live = post(&c, &format!("{base}/t/demo/live?q=1"), "now").await;
    assert_eq!(
        live.status,
        StatusCode::OK,
        "with the agent up the sender gets the upstream's answer"
    );
    assert_eq!(
        (live.text().as_str(), live.header("x-echo-path")),
        ("now", "/live?q=1")
    );
    assert!(live.headers.get("ponte-delivery-id").is_none());
    let big_live = post(&c, &format!("{base}/t/demo/big"), vec![b'b'; 2048]).await;
    assert_eq!(
        big_live.status,
        StatusCode::OK,
        "too large to queue, but streamed live while the agent is up"
    );
    assert_eq!(big_live.body.len(), 2048);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn queue_limits_methods_and_missing_agent() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&queue_yaml(
        &certs,
        &db(&dir),
        "queue",
        "",
        "      max_body_bytes: 1KiB\n",
    ))
    .await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let big = post(&c, &format!("{base}/t/demo/big"), vec![b'x'; 1025]).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    // The same without Content-Length (streamed): cut while reading, still 413.
    let stream = futures_util::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![b'y'; 600])))),
    );
    let chunked = Request::builder()
        .method("POST")
        .uri(format!("{base}/t/demo/chunked"))
        .body(ponte::body::boxed(http_body_util::StreamBody::new(stream)))
        .unwrap();
    assert_eq!(send(&c, chunked).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let at_limit = post(&c, &format!("{base}/t/demo/ok"), vec![b'x'; 1024]).await;
    assert_eq!(at_limit.status, StatusCode::ACCEPTED);
    let get = send(&c, request("GET", &format!("{base}/t/demo/x"), "")).await;
    assert_eq!(get.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(get.headers.contains_key("retry-after"));
    let all = admin_json(&c, &base, "GET", "deliveries").await;
    assert_eq!(
        all["deliveries"].as_array().unwrap().len(),
        1,
        "refused requests are not stored"
    );
    relay.stop().await;
}

#[tokio::test]
async fn admin_api_needs_the_right_token_and_is_off_without_one() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&queue_yaml(&certs, &db(&dir), "queue", "", "")).await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let none = admin(&c, &base, "GET", "deliveries", None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.header("www-authenticate").starts_with("Bearer"));
    let wrong = admin(
        &c,
        &base,
        "GET",
        "deliveries",
        Some("admin-token-0123456789abcdeX"),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.header("ponte-error"), "admin-token-rejected");
    let short = admin(&c, &base, "GET", "deliveries", Some("a")).await;
    assert_eq!(short.status, StatusCode::FORBIDDEN);
    assert_eq!(
        admin(&c, &base, "GET", "deliveries", Some(ADMIN_TOKEN))
            .await
            .status,
        StatusCode::OK
    );
    let typo = admin(
        &c,
        &base,
        "POST",
        "purge?status=failed&tunel=demo",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(
        typo.status,
        StatusCode::BAD_REQUEST,
        "a typo must not widen a purge"
    );
    let no_status = admin(&c, &base, "POST", "purge", Some(ADMIN_TOKEN)).await;
    assert_eq!(no_status.status, StatusCode::BAD_REQUEST);
    relay.stop().await;

    let plain = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let off = admin(&c, &plain.url(true), "GET", "deliveries", Some(ADMIN_TOKEN)).await;
    assert_eq!(off.status, StatusCode::NOT_FOUND);
    assert!(off.text().contains("admin_token"), "{}", off.text());
    plain.stop().await;
}

#[tokio::test]
async fn retention_removes_delivered_and_purge_removes_failed() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (up, _log) = recording_upstream(|r, _| {
        if r.path.starts_with("/bad") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        }
    })
    .await;
    let yaml = queue_yaml(
        &certs,
        &db(&dir),
        "queue",
        "retention:\n  delivered: 300ms\n  failed: 1h\n",
        "",
    );
    let relay = start_relay(&yaml).await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let good = post(&c, &format!("{base}/t/demo/good"), "g")
        .await
        .header("ponte-delivery-id")
        .to_string();
    let bad1 = post(&c, &format!("{base}/t/demo/bad/1"), "b")
        .await
        .header("ponte-delivery-id")
        .to_string();
    let bad2 = post(&c, &format!("{base}/t/demo/bad/2"), "b")
        .await
        .header("ponte-delivery-id")
        .to_string();
    wait_status(&c, &base, &bad1, "failed").await;
    wait_status(&c, &base, &bad2, "failed").await;
    eventually("the delivered one to age out", || async {
        let r = admin(&c, &base, "GET", &format!("deliveries/{good}"), Some(ADMIN_TOKEN)).await;
        (r.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let failed = admin_json(&c, &base, "GET", "deliveries?status=failed").await;
    assert_eq!(
        failed["deliveries"].as_array().unwrap().len(),
        2,
        "failed ones keep their own retention"
    );
    let kept = admin_json(&c, &base, "POST", "purge?status=failed&older_than=1h").await;
    assert_eq!(kept["purged"], 0);
    let purged = admin_json(&c, &base, "POST", "purge?status=failed&tunnel=demo").await;
    assert_eq!(purged["purged"], 2);
    let all = admin_json(&c, &base, "GET", "deliveries").await;
    assert!(all["deliveries"].as_array().unwrap().is_empty());
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_full_store_answers_503_never_202_and_accepts_again_once_room_returns() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (up, _log) = recording_upstream(|_, _| StatusCode::OK).await;
    let relay = start_relay(&queue_yaml(
        &certs,
        &db(&dir),
        "queue",
        "store_max_size: 160KiB\n",
        "",
    ))
    .await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let url = format!("{base}/t/demo/fill");
    let mut accepted = Vec::new();
    let full = loop {
        assert!(accepted.len() < 50, "the cap never filled");
        let r = post(&c, &url, vec![b'z'; 16 * 1024]).await;
        match r.status {
            StatusCode::ACCEPTED => accepted.push(r.header("ponte-delivery-id").to_string()),
            _ => break r,
        }
    };
    assert!(!accepted.is_empty());
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE, "{}", full.text());
    assert_eq!(full.header("ponte-error"), "queue-full", "{}", full.text());
    assert!(full.headers.contains_key("retry-after"));
    for _ in 0..3 {
        let r = post(&c, &url, vec![b'z'; 16 * 1024]).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "no 202 while full");
    }
    // Delivering frees room: delivered records are dropped first to make space.
    let agent = start_agent_to(&base, &certs, &up.url());
    for id in &accepted {
        wait_status(&c, &base, id, "delivered").await;
    }
    let again = post(&c, &url, vec![b'z'; 16 * 1024]).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text());
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn fallback_queues_at_once_when_every_agent_stream_is_busy() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    // An upstream that holds the first request for 3 s, and answers later ones at once.
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let up = start_upstream(move |_req| {
        let first = first.clone();
        async move {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            }
            text(StatusCode::OK, "ok")
        }
    })
    .await;
    let relay = start_relay(&queue_yaml(
        &certs,
        &db(&dir),
        "fallback",
        "limits:\n  max_streams_per_agent: 1",
        "",
    ))
    .await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let holder = tokio::spawn({
        let (c, base) = (c.clone(), base.clone());
        async move { post(&c, &format!("{base}/t/demo/slow"), "a").await }
    });
    within("the first request to occupy the stream", async {
        while up.hits() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let started = std::time::Instant::now();
    let second = post(&c, &format!("{base}/t/demo/next"), "b").await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.text());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let id = second.header("ponte-delivery-id").to_string();
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);
    wait_status(&c, &base, &id, "delivered").await;
    agent.stop().await;
    relay.stop().await;
}

/// An attempt that runs longer than the 30 s lease keeps its delivery: the worker renews the
/// lease while it runs, so the delivery is not claimed again and sent a second time.
#[tokio::test]
async fn an_attempt_longer_than_the_lease_is_sent_once() {
    const SLOW: Duration = Duration::from_secs(36);
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    // A slow upstream: every request is answered after SLOW.
    let up = start_upstream(|_req| async {
        tokio::time::sleep(SLOW).await;
        text(StatusCode::OK, "ok")
    })
    .await;
    let relay = start_relay(
        &queue_yaml(&certs, &db(&dir), "queue", "", "")
            .replace("attempt_timeout: 2s", "attempt_timeout: 60s"),
    )
    .await;
    let mut agent = start_agent_to(&relay.url(true), &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let base = relay.url(true);
    let r = post(&c, &format!("{base}/t/demo/hook"), "slow").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = r.header("ponte-delivery-id").to_string();
    let detail = tokio::time::timeout(SLOW + WAIT, async {
        loop {
            let d = admin_json(&c, &base, "GET", &format!("deliveries/{id}")).await;
            if d["status"] != "pending" {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the slow delivery to finish");
    assert_eq!(detail["status"], "delivered", "{detail}");
    let outcomes: Vec<&str> = detail["attempts_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivered"], "{detail}");
    assert_eq!(
        up.hits(),
        1,
        "the delivery was sent again while its first attempt ran"
    );
    agent.stop().await;
    relay.stop().await;
}
