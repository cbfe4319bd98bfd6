//! Faults the tunnel must survive: relay restarts, blackholed networks, shutdown mid-request,
//! stale sessions, refused tokens and proxies. (SSRF through Host or `:authority` is in
//! tests/attacks.rs.)

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::faults::{Blackhole, ConnectProxy};
use support::*;
use tokio::net::TcpListener;

#[tokio::test]
async fn agent_comes_back_after_a_relay_restart() {
    let certs = Certs::new();
    let up = echo_upstream().await;
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let addr = relay.addr;
    let mut agent = start_agent(&agent_yaml(
        &relay.url(true),
        Some(&certs),
        &format!("ingress:\n  - upstream: {}\n", up.url()),
    ));
    agent.connected().await;
    relay.stop().await;
    let error = agent.retrying().await;
    assert!(!error.is_empty());

    // Same port, new process state.
    let listener = within("rebind", async {
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let relay = start_relay_on(listener, &relay_yaml(Some(&certs), "", ""));
    agent.connected().await;
    let r = send(
        &client(Some(&certs), false),
        request("POST", &format!("{}/t/demo/again", relay.url(true)), "ok"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn blackholed_tunnel_is_detected_on_both_sides_and_recovered() {
    let certs = Certs::new();
    let up = echo_upstream().await;
    let fast_ping = "keepalive:\n  interval: 500ms\n  timeout: 500ms\n";
    let relay = start_relay(&relay_yaml(Some(&certs), fast_ping, "")).await;
    let hole = Blackhole::start(relay.addr).await;
    let mut agent = start_agent(&agent_yaml(
        &format!("https://127.0.0.1:{}", hole.addr.port()),
        Some(&certs),
        &format!("{fast_ping}ingress:\n  - upstream: {}\n", up.url()),
    ));
    agent.connected().await;
    let client = client(Some(&certs), false);
    let health = format!("{}/_ponte/health", relay.url(true));
    let agents = |r: Reply| {
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["agents"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(agents(send(&client, request("GET", &health, "")).await), 1);

    let cut = Instant::now();
    hole.blackhole();
    let error = agent.retrying().await;
    let agent_noticed = cut.elapsed();
    assert!(error.contains("keepalive") || error.contains("lost"), "{error}");
    within("relay to drop the stale session", async {
        while agents(send(&client, request("GET", &health, "")).await) != 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let relay_noticed = cut.elapsed();
    // interval + timeout = 1 s here; allow scheduling slack, far below a TCP timeout.
    assert!(
        agent_noticed < Duration::from_secs(5),
        "agent took {agent_noticed:?}"
    );
    assert!(
        relay_noticed < Duration::from_secs(5),
        "relay took {relay_noticed:?}"
    );

    hole.restore();
    agent.connected().await;
    let r = send(
        &client,
        request("POST", &format!("{}/t/demo/back", relay.url(true)), "yes"),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "yes"));
    agent.stop().await;
    relay.stop().await;
}

/// A tunnel with one request in flight: the upstream holds it for 800 ms.
struct MidRequest {
    certs: Certs,
    relay: RelayHandle,
    agent: AgentHandle,
    in_flight: tokio::task::JoinHandle<Reply>,
}

async fn mid_request(h2: bool) -> MidRequest {
    let certs = Certs::new();
    let up = start_upstream(|_| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        text(StatusCode::OK, "finished")
    })
    .await;
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let mut agent = start_agent(&agent_yaml(
        &relay.url(true),
        Some(&certs),
        &format!("ingress:\n  - upstream: {}\n", up.url()),
    ));
    agent.connected().await;
    let client = client(Some(&certs), h2);
    let url = format!("{}/t/demo/slow", relay.url(true));
    let in_flight = tokio::spawn(async move {
        let _up = up;
        send(&client, request("GET", &url, "")).await
    });
    // Wait until the request is really with the upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    MidRequest {
        certs,
        relay,
        agent,
        in_flight,
    }
}

#[tokio::test]
async fn agent_shutdown_lets_in_flight_requests_finish() {
    let MidRequest {
        certs,
        relay,
        agent,
        in_flight,
    } = mid_request(false).await;
    let stopping = Instant::now();
    agent.stop().await;
    let r = in_flight.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "finished"));
    assert!(
        stopping.elapsed() >= Duration::from_millis(300),
        "agent did not wait for the request"
    );
    // And the agent is gone: new requests get 503.
    let r = send(
        &client(Some(&certs), false),
        request("GET", &format!("{}/t/demo/x", relay.url(true)), ""),
    )
    .await;
    assert_eq!(r.status, 503);
    relay.stop().await;
}

#[tokio::test]
async fn relay_shutdown_lets_in_flight_requests_finish() {
    let MidRequest {
        relay,
        mut agent,
        in_flight,
        ..
    } = mid_request(true).await;
    relay.stop().await;
    let r = in_flight.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "finished"));
    agent.retrying().await;
    agent.stop().await;
}

#[tokio::test]
async fn a_reconnecting_agent_evicts_its_stale_session() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let cfg = agent_config(&relay.url(true), &certs);
    let connector = ponte::agent::dial::Connector::new(&cfg).unwrap();
    let health = format!("{}/_ponte/health", relay.url(true));
    let client = client(Some(&certs), false);
    let agents = |r: Reply| {
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["agents"]
            .as_u64()
            .unwrap()
    };

    // Two sessions of the same agent instance (the first one "died silently").
    let (_, first) = connector.connect("agent-1").await.unwrap();
    let first_server = serve_nothing(first);
    within("first session", async {
        while agents(send(&client, request("GET", &health, "")).await) != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (_, second) = connector.connect("agent-1").await.unwrap();
    let _second_server = serve_nothing(second);
    // The relay closes the first at once; only one session remains.
    within("stale session to be closed", first_server).await.unwrap();
    assert_eq!(agents(send(&client, request("GET", &health, "")).await), 1);

    // A different instance adds a session instead of replacing one.
    let (_, third) = connector.connect("agent-2").await.unwrap();
    let _third_server = serve_nothing(third);
    within("second agent", async {
        while agents(send(&client, request("GET", &health, "")).await) != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    relay.stop().await;
}

fn agent_config(relay_url: &str, certs: &Certs) -> ponte::config::agent::AgentConfig {
    let yaml = agent_yaml(
        relay_url,
        Some(certs),
        "ingress:\n  - upstream: http://127.0.0.1:9\n",
    );
    let cfg: ponte::config::agent::AgentConfig =
        ponte::config::parse_with_env(&yaml, "agent.yaml", &|_| None).unwrap();
    cfg.merge(Default::default(), "agent.yaml").unwrap()
}

/// Serve an upgraded connection as an HTTP/2 server that answers 204; resolves when it closes.
fn serve_nothing(conn: hyper::upgrade::Upgraded) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(text(StatusCode::NO_CONTENT, ""))
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(conn, svc)
            .await;
    })
}

#[tokio::test]
async fn a_tunnel_holds_at_most_its_agent_limit() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(
        Some(&certs),
        "limits:\n  max_agents_per_tunnel: 2",
        "",
    ))
    .await;
    let connector = ponte::agent::dial::Connector::new(&agent_config(&relay.url(true), &certs)).unwrap();
    let (_, a) = connector.connect("a").await.unwrap();
    let _a = serve_nothing(a);
    let (_, b) = connector.connect("b").await.unwrap();
    let _b = serve_nothing(b);
    let err = connector.connect("c").await.unwrap_err();
    assert!(
        err.to_string().contains("429") && err.to_string().contains("max_agents_per_tunnel"),
        "{err}"
    );
    // The same instance reconnecting is not a new agent.
    let (_, a2) = connector.connect("a").await.unwrap();
    let _a2 = serve_nothing(a2);
    relay.stop().await;
}

#[tokio::test]
async fn wrong_token_is_reported_clearly_and_not_retried_fast() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let yaml = agent_yaml(
        &relay.url(true),
        Some(&certs),
        "ingress:\n  - upstream: http://127.0.0.1:9\n",
    )
    .replace(TOKEN, "not-the-right-token-at-all");
    let mut agent = start_agent(&yaml);
    let error = agent.retrying().await;
    assert!(
        error.contains("403") && error.contains("does not accept this token"),
        "{error}"
    );
    match &*agent.status.borrow() {
        ponte::agent::AgentStatus::Retrying { delay, .. } => {
            assert!(*delay >= Duration::from_secs(60), "{delay:?}")
        }
        other => panic!("{other:?}"),
    }
    // `ponte check` semantics: the same refusal, as an error value.
    let mut cfg = agent_config(&relay.url(true), &certs);
    cfg.token = Some(ponte::config::Secret::new("another-wrong-token-value"));
    let err = ponte::agent::check(&cfg).await.unwrap_err();
    assert!(err.is_rejection(), "{err}");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn untrusted_relay_certificate_is_refused() {
    let certs = Certs::new();
    let other = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    // Trusting a different CA: the relay's certificate must not be accepted.
    let cfg = agent_config(&relay.url(true), &other);
    let err = ponte::agent::check(&cfg).await.unwrap_err();
    assert!(err.to_string().contains("not signed by a trusted CA"), "{err}");
    relay.stop().await;
}

/// An untrusted certificate needs a person (a CA file, or a new certificate): the agent says
/// which setting to change, in the words of its configuration, and retries every minute instead
/// of hammering the relay with fast backoff.
#[tokio::test]
async fn an_untrusted_relay_certificate_is_retried_slowly_and_names_the_setting() {
    let certs = Certs::new();
    let other = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let mut agent = start_agent(&agent_yaml(
        &relay.url(true),
        Some(&other),
        "ingress:\n  - upstream: http://127.0.0.1:9\n",
    ));
    let error = agent.retrying().await;
    assert!(
        error.contains("not signed by a trusted CA")
            && error.contains(&format!(
                "nor by the CA in {} (`ca_file:` in agent.yaml)",
                other.ca.display()
            )),
        "{error}"
    );
    match &*agent.status.borrow() {
        ponte::agent::AgentStatus::Retrying { delay, .. } => {
            assert!(*delay >= Duration::from_secs(60), "{delay:?}")
        }
        other => panic!("{other:?}"),
    }
    agent.stop().await;
    relay.stop().await;
}

/// Every agent learns how many agents share its tunnel; a reconnect of the same instance is not
/// counted twice.
#[tokio::test]
async fn agents_sharing_a_tunnel_are_told_how_many_they_are() {
    let certs = Certs::new();
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let connector = ponte::agent::dial::Connector::new(&agent_config(&relay.url(true), &certs)).unwrap();
    let (first, a) = connector.connect("a").await.unwrap();
    assert_eq!(first.agents, 1);
    let _a = serve_nothing(a);
    // The relay registers a session after its HTTP/2 handshake: wait until `a` counts.
    let (second, b) = eventually("the first agent to register", || async {
        let (h, conn) = connector.connect("b").await.unwrap();
        if h.agents == 2 {
            Some((h, conn))
        } else {
            drop(conn);
            tokio::time::sleep(Duration::from_millis(20)).await;
            None
        }
    })
    .await;
    assert_eq!(second.agents, 2);
    let _b = serve_nothing(b);
    let (again, a2) = connector.connect("a").await.unwrap();
    assert_eq!(again.agents, 2, "a reconnect is the same agent");
    let _a2 = serve_nothing(a2);
    relay.stop().await;
}

#[test]
fn plain_http_to_a_remote_relay_is_refused() {
    let yaml = "relay: http://relay.example.com\ntoken: x\ningress:\n  - upstream: http://localhost:8000\n";
    let err =
        ponte::config::parse_with_env::<ponte::config::agent::AgentConfig>(yaml, "agent.yaml", &|_| None)
            .unwrap_err()
            .to_string();
    assert!(
        err.starts_with("agent.yaml:1: relay: refusing plain `http://`"),
        "{err}"
    );
}

#[tokio::test]
async fn agent_reaches_the_relay_through_an_http_connect_proxy() {
    let certs = Certs::new();
    let up = echo_upstream().await;
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let proxy = ConnectProxy::start().await;
    // `localhost` so the relay certificate name matches; the proxy resolves it.
    let relay_url = format!("https://localhost:{}", relay.addr.port());
    // Credentials percent-encoded as in a URL: `%2B` and `+` are both a plus (not a space).
    let mut agent = start_agent(&agent_yaml(
        &relay_url,
        Some(&certs),
        &format!(
            "proxy_url: http://clinic:p%2Bss+word@{}\ningress:\n  - upstream: {}\n",
            proxy.addr,
            up.url()
        ),
    ));
    agent.connected().await;
    assert_eq!(
        proxy.targets.lock().unwrap().as_slice(),
        [format!("localhost:{}", relay.addr.port())]
    );
    // base64("clinic:p+ss+word")
    assert_eq!(
        proxy.authorizations.lock().unwrap().as_slice(),
        ["Basic Y2xpbmljOnArc3Mrd29yZA=="]
    );
    let r = send(
        &client(Some(&certs), false),
        request("POST", &format!("{}/t/demo/p", relay.url(true)), "via proxy"),
    )
    .await;
    assert_eq!(r.text(), "via proxy");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn websocket_echo_through_the_tunnel() {
    let certs = Certs::new();
    let ws_addr = websocket_echo_upstream().await;
    let relay = start_relay(&relay_yaml(Some(&certs), "", "")).await;
    let mut agent = start_agent(&agent_yaml(
        &relay.url(true),
        Some(&certs),
        &format!("ingress:\n  - upstream: http://{ws_addr}\n"),
    ));
    agent.connected().await;
    websocket_echoes_through(relay.addr, &certs).await;
    agent.stop().await;
    relay.stop().await;
}
