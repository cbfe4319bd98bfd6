//! The README's HAProxy example run for real: a `haproxy` process (mode tcp, TLS passed through)
//! in front of two relay nodes on one PostgreSQL, its configuration read from
//! `packaging/cluster/haproxy.cfg` (the text the README shows) with the test's ports put in. An
//! agent connects through HAProxy, webhooks sent through HAProxy are answered (also through the
//! node without the agent), and once the agent's node stops, traffic continues through the other.
//! Without `haproxy` or PostgreSQL the test prints why and passes, except under `CI=true`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::postgres as pg;
use support::process::Owned;
use support::*;

/// The shared cluster secret of both nodes.
const SECRET: &str = "cluster-secret-0123456789abcdef";

/// The example as shipped.
fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/cluster/haproxy.cfg");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `haproxy` on the PATH, or why there is none (a failure under `CI=true`).
fn haproxy() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("haproxy"))
            .find(|f| f.exists())
    });
    if found.is_none() {
        let why = "haproxy not found on PATH (install it: `apt-get install haproxy`)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("haproxy is needed for this test under CI=true: {why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

/// A free port on 127.0.0.1 (for the processes that must be told theirs in advance).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The example with the test's addresses: HAProxy on `front`, the nodes' listeners and their
/// `metrics_listen` ports.
fn example_with_ports(front: u16, nodes: [(u16, u16); 2]) -> String {
    let mut cfg = example();
    let mut replace = |from: &str, to: String| {
        assert!(cfg.contains(from), "the example no longer has `{from}`");
        cfg = cfg.replace(from, &to);
    };
    replace("bind :443", format!("bind 127.0.0.1:{front}"));
    for (placeholder, (port, metrics)) in ["10.0.0.5", "10.0.0.6"].into_iter().zip(nodes) {
        replace(
            &format!("{placeholder}:443 check port 9464"),
            format!("127.0.0.1:{port} check port {metrics}"),
        );
    }
    cfg
}

/// `ponte_*` sample `metric{tunnel="demo"}` on a node's `metrics_listen`.
async fn demo_metric(metrics_port: u16, metric: &str) -> f64 {
    let c = client(None, false);
    let r = send(
        &c,
        request("GET", &format!("http://127.0.0.1:{metrics_port}/metrics"), ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let scrape = prometheus_parse::Scrape::parse(r.text().lines().map(|l| Ok(l.to_string())))
        .expect("prometheus text");
    support::prometheus::sample(&scrape, metric, &[("tunnel", "demo")])
}

/// Failed logins a node takes from one address per minute in this test.
const LOGIN_BUDGET: u32 = 3;

/// POST a webhook through HAProxy on a connection of its own (so HAProxy balances each one).
async fn webhook(certs: &Certs, front: u16, i: usize) -> StatusCode {
    let c = client(Some(certs), false);
    let req = request(
        "POST",
        &format!("https://127.0.0.1:{front}/t/demo/hook/{i}"),
        format!("webhook {i}"),
    );
    match tokio::time::timeout(WAIT, c.request(req)).await {
        Ok(Ok(r)) => r.status(),
        // A connection HAProxy closed (no node up yet) counts as a failed webhook.
        _ => StatusCode::BAD_GATEWAY,
    }
}

#[test]
fn the_readme_shows_the_haproxy_example_as_shipped() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    assert!(
        readme.contains(&example()),
        "README.md must show packaging/cluster/haproxy.cfg verbatim (copy the file into it)"
    );
}

/// The node's relay.yaml the deployment guide shows is a valid configuration (with a tunnel).
#[test]
fn the_guides_node_configuration_is_valid() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let start = readme
        .find("```yaml\n# relay.yaml on relay-1")
        .expect("the guide's relay.yaml")
        + "```yaml\n".len();
    let end = start + readme[start..].find("```").expect("the block's end");
    let yaml = format!("{}tunnels:\n  clinic:\n    token: {TOKEN}\n", &readme[start..end]);
    let env = |name: &str| {
        ["PONTE_DB_PASSWORD", "PONTE_CLUSTER_SECRET"]
            .contains(&name)
            .then(|| "a-long-secret-0123456789abcdef".to_string())
    };
    let cfg = ponte::config::relay::RelayConfig::from_str_with_env(&yaml, "README relay.yaml", &env)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let cluster = cfg.cluster.expect("a cluster section");
    assert_eq!(cluster.node_id(), "relay-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_through_haproxy_reach_the_agent_and_continue_when_its_node_stops() {
    let Some(haproxy) = haproxy() else { return };
    // A server of its own: the test stops it.
    let cluster = match pg::Cluster::start() {
        Ok(c) => c,
        Err(why) => return pg::skip(&why),
    };
    let certs = Certs::new();
    let store = cluster.database("");
    let (up, log) = recording_upstream(|_, _| StatusCode::CREATED).await;

    // Two nodes, each with its listener and `metrics_listen` (HAProxy's health check).
    let mut nodes = Vec::new();
    for id in ["relay-1", "relay-2"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let metrics = free_port();
        let extra = format!(
            "store: \"{store}\"\nmetrics_listen: 127.0.0.1:{metrics}\nproxy_protocol: [127.0.0.1]\nlimits:\n  max_failed_logins_per_minute: {LOGIN_BUDGET}\ncluster:\n  node_id: {id}\n  advertise: https://127.0.0.1:{port}\n  secret: {SECRET}\n  ca_file: {}\n",
            certs.ca.display()
        );
        let node = start_relay_on(listener, &relay_yaml(Some(&certs), &extra, ""));
        nodes.push((node, port, metrics));
    }

    let front = free_port();
    let cfg_path = certs.dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg_path,
        example_with_ports(front, [(nodes[0].1, nodes[0].2), (nodes[1].1, nodes[1].2)]),
    )
    .expect("write haproxy.cfg");
    let check = Command::new(&haproxy)
        .args(["-c", "-f"])
        .arg(&cfg_path)
        .output()
        .expect("run haproxy -c");
    assert!(
        check.status.success(),
        "haproxy refuses the example: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let haproxy_log = std::fs::File::create(certs.dir.path().join("haproxy.log")).expect("log file");
    let _haproxy = Owned(
        Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(haproxy_log.try_clone().expect("log file"))
            .stderr(haproxy_log)
            .spawn()
            .expect("start haproxy"),
    );

    // The agent knows only HAProxy's address. One session (`ha_connections: 1`), so that one node
    // holds none and must pass webhooks on: with two, the second may land on the other node or
    // not, depending on which dial HAProxy sees first.
    let ingress = format!("ha_connections: 1\ningress:\n  - upstream: {}\n", up.url());
    let mut agent = start_agent(&agent_yaml(
        &format!("https://127.0.0.1:{front}"),
        Some(&certs),
        &ingress,
    ));
    agent.connected().await;
    let holder = eventually("one node to count the agent", || async {
        let mut counts = Vec::new();
        for (_, _, metrics) in &nodes {
            counts.push(demo_metric(*metrics, "ponte_agents_connected").await);
        }
        match counts[..] {
            [1.0, 0.0] => Some(0),
            [0.0, 1.0] => Some(1),
            _ => None,
        }
    })
    .await;
    let other = 1 - holder;

    // Every webhook through HAProxy is answered by the agent, whichever node HAProxy picks. The
    // agent's connection is open on its node, so `leastconn` sends new ones to the other first.
    eventually("a webhook through HAProxy answered by the agent", || async {
        (webhook(&certs, front, 0).await == StatusCode::CREATED).then_some(())
    })
    .await;
    for i in 1..=20 {
        assert_eq!(
            webhook(&certs, front, i).await,
            StatusCode::CREATED,
            "webhook {i}"
        );
    }
    let forwarded = demo_metric(nodes[other].2, "ponte_forwarded_requests_total").await;
    assert!(
        forwarded > 0.0,
        "the node without the agent passed webhooks on to the one with it"
    );

    // The PROXY protocol: the nodes see each client's own address behind HAProxy. A webhook from
    // 127.0.0.2 reaches the upstream with that address in `X-Forwarded-For` (without the header
    // the nodes would see HAProxy's 127.0.0.1).
    let front_addr: std::net::SocketAddr = format!("127.0.0.1:{front}").parse().expect("addr");
    let reply = raw_exchange_at(
        front_addr,
        [127, 0, 0, 2].into(),
        &certs,
        b"POST /t/demo/who HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        WAIT,
    )
    .await;
    assert_eq!(status_line(&reply), "HTTP/1.1 201 Created", "{reply}");
    let who = log
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.path == "/who")
        .cloned()
        .expect("the webhook from 127.0.0.2 reached the upstream");
    assert_eq!(who.header("x-forwarded-for"), "127.0.0.2");
    // A client guessing tokens through HAProxy (from 127.0.0.3) is throttled on both nodes, and
    // only it: the agent's own login through the same HAProxy still succeeds.
    let login = |token: &str| {
        format!(
            "GET /_ponte/v1/connect HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: ponte-h2\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
    };
    let mut throttled = 0;
    for _ in 0..(2 * LOGIN_BUDGET + 4) {
        let reply = raw_exchange_at(
            front_addr,
            [127, 0, 0, 3].into(),
            &certs,
            login("wrong-token-0123456789abcdef").as_bytes(),
            Duration::from_millis(500),
        )
        .await;
        if status_line(&reply).starts_with("HTTP/1.1 429") {
            throttled += 1;
        }
    }
    assert!(
        throttled >= 2,
        "the guessing client was throttled ({throttled} answers 429)"
    );
    for _ in 0..4 {
        let reply = raw_exchange_at(
            front_addr,
            [127, 0, 0, 1].into(),
            &certs,
            login(TOKEN).as_bytes(),
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(
            status_line(&reply),
            "HTTP/1.1 101 Switching Protocols",
            "a login from another address through the same HAProxy: {reply}"
        );
    }

    // PostgreSQL down: both nodes' /ready say `503 store unavailable`, which the example's
    // health check does not count as down (it looks for `draining`), so HAProxy keeps both nodes
    // and the direct tunnel keeps working through it, past the check's `fall 2` × `inter 1s`.
    cluster.stop();
    for (_, _, metrics) in &nodes {
        let c = client(None, false);
        eventually("/ready to say the store is down", || async {
            let r = send(
                &c,
                request("GET", &format!("http://127.0.0.1:{metrics}/ready"), ""),
            )
            .await;
            (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
        })
        .await;
    }
    let down = Instant::now();
    let mut i = 50;
    while down.elapsed() < Duration::from_secs(3) {
        i += 1;
        assert_eq!(
            webhook(&certs, front, i).await,
            StatusCode::CREATED,
            "webhook {i}, database down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.restart();

    // Stop the agent's node (a clean shutdown, as on SIGTERM): the agent reconnects through
    // HAProxy to the other node, and webhooks continue there.
    let (node, _, _) = nodes.remove(holder);
    let stopped = Instant::now();
    node.stop().await;
    let mut failed = 0;
    let mut i = 100;
    let recovered = loop {
        i += 1;
        if webhook(&certs, front, i).await == StatusCode::CREATED {
            break stopped.elapsed();
        }
        failed += 1;
        assert!(
            stopped.elapsed() < WAIT,
            "no webhook answered {WAIT:?} after the node stopped ({failed} failed)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "webhooks answered again {recovered:?} after the agent's node stopped ({failed} failed meanwhile)"
    );
    // From then on every one is answered: HAProxy sends none to the stopped node (it retries a
    // refused connection on the other and its health check takes the node out).
    for i in 200..220 {
        assert_eq!(
            webhook(&certs, front, i).await,
            StatusCode::CREATED,
            "webhook {i}"
        );
    }
    let remaining = &nodes[0];
    assert_eq!(demo_metric(remaining.2, "ponte_agents_connected").await, 1.0);
    let delivered = log.lock().unwrap().len();
    assert!(delivered >= 42, "{delivered} webhooks reached the upstream");

    agent.stop().await;
    for (node, _, _) in nodes {
        node.stop().await;
    }
}
