//! Seeing what the relay does: the access log (JSON fields of a real relay process), Prometheus
//! metrics (parsed, counted exactly, bounded labels), `/_ponte/ready` during a drain, the metrics
//! token and address, and `ponte status` / `ponte deliveries` against a real relay.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use ponte::config::relay::RelayConfig;
use serde_json::Value;
use support::process::start_relay_process;
use support::prometheus::sample;
use support::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const LIVE_TOKEN: &str = "live-token-0123456789abcdef";
const QUEUED_TOKEN: &str = "queued-token-0123456789abcdef";
const OFFLINE_TOKEN: &str = "offline-token-0123456789abcdef";
const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";
/// Sent in every query string of the access-log test; it must never appear in any log line.
const SECRET: &str = "s3cr3t-query-value";

/// Three tunnels: `live` (direct, 1 KiB body limit), `queued` (queue) and `offline` (direct, no
/// agent ever), a SQLite store in `dir`, and `extra` at the top level.
fn three_tunnels(certs: Option<&Certs>, dir: &std::path::Path, extra: &str) -> String {
    let tls = certs
        .map(|c| format!("tls:\n  cert: {}\n  key: {}\n", c.cert.display(), c.key.display()))
        .unwrap_or_default();
    format!(
        "listen: 127.0.0.1:0\n{tls}store: sqlite://{}\nadmin_token: {ADMIN_TOKEN}\n{extra}
tunnels:
  live:
    token: {LIVE_TOKEN}
    max_body_bytes: 1KiB
  queued:
    token: {QUEUED_TOKEN}
    delivery: queue
    queue:
      retry_schedule: [50ms]
      attempt_timeout: 2s
  offline:
    token: {OFFLINE_TOKEN}
",
        dir.join("relay.db").display()
    )
}

/// An in-process agent of the tunnel `token` belongs to.
fn agent_for(relay_url: &str, certs: Option<&Certs>, token: &str, upstream: &str) -> AgentHandle {
    let ca = certs
        .map(|c| format!("ca_file: {}\n", c.ca.display()))
        .unwrap_or_default();
    start_agent(&format!(
        "relay: {relay_url}\ntoken: {token}\n{ca}reconnect:\n  initial: 50ms\n  max: 300ms\n  stable_after: 1s\ningress:\n  - upstream: {upstream}\n"
    ))
}

/// An upstream for the access-log test: `/slow` sends its body 300 ms after its headers, `/fail`
/// answers 500 the first time and 200 after, everything else `hello`.
async fn test_upstream() -> Upstream {
    let fails = Arc::new(AtomicUsize::new(0));
    start_upstream(move |req: Request<Incoming>| {
        let fails = fails.clone();
        async move {
            let path = req.uri().path().to_string();
            if path.ends_with("/slow") {
                let late = futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, ponte::BoxError>(Frame::data(Bytes::from_static(b"late")))
                });
                return Response::new(ponte::body::boxed(StreamBody::new(late)));
            }
            if path.ends_with("/fail") && fails.fetch_add(1, Ordering::SeqCst) == 0 {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "not yet");
            }
            text(StatusCode::OK, "hello")
        }
    })
    .await
}

/// The JSON access-log lines (`ponte::access` target) a relay process wrote so far.
fn access_lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "ponte::access")
        .collect()
}

#[tokio::test]
async fn the_access_log_has_one_line_of_fields_per_request_and_never_a_query() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.yaml");
    std::fs::write(&config, three_tunnels(Some(&certs), dir.path(), "")).unwrap();
    let (relay, port) = start_relay_process(&config, 0).await;
    let base = format!("https://127.0.0.1:{port}");
    let up = test_upstream().await;
    let mut live = agent_for(&base, Some(&certs), LIVE_TOKEN, &up.url());
    let mut queued = agent_for(&base, Some(&certs), QUEUED_TOKEN, &up.url());
    live.connected().await;
    queued.connected().await;
    let c = client(Some(&certs), false);
    let q = format!("?secret={SECRET}");

    let ok = send(&c, request("GET", &format!("{base}/t/live/hello{q}"), "")).await;
    assert_eq!(ok.status, StatusCode::OK);
    let slow = send(&c, request("GET", &format!("{base}/t/live/slow{q}"), "")).await;
    assert_eq!(slow.text(), "late");
    let accepted = send(
        &c,
        request("POST", &format!("{base}/t/queued/fail{q}"), "{\"n\":1}"),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let id = accepted.header("ponte-delivery-id").to_string();
    let missing = send(&c, request("GET", &format!("{base}/t/nosuch/x{q}"), "")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let big = send(
        &c,
        request("POST", &format!("{base}/t/live/big{q}"), vec![b'x'; 2048]),
    )
    .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let offline = send(&c, request("GET", &format!("{base}/t/offline/x{q}"), "")).await;
    assert_eq!(offline.status, StatusCode::SERVICE_UNAVAILABLE);
    let health = send(&c, request("GET", &format!("{base}/_ponte/health{q}"), "")).await;
    assert_eq!(health.status, StatusCode::OK);

    // Six requests, then the queued one's two attempts (500, then 200).
    let lines = eventually("the access lines", || {
        let lines = access_lines(&relay.output());
        async move { (lines.len() >= 8).then_some(lines) }
    })
    .await;
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    let by_path = |path: &str| -> &Value {
        let found: Vec<&&Value> = requests.iter().filter(|l| l["path"] == path).collect();
        assert_eq!(found.len(), 1, "one line for {path}: {lines:#?}");
        found[0]
    };

    let l = by_path("/t/live/hello");
    assert_eq!(l["level"], "INFO");
    assert_eq!(
        (&l["tunnel"], &l["method"], &l["status"]),
        (&"live".into(), &"GET".into(), &200.into())
    );
    assert_eq!((&l["bytes_in"], &l["bytes_out"]), (&0.into(), &5.into()), "{l}");
    assert!(l.get("error").is_none() && l.get("delivery_id").is_none(), "{l}");
    assert_eq!(l["peer"], "127.0.0.1");
    assert!(l["duration_ms"].as_f64().unwrap() > 0.0, "{l}");

    // Measured to the end of the body, which came 300 ms after the headers.
    let l = by_path("/t/live/slow");
    assert!(l["duration_ms"].as_f64().unwrap() >= 300.0, "{l}");
    assert_eq!(l["bytes_out"], 4);

    let l = by_path("/t/queued/fail");
    assert_eq!(
        (&l["status"], &l["delivery_id"]),
        (&202.into(), &Value::from(id.clone()))
    );
    assert_eq!((&l["tunnel"], &l["bytes_in"]), (&"queued".into(), &7.into()));

    let l = by_path("/t/nosuch/x");
    assert_eq!(
        (&l["status"], &l["error"]),
        (&404.into(), &"no-such-tunnel".into())
    );
    assert!(l.get("tunnel").is_none(), "an unknown name is not a tunnel: {l}");

    let l = by_path("/t/live/big");
    assert_eq!(
        (&l["status"], &l["error"]),
        (&413.into(), &"body-too-large".into())
    );

    let l = by_path("/t/offline/x");
    assert_eq!(
        (&l["status"], &l["error"]),
        (&503.into(), &"agent-offline".into())
    );
    assert_eq!(l["tunnel"], "offline");

    assert!(
        !requests
            .iter()
            .any(|l| l["path"].as_str().unwrap().starts_with("/_ponte/")),
        "the relay's own endpoints are not tunnel traffic: {requests:#?}"
    );

    let attempts: Vec<&Value> = lines.iter().filter(|l| l["id"] == id.as_str()).collect();
    assert_eq!(attempts.len(), 2, "{lines:#?}");
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(
        (&first["attempt"], &first["outcome"]),
        (&1.into(), &"retry".into())
    );
    assert_eq!((&first["level"], &first["status"]), (&"WARN".into(), &500.into()));
    assert_eq!(
        (&second["attempt"], &second["outcome"]),
        (&2.into(), &"delivered".into())
    );
    assert_eq!(
        (&second["level"], &second["status"]),
        (&"INFO".into(), &200.into())
    );
    assert_eq!(second["tunnel"], "queued");

    let everything = relay.output();
    assert!(everything.contains("/t/queued/fail"), "the log was captured");
    assert!(
        !everything.contains(SECRET),
        "a query string reached the log:\n{everything}"
    );
    live.stop().await;
    queued.stop().await;
}

/// A relay in this process whose `metrics_listen` is bound on port 0; returns its metrics address.
async fn start_relay_with_metrics(yaml: &str) -> (RelayHandle, SocketAddr) {
    let cfg = RelayConfig::from_str_with_env(yaml, "relay.yaml", &|_| None).expect("relay config");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, metrics_addr) = (listener.local_addr().unwrap(), metrics.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let join = tokio::spawn(ponte::relay::serve_with_metrics(
        listener,
        Some(metrics),
        cfg,
        shutdown.clone(),
    ));
    (RelayHandle { addr, shutdown, join }, metrics_addr)
}

/// Scrape `url` and parse the Prometheus text.
async fn scrape(url: &str, token: Option<&str>) -> prometheus_parse::Scrape {
    let c = client(None, false);
    let mut req = Request::get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = send(&c, req.body(ponte::body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.header("content-type").starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers
    );
    prometheus_parse::Scrape::parse(r.text().lines().map(|l| Ok(l.to_string()))).expect("prometheus text")
}

#[tokio::test]
async fn metrics_move_by_exactly_the_requests_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, metrics) = start_relay_with_metrics(&three_tunnels(None, dir.path(), "")).await;
    let base = relay.url(false);
    let up = start_upstream(|_req| async { text(StatusCode::OK, "ok") }).await;
    let mut live = agent_for(&base, None, LIVE_TOKEN, &up.url());
    let mut queued = agent_for(&base, None, QUEUED_TOKEN, &up.url());
    live.connected().await;
    queued.connected().await;
    let url = format!("http://{metrics}/metrics");
    let before = scrape(&url, None).await;
    assert_eq!(
        sample(&before, "ponte_agents_connected", &[("tunnel", "live")]),
        1.0
    );
    assert_eq!(
        sample(&before, "ponte_agents_connected", &[("tunnel", "offline")]),
        0.0
    );

    let c = client(None, false);
    for _ in 0..5 {
        let r = send(&c, request("POST", &format!("{base}/t/live/x"), "0123456789")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for n in 0..3 {
        let r = send(&c, request("GET", &format!("{base}/t/nosuch-{n}/x"), "")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    for _ in 0..2 {
        let r = send(&c, request("POST", &format!("{base}/t/queued/x"), "{}")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    let delta = |after: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]| {
        sample(after, metric, labels) - sample(&before, metric, labels)
    };
    // Requests are counted when their response body is done, a moment after the client saw it.
    let after = eventually("the requests to be counted", || async {
        let s = scrape(&url, None).await;
        let done = delta(
            &s,
            "ponte_requests_total",
            &[("tunnel", "live"), ("class", "2xx")],
        ) == 5.0
            && delta(
                &s,
                "ponte_delivery_attempts_total",
                &[("tunnel", "queued"), ("outcome", "delivered")],
            ) == 2.0;
        done.then_some(s)
    })
    .await;
    let live_t = [("tunnel", "live")];
    assert_eq!(
        delta(
            &after,
            "ponte_requests_total",
            &[("tunnel", ""), ("class", "4xx")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            &after,
            "ponte_requests_total",
            &[("tunnel", "queued"), ("class", "2xx")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            &after,
            "ponte_requests_total",
            &[("tunnel", "live"), ("class", "5xx")]
        ),
        0.0
    );
    assert_eq!(
        delta(&after, "ponte_request_duration_seconds_count", &live_t),
        5.0
    );
    assert_eq!(
        delta(&after, "ponte_agent_round_trip_seconds_count", &live_t),
        5.0
    );
    assert_eq!(
        delta(
            &after,
            "ponte_agent_round_trip_seconds_count",
            &[("tunnel", "queued")]
        ),
        2.0,
        "delivery attempts are round trips too"
    );
    assert_eq!(delta(&after, "ponte_request_body_bytes_total", &live_t), 50.0);
    assert_eq!(delta(&after, "ponte_response_body_bytes_total", &live_t), 10.0);
    assert_eq!(
        delta(
            &after,
            "ponte_delivery_attempts_total",
            &[("tunnel", "queued"), ("outcome", "retry")]
        ),
        0.0
    );
    assert_eq!(
        sample(
            &after,
            "ponte_queue_deliveries",
            &[("tunnel", "queued"), ("state", "pending")]
        ),
        0.0
    );
    assert!(delta(&after, "ponte_store_commit_batch_size_count", &[]) >= 2.0);
    assert!(
        sample(&after, "ponte_connections_open", &[]) >= 2.0,
        "two agents at least"
    );
    assert_eq!(sample(&after, "ponte_relay", &[("version", ponte::VERSION)]), 1.0);
    let histogram = after
        .samples
        .iter()
        .find(|s| s.metric == "ponte_request_duration_seconds" && s.labels.get("tunnel") == Some("live"))
        .expect("duration histogram");
    assert!(matches!(histogram.value, prometheus_parse::Value::Histogram(_)));

    // With the agent gone, the queue shows what waits and for how long.
    queued.stop().await;
    eventually("the agent to be gone", || async {
        let s = scrape(&url, None).await;
        (sample(&s, "ponte_agents_connected", &[("tunnel", "queued")]) == 0.0).then_some(())
    })
    .await;
    let r = send(&c, request("POST", &format!("{base}/t/queued/x"), "{}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let s = scrape(&url, None).await;
    assert_eq!(
        sample(
            &s,
            "ponte_queue_deliveries",
            &[("tunnel", "queued"), ("state", "pending")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "ponte_queue_deliveries",
            &[("tunnel", "live"), ("state", "pending")]
        ),
        0.0
    );
    eventually("the oldest pending age to grow", || async {
        let s = scrape(&url, None).await;
        (sample(
            &s,
            "ponte_queue_oldest_pending_age_seconds",
            &[("tunnel", "queued")],
        ) > 0.0)
            .then_some(())
    })
    .await;
    live.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn oversized_headers_and_bodies_count_as_limits_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = three_tunnels(None, dir.path(), "limits:\n  max_header_bytes: 4KiB\n");
    let (relay, metrics) = start_relay_with_metrics(&yaml).await;
    let base = relay.url(false);
    let up = start_upstream(|_req| async { text(StatusCode::OK, "ok") }).await;
    let mut live = agent_for(&base, None, LIVE_TOKEN, &up.url());
    live.connected().await;
    let url = format!("http://{metrics}/metrics");
    let hits =
        |s: &prometheus_parse::Scrape, limit: &str| sample(s, "ponte_limits_hit_total", &[("limit", limit)]);
    let before = scrape(&url, None).await;
    let big = "a".repeat(6 * 1024);
    for h2 in [false, true] {
        let c = client(None, h2);
        let req = Request::get(format!("{base}/t/live/big-headers"))
            .header("x-big", &big)
            .body(ponte::body::empty())
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "h2={h2}");
        if h2 {
            // HTTP/1.1's 431 is the parser's (no request exists yet); HTTP/2's is the relay's.
            assert_eq!(r.header("ponte-error"), "headers-too-large");
        }
        // Just under the limit passes on both protocols: the check counts what a peer would.
        let req = Request::get(format!("{base}/t/live/fits"))
            .header("x-fits", "a".repeat(3 * 1024))
            .body(ponte::body::empty())
            .unwrap();
        assert_eq!(send(&c, req).await.status, StatusCode::OK, "h2={h2}");
        let r = send(
            &c,
            request("POST", &format!("{base}/t/live/big-body"), "b".repeat(2000)),
        )
        .await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "h2={h2}");
    }
    let after = scrape(&url, None).await;
    assert_eq!(
        hits(&after, "max_header_bytes") - hits(&before, "max_header_bytes"),
        2.0
    );
    assert_eq!(
        hits(&after, "max_body_bytes") - hits(&before, "max_body_bytes"),
        2.0
    );
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        2,
        "only the two requests that fit reached the upstream"
    );
    relay.stop().await;
}

#[tokio::test]
async fn ten_thousand_unknown_tunnels_add_no_series() {
    const CONNECTIONS: usize = 4;
    const PER_CONNECTION: usize = 2500;
    let yaml = relay_yaml(None, "domain: relay.test\naccess_log: false\n", "");
    let (relay, metrics) = start_relay_with_metrics(&yaml).await;
    let url = format!("http://{metrics}/metrics");
    let before = scrape(&url, None).await;
    let unrouted = [("tunnel", ""), ("class", "4xx")];
    let mut tasks = Vec::new();
    for conn in 0..CONNECTIONS {
        let addr = relay.addr;
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(driver);
            for i in 0..PER_CONNECTION {
                // Half by path, half by host: every name differs.
                let n = conn * PER_CONNECTION + i;
                let (host, path) = if n.is_multiple_of(2) {
                    ("127.0.0.1".to_string(), format!("/t/unknown-{n}/x"))
                } else {
                    (format!("unknown-{n}.relay.test"), "/x".to_string())
                };
                sender.ready().await.unwrap();
                let req = Request::get(path)
                    .header("host", host)
                    .body(ponte::body::empty())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::NOT_FOUND);
                resp.into_body().collect().await.unwrap();
            }
        }));
    }
    for t in tasks {
        within("10,000 requests", t).await.unwrap();
    }
    let total = (CONNECTIONS * PER_CONNECTION) as f64;
    let after = eventually("the 404s to be counted", || async {
        let s = scrape(&url, None).await;
        (sample(&s, "ponte_requests_total", &unrouted) - sample(&before, "ponte_requests_total", &unrouted)
            == total)
            .then_some(s)
    })
    .await;
    assert_eq!(after.samples.len(), before.samples.len(), "no series was added");
    assert!(
        !after
            .samples
            .iter()
            .any(|s| s.labels.values().any(|v| v.starts_with("unknown-"))),
        "no label value comes from a request"
    );
    relay.stop().await;
}

#[tokio::test]
async fn ready_says_503_while_the_relay_drains() {
    let release = Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    let up = start_upstream(move |_req| {
        let held = held.clone();
        async move {
            held.notified().await;
            text(StatusCode::OK, "finished")
        }
    })
    .await;
    let (relay, metrics) = start_relay_with_metrics(&relay_yaml(None, "grace_period: 10s\n", "")).await;
    let base = relay.url(false);
    let mut agent = start_agent(&agent_yaml(
        &base,
        None,
        &format!("ingress:\n  - upstream: {}\n", up.url()),
    ));
    agent.connected().await;
    let c = client(None, false);
    let public = send(&c, request("GET", &format!("{base}/_ponte/ready"), "")).await;
    assert_eq!(
        (public.status, public.text().as_str()),
        (StatusCode::OK, "ready\n")
    );
    let probe = format!("http://{metrics}/ready");
    assert_eq!(send(&c, request("GET", &probe, "")).await.status, StatusCode::OK);

    // A request in flight keeps the drain going.
    let in_flight = tokio::spawn({
        let (c, url) = (c.clone(), format!("{base}/t/demo/held"));
        async move { send(&c, request("GET", &url, "")).await }
    });
    eventually("the request to reach the upstream", || async {
        (up.hits() == 1).then_some(())
    })
    .await;
    relay.shutdown.cancel();
    let draining = eventually("ready to turn 503", || async {
        let r = send(&client(None, false), request("GET", &probe, "")).await;
        (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    assert_eq!(draining.text(), "draining\n");
    release.notify_one();
    let finished = within("the held request", in_flight).await.unwrap();
    assert_eq!(finished.text(), "finished", "the drain let it finish");
    within("relay shutdown", relay.join).await.unwrap().unwrap();
    agent.stop().await;
}

#[tokio::test]
async fn the_metrics_token_guards_the_public_port_and_metrics_listen_needs_none() {
    let yaml = relay_yaml(
        None,
        &format!("metrics_token: {METRICS_TOKEN}\nlimits:\n  max_failed_logins_per_minute: 3\n"),
        "",
    );
    let (relay, metrics) = start_relay_with_metrics(&yaml).await;
    let c = client(None, false);
    let url = format!("{}/_ponte/metrics", relay.url(false));
    let call = |token: Option<&'static str>| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut req = Request::get(url);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            send(&c, req.body(ponte::body::empty()).unwrap()).await
        }
    };
    let none = call(None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.header("www-authenticate").starts_with("Bearer"));
    assert_eq!(none.header("ponte-error"), "metrics-token-missing");
    let s = scrape(&url, Some(METRICS_TOKEN)).await;
    assert_eq!(sample(&s, "ponte_agents_connected", &[("tunnel", "demo")]), 0.0);
    let private = scrape(&format!("http://{metrics}/metrics"), None).await;
    assert!(!private.samples.is_empty());

    let wrong = call(Some("not-the-token")).await;
    assert_eq!(
        (wrong.status, wrong.header("ponte-error")),
        (StatusCode::FORBIDDEN, "metrics-token-rejected")
    );
    call(Some("not-the-token")).await;
    call(Some("not-the-token")).await;
    let throttled = call(Some(METRICS_TOKEN)).await;
    assert_eq!(
        throttled.status,
        StatusCode::TOO_MANY_REQUESTS,
        "wrong tries count like failed logins"
    );
    let s = scrape(&format!("http://{metrics}/metrics"), None).await;
    assert_eq!(
        sample(
            &s,
            "ponte_limits_hit_total",
            &[("limit", "max_failed_logins_per_minute")]
        ),
        1.0
    );
    relay.stop().await;

    // Without `metrics_token` the public port serves no metrics, even with `metrics_listen` set.
    let (relay, metrics) =
        start_relay_with_metrics(&relay_yaml(None, "metrics_listen: 127.0.0.1:0\n", "")).await;
    let r = send(
        &c,
        request("GET", &format!("{}/_ponte/metrics", relay.url(false)), ""),
    )
    .await;
    assert_eq!(
        (r.status, r.header("ponte-error")),
        (StatusCode::NOT_FOUND, "metrics-disabled")
    );
    scrape(&format!("http://{metrics}/metrics"), None).await;
    relay.stop().await;
}

/// Run `ponte ARGS…` against `base` with the admin token; returns (success, stdout, stderr).
async fn ponte(base: &str, certs: &Certs, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ponte"));
    cmd.args(args)
        .args(["--relay", base, "--ca-file"])
        .arg(&certs.ca)
        .env("PONTE_ADMIN_TOKEN", token);
    let out = within("ponte", tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .unwrap()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ponte_status_shows_agents_and_what_waits_for_one() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&three_tunnels(Some(&certs), dir.path(), "")).await;
    let base = relay.url(true);
    let up = start_upstream(|_req| async { text(StatusCode::OK, "ok") }).await;
    let mut live = agent_for(&base, Some(&certs), LIVE_TOKEN, &up.url());
    live.connected().await;
    // `queued` has no agent: its delivery waits.
    let c = client(Some(&certs), false);
    let r = send(&c, request("POST", &format!("{base}/t/queued/order"), "{}")).await;
    let id = r.header("ponte-delivery-id").to_string();
    // Three requests through `live`: its rate.
    for _ in 0..3 {
        let r = send(&c, request("POST", &format!("{base}/t/live/order"), "{}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }

    let (ok, out, err) = ponte(&base, &certs, ADMIN_TOKEN, &["status"]).await;
    assert!(ok, "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
            .to_string()
    };
    let live_line = line("live");
    assert!(
        live_line.contains("direct") && live_line.contains(" 1 ") && live_line.contains("now"),
        "{out}"
    );
    // The REQ/MIN column: 3 for `live`.
    let header = out
        .lines()
        .find(|l| l.starts_with("TUNNEL"))
        .unwrap_or_else(|| panic!("{out}"));
    let column = header.find("REQ/MIN").unwrap_or_else(|| panic!("{out}")) + "REQ/MIN".len();
    assert_eq!(live_line[..column].split_whitespace().last(), Some("3"), "{out}");
    let queued_line = line("queued");
    assert!(
        queued_line.contains("never") && queued_line.contains("(waiting for the agent)"),
        "{out}"
    );
    assert!(
        out.contains("127.0.0.1:") && out.contains(ponte::VERSION),
        "{out}"
    );

    let (ok, out, err) = ponte(&base, &certs, ADMIN_TOKEN, &["status", "--json"]).await;
    assert!(ok, "{err}");
    let status: ponte::protocol::admin::StatusResponse = serde_json::from_str(&out).unwrap();
    let t = |name: &str| status.tunnels.iter().find(|t| t.name == name).unwrap().clone();
    let agent = &t("live").agents[0];
    assert_eq!(agent.version.as_deref(), Some(ponte::VERSION));
    assert!(agent.address.starts_with("127.0.0.1:"), "{agent:?}");
    let q = t("queued").queue.unwrap();
    assert_eq!((q.pending, q.failed), (1, 0));
    assert!(q.oldest_pending.is_some() && t("queued").waiting_for_agent());
    assert!(t("queued").last_seen.is_none() && t("live").last_seen.is_some());
    assert_eq!(
        (t("live").requests_per_minute, t("queued").requests_per_minute),
        (3, 1)
    );

    let (ok, out, err) = ponte(&base, &certs, ADMIN_TOKEN, &["deliveries", "list"]).await;
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.ends_with("(waiting for the agent)"), "{out}");
    let (ok, out, err) = ponte(&base, &certs, ADMIN_TOKEN, &["deliveries", "show", &id]).await;
    assert!(ok, "{err}");
    assert!(out.contains("next try:  waiting for the agent"), "{out}");

    // Once the agent is there, the delivery goes and `last seen` follows the agent.
    let mut agent = agent_for(&base, Some(&certs), QUEUED_TOKEN, &up.url());
    agent.connected().await;
    eventually("the waiting delivery to go out", || async {
        // The three through `live`, then the waiting one.
        (up.hits() == 4).then_some(())
    })
    .await;
    agent.stop().await;
    eventually("`last seen` to show when the agent left", || async {
        let (ok, out, err) = ponte(&base, &certs, ADMIN_TOKEN, &["status"]).await;
        assert!(ok, "{err}");
        line_of(&out, "queued").contains(" ago").then_some(())
    })
    .await;

    let (ok, _, err) = ponte(&base, &certs, "wrong-token", &["status"]).await;
    assert!(!ok && err.contains("403"), "{err}");
    live.stop().await;
    relay.stop().await;
}

fn line_of(out: &str, name: &str) -> String {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
        .to_string()
}

#[tokio::test]
async fn status_works_without_a_store() {
    let relay = start_relay(&relay_yaml(None, &format!("admin_token: {ADMIN_TOKEN}\n"), "")).await;
    let c = client(None, false);
    let status = admin_json(&c, &relay.url(false), "GET", "status").await;
    assert_eq!(status["store"], false);
    assert_eq!(status["tunnels"][0]["name"], "demo");
    assert!(status["tunnels"][0]["queue"].is_null());
    assert_eq!(
        admin(&c, &relay.url(false), "POST", "status", Some(ADMIN_TOKEN))
            .await
            .status,
        405
    );
    relay.stop().await;
}
