//! Agent high availability: one agent keeps `ha_connections` sessions to distinct relay nodes.
//! Relays and the agent run as real processes (separate relays, same tunnel token, no store), over
//! real TLS on loopback; a relay is SIGKILLed by its PID.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::faults::Blackhole;
use support::process::{Process, start_relay_process};
use support::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Sessions the relay at `base` holds (its health endpoint counts them).
async fn sessions(client: &HttpsClient, base: &str) -> u64 {
    let r = send(client, request("GET", &format!("{base}/_ponte/health"), "")).await;
    serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["agents"]
        .as_u64()
        .unwrap()
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    ponte::body::Body,
>;

/// The agent as a child process with `relays` as its `relay:` list.
fn agent_process(certs: &Certs, relays: &[String], up: &Upstream, extra: &str) -> Process {
    let list: String = relays.iter().map(|r| format!("\n  - {r}")).collect();
    let yaml = agent_yaml(
        &list,
        Some(certs),
        &format!(
            "{}{extra}ingress:\n  - upstream: {}\n",
            if extra.contains("inspect:") {
                ""
            } else {
                "inspect: off\n"
            },
            up.url()
        ),
    );
    let path = write(certs.dir.path(), "agent.yaml", &yaml);
    // The supervisor's debug lines say each time a spare slot looked for a free node.
    Process::spawn(&[
        "--log-level",
        "info,ponte::agent::supervisor=debug",
        "agent",
        "--config",
        path.to_str().unwrap(),
    ])
}

/// Logged (debug) each time a spare slot found no free relay node.
const LOOKED_AGAIN: &str = "no free relay node; looking again later";

/// The `node` field of every "tunnel connected" line the agent logged.
fn connected_nodes(agent: &Process) -> Vec<String> {
    agent
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "tunnel connected")
        .map(|v| v["node"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A request through the relay at `base` answers 200 with the echoed body.
async fn echoes(client: &HttpsClient, base: &str, body: &str) {
    let r = send(
        client,
        request("POST", &format!("{base}/t/demo/ha"), body.to_string()),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, body),
        "through {base}"
    );
}

/// Requests one after the other to `url` until `stop` is set; the task returns every failure
/// (anything but 200 with the echoed body). `sent` counts requests finished.
fn steady_stream(
    client: &HttpsClient,
    url: &str,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<Vec<String>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (client, url, flag, count) = (client.clone(), url.to_string(), stop.clone(), sent.clone());
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let outcome = tokio::time::timeout(WAIT, async {
                let resp = client.request(request("POST", &url, "tick")).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
            })
            .await;
            match outcome {
                Ok(Ok((status, body))) if status == 200 && body == "tick" => {}
                other => failures.push(format!("{other:?}")),
            }
            count.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        failures
    });
    (stop, sent, task)
}

/// A relay process listening on `listen` (an address of our choice, e.g. 127.0.0.2:PORT).
async fn relay_at(config: &Path, listen: &str) -> Process {
    let mut p = Process::spawn(&["relay", "--config", config.to_str().unwrap(), "--listen", listen]);
    assert!(
        p.log_line("relay listening").await.is_some(),
        "relay on {listen} did not start: {}",
        p.output()
    );
    p
}

/// Both relays get one session of the agent; requests work through both; SIGKILL of relay A
/// under a steady stream of requests to B fails none of B's; A restarted on its port is joined
/// again within the reconnect backoff.
#[tokio::test]
async fn two_relays_each_hold_a_session_and_a_killed_relay_is_rejoined() {
    let certs = Certs::new();
    let config = write(certs.dir.path(), "relay.yaml", &relay_yaml(Some(&certs), "", ""));
    let (mut relay_a, port_a) = start_relay_process(&config, 0).await;
    let (relay_b, port_b) = start_relay_process(&config, 0).await;
    let (a, b) = (
        format!("https://127.0.0.1:{port_a}"),
        format!("https://127.0.0.1:{port_b}"),
    );
    let up = echo_upstream().await;
    let agent = agent_process(
        &certs,
        &[a.clone(), b.clone()],
        &up,
        "ha_connections: 2\ninspect: 127.0.0.1:0\n",
    );
    let client = client(Some(&certs), false);
    eventually("a session on each relay", || async {
        (sessions(&client, &a).await == 1 && sessions(&client, &b).await == 1).then_some(())
    })
    .await;
    let nodes = connected_nodes(&agent);
    assert_eq!(nodes.len(), 2, "{}", agent.output());
    assert!(
        nodes[0] != nodes[1] && !nodes[0].is_empty(),
        "sessions on one node: {nodes:?}"
    );
    echoes(&client, &a, "via-a").await;
    echoes(&client, &b, "via-b").await;

    // The inspector lists both sessions with their nodes.
    let inspector = eventually("the inspector address", || async {
        agent.output().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["message"]
                .as_str()?
                .strip_prefix("Inspector: ")
                .map(String::from)
        })
    })
    .await;
    let status = send(&client, request("GET", &format!("{inspector}api/status"), "")).await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(status["state"], "connected", "{status}");
    assert_eq!(status["ha_connections"], 2, "{status}");
    let mut shown: Vec<String> = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node"].as_str().unwrap_or_default().to_string())
        .collect();
    shown.sort();
    let mut logged = nodes.clone();
    logged.sort();
    assert_eq!(shown, logged, "{status}");
    let page = send(&client, request("GET", &inspector, "")).await.text();
    assert!(
        page.contains("Connected — 2 of 2 sessions (relay nodes)"),
        "{page}"
    );

    // A steady stream of requests to B while A is killed.
    let (stop, sent, stream) = steady_stream(&client, &format!("{b}/t/demo/steady"));
    let before_kill = sent.load(Ordering::Relaxed);
    eventually("requests flowing", || async {
        (sent.load(Ordering::Relaxed) >= before_kill + 20).then_some(())
    })
    .await;
    let kill = Instant::now();
    relay_a.kill();
    let killed_at = sent.load(Ordering::Relaxed);
    agent.wait_count("tunnel lost", 1).await;
    let noticed = kill.elapsed();
    // Keep the stream going well past the agent noticing the loss.
    eventually("requests after the kill", || async {
        (sent.load(Ordering::Relaxed) >= killed_at + 150).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let failures = within("the request stream", stream).await.unwrap();
    let total = sent.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {total} requests to B failed while A died: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        relay_b.count("agent disconnected"),
        0,
        "B's session was touched: {}",
        relay_b.output()
    );

    // A comes back on its port: the agent joins it again within its backoff (max 300 ms here).
    let (_relay_a, _) = start_relay_process(&config, port_a).await;
    let restarted = Instant::now();
    eventually("the agent back on A", || async {
        (sessions(&client, &a).await == 1).then_some(())
    })
    .await;
    let rejoin = restarted.elapsed();
    println!(
        "failover: agent noticed A's death after {noticed:?}; {total} requests to B, none failed; rejoined A {rejoin:?} after its restart"
    );
    assert!(rejoin < Duration::from_secs(5), "rejoined after {rejoin:?}");
    echoes(&client, &a, "a-again").await;
    assert_eq!(sessions(&client, &b).await, 1);
    drop(agent);
}

/// `ha_connections: 1` with a list: one session, on the first node; when that node dies the
/// session moves to the next one.
#[tokio::test]
async fn one_session_over_a_list_moves_to_the_next_node() {
    let certs = Certs::new();
    let config = write(certs.dir.path(), "relay.yaml", &relay_yaml(Some(&certs), "", ""));
    let (mut relay_a, port_a) = start_relay_process(&config, 0).await;
    let (_relay_b, port_b) = start_relay_process(&config, 0).await;
    let (a, b) = (
        format!("https://127.0.0.1:{port_a}"),
        format!("https://127.0.0.1:{port_b}"),
    );
    let up = echo_upstream().await;
    let agent = agent_process(&certs, &[a.clone(), b.clone()], &up, "ha_connections: 1\n");
    let client = client(Some(&certs), false);
    eventually("the session on A", || async {
        (sessions(&client, &a).await == 1).then_some(())
    })
    .await;
    assert_eq!(sessions(&client, &b).await, 0);
    echoes(&client, &a, "on-a").await;
    relay_a.kill();
    eventually("the session on B", || async {
        (sessions(&client, &b).await == 1).then_some(())
    })
    .await;
    echoes(&client, &b, "on-b").await;
    assert!(!agent.output().contains("running with"), "{}", agent.output());
}

/// The first listed node accepts TCP but never answers (a dial there lasts the whole 20 s dial
/// timeout): the other slot does not wait for it, and the agent serves through the second node
/// within a few seconds.
#[tokio::test]
async fn a_silent_first_node_does_not_hold_up_the_second() {
    let certs = Certs::new();
    // Bound and listening, never accepted: the kernel completes the handshakes, TLS gets nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("https://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let config = write(certs.dir.path(), "relay.yaml", &relay_yaml(Some(&certs), "", ""));
    let (_relay, port) = start_relay_process(&config, 0).await;
    let live = format!("https://127.0.0.1:{port}");
    let up = echo_upstream().await;
    let client = client(Some(&certs), false);
    let started = Instant::now();
    let agent = agent_process(&certs, &[silent_url, live.clone()], &up, "");
    eventually("a session on the live node", || async {
        (sessions(&client, &live).await == 1).then_some(())
    })
    .await;
    let online = started.elapsed();
    println!("online through the second node {online:?} after start, the first one silent");
    assert!(online < Duration::from_secs(10), "{online:?}");
    echoes(&client, &live, "second").await;
    assert_eq!(agent.count("tunnel connected"), 1, "{}", agent.output());
    drop(silent);
}

/// Two relay nodes on one port at two loopback addresses. The agent's single-name path (one URL
/// whose name resolves to several addresses) needs a name with several loopback addresses: here
/// `localhost` resolves to 127.0.0.1 only (/etc/hosts, no ::1 entry), so when it does, the two
/// nodes are given as a list `https://127.0.0.1:P`, `https://127.0.0.2:P` (127.0.0.0/8 is all
/// loopback on Linux). Where `localhost` also resolves to ::1, the test uses the one URL
/// `https://localhost:P` with the second relay on [::1]:P instead, which exercises the
/// resolution path.
#[tokio::test]
async fn sessions_spread_over_addresses_of_one_port() {
    let certs = Certs::with_extra_names(&["127.0.0.2", "::1"]);
    let config = write(certs.dir.path(), "relay.yaml", &relay_yaml(Some(&certs), "", ""));
    let (_relay_a, port) = start_relay_process(&config, 0).await;
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", port))
        .await
        .map(|a| a.collect())
        .unwrap_or_default();
    let v6 = resolved.iter().any(|a| a.ip().is_ipv6()) && resolved.iter().any(|a| a.ip().is_ipv4());
    let (second_listen, relays, second_base) = if v6 {
        (
            format!("[::1]:{port}"),
            vec![format!("https://localhost:{port}")],
            format!("https://[::1]:{port}"),
        )
    } else {
        (
            format!("127.0.0.2:{port}"),
            vec![
                format!("https://127.0.0.1:{port}"),
                format!("https://127.0.0.2:{port}"),
            ],
            format!("https://127.0.0.2:{port}"),
        )
    };
    let _relay_b = relay_at(&config, &second_listen).await;
    let up = echo_upstream().await;
    let agent = agent_process(&certs, &relays, &up, "");
    let client = client(Some(&certs), false);
    let first_base = format!("https://127.0.0.1:{port}");
    eventually("a session at each address", || async {
        (sessions(&client, &first_base).await == 1 && sessions(&client, &second_base).await == 1)
            .then_some(())
    })
    .await;
    echoes(&client, &first_base, "first").await;
    echoes(&client, &second_base, "second").await;
    let nodes = connected_nodes(&agent);
    assert!(nodes.len() == 2 && nodes[0] != nodes[1], "{nodes:?}");
}

/// One relay, `ha_connections: 2`: the agent keeps one session (the second would land on the
/// same node), says once that it runs with fewer, and never dials the node again for the spare
/// slot; the relay sees one agent: no "another agent joined" warning, no eviction.
#[tokio::test]
async fn one_relay_runs_with_one_session_and_no_shared_tunnel_warning() {
    let certs = Certs::new();
    let config = write(certs.dir.path(), "relay.yaml", &relay_yaml(Some(&certs), "", ""));
    let (relay, port) = start_relay_process(&config, 0).await;
    let up = echo_upstream().await;
    let url = format!("https://127.0.0.1:{port}");
    let agent = agent_process(&certs, std::slice::from_ref(&url), &up, "");
    let client = client(Some(&certs), false);
    let said = eventually("the fewer-sessions note", || async {
        agent
            .output()
            .lines()
            .find(|l| l.contains("running with 1 of 2 sessions"))
            .map(String::from)
    })
    .await;
    assert!(said.contains("\"level\":\"INFO\""), "{said}");
    echoes(&client, &url, "single").await;

    // Requests flow while the spare slot looks for a free node several times (every 300 ms).
    let (stop, sent, stream) = steady_stream(&client, &format!("{url}/t/demo/steady"));
    let looked = agent.count(LOOKED_AGAIN);
    agent.wait_count(LOOKED_AGAIN, looked + 4).await;
    stop.store(true, Ordering::Relaxed);
    let failures = within("the request stream", stream).await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(sessions(&client, &url).await, 1);
    assert_eq!(relay.count("agent connected"), 1, "{}", relay.output());
    assert_eq!(agent.count("tunnel connected"), 1, "{}", agent.output());
    let relay_log = relay.output();
    assert!(!relay_log.contains("another agent joined"), "{relay_log}");
    assert!(!relay_log.contains("evicting its stale session"), "{relay_log}");
    assert_eq!(
        agent.output().matches("running with 1 of 2 sessions").count(),
        1,
        "{}",
        agent.output()
    );
}

/// One relay node reached at two addresses (directly, and through a TCP forwarder): the relay's
/// node id tells the agent both are one node. The second session is closed gracefully (requests
/// the relay sent on it meanwhile are answered) and that address is not dialled again while the
/// node is held.
#[tokio::test]
async fn a_node_reached_at_two_addresses_holds_one_session() {
    let certs = Certs::new();
    let config = write(certs.dir.path(), "relay.yaml", &relay_yaml(Some(&certs), "", ""));
    let (relay, port) = start_relay_process(&config, 0).await;
    let direct = format!("https://127.0.0.1:{port}");
    let forwarder = Blackhole::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let forwarded = format!("https://127.0.0.1:{}", forwarder.addr.port());
    let up = echo_upstream().await;
    let client = client(Some(&certs), false);
    let agent = agent_process(&certs, &[direct.clone(), forwarded], &up, "");
    eventually("the first session", || async {
        (sessions(&client, &direct).await >= 1).then_some(())
    })
    .await;
    let (stop, sent, stream) = steady_stream(&client, &format!("{direct}/t/demo/steady"));
    let said = eventually("the fewer-sessions note", || async {
        agent
            .output()
            .lines()
            .find(|l| l.contains("running with 1 of 2 sessions"))
            .map(String::from)
    })
    .await;
    assert!(said.contains("INFO"), "{said}");
    let looked = agent.count(LOOKED_AGAIN);
    agent.wait_count(LOOKED_AGAIN, looked + 4).await;
    stop.store(true, Ordering::Relaxed);
    let failures = within("the request stream", stream).await.unwrap();
    let total = sent.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    // The real session and the one duplicate, never a second duplicate.
    assert_eq!(relay.count("agent connected"), 2, "{}", relay.output());
    assert_eq!(relay.count("agent disconnected"), 1, "{}", relay.output());
    assert_eq!(sessions(&client, &direct).await, 1);
    assert_eq!(agent.count("tunnel connected"), 1, "{}", agent.output());
}

/// Two sessions of one agent instance on one relay (slots 0 and 1, as when a cluster has a
/// single node behind several addresses) neither evict each other nor count as two agents; the
/// same slot dialled again replaces its own stale session only.
#[tokio::test]
async fn slots_of_one_agent_share_a_relay_without_evicting_each_other() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let yaml = agent_yaml(&relay.url(true), Some(&certs), "");
    let cfg: ponte::config::agent::AgentConfig =
        ponte::config::parse_with_env(&yaml, "agent.yaml", &|_| None).unwrap();
    let connector = ponte::agent::dial::Connector::new(&cfg).unwrap();
    let target = connector.targets().await.remove(0);
    let client = client(Some(&certs), false);
    let base = relay.url(true);
    let (h0, s0) = connector.connect_to(&target, "agent-1", 0).await.unwrap();
    let first = serve_nothing(s0);
    let (h1, s1) = connector.connect_to(&target, "agent-1", 1).await.unwrap();
    let _second = serve_nothing(s1);
    assert_eq!((h0.agents, h1.agents), (1, 1), "one agent, not two");
    assert!(h0.node.is_some() && h0.node == h1.node, "{h0:?} {h1:?}");
    eventually("both slots registered", || async {
        (sessions(&client, &base).await == 2).then_some(())
    })
    .await;
    // Slot 0 again (its old connection "died silently"): replaces slot 0 only.
    let (_, s0b) = connector.connect_to(&target, "agent-1", 0).await.unwrap();
    let third = serve_nothing(s0b);
    within("stale slot 0 to be closed", first).await.unwrap();
    eventually("two sessions again", || async {
        (sessions(&client, &base).await == 2).then_some(())
    })
    .await;
    // Slots are bounded: slot 8 is slot 0 again, so one agent id cannot pile up sessions.
    let (_, s8) = connector.connect_to(&target, "agent-1", 8).await.unwrap();
    let _fourth = serve_nothing(s8);
    within("slot 0 replaced by slot 8", third).await.unwrap();
    eventually("still two sessions", || async {
        (sessions(&client, &base).await == 2).then_some(())
    })
    .await;
    relay.stop().await;
}

/// Serve an upgraded agent connection with an HTTP/2 server that answers nothing; the task ends
/// when the relay closes the connection.
fn serve_nothing(conn: hyper::upgrade::Upgraded) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(ponte::body::empty()))
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(conn, svc)
            .await;
    })
}

/// `ponte check` with two relays logs in at each, names each node, and fails (exit 4) when one
/// of the listed relays is down.
#[tokio::test]
async fn check_tries_every_listed_relay() {
    let certs = Certs::new();
    let a = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let b = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let ca = certs.ca.display().to_string();
    let run = |relays: Vec<String>| {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ponte"));
            cmd.arg("check")
                .arg("--ca-file")
                .arg(&ca)
                .env("PONTE_TOKEN", TOKEN);
            for var in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
                cmd.env_remove(var);
            }
            for r in relays {
                cmd.arg("--relay").arg(r);
            }
            let out = cmd.output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (code, stdout, stderr) = run(vec![a.url(true), b.url(true)]).await.unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.matches("accepted the token").count(), 2, "{stdout}");
    let nodes: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("node: ")).collect();
    assert!(nodes.len() == 2 && nodes[0] != nodes[1], "{stdout}");
    assert!(
        stdout.contains("sessions: 2 of 2 (ha_connections) on distinct relay nodes"),
        "{stdout}"
    );
    let down = b.url(true);
    b.stop().await;
    let (code, stdout, stderr) = run(vec![a.url(true), down.clone()]).await.unwrap();
    assert_eq!(code, Some(4), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("FAILED: {down}")), "{stdout}");
    a.stop().await;
}
