//! The private side: dial the relay, become the HTTP/2 server on that connection, and serve each
//! stream from a local upstream. A [`supervisor`] owns the reconnect loop; [`dial`] makes one
//! connection (proxy, TLS, upgrade); [`session`] serves it; [`ingress`] picks the [`origin`] for each
//! request; [`upstream`] is the HTTP origin.

mod backoff;
mod board;
pub mod dial;
pub mod heartbeat;
mod hooks_origin;
mod ingress;
pub mod origin;
pub mod proxy;
mod session;
mod status;
mod supervisor;
mod upstream;

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::agent::AgentConfig;

pub use backoff::Backoff;
pub use dial::{DialError, Handshake, TlsFailure};
pub use heartbeat::Heartbeat;
pub use ingress::Ingress;
pub use origin::{Origin, OriginLayer};
pub use status::{AgentStatus, SessionView};

/// Run the agent until `shutdown` is cancelled, reconnecting forever. Connection state is
/// published on `status` (systemd `STATUS=`, readiness, tests); `heartbeat`, when given, beats
/// while the reconnect loop runs (the systemd watchdog).
pub async fn run(
    config: AgentConfig,
    shutdown: CancellationToken,
    status: watch::Sender<AgentStatus>,
    heartbeat: Option<Heartbeat>,
) -> anyhow::Result<()> {
    let ingress = Arc::new(Ingress::new(&config)?);
    run_with_ingress(config, ingress, shutdown, status, heartbeat).await
}

/// [`run`] with an ingress table built by the caller: the inspector builds it with its capture
/// layer and keeps a handle to replay requests through the same origins.
pub async fn run_with_ingress(
    config: AgentConfig,
    ingress: Arc<Ingress>,
    shutdown: CancellationToken,
    status: watch::Sender<AgentStatus>,
    heartbeat: Option<Heartbeat>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let connector = dial::Connector::new(&config)?;
    supervisor::Supervisor::new(config, connector, ingress, status, shutdown, heartbeat)
        .run()
        .await;
    Ok(())
}

/// `ponte check`: connect once, authenticate, and report what the relay said.
pub async fn check(config: &AgentConfig) -> Result<Handshake, DialError> {
    let connector = dial::Connector::new(config).map_err(DialError::Setup)?;
    let (handshake, _conn) = connector.connect(&uuid::Uuid::new_v4().to_string()).await?;
    Ok(handshake)
}

/// `ponte check` with several relays: log in once at every target the agent would use (each URL
/// of the list, or each address the one name resolves to), as one agent instance on distinct
/// slots, and report each answer.
pub async fn check_all(
    config: &AgentConfig,
) -> Result<Vec<(String, Result<Handshake, DialError>)>, DialError> {
    let connector = dial::Connector::new(config).map_err(DialError::Setup)?;
    let agent_id = uuid::Uuid::new_v4().to_string();
    let mut answers = Vec::new();
    for (slot, target) in connector.targets().await.iter().enumerate() {
        let answer = connector
            .connect_to(target, &agent_id, slot)
            .await
            .map(|(handshake, _conn)| handshake);
        answers.push((target.display(), answer));
    }
    Ok(answers)
}
