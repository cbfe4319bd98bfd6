//! The relay against hostile clients: each test starts the real `ponte relay` binary as a child
//! process (with a real agent child and an upstream in this process), runs one attack against it
//! from its own loopback address (127.0.0.2/3, so budgets per address never touch the honest
//! sender on 127.0.0.1), and then checks that
//! - the relay still serves an honest request over HTTP/1.1 and HTTP/2, and
//! - its open file descriptors and resident memory are back near the baseline taken before the
//!   attack: at most [`FD_SLACK`] more descriptors and [`RSS_SLACK_KIB`] more RSS.
//!
//! | attack | test |
//! |---|---|
//! | rapid reset burst (CVE-2023-44487) | `rapid_reset_burst_gets_a_goaway` |
//! | paced resets that used to take the tunnel offline | `paced_resets_do_not_take_the_tunnel_offline`, `paced_resets_get_the_abuser_a_goaway` (and `honest_traffic_never_spends_the_reset_budget`) |
//! | CONTINUATION flood (CVE-2024-27316 family) | `continuation_flood_is_cut_short` |
//! | HPACK bomb, oversized header lists | `hpack_bomb_and_oversized_headers_are_refused` |
//! | SETTINGS and PING floods | `settings_and_ping_floods_leave_memory_flat` |
//! | request smuggling over HTTP/1.1 (CL+TE, TE variants, duplicate CL) | `request_smuggling_is_refused` |
//! | Host confusion (two Hosts, absolute-form, `:authority` vs `host`), CONNECT (and HTTP/2 extended CONNECT) | `host_confusion_is_refused` |
//! | path tricks (`..`, `%2e%2e`, `//`) | `path_tricks_stay_inside_their_tunnel` |
//! | header and body limits | `header_and_body_limits_hold` |
//! | slowloris over HTTP/1.1 and HTTP/2, stalled TLS and bodies | `slow_clients_are_cut_off_at_their_limits` |
//! | idle HTTP/2 connections holding every slot | `idle_h2_connections_are_closed`, `idle_connections_cannot_lock_out_agents_or_senders` |
//! | a stalled response body holding a stream | `a_stalled_response_body_releases_its_stream_at_the_relay`, `a_stalled_upstream_body_releases_its_stream_at_the_agent` |
//! | concurrent logins past the agent cap (leaked token) | `concurrent_logins_cannot_exceed_the_agent_cap` |
//! | token brute force | `token_brute_force_is_throttled` |
//! | SSRF through Host / `:authority` / absolute-form | `the_relay_cannot_make_the_agent_dial_another_host` |
//! | agent killed and restarted 50 times | `fifty_agent_kill_restart_cycles_leak_nothing` |
//!
//! The single cases that used to live in tests/edge.rs (ambiguous hosts, slow clients) and
//! tests/resilience.rs (SSRF through the agent) moved here; the sequential agent-cap case stays in
//! tests/resilience.rs (`a_tunnel_holds_at_most_its_agent_limit`).

mod support;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::h2raw::{self, Event, RawH2, code, hpack};
use support::process::{Process, start_relay_process};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The attacker's address.
const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
/// A second attacking address.
const ATTACKER_2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// Descriptors the relay may hold above its baseline once an attack is over (a connection the
/// kernel has not finished closing).
const FD_SLACK: usize = 2;
/// Resident memory the relay may keep above its baseline once an attack is over: the allocator
/// keeps some freed memory, but nothing may grow with the size of the attack.
const RSS_SLACK_KIB: u64 = 8 * 1024;

/// What the relay holds.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kib: u64,
    fds: usize,
}

fn usage(pid: u32) -> Usage {
    Usage {
        rss_kib: rss_kib(pid),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("proc fd")
            .count(),
    }
}

/// Every path the upstream was asked for.
type Paths = Arc<Mutex<Vec<String>>>;

/// A relay child, an agent child and an upstream in this process.
struct Target {
    certs: Certs,
    relay: Process,
    agent: Process,
    addr: std::net::SocketAddr,
    up: Upstream,
    paths: Paths,
    baseline: Usage,
    /// The relay's id for the agent's first session.
    session: u64,
}

impl Target {
    /// Start with `relay_extra` at the top level of relay.yaml (e.g. a `limits:` block) and
    /// `agent_extra` at the top level of agent.yaml.
    async fn start(relay_extra: &str, agent_extra: &str) -> Self {
        let certs = Certs::new();
        let (up, paths) = attack_upstream().await;
        let relay_cfg = certs.dir.path().join("relay.yaml");
        std::fs::write(&relay_cfg, relay_yaml(Some(&certs), relay_extra, "")).unwrap();
        let (mut relay, port) = start_relay_process(&relay_cfg, 0).await;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let agent = start_agent_process(&certs, addr, &up, agent_extra);
        relay.wait_count("agent connected", 1).await;
        let session = relay.log_line("agent connected").await.expect("log line")["session"]
            .as_u64()
            .expect("session id");
        let mut t = Target {
            certs,
            relay,
            agent,
            addr,
            up,
            paths,
            baseline: Usage { rss_kib: 0, fds: 0 },
            session,
        };
        // Warm up (TLS, HTTP/2 and the agent's upstream pool), then let those connections close.
        for _ in 0..5 {
            t.honest().await;
        }
        let fds = t.settled_fds(usize::MAX).await;
        t.baseline = Usage {
            fds,
            ..usage(t.relay.pid())
        };
        t
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// One POST over HTTP/1.1 and one over HTTP/2 from the honest address, each on a fresh
    /// connection: both must be answered 200 by the upstream.
    async fn honest(&self) {
        for h2 in [false, true] {
            let r = send(
                &client(Some(&self.certs), h2),
                request("POST", &self.url("/t/demo/honest"), "honest"),
            )
            .await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (StatusCode::OK, "honest"),
                "honest request (h2: {h2})"
            );
        }
    }

    /// Wait until the relay's descriptor count is at most `max` and stable; returns it.
    async fn settled_fds(&self, max: usize) -> usize {
        let pid = self.relay.pid();
        eventually("relay descriptors to settle", || async move {
            let a = usage(pid).fds;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let b = usage(pid).fds;
            (a == b && b <= max).then_some(b)
        })
        .await
    }

    /// After an attack: honest requests are served, and descriptors and memory are back near
    /// the baseline. Prints the figures.
    async fn recovered(&self, attack: &str) {
        self.honest().await;
        let fds = self.settled_fds(self.baseline.fds + FD_SLACK).await;
        let after = usage(self.relay.pid());
        eprintln!(
            "{attack}: relay fds {} -> {fds}, RSS {} -> {} KiB (peak {} KiB)",
            self.baseline.fds,
            self.baseline.rss_kib,
            after.rss_kib,
            peak_rss_kib(self.relay.pid())
        );
        assert!(
            after.rss_kib <= self.baseline.rss_kib + RSS_SLACK_KIB,
            "{attack}: relay RSS grew from {} to {} KiB",
            self.baseline.rss_kib,
            after.rss_kib
        );
        self.assert_session_kept(attack);
    }

    /// The agent's first session is still the one serving: it was never dropped or replaced.
    fn assert_session_kept(&self, attack: &str) {
        let dropped = self.relay.output().lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["message"] == "agent disconnected" && v["session"].as_u64() == Some(self.session)
            })
        });
        assert!(
            !dropped,
            "{attack}: the agent session was dropped:\n{}\nagent:\n{}",
            self.relay.output(),
            self.agent.output()
        );
        assert_eq!(
            self.agent.count("tunnel lost"),
            0,
            "{attack}:\n{}",
            self.agent.output()
        );
    }

    fn upstream_saw(&self, needle: &str) -> bool {
        self.paths.lock().unwrap().iter().any(|p| p.contains(needle))
    }
}

/// The agent as a child process, from an agent.yaml in the certificate folder.
fn start_agent_process(certs: &Certs, relay: std::net::SocketAddr, up: &Upstream, extra: &str) -> Process {
    let yaml = agent_yaml(
        &format!("https://127.0.0.1:{}", relay.port()),
        Some(certs),
        &format!("{extra}ingress:\n  - upstream: {}\n", up.url()),
    );
    let path = certs.dir.path().join("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    Process::spawn(&["agent", "--config", path.to_str().unwrap()])
}

/// The upstream every attack runs against: records each path; `/whole…` reads the whole body
/// before answering (and records `complete:PATH` once it has it); `/stall…` sends its headers
/// and a few bytes, then never finishes; everything else echoes the body as it streams, with the
/// path in `x-echo-path`.
async fn attack_upstream() -> (Upstream, Paths) {
    let paths: Paths = Arc::default();
    let seen = paths.clone();
    let up = start_upstream(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            seen.lock().unwrap().push(path.clone());
            if path.starts_with("/whole") {
                // A typical webhook receiver: reads the whole body, then answers.
                return match req.into_body().collect().await {
                    Ok(b) => {
                        seen.lock().unwrap().push(format!("complete:{path}"));
                        Response::new(ponte::body::full(b.to_bytes()))
                    }
                    Err(_) => text(StatusCode::BAD_REQUEST, "broken body"),
                };
            }
            if path.starts_with("/stall") {
                let chunks = futures_util::stream::iter([Ok::<_, ponte::BoxError>(
                    hyper::body::Frame::data(Bytes::from_static(b"partial")),
                )])
                .chain(futures_util::stream::pending());
                return Response::new(ponte::body::boxed(http_body_util::StreamBody::new(chunks)));
            }
            let mut resp = Response::new(ponte::body::boxed(req.into_body()));
            resp.headers_mut().insert(
                "x-echo-path",
                path.parse().unwrap_or(http::HeaderValue::from_static("?")),
            );
            resp
        }
    })
    .await;
    (up, paths)
}

/// Write `bytes` within `limit`; a server that stops reading (or closes) ends the write early,
/// which is what some attacks provoke.
async fn write_bounded<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        w.write_all(bytes).await?;
        w.flush().await
    })
    .await;
}

// === HTTP/2 protocol abuse ===

#[tokio::test]
async fn rapid_reset_burst_gets_a_goaway() {
    let t = Target::start("", "").await;
    let mut conn = RawH2::connect(&t.certs, ATTACKER, t.addr).await.unwrap();
    let mut burst = Vec::new();
    for _ in 0..5000 {
        let (id, headers) = conn.get("/t/demo/burst");
        burst.extend_from_slice(&headers);
        burst.extend_from_slice(&h2raw::rst_stream(id, code::CANCEL));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.send(&burst)).await;
    let (goaway, _) = conn.until_goaway_or_close(Duration::from_secs(5)).await;
    assert_eq!(
        goaway.as_ref().map(|g| g.1),
        Some(code::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    let reached = t
        .paths
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.contains("burst"))
        .count();
    assert!(
        reached < 200,
        "{reached} of 5000 reset streams reached the upstream"
    );
    drop(conn);
    t.recovered("rapid reset burst").await;
}

/// What a paced-reset attacker saw.
#[derive(Debug, Default)]
struct Paced {
    /// GOAWAYs received: (last stream id, code, debug data).
    goaways: Vec<(u32, u32, String)>,
    /// Connections attempted.
    connections: usize,
    /// Connections the relay refused outright.
    refused: usize,
    /// Streams opened (and cancelled).
    streams: usize,
}

/// `conns` connections from `from`, each sending batches of `batch` requests and cancelling
/// them 5-20 ms later, until `stop` (or the test deadline); a connection that is closed is
/// replaced by a new one. Small batches over several connections stay under the per-connection
/// limit of HTTP/2 itself (20 streams reset before they are accepted) while the tunnel carries
/// them all.
async fn paced_resets(t: &Target, from: IpAddr, stop: &AtomicBool, conns: usize, batch: usize) -> Paced {
    let deadline = Instant::now() + WAIT;
    let running = || !stop.load(Ordering::SeqCst) && Instant::now() < deadline;
    let attackers = (0..conns).map(|n| async move {
        let mut seen = Paced::default();
        let mut pause = 5 + n as u64;
        while running() {
            seen.connections += 1;
            let Ok(mut conn) = RawH2::connect(&t.certs, from, t.addr).await else {
                seen.refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while running() {
                let mut ids = Vec::new();
                let mut wire = Vec::new();
                for _ in 0..batch {
                    let (id, headers) = conn.get("/t/demo/paced");
                    ids.push(id);
                    wire.extend_from_slice(&headers);
                }
                if conn.send(&wire).await.is_err() {
                    break;
                }
                seen.streams += batch;
                pause = 5 + (pause + 7) % 16;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let resets: Vec<u8> = ids
                    .iter()
                    .flat_map(|id| h2raw::rst_stream(*id, code::CANCEL))
                    .collect();
                if conn.send(&resets).await.is_err() {
                    break;
                }
                let mut ended = false;
                while let Some(ev) = conn.next_event(Duration::from_millis(1)).await {
                    match ev {
                        Event::Frame(f) => seen.goaways.extend(f.goaway()),
                        Event::Closed => ended = true,
                    }
                }
                if ended {
                    break;
                }
            }
            let (g, _) = conn.until_goaway_or_close(Duration::from_millis(200)).await;
            seen.goaways.extend(g);
        }
        seen
    });
    let mut total = Paced::default();
    for p in futures_util::future::join_all(attackers).await {
        total.goaways.extend(p.goaways);
        total.connections += p.connections;
        total.refused += p.refused;
        total.streams += p.streams;
    }
    total
}

/// Honest requests, one after the other on fresh connections (HTTP/2 and HTTP/1.1 in turn),
/// until at least `count` were answered and `min` has passed; then sets `stop`. Returns the
/// statuses.
fn honest_load(
    t: &Target,
    count: usize,
    min: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    let certs_ca = t.certs.ca.clone();
    let url = t.url("/t/demo/honest");
    tokio::spawn(async move {
        let started = Instant::now();
        let tls = ponte::tls::client_config(Some(&certs_ca), &[]).unwrap();
        let mut statuses = Vec::new();
        while statuses.len() < count || started.elapsed() < min {
            let h2 = statuses.len() % 2 == 0;
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_only();
            let connector = if h2 {
                connector.enable_http2().build()
            } else {
                connector.enable_http1().build()
            };
            let mut b = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
            b.http2_only(h2);
            let c = b.build(connector);
            let r = send(&c, request("POST", &url, "honest")).await;
            statuses.push(r.status.as_u16());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::SeqCst);
        statuses
    })
}

/// A flag that is set after `after`.
fn stop_after(after: Duration) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        flag.store(true, Ordering::SeqCst);
    });
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_resets_do_not_take_the_tunnel_offline() {
    // The relay's reset budgets are off here: what is tested is that whatever resets get through
    // to the tunnel never make the agent drop it.
    let t = Target::start(
        "limits:\n  max_resets_per_connection: 0\n  max_resets_per_address: 0\n",
        "",
    )
    .await;
    // The attack lasts until 10 honest requests were answered, and 3 s at least.
    let stop = Arc::new(AtomicBool::new(false));
    let honest = honest_load(&t, 10, Duration::from_secs(3), stop.clone());
    let (a, b) = tokio::join!(
        paced_resets(&t, ATTACKER, &stop, 4, 10),
        paced_resets(&t, ATTACKER_2, &stop, 4, 10),
    );
    let statuses = within("honest load", honest).await.unwrap();
    eprintln!(
        "paced resets: {} honest requests; attackers {a:?} {b:?}",
        statuses.len()
    );
    // The session first: if it was dropped, its logs say why (and an honest request failed).
    t.assert_session_kept("paced resets");
    assert!(statuses.len() >= 10, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(t.paths.lock().unwrap().iter().any(|p| p.contains("paced")));
    t.recovered("paced resets").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_resets_get_the_abuser_a_goaway() {
    let t = Target::start(
        "limits:\n  max_resets_per_connection: 50\n  max_resets_per_address: 200\n",
        "",
    )
    .await;
    // One connection at a time, in batches of 5, so HTTP/2's own limit (20 streams reset before
    // they were accepted) stays out of the way: it is the relay's budget that cuts it. Honest
    // requests go on meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let honest = honest_load(&t, 6, Duration::from_secs(2), stop.clone());
    let one = paced_resets(&t, ATTACKER, &stop, 1, 5).await;
    let statuses = within("honest load", honest).await.unwrap();
    eprintln!("per-connection budget: {one:?}; honest {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        one.goaways
            .iter()
            .any(|g| g.1 == code::ENHANCE_YOUR_CALM && g.2 == "too_many_cancelled_requests"),
        "no GOAWAY(ENHANCE_YOUR_CALM) from the relay's budget: {one:?}"
    );
    // Several connections from one address: the address runs out of budget and is refused.
    let many = paced_resets(&t, ATTACKER_2, &stop_after(Duration::from_secs(2)), 4, 10).await;
    eprintln!("per-address budget: {many:?}");
    assert!(many.refused > 0, "{many:?}");
    assert!(RawH2::connect(&t.certs, ATTACKER_2, t.addr).await.is_err());
    t.recovered("reset budgets").await;
}

#[tokio::test]
async fn honest_traffic_never_spends_the_reset_budget() {
    // Budgets of one: requests counted as cancelled by mistake would soon cut the connection or
    // block the address, and fail the requests after them.
    let t = Target::start(
        "limits:\n  max_resets_per_connection: 1\n  max_resets_per_address: 1\n",
        "",
    )
    .await;
    let big = "b".repeat(1024 * 1024);
    for h2 in [false, true] {
        // One client each: its requests share a kept-alive connection.
        let c = client(Some(&t.certs), h2);
        for round in 0..10 {
            let r = send(
                &c,
                request("POST", &t.url("/t/demo/echo"), format!("round {round}")),
            )
            .await;
            assert_eq!((r.status, r.text()), (StatusCode::OK, format!("round {round}")));
            let r = send(&c, request("GET", &t.url("/t/demo/empty"), "")).await;
            assert_eq!(r.status, StatusCode::OK);
            let r = send(&c, request("HEAD", &t.url("/t/demo/head"), "")).await;
            assert_eq!(r.status, StatusCode::OK);
            let r = send(&c, request("POST", &t.url("/t/demo/big"), big.clone())).await;
            assert_eq!((r.status, r.body.len()), (StatusCode::OK, big.len()));
            let r = send(&c, request("GET", &t.url("/t/nosuch/x"), "")).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND);
            let r = send(&c, request("GET", &t.url("/_ponte/health"), "")).await;
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    t.recovered("honest traffic under budgets of one").await;
}

#[tokio::test]
async fn continuation_flood_is_cut_short() {
    let t = Target::start("", "").await;
    let mut conn = RawH2::connect(&t.certs, ATTACKER, t.addr).await.unwrap();
    let id = conn.next_stream();
    let mut flood = h2raw::headers(
        id,
        &hpack::request("GET", &conn.authority, "/t/demo/cont"),
        false,
        false,
    );
    let mut piece = Vec::new();
    hpack::literal(&mut piece, "x-c", b"y");
    for _ in 0..10_000 {
        flood.extend_from_slice(&h2raw::continuation(id, &piece, false));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.send(&flood)).await;
    let started = Instant::now();
    let (goaway, closed) = conn.until_goaway_or_close(Duration::from_secs(5)).await;
    assert!(
        goaway.is_some() || closed,
        "the relay kept reading CONTINUATION frames"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!t.upstream_saw("cont"));
    drop(conn);
    t.recovered("CONTINUATION flood").await;
}

#[tokio::test]
async fn hpack_bomb_and_oversized_headers_are_refused() {
    let t = Target::start("", "").await;
    // A 4 KB value enters the dynamic table once, then each request references it 1000 times:
    // 4 MB of decoded headers from a few KB on the wire.
    let mut conn = RawH2::connect(&t.certs, ATTACKER, t.addr).await.unwrap();
    let id = conn.next_stream();
    let mut block = hpack::request("GET", &conn.authority, "/t/demo/seed");
    hpack::literal_indexed(&mut block, "x-bomb", &[b'a'; 4000]);
    let mut wire = h2raw::headers(id, &block, true, true);
    for _ in 0..20 {
        let id = conn.next_stream();
        let mut block = hpack::request("GET", &conn.authority, "/t/demo/bomb");
        for _ in 0..1000 {
            hpack::indexed(&mut block, 62);
        }
        wire.extend_from_slice(&h2raw::headers(id, &block, true, true));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.send(&wire)).await;
    let _ = conn.until_goaway_or_close(Duration::from_secs(2)).await;
    assert!(!t.upstream_saw("bomb"), "a bomb request reached the upstream");
    drop(conn);

    // One 20 KB header, over HTTP/2 and over HTTP/1.1: 431, never forwarded.
    let mut h2 = h2raw::h2_client(&t.certs, ATTACKER, t.addr).await.unwrap();
    let big = "a".repeat(20 * 1024);
    let req = Request::get(t.url("/t/demo/big-h2"))
        .header("x-big", &big)
        .body(())
        .unwrap();
    let status = h2raw::h2_exchange(&mut h2, req, b"").await.map(|r| r.0);
    assert!(
        matches!(status, Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)) || status.is_err(),
        "{status:?}"
    );
    let raw = format!(
        "GET /t/demo/big-h1 HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(status_line(&reply).contains("431"), "{reply:?}");
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = format!("GET /t/demo/many-h1 HTTP/1.1\r\nHost: localhost\r\n{many}Connection: close\r\n\r\n");
    let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(status_line(&reply).contains("431"), "{reply:?}");
    assert!(!t.upstream_saw("big") && !t.upstream_saw("many"));
    t.recovered("HPACK bomb / oversized headers").await;
}

#[tokio::test]
async fn settings_and_ping_floods_leave_memory_flat() {
    let t = Target::start("limits:\n  idle_timeout: 1s\n", "").await;
    // A client that never reads what the relay sends back.
    let mut tls = h2raw::tls_h2(&t.certs, ATTACKER, t.addr).await.unwrap();
    write_bounded(&mut tls, h2raw::PREFACE, Duration::from_secs(1)).await;
    let mut flood = Vec::new();
    for i in 0..20_000u32 {
        flood.extend_from_slice(&h2raw::ping(u64::from(i).to_be_bytes()));
        flood.extend_from_slice(&h2raw::settings(&[(0x3, 100 + i % 10)]));
    }
    write_bounded(&mut tls, &flood, Duration::from_secs(3)).await;
    let during = usage(t.relay.pid());
    assert!(
        during.rss_kib <= t.baseline.rss_kib + RSS_SLACK_KIB,
        "RSS during the flood: {} KiB (baseline {})",
        during.rss_kib,
        t.baseline.rss_kib
    );
    // Pings do not keep a connection with no request open: it is closed at the idle timeout.
    let mut sink = vec![0u8; 64 * 1024];
    let closed = within("flooding connection to be closed", async {
        loop {
            match tls.read(&mut sink).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed);
    drop(tls);
    t.recovered("SETTINGS/PING flood").await;
}

// === HTTP/1.1 and routing ===

#[tokio::test]
async fn request_smuggling_is_refused() {
    let t = Target::start("", "").await;
    let smuggled = "GET /t/demo/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // (request, what the relay must answer first)
    let cases: Vec<(String, &str)> = vec![
        // CL.TE: chunked wins, the connection closes after one answer, the tail is never parsed.
        (
            format!(
                "POST /t/demo/clte HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "200",
        ),
        // TE.CL.
        (
            format!(
                "POST /t/demo/tecl HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "200",
        ),
        (
            format!(
                "POST /t/demo/te1 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "400",
        ),
        (
            format!(
                "POST /t/demo/te2 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "400",
        ),
        (
            format!(
                "POST /t/demo/te3 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "400",
        ),
        (
            format!(
                "POST /t/demo/te4 HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "400",
        ),
        (
            format!(
                "POST /t/demo/te5 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "400",
        ),
        (
            format!(
                "POST /t/demo/cl1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd{smuggled}"
            ),
            "400",
        ),
        (
            format!(
                "POST /t/demo/cl2 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3, 4\r\n\r\nabcd{smuggled}"
            ),
            "400",
        ),
        (
            format!(
                "POST /t/demo/cl3 HTTP/1.1\r\nHost: localhost\r\nContent-Length: +3\r\n\r\nabc{smuggled}"
            ),
            "400",
        ),
    ];
    for (raw, want) in &cases {
        let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(3)).await;
        assert!(status_line(&reply).contains(want), "{raw:?} → {reply:?}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{raw:?} → {reply:?}");
    }
    assert!(!t.upstream_saw("smuggled"), "{:?}", t.paths.lock().unwrap());
    t.recovered("request smuggling").await;
}

#[tokio::test]
async fn host_confusion_is_refused() {
    let t = Target::start("", "").await;
    let cases: [(&str, &str); 5] = [
        (
            "GET /t/demo/two-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            "400",
        ),
        ("GET /t/demo/no-host HTTP/1.1\r\nConnection: close\r\n\r\n", "400"),
        (
            "GET http://169.254.169.254/t/demo/absolute HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (
            "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
            "405",
        ),
        (
            "GET /t/demo/ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "200",
        ),
    ];
    for (raw, want) in cases {
        let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(2)).await;
        assert!(status_line(&reply).contains(want), "{raw:?} → {reply:?}");
    }
    // HTTP/2: `:authority` and `host` that disagree.
    let mut h2 = h2raw::h2_client(&t.certs, ATTACKER, t.addr).await.unwrap();
    let req = Request::get(t.url("/t/demo/authority"))
        .header("host", "evil.example")
        .body(())
        .unwrap();
    let (status, _) = h2raw::h2_exchange(&mut h2, req, b"").await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // HTTP/2 extended CONNECT (RFC 8441): the relay announces it for other relay nodes' websockets
    // (to the cluster endpoint only); a CONNECT to a tunnel is still 405.
    let mut req = Request::connect(t.url("/t/demo/connect")).body(()).unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (status, _) = h2raw::h2_exchange(&mut h2, req, b"").await.unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // Only the well-formed request reached the upstream.
    let seen: Vec<String> = t
        .paths
        .lock()
        .unwrap()
        .iter()
        .filter(|p| !p.contains("honest"))
        .cloned()
        .collect();
    assert_eq!(seen, ["/ok"]);
    t.recovered("Host confusion").await;
}

#[tokio::test]
async fn path_tricks_stay_inside_their_tunnel() {
    let t = Target::start("", "").await;
    // (target, status, path the upstream must see; None = must not reach it)
    let cases: [(&str, &str, Option<&str>); 8] = [
        ("/t/other/../demo/x", "404", None),
        ("/_ponte/../t/demo/x", "404", None),
        ("//t/demo/x", "404", None),
        ("/t//demo/x", "404", None),
        ("/t/%64emo/x", "404", None),
        ("/t/demo%2f..%2fdemo/x", "404", None),
        // Inside the tunnel, dot segments are the upstream's business: they reach it as sent
        // and never the relay's own endpoints.
        (
            "/t/demo/../../_ponte/admin/deliveries",
            "200",
            Some("/../../_ponte/admin/deliveries"),
        ),
        (
            "/t/demo/%2e%2e/%2e%2e/_ponte/health",
            "200",
            Some("/%2e%2e/%2e%2e/_ponte/health"),
        ),
    ];
    for (target, want, upstream) in cases {
        let before = t.paths.lock().unwrap().len();
        let raw = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(2)).await;
        assert!(status_line(&reply).contains(want), "{target} → {reply:?}");
        let seen: Vec<String> = t.paths.lock().unwrap()[before..].to_vec();
        match upstream {
            None => assert!(seen.is_empty(), "{target} reached the upstream as {seen:?}"),
            Some(p) => assert_eq!(seen, [p], "{target}"),
        }
    }
    t.recovered("path tricks").await;
}

#[tokio::test]
async fn header_and_body_limits_hold() {
    let t = Target::start("limits:\n  max_body_bytes: 1KiB\n", "").await;
    let body = "x".repeat(2000);
    // Declared too large: refused before a byte is forwarded.
    let raw = format!(
        "POST /t/demo/cl-big HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(status_line(&reply).contains("413"), "{reply:?}");
    // Chunked, no length: cut at the limit.
    let raw = format!(
        "POST /t/demo/chunked-big HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(status_line(&reply).contains("413"), "{reply:?}");
    // HTTP/2 without a length.
    let mut h2 = h2raw::h2_client(&t.certs, ATTACKER, t.addr).await.unwrap();
    let req = Request::post(t.url("/t/demo/h2-big")).body(()).unwrap();
    let (status, _) = h2raw::h2_exchange(&mut h2, req, body.as_bytes()).await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // At the limit: fine.
    let ok = "y".repeat(1024);
    let r = send(
        &client(Some(&t.certs), false),
        request("POST", &t.url("/t/demo/at-limit"), ok.clone()),
    )
    .await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 1024));
    t.recovered("header and body limits").await;
}

// === Slow and idle clients ===

#[tokio::test]
async fn slow_clients_are_cut_off_at_their_limits() {
    let t = Target::start(
        "limits:\n  tls_handshake_timeout: 500ms\n  header_read_timeout: 500ms\n  body_idle_timeout: 500ms\n",
        "",
    )
    .await;
    // A TCP connection that never starts TLS.
    let started = Instant::now();
    let mut tcp = h2raw::tcp_from(ATTACKER, t.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("handshake timeout", tcp.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Slowloris over HTTP/1.1: headers that never end.
    let started = Instant::now();
    let reply = raw_exchange_at(
        t.addr,
        ATTACKER,
        &t.certs,
        b"GET /t/demo/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: a",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "slowloris held {:?}",
        started.elapsed()
    );
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 408"), "{reply:?}");

    // Slowloris over HTTP/2: a HEADERS frame whose header block never ends.
    let started = Instant::now();
    let mut conn = RawH2::connect(&t.certs, ATTACKER, t.addr).await.unwrap();
    let id = conn.next_stream();
    let block = hpack::request("GET", &conn.authority, "/t/demo/slow-h2");
    conn.send(&h2raw::headers(id, &block, true, false)).await.unwrap();
    let (_, closed) = conn.until_goaway_or_close(Duration::from_secs(5)).await;
    assert!(closed, "a half-sent HEADERS kept the connection open");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "h2 slowloris held {:?}",
        started.elapsed()
    );

    // A body that stops half way: 408, and the upstream never sees a complete request.
    let started = Instant::now();
    let reply = raw_exchange_at(
        t.addr,
        ATTACKER,
        &t.certs,
        b"POST /t/demo/whole-half HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly part",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stalled body held {:?}",
        started.elapsed()
    );
    assert!(status_line(&reply).contains("408"), "{reply:?}");
    assert!(!t.upstream_saw("complete:"), "a cut body arrived complete");
    drop(conn);
    t.recovered("slow clients").await;
}

#[tokio::test]
async fn idle_h2_connections_are_closed() {
    let t = Target::start("limits:\n  header_read_timeout: 500ms\n  idle_timeout: 1s\n", "").await;
    let limit = Duration::from_secs(3);
    // TLS done, h2 negotiated, then nothing at all.
    let started = Instant::now();
    let mut silent = h2raw::tls_h2(&t.certs, ATTACKER, t.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let ended = tokio::time::timeout(limit, async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a silent h2 connection was still open after {limit:?}"
    );
    eprintln!("silent h2 connection closed after {:?}", started.elapsed());

    // Preface and SETTINGS, then silence.
    let started = Instant::now();
    let mut conn = RawH2::connect(&t.certs, ATTACKER, t.addr).await.unwrap();
    let (_, closed) = conn.until_goaway_or_close(limit).await;
    assert!(
        closed,
        "an h2 connection with no request was still open after {limit:?}"
    );
    eprintln!("request-less h2 connection closed after {:?}", started.elapsed());

    // One request answered, then idle (PINGs do not count as activity): GOAWAY and close.
    let mut conn = RawH2::connect(&t.certs, ATTACKER, t.addr).await.unwrap();
    let (_, get) = conn.get("/t/demo/once");
    conn.send(&get).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    let mut goaway = None;
    while started.elapsed() < Duration::from_secs(4) && !closed {
        let _ = conn.send(&h2raw::ping(*b"idle?ok!")).await;
        let (g, c) = conn.until_goaway_or_close(Duration::from_millis(200)).await;
        goaway = goaway.or(g);
        closed = c;
    }
    assert!(
        closed,
        "an idle h2 connection was still open after {:?}",
        started.elapsed()
    );
    assert_eq!(goaway.as_ref().map(|g| g.1), Some(code::NO_ERROR), "{goaway:?}");
    eprintln!("idle h2 connection closed after {:?}", started.elapsed());
    drop((silent, conn));
    t.recovered("idle h2 connections").await;
}

#[tokio::test]
async fn idle_connections_cannot_lock_out_agents_or_senders() {
    // Six slots, two of them kept for agents: the agent already connected holds one.
    let cut = Duration::from_secs(6);
    let t = Target::start(
        "limits:\n  max_connections: 6\n  reserved_agent_connections: 2\n  header_read_timeout: 6s\n  idle_timeout: 6s\n",
        "",
    )
    .await;
    // An attacker opens as many idle h2 connections as it can.
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..6 {
        if let Ok(c) = RawH2::connect(&t.certs, ATTACKER, t.addr).await {
            idle.push(c);
        }
    }
    // The ones that landed on a reserved slot are refused; the rest hold every public slot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held = Vec::new();
    for mut c in idle {
        if !c.until_goaway_or_close(Duration::from_millis(20)).await.1 {
            held.push(c);
        }
    }
    assert!(
        !held.is_empty() && held.len() < 6,
        "{} of 6 idle connections held: the public slots were not filled",
        held.len()
    );
    // While they hold every public slot, an agent still logs in. A refused connection may give
    // its slot back a moment after the attacker sees it close, so the agent retries as it would.
    let yaml = agent_yaml(
        &format!("https://127.0.0.1:{}", t.addr.port()),
        Some(&t.certs),
        "ingress:\n  - upstream: http://127.0.0.1:9\n",
    );
    let cfg: ponte::config::agent::AgentConfig =
        ponte::config::parse_with_env(&yaml, "agent.yaml", &|_| None).unwrap();
    let cfg = cfg.merge(Default::default(), "agent.yaml").unwrap();
    let connector = ponte::agent::dial::Connector::new(&cfg).unwrap();
    let mut login = within("agent login", connector.connect("second-agent")).await;
    for _ in 0..4 {
        if login.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        login = within("agent login", connector.connect("second-agent")).await;
    }
    let logged_in_after = started.elapsed();
    assert!(login.is_ok(), "agent login refused: {:?}", login.err());
    assert!(
        logged_in_after < cut,
        "the login only came after the idle connections were cut ({logged_in_after:?})"
    );
    drop(login);
    // Once the idle ones are cut, senders get through again.
    for c in &mut held {
        let (_, closed) = c.until_goaway_or_close(cut + Duration::from_secs(4)).await;
        assert!(closed, "an idle connection was never closed");
    }
    drop(held);
    t.recovered("idle connections vs. agent logins").await;
}

// === Slow answers, the agent cap, tokens, SSRF, agent churn ===

/// GET `/t/demo/stall…`: headers arrive, then the body must fail within `limit`.
async fn stalled_body_fails(t: &Target, limit: Duration) -> Duration {
    let c = client(Some(&t.certs), false);
    let resp = within(
        "stall headers",
        c.request(request("GET", &t.url("/t/demo/stall"), "")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let started = Instant::now();
    let body = tokio::time::timeout(limit, resp.into_body().collect()).await;
    match body {
        Ok(Err(_)) => started.elapsed(),
        Ok(Ok(b)) => panic!("a stalled body completed: {:?}", b.to_bytes()),
        Err(_) => panic!("a stalled body was still open after {limit:?}"),
    }
}

/// With one stream per agent, a request after the stalled one is served.
async fn next_request_is_served(t: &Target) {
    let r = within(
        "the request after a stalled one",
        send(
            &client(Some(&t.certs), true),
            request("POST", &t.url("/t/demo/next"), "next"),
        ),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "next"));
}

#[tokio::test]
async fn a_stalled_response_body_releases_its_stream_at_the_relay() {
    let t = Target::start(
        "limits:\n  max_streams_per_agent: 1\n  response_timeout: 3s\n  response_body_idle_timeout: 500ms\n",
        "upstream_body_idle_timeout: 1h\n",
    )
    .await;
    let took = stalled_body_fails(&t, Duration::from_secs(5)).await;
    eprintln!("relay cut a stalled response body after {took:?}");
    next_request_is_served(&t).await;
    t.recovered("stalled response body (relay side)").await;
}

#[tokio::test]
async fn a_stalled_upstream_body_releases_its_stream_at_the_agent() {
    let t = Target::start(
        "limits:\n  max_streams_per_agent: 1\n  response_timeout: 3s\n  response_body_idle_timeout: 1h\n",
        "upstream_body_idle_timeout: 500ms\n",
    )
    .await;
    let took = stalled_body_fails(&t, Duration::from_secs(5)).await;
    eprintln!("agent cut a stalled upstream body after {took:?}");
    next_request_is_served(&t).await;
    t.recovered("stalled upstream body (agent side)").await;
}

#[tokio::test]
async fn concurrent_logins_cannot_exceed_the_agent_cap() {
    const LOGINS: usize = 16;
    let t = Target::start("limits:\n  max_agents_per_tunnel: 2\n", "").await;
    // Logins with the tunnel's token, written at once on connections opened beforehand, against
    // a cap of 2 of which the running agent holds one. (The registry's unit test
    // `pending_logins_count_against_the_cap` holds logins pending deterministically.)
    let tls = tokio_rustls::TlsConnector::from(Arc::new(t.certs.client_tls(&[b"http/1.1"])));
    let mut conns = Vec::new();
    for _ in 0..LOGINS {
        let tcp = h2raw::tcp_from(ATTACKER, t.addr).await.unwrap();
        conns.push(tls.connect("localhost".try_into().unwrap(), tcp).await.unwrap());
    }
    let logins = conns.iter_mut().enumerate().map(|(i, c)| async move {
        let login = format!(
            "GET /_ponte/v1/connect HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: ponte-h2\r\nAuthorization: Bearer {TOKEN}\r\nPonte-Agent-Id: leaked-{i}\r\n\r\n"
        );
        c.write_all(login.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 12];
        within("login answer", c.read_exact(&mut head)).await.unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });
    let answers = futures_util::future::join_all(logins).await;
    let accepted = answers.iter().filter(|a| a.contains(" 101")).count();
    let refused = answers.iter().filter(|a| a.contains(" 429")).count();
    // Whatever raced, at most two sessions end up registered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = send(
        &client(Some(&t.certs), false),
        request("GET", &t.url("/_ponte/health"), ""),
    )
    .await;
    let agents = serde_json::from_slice::<serde_json::Value>(&health.body).unwrap()["agents"]
        .as_u64()
        .unwrap();
    eprintln!("concurrent logins: {accepted} accepted, {refused} refused, {agents} registered");
    assert_eq!(accepted + refused, LOGINS, "{answers:?}");
    assert!(accepted <= 1, "{accepted} logins accepted with one slot free");
    assert!(agents <= 2, "{agents} sessions registered against a cap of 2");
    drop(conns);
    t.recovered("concurrent logins").await;
}

#[tokio::test]
async fn token_brute_force_is_throttled() {
    let t = Target::start("limits:\n  max_failed_logins_per_minute: 20\n", "").await;
    let login = |token: String, close: bool| {
        let connection = if close { "Upgrade, close" } else { "Upgrade" };
        format!(
            "GET /_ponte/v1/connect HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\nUpgrade: ponte-h2\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
    };
    let mut statuses = Vec::new();
    for i in 0..30 {
        let raw = login(format!("guess-{i:04}-0123456789abcdef"), true);
        let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(2)).await;
        statuses.push(status_line(&reply).split(' ').nth(1).unwrap_or("").to_string());
    }
    assert!(statuses[..20].iter().all(|s| s == "403"), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| s == "429"), "{statuses:?}");
    // Even the right token is throttled from that address, and nothing else is.
    let reply = raw_exchange_at(
        t.addr,
        ATTACKER,
        &t.certs,
        login(TOKEN.into(), true).as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(status_line(&reply).contains("429"), "{reply:?}");
    let reply = raw_exchange_at(
        t.addr,
        ATTACKER_2,
        &t.certs,
        login(TOKEN.into(), false).as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert!(status_line(&reply).contains("101"), "{reply:?}");
    t.recovered("token brute force").await;
}

#[tokio::test]
async fn the_relay_cannot_make_the_agent_dial_another_host() {
    let t = Target::start("", "").await;
    // A service on the agent's LAN that the sender would like to reach.
    let secret = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let secret_addr = secret.local_addr().unwrap();
    let secret_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = secret_hits.clone();
    tokio::spawn(async move {
        while let Ok(_conn) = secret.accept().await {
            hits.fetch_add(1, Ordering::SeqCst);
        }
    });
    // HTTP/1.1: Host naming the secret service.
    let raw = format!("GET /t/demo/steal-host HTTP/1.1\r\nHost: {secret_addr}\r\nConnection: close\r\n\r\n");
    let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(status_line(&reply).contains("200"), "{reply:?}");
    // HTTP/1.1: absolute-form target and Host both naming it.
    let raw = format!(
        "GET http://{secret_addr}/t/demo/steal-absolute HTTP/1.1\r\nHost: {secret_addr}\r\nConnection: close\r\n\r\n"
    );
    let reply = raw_exchange_at(t.addr, ATTACKER, &t.certs, raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(status_line(&reply).contains("200"), "{reply:?}");
    // HTTP/2: `:authority` naming it.
    let mut h2 = h2raw::h2_client(&t.certs, ATTACKER, t.addr).await.unwrap();
    let req = Request::get(format!("https://{secret_addr}/t/demo/steal-authority"))
        .body(())
        .unwrap();
    let (status, _) = h2raw::h2_exchange(&mut h2, req, b"").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // The agent dialled only its configured upstream.
    assert!(
        t.upstream_saw("/steal-host")
            && t.upstream_saw("/steal-absolute")
            && t.upstream_saw("/steal-authority")
    );
    assert_eq!(secret_hits.load(Ordering::SeqCst), 0);
    t.recovered("SSRF via Host/:authority").await;
}

#[tokio::test]
async fn fifty_agent_kill_restart_cycles_leak_nothing() {
    let mut t = Target::start("", "").await;
    let relay_url = t.addr;
    for cycle in 1..=50 {
        t.agent.kill();
        t.relay.wait_count("agent disconnected", cycle).await;
        t.agent = start_agent_process(&t.certs, relay_url, &t.up, "");
        t.relay.wait_count("agent connected", cycle + 1).await;
    }
    // Every kill was noticed and every session cleaned up: the count is only agent churn.
    assert_eq!(t.relay.count("agent disconnected"), 50);
    t.honest().await;
    let fds = t.settled_fds(t.baseline.fds + FD_SLACK).await;
    let after = usage(t.relay.pid());
    eprintln!(
        "50 agent kill/restart cycles: relay fds {} -> {fds}, RSS {} -> {} KiB",
        t.baseline.fds, t.baseline.rss_kib, after.rss_kib
    );
    assert!(after.rss_kib <= t.baseline.rss_kib + RSS_SLACK_KIB, "{after:?}");
}
