//! `ponte demo`: a relay, an agent and an echo upstream on loopback, wired together, with a
//! `curl` line that works and the agent's inspector (127.0.0.1:4040, or the next free port) to
//! watch and replay what went through. The quickest way to see a tunnel end to end.

pub mod echo;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentStatus};
use crate::config::agent::{AgentConfig, AgentOverrides};
use crate::config::relay::RelayConfig;
use crate::config::{self, Secret};

/// Name of the demo tunnel.
pub const DEMO_TUNNEL: &str = "demo";
/// The sample webhook the demo sends (the Rute.ai guide's test payload).
pub const SAMPLE_BODY: &str = r#"{"key1":"value1", "key2":"value2"}"#;

/// Everything the demo started, for printing and for tests.
#[derive(Debug, Clone)]
pub struct DemoInfo {
    /// The relay's address.
    pub relay: SocketAddr,
    /// The URL to send webhooks to.
    pub public_url: String,
    /// The upstream the agent forwards to.
    pub upstream: String,
    /// Where the agent's inspector listens (`None`: every port it tried was taken).
    pub inspector: Option<SocketAddr>,
}

/// Start the three parts; returns once the agent is connected.
pub async fn start(upstream: Option<String>, shutdown: CancellationToken) -> anyhow::Result<DemoInfo> {
    let upstream = match upstream {
        Some(u) => u,
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(echo::serve(listener, shutdown.clone()));
            format!("http://{addr}")
        }
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    let relay_yaml = format!("listen: 127.0.0.1:0\ntunnels:\n  {DEMO_TUNNEL}:\n    token: {token}\n");
    let relay_cfg: RelayConfig = config::parse_with_env(&relay_yaml, "demo relay", &|_| None)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let relay_addr = listener.local_addr()?;
    let relay_shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::relay::serve(listener, relay_cfg, relay_shutdown).await {
            tracing::error!(error = %e, "demo relay failed");
        }
    });

    let agent_cfg = AgentConfig::empty().merge(
        AgentOverrides {
            inspect: None,
            relay: vec![format!("http://{relay_addr}")],
            token: Some(Secret::new(token)),
            upstream: Some(upstream.clone()),
            ca_file: None,
            hooks: None,
            proxy_env: Default::default(),
        },
        "demo",
    )?;
    let (status_tx, mut status_rx) = watch::channel(AgentStatus::Starting);
    // The inspector, as `ponte agent` starts it (127.0.0.1:4040 or the next free port).
    let inspector = match crate::inspect::inspector::start(&agent_cfg, status_rx.clone(), &shutdown).await? {
        Some(started) => {
            let address = started.address;
            tokio::spawn(agent::run_with_ingress(
                agent_cfg,
                started.ingress,
                shutdown.clone(),
                status_tx,
                None,
            ));
            Some(address)
        }
        None => {
            tokio::spawn(agent::run(agent_cfg, shutdown.clone(), status_tx, None));
            None
        }
    };
    let connected =
        tokio::time::timeout(Duration::from_secs(10), status_rx.wait_for(|s| s.is_connected())).await;
    let public_url = match connected {
        Ok(Ok(s)) => match &*s {
            AgentStatus::Connected { public_url, .. } => public_url.clone(),
            _ => unreachable!("wait_for returned a connected status"),
        },
        _ => anyhow::bail!("the demo agent did not connect within 10 s"),
    };
    Ok(DemoInfo {
        relay: relay_addr,
        public_url,
        upstream,
        inspector,
    })
}

/// Send the sample webhook through the tunnel and return the status and body the sender got.
pub async fn send_sample(url: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let uri: http::Uri = url.parse().context("demo URL")?;
    let authority = uri.authority().context("demo URL has no host")?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, crate::body::Body>(hyper_util::rt::TokioIo::new(stream))
            .await?;
    tokio::spawn(conn);
    let req = http::Request::post(uri.path())
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(crate::body::full(SAMPLE_BODY))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `ponte demo`: start, show a working request, and keep running until stopped.
pub async fn run(upstream: Option<String>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let info = start(upstream, shutdown.clone()).await?;
    let hook_url = format!("{}hooks/rute-webhook", info.public_url);
    let (status, body) = send_sample(&hook_url).await?;
    println!(
        "Ponte demo running: relay on {}, agent connected, upstream {}\n",
        info.relay, info.upstream
    );
    println!("Send a webhook through the tunnel:\n");
    println!("  curl -d '{SAMPLE_BODY}' -H \"Content-Type: application/json\" -X POST {hook_url}\n");
    println!("The demo just sent that request; the upstream answered {status}:\n");
    println!("{body}\n");
    match info.inspector {
        Some(addr) => println!("See every request and replay it in the inspector: http://{addr}/\n"),
        None => println!(
            "(No inspector: {} and the next ports could not be used.)\n",
            crate::config::inspect::DEFAULT_INSPECT
        ),
    }
    println!("Press Ctrl-C to stop.");
    shutdown.cancelled().await;
    // Give the parts a moment to close their connections cleanly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
