//! Several relay nodes on one PostgreSQL database (real relays over TLS, real agents, a real
//! PostgreSQL this binary starts): a request reaching a node without the tunnel's agent is
//! answered through the node that has it; the forwarding endpoint refuses anyone without the
//! cluster secret; a node killed with SIGKILL drops out once its entries expire; a clean shutdown
//! removes its rows at once. Without PostgreSQL the tests print why and pass, except under
//! `CI=true`.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use support::postgres::{self as pg, Cluster};
use support::process::start_relay_process;
use support::*;

/// The shared cluster secret of every test node.
const SECRET: &str = "cluster-secret-0123456789abcdef";
/// The token of the queued tunnel `q`.
const Q_TOKEN: &str = "queue-token-0123456789abcdef";
/// The token of the tunnel `r`, whose agent is on node B in the crash test.
const R_TOKEN: &str = "r-token-0123456789abcdef";

/// `cluster:` for node `id` reachable at `port`, on `store`.
fn cluster_yaml(certs: &Certs, store: &str, id: &str, port: u16, extra: &str) -> String {
    format!(
        "store: \"{store}\"\nadmin_token: {ADMIN_TOKEN}\n{extra}cluster:\n  node_id: {id}\n  advertise: https://127.0.0.1:{port}\n  secret: {SECRET}\n  ca_file: {}\n",
        certs.ca.display()
    )
}

/// A node of the cluster in this process, with the `demo` tunnel (direct).
async fn start_node(certs: &Certs, store: &str, id: &str, extra: &str) -> RelayHandle {
    start_node_with(certs, store, id, extra, "").await
}

/// [`start_node`] with `tunnel_extra` inside the `demo` tunnel (indented 4 spaces).
async fn start_node_with(
    certs: &Certs,
    store: &str,
    id: &str,
    extra: &str,
    tunnel_extra: &str,
) -> RelayHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let yaml = relay_yaml(
        Some(certs),
        &cluster_yaml(certs, store, id, port, extra),
        tunnel_extra,
    );
    start_relay_on(listener, &yaml)
}

/// The database name of a test database URL.
fn db_name(url: &str) -> &str {
    url.rsplit('/').next().expect("a database name")
}

/// How many unexpired session entries `node` has, by the database's clock.
fn live_entries(cluster: &Cluster, db: &str, node: &str) -> usize {
    cluster
        .psql(
            db,
            &format!(
                "SELECT count(*) FROM tunnel_sessions WHERE node_id = '{node}' AND expires_at > floor(extract(epoch FROM now()) * 1000)::bigint"
            ),
        )
        .trim()
        .parse()
        .expect("a count")
}

/// An upstream that streams the body back, answers `201` with `x-up: yes` and the path it saw,
/// or the status named by a `/status/NNN` path.
async fn answering_upstream() -> Upstream {
    start_upstream(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let status = path
            .strip_prefix("/status/")
            .and_then(|s| s.parse().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::CREATED);
        let mut resp = Response::builder()
            .status(status)
            .header("x-up", "yes")
            .header("x-echo-path", path);
        for name in ["x-custom", "x-forwarded-for", "authorization"] {
            if let Some(v) = parts.headers.get(name) {
                resp = resp.header(format!("x-echo-{name}"), v);
            }
        }
        resp.body(ponte::body::boxed(body)).expect("response")
    })
    .await
}

/// Wait (bounded) until a request to `url` on node B, which has no agent, is answered as `ok`
/// says: node B has found the node holding the agent.
async fn until_forwarded(
    c: &Client,
    method: &str,
    url: &str,
    body: &'static str,
    ok: impl Fn(StatusCode) -> bool,
) {
    eventually("node B to forward to node A", || async {
        let r = send(c, request(method, url, body)).await;
        ok(r.status).then_some(())
    })
    .await;
}

/// The metrics token of the nodes that serve metrics.
const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

/// `ponte_forwarded_requests_total{tunnel="demo"}` on `node`.
async fn forwarded_count(c: &Client, node: &RelayHandle) -> f64 {
    let req = Request::get(format!("{}/_ponte/metrics", node.url(true)))
        .header("authorization", format!("Bearer {METRICS_TOKEN}"))
        .body(ponte::body::empty())
        .unwrap();
    let r = send(c, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let scrape = prometheus_parse::Scrape::parse(r.text().lines().map(|l| Ok(l.to_string())))
        .expect("prometheus text");
    support::prometheus::sample(&scrape, "ponte_forwarded_requests_total", &[("tunnel", "demo")])
}

/// The median of durations.
fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn timed_gets(c: &Client, url: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let r = send(c, request("GET", url, Bytes::new())).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        out.push(start.elapsed());
    }
    out
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    ponte::body::Body,
>;

/// Three nodes, one agent on node A: requests to B and C are answered by A's agent, a 1 MiB body
/// streamed both ways, status and headers kept. Also measures the cross-node overhead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_node_without_the_agent_is_answered_through_the_node_with_it() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let up = answering_upstream().await;
    let a = start_node(&certs, &store, "a", "").await;
    let b = start_node(&certs, &store, "b", &format!("metrics_token: {METRICS_TOKEN}\n")).await;
    let c_node = start_node(&certs, &store, "c", "").await;
    let c = client(Some(&certs), false);

    // With no agent anywhere, a direct tunnel answers 503 on every node, at once.
    let r = send(&c, request("GET", &format!("{}/t/demo/x", b.url(true)), "")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("ponte-error"), "agent-offline");

    let mut agent = start_agent_to(&a.url(true), &certs, &up.url());
    agent.connected().await;
    let joined = Instant::now();
    // Node A tells the others at once (not at its next 5 s heartbeat).
    until_forwarded(&c, "GET", &format!("{}/t/demo/ping", b.url(true)), "", |s| {
        s == StatusCode::CREATED
    })
    .await;
    let learned = joined.elapsed();
    eprintln!("node B forwarded to node A {learned:?} after the agent connected");
    assert!(learned < Duration::from_secs(4), "took {learned:?}");

    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for node in [&b, &c_node] {
        let req = Request::builder()
            .method("POST")
            .uri(format!("{}/t/demo/big?x=1&y=%2F", node.url(true)))
            .header("x-custom", "kept")
            .header("authorization", "Bearer the-senders-own")
            .body(ponte::body::full(body.clone()))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        assert_eq!(r.header("x-up"), "yes");
        assert_eq!(r.header("x-echo-path"), "/big?x=1&y=%2F");
        assert_eq!(r.header("x-echo-x-custom"), "kept");
        assert_eq!(r.header("x-echo-authorization"), "Bearer the-senders-own");
        assert_eq!(r.header("x-echo-x-forwarded-for"), "127.0.0.1");
        assert!(r.header("ponte-cluster-secret").is_empty());
        assert_eq!(r.body.len(), body.len(), "the whole body came back");
        assert!(r.body.as_ref() == body.as_slice(), "byte for byte");
    }
    // The upstream's own error statuses pass unchanged, with no Ponte-Error.
    let r = send(
        &c,
        request("GET", &format!("{}/t/demo/status/404", b.url(true)), ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("x-up"), "yes");
    assert!(r.header("ponte-error").is_empty());
    // An answer of Ponte's own on node A (here the agent's upstream is gone) comes back through
    // node B unchanged, `Ponte-Error` included.
    let down = {
        let (down_up, _) = recording_upstream(|_, _| StatusCode::OK).await;
        down_up.url()
    };
    let mut agent2 = start_agent_to(&a.url(true), &certs, &down);
    agent2.connected().await;
    let mut seen_502 = false;
    for _ in 0..10 {
        let r = send(&c, request("GET", &format!("{}/t/demo/x", b.url(true)), "")).await;
        if r.status == StatusCode::BAD_GATEWAY {
            assert!(!r.header("ponte-error").is_empty(), "{}", r.text());
            seen_502 = true;
            break;
        }
        assert_eq!(r.status, StatusCode::CREATED);
    }
    assert!(
        seen_502,
        "requests are split between both agents; one should reach the dead upstream"
    );
    agent2.stop().await;

    // Cross-node overhead: p50 of sequential requests on warm connections.
    const N: usize = 200;
    let before = forwarded_count(&c, &b).await;
    timed_gets(&c, &format!("{}/t/demo/warm", a.url(true)), 20).await;
    timed_gets(&c, &format!("{}/t/demo/warm", b.url(true)), 20).await;
    let local = p50(timed_gets(&c, &format!("{}/t/demo/lat", a.url(true)), N).await);
    let forwarded = p50(timed_gets(&c, &format!("{}/t/demo/lat", b.url(true)), N).await);
    eprintln!(
        "p50 over {N} sequential GETs: to the node with the agent {local:?}, through another node {forwarded:?}, overhead {:?}",
        forwarded.saturating_sub(local)
    );
    // Node B counted exactly the requests it passed on (counted once each body is done).
    eventually("node B to count its forwarded requests", || async {
        (forwarded_count(&c, &b).await - before == (N + 20) as f64).then_some(())
    })
    .await;
    // And a 1 MiB round trip (upload streamed to the upstream and back), local vs forwarded.
    let mib = |node: String| {
        let (c, body) = (c.clone(), body.clone());
        async move {
            let mut samples = Vec::new();
            for _ in 0..10 {
                let start = Instant::now();
                let r = send(&c, request("POST", &format!("{node}/t/demo/mib"), body.clone())).await;
                assert_eq!(r.body.len(), body.len());
                samples.push(start.elapsed());
            }
            p50(samples)
        }
    };
    let (local, forwarded) = (mib(a.url(true)).await, mib(b.url(true)).await);
    eprintln!(
        "p50 of 10 1 MiB round trips: to the node with the agent {local:?}, through another node {forwarded:?}"
    );

    agent.stop().await;
    for node in [a, b, c_node] {
        node.stop().await;
    }
}

/// The forwarding endpoint: 401 without the secret, 403 with a wrong one, both counted against the
/// address's login budget (then 429); with the secret, the node serves only its own sessions
/// (no second hop, so no loop); a relay without `cluster:` has no such endpoint. The 101 names
/// the node.
#[tokio::test]
async fn the_forward_endpoint_refuses_a_missing_or_wrong_secret_and_never_forwards_again() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let up = answering_upstream().await;
    let a = start_node(&certs, &store, "a", "").await;
    let b = start_node(
        &certs,
        &store,
        "b",
        "limits:\n  max_failed_logins_per_minute: 3\n",
    )
    .await;
    let c = client(Some(&certs), true);

    // The 101 to an agent names the node it reached.
    let login = format!(
        "GET /_ponte/v1/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: upgrade\r\nUpgrade: ponte-h2\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    let reply = raw_exchange(&b, &certs, login.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(status_line(&reply), "HTTP/1.1 101 Switching Protocols", "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("\r\nponte-node: b\r\n"),
        "{reply}"
    );

    let mut agent = start_agent_to(&a.url(true), &certs, &up.url());
    agent.connected().await;
    until_forwarded(&c, "GET", &format!("{}/t/demo/x", b.url(true)), "", |s| {
        s == StatusCode::CREATED
    })
    .await;

    let forward = |secret: Option<&str>| {
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("{}/_ponte/v1/cluster/forward", b.url(true)))
            .header("ponte-forward-tunnel", "demo")
            .header("ponte-forward-uri", "https://127.0.0.1/x");
        if let Some(s) = secret {
            req = req.header("ponte-cluster-secret", s);
        }
        req.body(ponte::body::full("payload")).unwrap()
    };
    // With the secret, node B serves only its own sessions: it holds none, so 503 `not-held-here`
    // (which tells the sending node to try another), even though node A holds the tunnel (a
    // forwarded request is never passed on again).
    let r = send(&c, forward(Some(SECRET))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("ponte-error"), "not-held-here");
    assert_eq!(up.hits(), 1, "only the eventually-probe reached the upstream");

    let r = send(&c, forward(None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.header("ponte-error"), "cluster-secret-missing");
    for _ in 0..2 {
        let r = send(&c, forward(Some("cluster-secret-wrong-0123456789"))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
        assert_eq!(r.header("ponte-error"), "cluster-secret-rejected");
    }
    // Three refusals used the budget: even the right secret is now throttled from this address.
    let r = send(&c, forward(Some(SECRET))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(up.hits(), 1, "no refused request reached the upstream");

    // A node with another secret: node A refuses it, and the sender gets a 503 of this node's
    // own, not node A's 403.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let odd = start_relay_on(
        listener,
        &relay_yaml(
            Some(&certs),
            &cluster_yaml(&certs, &store, "odd", port, "").replace(SECRET, "another-secret-0123456789abcdef"),
            "",
        ),
    );
    let r = send(&c, request("GET", &format!("{}/t/demo/x", odd.url(true)), "")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("ponte-error"), "unavailable", "{}", r.text());
    assert!(r.text().contains("relay node a refused"), "{}", r.text());
    assert_eq!(up.hits(), 1, "the refused request never reached the upstream");
    odd.stop().await;

    // A relay without `cluster:` has no forwarding endpoint.
    let single = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let r = send(
        &c,
        Request::builder()
            .method("POST")
            .uri(format!("{}/_ponte/v1/cluster/forward", single.url(true)))
            .header("ponte-cluster-secret", SECRET)
            .header("ponte-forward-tunnel", "demo")
            .header("ponte-forward-uri", "https://127.0.0.1/x")
            .body(ponte::body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

    agent.stop().await;
    for node in [a, b, single] {
        node.stop().await;
    }
}

/// A `fallback` tunnel with its agent on node A: a webhook reaching node B goes live through A
/// (also after A closed the idle node-to-node connection); with no agent on any node it is
/// committed and answered 202.
#[tokio::test]
async fn a_fallback_webhook_goes_live_through_the_node_with_the_agent_or_is_queued() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let db = db_name(&store);
    let (up, log) = recording_upstream(|_, _| StatusCode::CREATED).await;
    let fallback = "    delivery: fallback\n    queue:\n      retry_schedule: [50ms, 100ms]\n      attempt_timeout: 2s\n";
    let a = start_node_with(&certs, &store, "a", "limits:\n  idle_timeout: 1s\n", fallback).await;
    let b = start_node_with(&certs, &store, "b", "", fallback).await;
    let c = client(Some(&certs), false);
    let mut agent = start_agent_to(&a.url(true), &certs, &up.url());
    agent.connected().await;
    eventually("node A's entry", || async {
        (live_entries(cluster, db, "a") == 1).then_some(())
    })
    .await;
    // Past the directory's one-second cache of "no holder" from before the agent came.
    let live = eventually("a webhook on node B answered live by A's agent", || async {
        let r = send(
            &c,
            request("POST", &format!("{}/t/demo/hook", b.url(true)), "live"),
        )
        .await;
        assert!(
            r.status == StatusCode::CREATED || r.status == StatusCode::ACCEPTED,
            "{}",
            r.text()
        );
        (r.status == StatusCode::CREATED).then_some(r)
    })
    .await;
    assert_eq!(live.text(), "status 201");
    // Node A closes idle connections after 1 s: node B's pooled connection to it goes, and the
    // next forwarded webhook takes a fresh one instead of failing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = send(
        &c,
        request("POST", &format!("{}/t/demo/hook", b.url(true)), "after idle"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(log.lock().unwrap().last().unwrap().body.as_ref(), b"after idle");

    agent.stop().await;
    eventually("node A's entry to go", || async {
        (live_entries(cluster, db, "a") == 0).then_some(())
    })
    .await;
    let queued = eventually("a webhook on node B to be queued", || async {
        let r = send(
            &c,
            request("POST", &format!("{}/t/demo/hook", b.url(true)), "queued"),
        )
        .await;
        (r.status == StatusCode::ACCEPTED).then_some(r)
    })
    .await;
    assert!(!queued.header("ponte-delivery-id").is_empty());
    a.stop().await;
    b.stop().await;
}

/// A tunnel's entry goes as soon as its last agent leaves; a clean shutdown deletes the node's
/// rows at once.
#[tokio::test]
async fn entries_follow_the_agents_and_a_clean_shutdown_removes_the_node_at_once() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let db = db_name(&store);
    let up = answering_upstream().await;
    let a = start_node(&certs, &store, "a", "").await;
    let mut agent = start_agent_to(&a.url(true), &certs, &up.url());
    agent.connected().await;
    eventually("node A's entry for demo", || async {
        (live_entries(cluster, db, "a") == 1).then_some(())
    })
    .await;
    let nodes = cluster.psql(db, "SELECT node_id || ' ' || advertise FROM nodes");
    assert_eq!(nodes.trim(), format!("a {}", a.url(true)));
    // The admin status (behind `ponte status`) lists the nodes and what they hold.
    let c = client(Some(&certs), false);
    let status = admin_json(&c, &a.url(true), "GET", "status").await;
    assert_eq!(status["cluster"]["node_id"], "a", "{status}");
    let node = &status["cluster"]["nodes"][0];
    assert_eq!(node["id"], "a", "{status}");
    assert_eq!(node["advertise"], a.url(true), "{status}");
    assert_eq!(node["tunnels"], serde_json::json!(["demo"]), "{status}");
    assert!(node["heartbeat_age_secs"].as_u64().unwrap() < 10, "{status}");

    agent.stop().await;
    let left = Instant::now();
    eventually("node A's entry to go with its last agent", || async {
        (live_entries(cluster, db, "a") == 0).then_some(())
    })
    .await;
    assert!(
        left.elapsed() < Duration::from_secs(3),
        "took {:?}",
        left.elapsed()
    );

    let mut agent = start_agent_to(&a.url(true), &certs, &up.url());
    agent.connected().await;
    eventually("node A's entry again", || async {
        (live_entries(cluster, db, "a") == 1).then_some(())
    })
    .await;
    a.stop().await;
    // Gone at once: the shutdown deleted them, nothing waits for an expiry.
    let rows = cluster.psql(
        db,
        "SELECT (SELECT count(*) FROM tunnel_sessions) || ' ' || (SELECT count(*) FROM nodes)",
    );
    assert_eq!(rows.trim(), "0 0");
    agent.shutdown.cancel();
    let _ = within("agent stop", agent.join).await;
}

/// Node A (a real process) holds the agents of a direct and a queued tunnel; node B forwards to
/// it. After `kill -9` of A: B answers 503 at once (never hangs), A's entries expire within about
/// 30 s, and the queued tunnel answers 202 on B and delivers once an agent connects to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_drops_out_direct_answers_503_and_queued_webhooks_wait_for_any_node() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let db = db_name(&store);
    let (up, log) = recording_upstream(|_, _| StatusCode::CREATED).await;
    let tunnels = format!(
        "tunnels:\n  demo:\n    token: {TOKEN}\n  r:\n    token: {R_TOKEN}\n  q:\n    token: {Q_TOKEN}\n    delivery: queue\n    queue:\n      retry_schedule: [50ms, 100ms]\n      attempt_timeout: 2s\n"
    );
    let tls = format!(
        "tls:\n  cert: {}\n  key: {}\n",
        certs.cert.display(),
        certs.key.display()
    );

    // Node A: a child process on a port chosen first (its advertise URL names it).
    let port_a = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config_a = certs.dir.path().join("node-a.yaml");
    std::fs::write(
        &config_a,
        format!("{tls}{}{tunnels}", cluster_yaml(&certs, &store, "a", port_a, "")),
    )
    .expect("write config");
    let (mut node_a, port_a) = start_relay_process(&config_a, port_a).await;
    let url_a = format!("https://127.0.0.1:{port_a}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port_b = listener.local_addr().expect("addr").port();
    let b = start_relay_on(
        listener,
        &format!(
            "listen: 127.0.0.1:0\n{tls}{}{tunnels}",
            cluster_yaml(&certs, &store, "b", port_b, "")
        ),
    );
    let ingress = format!("ingress:\n  - upstream: {}\n", up.url());
    let mut demo_agent = start_agent(&agent_yaml(&url_a, Some(&certs), &ingress));
    let mut q_agent = start_agent(&agent_yaml(&url_a, Some(&certs), &ingress).replace(TOKEN, Q_TOKEN));
    demo_agent.connected().await;
    q_agent.connected().await;
    let c = client(Some(&certs), false);
    until_forwarded(&c, "POST", &format!("{}/t/demo/live", b.url(true)), "x", |s| {
        s == StatusCode::CREATED
    })
    .await;
    eventually("node A's two entries", || async {
        (live_entries(cluster, db, "a") == 2).then_some(())
    })
    .await;
    // Node A logs the requests node B passed to it, with where they came from and the path it
    // sent to its agent.
    let line = eventually("node A's access line of a request node B passed on", || {
        let found = node_a
            .output()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "ponte::access" && v["forwarded_from"] == "b");
        async move { found }
    })
    .await;
    assert_eq!(line["tunnel"], "demo", "{line}");
    assert_eq!(line["path"], "/live", "{line}");
    assert_eq!(line["status"], 201, "{line}");
    // The other way round: node A forwards tunnel `r` to node B, and its access line says so.
    let mut r_agent = start_agent(&agent_yaml(&b.url(true), Some(&certs), &ingress).replace(TOKEN, R_TOKEN));
    r_agent.connected().await;
    eventually("node A to forward to node B", || async {
        let r = send(&c, request("POST", &format!("{url_a}/t/r/from-a"), "x")).await;
        (r.status == StatusCode::CREATED).then_some(())
    })
    .await;
    let line = eventually("node A's access line of the forwarded request", || {
        let found = node_a
            .output()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "ponte::access" && v["tunnel"] == "r" && v["status"] == 201);
        async move { found }
    })
    .await;
    assert_eq!(line["forwarded_to"], "b", "{line}");
    assert_eq!(line["path"], "/t/r/from-a", "{line}");
    r_agent.stop().await;

    // Node C holds a second agent of `demo`: two holders for node B to choose from.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port_c = listener.local_addr().expect("addr").port();
    let node_c = start_relay_on(
        listener,
        &format!(
            "listen: 127.0.0.1:0\n{tls}{}{tunnels}",
            cluster_yaml(&certs, &store, "c", port_c, "")
        ),
    );
    let mut c_agent = start_agent(&agent_yaml(&node_c.url(true), Some(&certs), &ingress));
    c_agent.connected().await;
    eventually("node C's entry", || async {
        (live_entries(cluster, db, "c") == 1).then_some(())
    })
    .await;

    node_a.kill();
    let killed = Instant::now();
    demo_agent.shutdown.cancel();
    q_agent.shutdown.cancel();
    let first_q_agent = q_agent;

    // Right after the kill the entries still name A, which refuses connections: node B passes
    // every request to C instead, none fails.
    for i in 0..10 {
        let r = send(
            &c,
            request("POST", &format!("{}/t/demo/via-c/{i}", b.url(true)), "x"),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "request {i}: {}", r.text());
    }
    assert!(
        live_entries(cluster, db, "a") == 2,
        "A's entries were still live during that"
    );
    c_agent.stop().await;
    eventually("node C's entry to go with its agent", || async {
        (live_entries(cluster, db, "c") == 0).then_some(())
    })
    .await;
    // Past node B's one-second cache of the holders.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Now only A's stale entries remain: B answers 503 at once, it does not hang on them.
    let asked = Instant::now();
    let r = send(&c, request("POST", &format!("{}/t/demo/after", b.url(true)), "x")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("ponte-error"), "agent-offline");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );

    // A's entries expire on the database's clock: 30 s after its last heartbeat (every 5 s).
    let limit = Duration::from_secs(45);
    loop {
        if live_entries(cluster, db, "a") == 0 {
            break;
        }
        assert!(
            killed.elapsed() < limit,
            "node A's entries still live after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expired = killed.elapsed();
    eprintln!("node A's entries expired {expired:?} after kill -9");
    assert!(
        expired > Duration::from_secs(20),
        "expired too early: {expired:?}"
    );

    let r = send(&c, request("POST", &format!("{}/t/demo/later", b.url(true)), "x")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("ponte-error"), "agent-offline");
    assert_eq!(r.header("retry-after"), "10");

    let before = log.lock().unwrap().len();
    let r = send(
        &c,
        request(
            "POST",
            &format!("{}/t/q/hook", b.url(true)),
            "queued while A is gone",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.header("ponte-delivery-id").to_string();
    let mut q_agent = start_agent(&agent_yaml(&b.url(true), Some(&certs), &ingress).replace(TOKEN, Q_TOKEN));
    q_agent.connected().await;
    eventually("the queued webhook to be delivered through node B", || async {
        let log = log.lock().unwrap();
        log[before..]
            .iter()
            .any(|r| r.header("ponte-delivery-id") == id && r.body.as_ref() == b"queued while A is gone")
            .then_some(())
    })
    .await;
    q_agent.stop().await;
    b.stop().await;
    node_c.stop().await;
    let _ = within("the first agents to stop", async {
        let _ = demo_agent.join.await;
        let _ = first_q_agent.join.await;
    })
    .await;
}

/// Two relay processes configured with the same `cluster.node_id` are told so in their logs.
#[tokio::test]
async fn two_nodes_with_one_node_id_are_reported() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let config = certs.dir.path().join("same-id.yaml");
    std::fs::write(
        &config,
        relay_yaml(Some(&certs), &cluster_yaml(&certs, &store, "same", 9, ""), ""),
    )
    .expect("write config");
    let (mut first, _) = start_relay_process(&config, 0).await;
    let (_second, _) = start_relay_process(&config, 0).await;
    let line = first
        .log_line("another relay node uses the same cluster.node_id; give every node its own (requests may be forwarded to the wrong node)")
        .await
        .expect("the clash is logged");
    assert_eq!(line["level"], "ERROR", "{line}");
}

/// A node whose host takes connections but never answers (a hung machine): the first request
/// waits one connect timeout, then 503; the next ones skip that node at once for a while.
#[tokio::test]
async fn a_node_that_never_answers_costs_one_connect_timeout_then_is_skipped() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let db = db_name(&store);
    let b = start_node(&certs, &store, "b", "").await;
    let c = client(Some(&certs), false);
    // Node B answers once its store is open (and the schema migrated).
    let r = send(&c, request("GET", &format!("{}/_ponte/health", b.url(true)), "")).await;
    assert_eq!(r.status, StatusCode::OK);
    // Accepts TCP connections and holds them, silent: the TLS handshake never completes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    cluster.psql(
        db,
        &format!(
            "INSERT INTO nodes VALUES ('hung', 'https://127.0.0.1:{silent_port}', 0, floor(extract(epoch FROM now()) * 1000)::bigint);
             INSERT INTO tunnel_sessions VALUES ('hung', 'demo', 1, floor(extract(epoch FROM now()) * 1000)::bigint + 60000)"
        ),
    );
    let first = Instant::now();
    let r = send(&c, request("GET", &format!("{}/t/demo/x", b.url(true)), "")).await;
    let first = first.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("ponte-error"), "agent-offline");
    assert!(
        first >= Duration::from_secs(2) && first < Duration::from_secs(6),
        "the first request waited {first:?}"
    );
    let next = Instant::now();
    let r = send(&c, request("GET", &format!("{}/t/demo/x", b.url(true)), "")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        next.elapsed() < Duration::from_millis(500),
        "the next one waited {:?}",
        next.elapsed()
    );
    held.abort();
    b.stop().await;
}

/// A websocket reaching a node without the tunnel's agent is passed to the node with it (an
/// extended CONNECT between the nodes) and echoes both ways; an upgrade the upstream declines
/// comes back with the upstream's answer.
#[tokio::test]
async fn a_websocket_through_a_node_without_the_agent_reaches_it() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let ws_addr = websocket_echo_upstream().await;
    let a = start_node(&certs, &store, "a", "").await;
    let b = start_node(&certs, &store, "b", "").await;
    let mut agent = start_agent(&agent_yaml(
        &a.url(true),
        Some(&certs),
        &format!("ingress:\n  - upstream: http://{ws_addr}\n"),
    ));
    agent.connected().await;
    let c = client(Some(&certs), false);
    // Node B knows node A holds the tunnel once a plain request is passed there (the echo
    // upstream answers a request without an upgrade with an error of its own: not a 503).
    until_forwarded(&c, "GET", &format!("{}/t/demo/ws", b.url(true)), "", |s| {
        s != StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    websocket_echoes_through(b.addr, &certs).await;
    agent.stop().await;
    a.stop().await;
    b.stop().await;
}

/// A node named as a holder that no longer holds the tunnel (its agent moved within the last
/// second, while other nodes still had it in their cached holder lists) answers `not-held-here`,
/// and the sending node passes the request on to the next holder: the sender never sees that
/// node's 503. Here rows in the database name three more holders of `demo`, `moved-1` to
/// `moved-3`, all at node B's own address where there is no agent: three in four of B's
/// forwarded requests go to a node without the agent first (before this was handled, each of
/// those failed with 503).
#[tokio::test]
async fn a_holder_that_lost_the_agent_passes_the_request_on_to_the_next() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let db = db_name(&store);
    let up = answering_upstream().await;
    let a = start_node(&certs, &store, "a", "").await;
    let b = start_node(&certs, &store, "b", "").await;
    let c = client(Some(&certs), true);
    let mut agent = start_agent_to(&a.url(true), &certs, &up.url());
    agent.connected().await;
    until_forwarded(&c, "GET", &format!("{}/t/demo/x", b.url(true)), "", |s| {
        s == StatusCode::CREATED
    })
    .await;
    for n in 1..=3 {
        cluster.psql(
            db,
            &format!(
                "INSERT INTO nodes VALUES ('moved-{n}', '{}', 0, floor(extract(epoch FROM now()) * 1000)::bigint);
                 INSERT INTO tunnel_sessions VALUES ('moved-{n}', 'demo', 1, floor(extract(epoch FROM now()) * 1000)::bigint + 60000)",
                b.url(true)
            ),
        );
    }
    let holders = cluster.psql(db, "SELECT count(*) FROM tunnel_sessions WHERE tunnel = 'demo'");
    assert_eq!(holders.trim(), "4", "node A and the three moved nodes");
    // Past node B's holder cache (1 s), so that its next lookup names all four.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hits_before = up.hits();
    for i in 0..20 {
        let r = send(
            &c,
            request("POST", &format!("{}/t/demo/x", b.url(true)), format!("moved-{i}")),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "request {i}: {}", r.text());
        assert_eq!(
            r.text(),
            format!("moved-{i}"),
            "request {i}: the body reached the upstream whole"
        );
    }
    assert_eq!(
        up.hits() - hits_before,
        20,
        "each request reached the upstream once"
    );
    drop(agent);
    a.stop().await;
    b.stop().await;
}

/// `Retry-After` and `Ponte-Error` of a queue webhook refused while the database is down.
fn assert_refused_without_commit(r: &support::Reply, node: &str) {
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "node {node}: {}",
        r.text()
    );
    assert!(
        r.headers.contains_key("retry-after"),
        "node {node}: {:?}",
        r.headers
    );
    assert!(r.header("ponte-delivery-id").is_empty(), "node {node}");
}

/// PostgreSQL stopped under two nodes: the direct tunnel keeps working on the node holding its
/// agent and through the other node (which forwards to the holder it knew), while both nodes'
/// `/_ponte/ready` say 503; the queue tunnel answers 503 + Retry-After on both, never 202. Once
/// the database is back, without restarting a relay: ready is 200 again, heartbeats are written,
/// the queue accepts and delivers, forwarding still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_direct_tunnels_work_queues_refuse_and_all_recover_by_themselves() {
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(why) => return pg::skip(&why),
    };
    let certs = Certs::new();
    let store = cluster.database("");
    let db = db_name(&store).to_string();
    let (up, log) = recording_upstream(|_, _| StatusCode::CREATED).await;
    // A second tunnel `q` (queue) next to `demo` (direct).
    let queue_tunnel = format!(
        "  q:\n    token: {Q_TOKEN}\n    delivery: queue\n    queue:\n      retry_schedule: [50ms, 100ms]\n      attempt_timeout: 2s\n"
    );
    let a = start_node_with(&certs, &store, "a", "", &queue_tunnel).await;
    let b = start_node_with(&certs, &store, "b", "", &queue_tunnel).await;
    let c = client(Some(&certs), false);
    let ingress = format!("ingress:\n  - upstream: {}\n", up.url());
    let mut demo_agent = start_agent(&agent_yaml(&a.url(true), Some(&certs), &ingress));
    let mut q_agent = start_agent(&agent_yaml(&a.url(true), Some(&certs), &ingress).replace(TOKEN, Q_TOKEN));
    demo_agent.connected().await;
    q_agent.connected().await;
    until_forwarded(&c, "POST", &format!("{}/t/demo/x", b.url(true)), "x", |s| {
        s == StatusCode::CREATED
    })
    .await;
    let ready = |node: String| {
        let c = c.clone();
        async move {
            send(&c, request("GET", &format!("{node}/_ponte/ready"), ""))
                .await
                .status
        }
    };

    cluster.stop();
    for node in [&a, &b] {
        eventually("/_ponte/ready to say the store is down", || async {
            (ready(node.url(true)).await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        })
        .await;
    }
    // Held down for longer than a heartbeat interval (5 s), under a steady stream of direct
    // requests to both nodes: every one is answered by the agent.
    let down_since = Instant::now();
    let mut answered = 0;
    while down_since.elapsed() < Duration::from_secs(6) {
        for node in [&a, &b] {
            let r = send(
                &c,
                request("POST", &format!("{}/t/demo/down/{answered}", node.url(true)), "x"),
            )
            .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
            answered += 1;
        }
        for (node, name) in [(&a, "a"), (&b, "b")] {
            let r = send(
                &c,
                request("POST", &format!("{}/t/q/hook", node.url(true)), "refused"),
            )
            .await;
            assert_refused_without_commit(&r, name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{answered} direct requests answered during the outage");
    assert_eq!(ready(a.url(true)).await, StatusCode::SERVICE_UNAVAILABLE);

    cluster.restart();
    let back: i64 = cluster
        .psql(&db, "SELECT floor(extract(epoch FROM now()) * 1000)::bigint")
        .parse()
        .expect("a time");
    for node in [&a, &b] {
        eventually("/_ponte/ready to say the store is back", || async {
            (ready(node.url(true)).await == StatusCode::OK).then_some(())
        })
        .await;
    }
    // Both nodes write their heartbeats again (every 5 s), and A its entries.
    eventually("both nodes' heartbeats after the restart", || async {
        let fresh = cluster.psql(
            &db,
            &format!("SELECT count(*) FROM nodes WHERE heartbeat_at > {back}"),
        );
        (fresh == "2").then_some(())
    })
    .await;
    assert_eq!(live_entries(&cluster, &db, "a"), 2);
    let accepted = eventually("a queue webhook on node B accepted again", || async {
        let r = send(&c, request("POST", &format!("{}/t/q/hook", b.url(true)), "after")).await;
        match r.status {
            StatusCode::ACCEPTED => Some(r),
            StatusCode::SERVICE_UNAVAILABLE => None,
            other => panic!("{other}: {}", r.text()),
        }
    })
    .await;
    let id = accepted.header("ponte-delivery-id").to_string();
    eventually("the webhook delivered by node A's agent", || async {
        log.lock()
            .unwrap()
            .iter()
            .any(|r| r.header("ponte-delivery-id") == id && r.body.as_ref() == b"after")
            .then_some(())
    })
    .await;
    assert!(
        !log.lock().unwrap().iter().any(|r| r.body.as_ref() == b"refused"),
        "a refused webhook was delivered"
    );
    let r = send(&c, request("POST", &format!("{}/t/demo/after", b.url(true)), "x")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    demo_agent.stop().await;
    q_agent.stop().await;
    a.stop().await;
    b.stop().await;
}

/// Log in to a node's console with the admin token; returns the session cookie (`name=value`).
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

/// The console's overview page of `base` in `lang`.
async fn console_page(c: &Client, base: &str, cookie: &str, lang: &str) -> String {
    let page = Request::get(format!("{base}/_ponte/console/"))
        .header("cookie", cookie)
        .header("accept-language", lang)
        .body(ponte::body::empty())
        .unwrap();
    let page = send(c, page).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    page.text()
}

/// The `<tr>` of node `id` in the console's nodes table, if there is one.
fn node_row<'a>(page: &'a str, id: &str) -> Option<&'a str> {
    let start = page.find(&format!("<tr class=\"node\" data-node=\"{id}\">"))?;
    let end = page[start..].find("</tr>")?;
    Some(&page[start..start + end])
}

/// The console of a clustered node lists every node (id, advertise URL, last heartbeat, the
/// tunnels it holds), marks itself and a silent node, in English and Portuguese; a relay without
/// `cluster:` has no such panel.
#[tokio::test]
async fn the_console_lists_the_relay_nodes_with_their_heartbeats_and_tunnels() {
    let Some(cluster) = pg::shared() else { return };
    let certs = Certs::new();
    let store = cluster.database("");
    let db = db_name(&store);
    let up = answering_upstream().await;
    let a = start_node(&certs, &store, "a", "").await;
    let b = start_node(&certs, &store, "b", "").await;
    let mut agent = start_agent_to(&a.url(true), &certs, &up.url());
    agent.connected().await;
    // A node that stopped writing heartbeats a minute ago (a crashed machine).
    cluster.psql(
        db,
        "INSERT INTO nodes VALUES ('gone', 'https://10.9.9.9:443', 0, floor(extract(epoch FROM now()) * 1000)::bigint - 60000)",
    );
    let c = client(Some(&certs), false);
    let cookie = console_login(&c, &b.url(true)).await;
    let page = eventually("node B's console to list both live nodes", || {
        let (c, base, cookie) = (c.clone(), b.url(true), cookie.clone());
        async move {
            let page = console_page(&c, &base, &cookie, "en").await;
            let holds =
                node_row(&page, "a").is_some_and(|r| r.contains("<td class=\"node-tunnels\">demo</td>"));
            (holds && node_row(&page, "b").is_some()).then_some(page)
        }
    })
    .await;
    assert!(page.contains("<h1>Relay nodes</h1>"), "{page}");
    let row_a = node_row(&page, "a").expect("node a");
    assert!(
        row_a.contains(&format!("<code class=\"advertise\">{}</code>", a.url(true))),
        "{row_a}"
    );
    assert!(!row_a.contains("this-node"), "{row_a}");
    assert!(!row_a.contains("silent"), "{row_a}");
    // Written within the last heartbeat interval (5 s), shown as `N s ago`.
    let age: u64 = row_a
        .split("<td class=\"heartbeat\"")
        .nth(1)
        .and_then(|s| s.split('>').nth(1))
        .and_then(|s| s.strip_suffix(" s ago</td"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("a heartbeat age in seconds: {row_a}"));
    assert!(age <= 6, "{row_a}");
    let row_b = node_row(&page, "b").expect("node b");
    assert!(row_b.contains("(this node)"), "{row_b}");
    assert!(row_b.contains("<td class=\"node-tunnels\">none</td>"), "{row_b}");
    let gone = node_row(&page, "gone").expect("the silent node");
    assert!(gone.contains("1 min ago"), "{gone}");
    assert!(
        gone.contains("<span class=\"error silent\">silent: no request is passed to it</span>"),
        "{gone}"
    );

    let pt = console_page(&c, &b.url(true), &cookie, "pt-BR,pt;q=0.9").await;
    assert!(pt.contains("<h1>Nós do relay</h1>"), "{pt}");
    assert!(pt.contains("<th>Último sinal de vida</th>"), "{pt}");
    assert!(node_row(&pt, "b").expect("node b").contains("(este nó)"), "{pt}");
    assert!(
        node_row(&pt, "b").expect("node b").contains(">nenhum</td>"),
        "{pt}"
    );
    assert!(node_row(&pt, "gone").expect("gone").contains("sem sinal"), "{pt}");

    // One relay alone shows no nodes panel.
    let single = start_relay(&relay_yaml(
        Some(&certs),
        &format!("admin_token: {ADMIN_TOKEN}\n"),
        "",
    ))
    .await;
    let cookie = console_login(&c, &single.url(true)).await;
    let page = console_page(&c, &single.url(true), &cookie, "en").await;
    assert!(page.contains("id=\"tunnels\""), "{page}");
    assert!(!page.contains("id=\"nodes\""), "{page}");

    agent.stop().await;
    for node in [a, b, single] {
        node.stop().await;
    }
}
