//! The durable queue on PostgreSQL, end to end through real relays (TLS) and real agents, with a
//! PostgreSQL server this binary starts: offline acceptance then byte-exact delivery, two relay
//! nodes sharing one database, and the database stopped and started under a relay (503 while it
//! is down, never 202). Without PostgreSQL the tests print why and pass, except under `CI=true`.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::Value;
use support::postgres::{self as pg, Cluster};
use support::*;

fn relay_on(certs: &Certs, store_url: &str) -> String {
    relay_yaml(
        Some(certs),
        &format!("store: \"{store_url}\"\nadmin_token: {ADMIN_TOKEN}\n"),
        "    delivery: queue\n    queue:\n      retry_schedule: [50ms, 100ms]\n      attempt_timeout: 2s\n",
    )
}

async fn wait_status(c: &Client, base: &str, id: &str, status: &str) -> Value {
    eventually(&format!("delivery {id} to be {status}"), || async {
        let d = admin_json(c, base, "GET", &format!("deliveries/{id}")).await;
        (d["status"] == status).then_some(d)
    })
    .await
}

/// Log in to the console with the admin token; returns the session cookie (`name=value`).
async fn console_login(c: &Client, base: &str) -> String {
    let r = Request::post(format!("{base}/_ponte/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", base)
        .body(ponte::body::full(format!("token={ADMIN_TOKEN}")))
        .unwrap();
    let r = send(c, r).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let set = r.header("set-cookie").to_string();
    set.split(';').next().unwrap_or_default().to_string()
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    ponte::body::Body,
>;

#[tokio::test]
async fn offline_posts_are_accepted_then_delivered_byte_for_byte() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let (up, log) = recording_upstream(|_, _| StatusCode::OK).await;
    let relay = start_relay(&relay_on(&certs, &cluster.database(""))).await;
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
            .body(ponte::body::full(body.clone()))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        sent.insert(r.header("ponte-delivery-id").to_string(), (i, body));
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
    }
    eventually("the store to show 20 delivered", || async {
        let page = admin_json(&c, &base, "GET", "deliveries?status=delivered").await;
        (page["deliveries"].as_array().unwrap().len() == 20).then_some(())
    })
    .await;
    agent.stop().await;
    relay.stop().await;
}

/// Two relay nodes on one database: a webhook accepted by one node is delivered by the other,
/// which holds the tunnel's agent; a replay asked of either node is delivered too.
#[tokio::test]
async fn a_webhook_accepted_by_one_node_is_delivered_by_the_node_with_the_agent() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let url = cluster.database("");
    let (up, log) = recording_upstream(|_, n| {
        if n == 0 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        }
    })
    .await;
    let node_a = start_relay(&relay_on(&certs, &url)).await;
    let node_b = start_relay(&relay_on(&certs, &url)).await;
    let mut agent = start_agent_to(&node_b.url(true), &certs, &up.url());
    agent.connected().await;
    let c = client(Some(&certs), false);
    let r = send(
        &c,
        request("POST", &format!("{}/t/demo/hook", node_a.url(true)), "cross-node"),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.header("ponte-delivery-id").to_string();
    // The first attempt is answered 400: failed, on either node's view.
    wait_status(&c, &node_a.url(true), &id, "failed").await;
    admin_json(&c, &node_a.url(true), "POST", &format!("deliveries/{id}/replay")).await;
    wait_status(&c, &node_b.url(true), &id, "delivered").await;
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert!(
        log.iter()
            .all(|r| r.body == "cross-node" && r.header("ponte-delivery-id") == id)
    );
    agent.stop().await;
    node_a.stop().await;
    node_b.stop().await;
}

/// The database goes away under a running relay: senders get 503 with `Retry-After`, never a
/// 202; once it is back the same relay accepts again and delivers what it acknowledged.
#[tokio::test]
async fn a_stopped_database_answers_503_never_202_and_ready_says_so_until_it_recovers() {
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(why) => return pg::skip(&why),
    };
    let certs = Certs::new();
    let (up, log) = recording_upstream(|_, _| StatusCode::OK).await;
    let relay = start_relay(&relay_on(&certs, &cluster.database(""))).await;
    let c = client(Some(&certs), false);
    let hook = format!("{}/t/demo/hook", relay.url(true));
    let before = send(&c, request("POST", &hook, "before")).await;
    assert_eq!(before.status, StatusCode::ACCEPTED, "{}", before.text());

    let ready = format!("{}/_ponte/ready", relay.url(true));
    let probe = |c| {
        let ready = ready.clone();
        async move { send(c, request("GET", &ready, "")).await.status }
    };
    assert_eq!(probe(&c).await, StatusCode::OK);

    cluster.stop();
    eventually("/_ponte/ready to say the store is down", || async {
        (probe(&c).await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    // The console still opens and says, in the reader's language, that the queue is unreadable.
    let cookie = console_login(&c, &relay.url(true)).await;
    for (lang, notice) in [
        ("en", "The queue could not be read"),
        ("pt-BR,pt;q=0.9", "Não foi possível ler a fila"),
    ] {
        let page = Request::get(format!("{}/_ponte/console/", relay.url(true)))
            .header("cookie", &cookie)
            .header("accept-language", lang)
            .body(ponte::body::empty())
            .unwrap();
        let page = send(&c, page).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        assert!(page.text().contains("id=\"queue-error\""), "{}", page.text());
        assert!(page.text().contains(notice), "{lang}: {}", page.text());
        assert!(!page.text().contains(pg::PASSWORD), "{}", page.text());
    }
    for n in 0..5 {
        let r = send(&c, request("POST", &hook, format!("while down {n}"))).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
        assert!(!r.text().contains(pg::PASSWORD), "{}", r.text());
    }
    cluster.restart();
    let after = eventually("the relay to accept again", || async {
        let r = send(&c, request("POST", &hook, "after")).await;
        match r.status {
            StatusCode::ACCEPTED => Some(r),
            StatusCode::SERVICE_UNAVAILABLE => None,
            other => panic!("{other}: {}", r.text()),
        }
    })
    .await;
    eventually("/_ponte/ready to say the store is back", || async {
        (probe(&c).await == StatusCode::OK).then_some(())
    })
    .await;
    let agent = start_agent_to(&relay.url(true), &certs, &up.url());
    eventually("both acknowledged webhooks delivered", || async {
        (log.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    let bodies: Vec<Bytes> = log.lock().unwrap().iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies, [Bytes::from("before"), Bytes::from("after")]);
    assert_ne!(
        before.header("ponte-delivery-id"),
        after.header("ponte-delivery-id")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.hits(), 2, "nothing refused was delivered");
    agent.stop().await;
    relay.stop().await;
}
